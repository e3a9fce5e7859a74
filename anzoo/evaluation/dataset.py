"""Which files an evaluation reads, and how the model's labels become the dataset's category ids."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycocotools.coco import COCO

from ..data.coco import COCO_CLASSES, category_ids_of
from ..errors import DatasetError

__all__ = ["CocoFiles", "label_category_ids", "resolve_coco_files"]

log = logging.getLogger(__name__)

#: the layout of a COCO download: DIR/annotations/instances_val2017.json and DIR/val2017/.
DEFAULT_ANN = Path("annotations") / "instances_val2017.json"
DEFAULT_IMAGES = Path("val2017")


@dataclass(frozen=True)
class CocoFiles:
    ann_file: Path
    image_dir: Path


def resolve_coco_files(coco_dir: str | os.PathLike[str] | None = None,
                       ann_file: str | os.PathLike[str] | None = None,
                       image_dir: str | os.PathLike[str] | None = None) -> CocoFiles:
    """The annotation file and image folder of an evaluation, checked to exist.

    ``coco_dir`` holds ``annotations/instances_val2017.json`` and ``val2017/``; ``ann_file`` and
    ``image_dir`` replace either (for test-dev or a custom COCO-format set both are given and
    ``coco_dir`` may be omitted). Raises one DatasetError naming what is missing.
    """
    root = Path(coco_dir).expanduser() if coco_dir is not None else None
    if root is None and (ann_file is None or image_dir is None):
        raise DatasetError("give the COCO folder (--coco DIR), or both --ann FILE and --images DIR")
    if root is not None and not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"COCO folder {root} {what}")
    ann = Path(ann_file).expanduser() if ann_file is not None else root / DEFAULT_ANN  # type: ignore[operator]
    images = Path(image_dir).expanduser() if image_dir is not None else root / DEFAULT_IMAGES  # type: ignore[operator]
    if not ann.is_file():
        if ann.is_dir():
            raise DatasetError(f"annotation file {ann} is a folder, not a file")
        hint = "" if ann_file is not None else f" (the COCO layout: {root}/{DEFAULT_ANN}; use --ann FILE for another)"
        raise DatasetError(f"annotation file {ann} does not exist{hint}")
    if not images.is_dir():
        hint = "" if image_dir is not None else f" (the COCO layout: {root}/{DEFAULT_IMAGES}/; use --images DIR for another)"
        what = "is a file, not a folder" if images.exists() else "does not exist"
        raise DatasetError(f"image folder {images} {what}{hint}")
    return CocoFiles(ann.resolve(), images.resolve())


def _normalise(name: str) -> str:
    # mmdetection v1 spells COCO's two-word names with underscores ("traffic_light").
    return " ".join(name.replace("_", " ").lower().split())


def label_category_ids(class_names: Sequence[str] | None, coco: COCO,
                       num_classes: int | None = None) -> list[int | None]:
    """Category id of each of the model's contiguous labels (None: not a dataset category).

    Classes are matched to the dataset's categories by name (case, spaces and underscores
    aside); ``class_names=None`` means COCO's 80 classes, so a COCO model on COCO maps to
    :data:`~anzoo.data.coco.COCO_CATEGORY_IDS`, and on a dataset with a few of COCO's
    categories to those. A model whose names share nothing with the dataset but which has as
    many classes is mapped in order (label i -> i-th smallest category id, as mmdetection v1
    numbered a dataset's categories); otherwise DatasetError. ``num_classes``: the model's
    class count, for a model without names (None names mean COCO's only with 80 classes).
    """
    if class_names is None and num_classes is not None and num_classes != len(COCO_CLASSES):
        class_names = [f"class {i}" for i in range(num_classes)]  # unnamed: matched by order below
    names = list(class_names) if class_names is not None else list(COCO_CLASSES)
    by_name: dict[str, int] = {}
    for cat_id in category_ids_of(coco):
        by_name.setdefault(_normalise(str(coco.cats[cat_id]["name"])), int(cat_id))
    mapped = [by_name.get(_normalise(n)) for n in names]
    matched = sum(c is not None for c in mapped)
    if matched:
        if matched < len(names):
            log.info("%d of the model's %d classes are not categories of the dataset; their detections "
                     "are left out of the results", len(names) - matched, len(names))
        return mapped
    cat_ids = category_ids_of(coco)
    if len(cat_ids) == len(names):
        log.warning("the model's class names (%s, ...) are not the dataset's (%s, ...); mapping "
                    "label i to the i-th category id", names[0], coco.cats[cat_ids[0]]["name"])
        return list(cat_ids)
    raise DatasetError(
        f"the model's {len(names)} classes ({', '.join(names[:3])}, ...) share no name with the "
        f"dataset's {len(cat_ids)} categories ({', '.join(str(coco.cats[c]['name']) for c in cat_ids[:3])}, ...)")

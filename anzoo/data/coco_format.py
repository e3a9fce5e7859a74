"""What a COCO-format annotation file must hold, checked in one pass before anything runs on it.

pycocotools indexes whatever JSON it is given and fails late or not at all: a duplicate
annotation id silently replaces the first annotation by the second when COCOeval reads the
ground truth (box AP 0.252 instead of 1.0 on a two-object file), a category id written as a
string makes every AP -1, an RLE of another size scores mask AP 0, and a missing
``segmentation``, an empty polygon list, a three-number box or a missing image height raise a
bare KeyError / IndexError inside COCOeval after the whole inference has run.
:func:`check_coco_dataset` finds all of these up front and reports them in one
:class:`~anzoo.errors.DatasetError` naming the file, each bad record (its list, index and id)
and the field.

Two levels:

* ``require_masks=True`` (evaluation): every annotation needs a usable ``segmentation``
  (what pycocotools' segm evaluation reads: a non-empty polygon list whose first polygon has
  at least 3 points, or an RLE of the image's size) and its image a ``height`` and ``width``;
* ``require_masks=False`` (training): a missing or empty segmentation and polygons of fewer
  than 3 points are allowed (the training dataset skips and counts those annotations), but
  what is there must still have the right types.

The loop touches each record once with type checks only (coordinates are checked with one C
``sum`` per polygon; a version with everything inlined was no faster: the time goes to reading
the records from memory). ``benchmarks/coco_check.py`` on the development machine (2 shared
cores, loaded): 0.2-0.4 s for a file of COCO val2017's size, 8-9.5 s for train2017's (118k
images, 860k annotations), where ``json.loads`` of the same data took 1.5 s and 40 s.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

from ..errors import DatasetError

__all__ = ["check_coco_dataset"]

#: problems quoted in the error message (the total is given too)
MAX_SHOWN = 5
_REQUIRED_IMAGE_KEYS = ("id", "file_name")
_REQUIRED_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
_CROWD_FLAGS = (0, 1)
_CROWD_TYPES = (int, bool, float)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


def _finite_numbers(values: Any) -> bool:
    """A list of finite numbers (one C-level sum: fast on long polygons)."""
    if type(values) is not list:
        return False
    try:
        return math.isfinite(sum(values))
    except TypeError:  # a string, null or nested list among the numbers
        return False


def _positive_integral(value: Any) -> bool:
    return (type(value) is int or (type(value) is float and value.is_integer())) and value > 0


class _Problems:
    """Counts every problem, keeps the first few for the message."""

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.count = 0

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_SHOWN:
            self.shown.append(f"{where}: {message}")


def _where(kind: str, index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{kind}[{index}]" + (f" (id {_show(rid, 30)})" if rid is not None else "")


def check_coco_dataset(data: Any, source: str, *, require_masks: bool = True) -> None:
    """Check a loaded COCO-format annotation file; raise one DatasetError naming every problem
    found (the first few quoted, all counted). ``source`` names the file in the message."""

    def fail(problem: str) -> None:
        raise DatasetError(f"annotation file {source} is not in COCO format: {problem}")

    if not isinstance(data, dict):
        fail(f"the top level is {_kind(data)}, expected an object")
    for key in ("images", "categories"):
        if key not in data:
            fail(f"missing the {key!r} list")
        if not isinstance(data[key], list):
            fail(f"{key!r} is {_kind(data[key])}, not a list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        fail(f"'annotations' is {_kind(annotations)}, not a list")

    problems = _Problems()
    images = _check_images(data["images"], problems)
    categories = _check_categories(data["categories"], problems)
    _check_annotations(annotations, images, categories, problems, require_masks)
    if problems.count:
        more = (f" ({problems.count} problems in all; the first {MAX_SHOWN} are shown)"
                if problems.count > MAX_SHOWN else "")
        fail("; ".join(problems.shown) + more)


def _check_images(records: list[Any], problems: _Problems) -> dict[int, tuple[int, Any, Any]]:
    """image id -> (index, height, width) of the well-formed image records (height and width
    None when absent, 0 when malformed)."""
    found: dict[int, tuple[int, Any, Any]] = {}
    for i, img in enumerate(records):
        if type(img) is not dict:
            problems.add(f"images[{i}]", f"is {_kind(img)}, not an object")
            continue
        missing = [k for k in _REQUIRED_IMAGE_KEYS if k not in img]
        if missing:
            problems.add(_where("images", i, img), f"lacks {', '.join(map(repr, missing))}")
            continue
        image_id, file_name = img["id"], img["file_name"]
        if type(image_id) is not int:
            problems.add(_where("images", i, img), f"'id' must be an integer, got {_show(image_id)}")
            continue
        if image_id in found:
            problems.add(_where("images", i, img), f"image id {image_id} appears twice "
                                                   f"(images[{found[image_id][0]}] has it too)")
            continue
        if type(file_name) is not str or not file_name.strip():
            problems.add(_where("images", i, img), f"'file_name' must be a non-empty string, "
                                                   f"got {_show(file_name)}")
        height, width = img.get("height"), img.get("width")
        if height is not None or width is not None:
            if not (_positive_integral(height) and _positive_integral(width)):
                problems.add(_where("images", i, img), f"'height' and 'width' must be positive integers, "
                                                       f"got {_show(height)} and {_show(width)}")
                height = width = 0  # reported: its annotations' sizes are not compared with it
        found[image_id] = (i, height, width)
    return found


def _check_categories(records: list[Any], problems: _Problems) -> set[int]:
    ids: dict[int, int] = {}
    for i, cat in enumerate(records):
        if type(cat) is not dict:
            problems.add(f"categories[{i}]", f"is {_kind(cat)}, not an object")
            continue
        if "id" not in cat or "name" not in cat:
            problems.add(_where("categories", i, cat), "lacks 'id' or 'name'")
            continue
        if type(cat["id"]) is not int:
            problems.add(_where("categories", i, cat), f"'id' must be an integer, got {_show(cat['id'])}")
        elif cat["id"] in ids:
            problems.add(_where("categories", i, cat),
                         f"category id {cat['id']} appears twice (categories[{ids[cat['id']]}] has it too)")
        else:
            ids[cat["id"]] = i
        if type(cat["name"]) is not str or not cat["name"].strip():
            problems.add(_where("categories", i, cat), f"'name' must be a non-empty string, "
                                                       f"got {_show(cat['name'])}")
    return set(ids)


def _check_annotations(records: list[Any], images: dict[int, tuple[int, Any, Any]], categories: set[int],
                       problems: _Problems, require_masks: bool) -> None:
    ann_ids: list[Any] = []
    unsized: set[int] = set()  # images whose annotations need a height and width they lack
    required = _REQUIRED_ANN_KEYS + (("segmentation",) if require_masks else ())
    required_set = frozenset(required)
    for i, ann in enumerate(records):
        if type(ann) is not dict:
            problems.add(f"annotations[{i}]", f"is {_kind(ann)}, not an object")
            continue
        if not required_set <= ann.keys():
            missing = [k for k in required if k not in ann]
            problems.add(_where("annotations", i, ann), f"lacks {', '.join(map(repr, missing))}")
            continue
        where = None  # built only when something is wrong
        ann_id = ann["id"]
        ann_ids.append(ann_id)
        if type(ann_id) is not int:
            where = _where("annotations", i, ann)
            problems.add(where, f"'id' must be an integer, got {_show(ann_id)}")
        image_id = ann["image_id"]
        image = images.get(image_id) if type(image_id) is int else None
        if image is None:
            where = where or _where("annotations", i, ann)
            what = "an integer" if type(image_id) is not int else "the id of an image in 'images'"
            problems.add(where, f"'image_id' must be {what}, got {_show(image_id)}")
        category_id = ann["category_id"]
        if type(category_id) is not int or category_id not in categories:
            where = where or _where("annotations", i, ann)
            what = "an integer" if type(category_id) is not int else "the id of a category in 'categories'"
            problems.add(where, f"'category_id' must be {what}, got {_show(category_id)}")
        bbox = ann["bbox"]
        if not (type(bbox) is list and len(bbox) == 4 and _finite_numbers(bbox) and bbox[2] >= 0 and bbox[3] >= 0):
            where = where or _where("annotations", i, ann)
            problems.add(where, f"'bbox' must be [x, y, width, height], 4 finite numbers with width and "
                                f"height >= 0, got {_show(bbox)}")
        area = ann["area"]
        if not ((type(area) is int or type(area) is float) and math.isfinite(area) and area >= 0):
            where = where or _where("annotations", i, ann)
            problems.add(where, f"'area' must be a finite number >= 0, got {_show(area)}")
        if ann["iscrowd"] not in _CROWD_FLAGS or type(ann["iscrowd"]) not in _CROWD_TYPES:
            where = where or _where("annotations", i, ann)
            problems.add(where, f"'iscrowd' must be 0 or 1, got {_show(ann['iscrowd'])}")
        segmentation = ann.get("segmentation")
        if segmentation is None and not require_masks:
            continue
        height, width = (image[1], image[2]) if image is not None else (None, None)
        bad = _segmentation_problem(segmentation, height, width, require_masks)
        if bad:
            problems.add(where or _where("annotations", i, ann), bad)
        elif require_masks and image is not None and height is None:
            unsized.add(image_id)
    for image_id in sorted(unsized, key=lambda k: images[k][0]):
        problems.add(f"images[{images[image_id][0]}] (id {image_id})",
                     "'height' and 'width' are missing; the masks of its annotations need them")
    if len(set(ann_ids)) != len(ann_ids):
        for ann_id, n in Counter(ann_ids).items():
            if n > 1:
                at = [i for i, a in enumerate(records) if type(a) is dict and a.get("id") == ann_id]
                shown = ", ".join(f"annotations[{i}]" for i in at[:3]) + (", ..." if len(at) > 3 else "")
                problems.add(f"annotation id {_show(ann_id, 30)}", f"appears {n} times ({shown}); "
                             "pycocotools would evaluate the last of them in place of the others")


def _segmentation_problem(seg: Any, height: Any, width: Any, require_masks: bool) -> str | None:
    """What is wrong with an annotation's ``segmentation`` (None: nothing)."""
    if type(seg) is list:
        if not seg:
            return "'segmentation' is an empty list (no polygon)" if require_masks else None
        for poly in seg:
            if not _finite_numbers(poly):
                return (f"'segmentation' must be a list of polygons, each a list of finite numbers "
                        f"x1, y1, x2, y2, ...; got {_show(poly)} among them")
        if require_masks and len(seg[0]) < 6:
            # pycocotools reads a first polygon of 4 numbers as a box and fails on shorter ones
            return f"'segmentation''s first polygon has {len(seg[0])} numbers; a polygon needs 3 points (6 numbers)"
        return None
    if type(seg) is dict:
        size, counts = seg.get("size"), seg.get("counts")
        if not (type(size) is list and len(size) == 2 and all(type(v) is int and v >= 0 for v in size)):
            return f"'segmentation' RLE needs 'size': [height, width], got {_show(size)}"
        if height and size != [height, width]:
            return (f"'segmentation' RLE has size {size} but its image is {[int(height), int(width)]} "
                    f"(height, width)")
        if type(counts) is str:
            return None if counts else "'segmentation' RLE has empty 'counts'"
        if type(counts) is list and all(type(v) is int and v >= 0 for v in counts):
            if sum(counts) != size[0] * size[1]:
                return (f"'segmentation' RLE 'counts' add up to {sum(counts)} pixels, not the "
                        f"{size[0]} x {size[1]} of its size")
            return None
        return f"'segmentation' RLE 'counts' must be a string or a list of counts >= 0, got {_show(counts)}"
    return f"'segmentation' must be a list of polygons or an RLE object, got {_show(seg)}"

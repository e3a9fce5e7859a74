"""COCO: class names, category-id mapping, annotation loading and the inference dataset.

Labels inside anzoo are contiguous, ``0 .. num_classes - 1``. A COCO-format dataset names
classes by category id (1..90 with gaps for COCO itself). As in mmdetection v1's
``CocoDataset``, the contiguous order is the dataset's category ids **sorted ascending**: label
``i`` is ``sorted(cat_ids)[i]``. For COCO that gives :data:`COCO_CATEGORY_IDS`, and the
released detectors' class ``i + 1`` (their class 0 is background) is COCO category
``COCO_CATEGORY_IDS[i]``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import AnzooError, DatasetError
from .coco_format import check_coco_dataset
from .images import DEFAULT_MAX_PIXELS, load_image, read_image_size
from .transforms import (
    SIZE_DIVISOR,
    TEST_SCALE,
    ImageMeta,
    pad_to_batch,
    padded_shape,
    preprocess_image,
    rescale_size,
)

__all__ = [
    "COCO_CATEGORIES",
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "CocoImageDataset",
    "PaddedShapeBatchSampler",
    "build_inference_loader",
    "dataloader_worker_init",
    "raise_worker_errors_plainly",
    "split_by_padded_shape",
    "category_ids_of",
    "collate",
    "label_to_category_id",
    "category_id_to_label",
    "load_coco_annotations",
]

T = TypeVar("T")

# (id, name, supercategory) of the 80 COCO 2017 detection categories, ascending id.
_COCO_TABLE: tuple[tuple[int, str, str], ...] = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"),
    (19, "horse", "animal"), (20, "sheep", "animal"), (21, "cow", "animal"),
    (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"),
    (53, "apple", "food"), (54, "sandwich", "food"), (55, "orange", "food"),
    (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)

#: COCO category ids in label order (label i -> COCO_CATEGORY_IDS[i]).
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(row[0] for row in _COCO_TABLE)
#: COCO's official class names (with spaces) in label order. mmdetection v1 spells the
#: two-word names with underscores ("traffic_light"); the order is the same.
COCO_CLASSES: tuple[str, ...] = tuple(row[1] for row in _COCO_TABLE)
#: COCO's ``categories`` records (id, name, supercategory), as in the annotation files.
COCO_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": cid, "name": name, "supercategory": sup} for cid, name, sup in _COCO_TABLE
)

_COCO_ID_TO_LABEL = {cid: label for label, cid in enumerate(COCO_CATEGORY_IDS)}


def label_to_category_id(label: int, category_ids: Sequence[int] = COCO_CATEGORY_IDS) -> int:
    """COCO category id of contiguous ``label``."""
    return int(category_ids[int(label)])


def category_id_to_label(category_id: int, category_ids: Sequence[int] = COCO_CATEGORY_IDS) -> int:
    """Contiguous label of a category id (KeyError-free: raises DatasetError if unknown)."""
    if category_ids is COCO_CATEGORY_IDS:
        label = _COCO_ID_TO_LABEL.get(int(category_id))
    else:
        label = next((i for i, c in enumerate(category_ids) if int(c) == int(category_id)), None)
    if label is None:
        raise DatasetError(f"category id {category_id} is not one of the dataset's categories")
    return label


# --------------------------------------------------------------------------------------------
# annotation files

def load_coco_annotations(ann_file: str | os.PathLike, *, require_masks: bool = True) -> COCO:
    """Read and check a COCO-format annotation file; return a pycocotools ``COCO`` index.

    ``annotations`` may be absent (image-info files such as ``image_info_test-dev2017.json``).
    pycocotools' progress prints are silenced. Every record is checked first
    (:func:`anzoo.data.coco_format.check_coco_dataset`): duplicate ids, values of the wrong type,
    references to unknown images or categories; ``require_masks`` (evaluation) also asks for a
    usable ``segmentation`` on every annotation, training (False) skips annotations without one.

    Raises:
        DatasetError: the file is missing, is not JSON, or is not COCO-format (the message
            names the file and each bad record: its index, id and field).
    """
    path = Path(ann_file)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DatasetError(f"annotation file {path} {what}")
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"annotation file {path} is not valid JSON: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"annotation file {path} cannot be read: {exc}") from exc
    check_coco_dataset(data, str(path), require_masks=require_masks)
    data.setdefault("annotations", [])
    return coco_from_dict(data)


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` built from an in-memory dataset dict, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def category_ids_of(coco: COCO) -> list[int]:
    """The dataset's category ids in label order (ascending), as mmdetection v1 orders them."""
    return sorted(int(c) for c in coco.getCatIds())


def class_names_of(coco: COCO) -> list[str]:
    """The dataset's category names in label order."""
    return [coco.cats[c]["name"] for c in category_ids_of(coco)]


# --------------------------------------------------------------------------------------------
# inference dataset


class CocoImageDataset(Dataset):
    """Images of a COCO-format dataset, preprocessed for the released detectors.

    Item ``i`` is ``(image_id, tensor, meta)``: the float32 (3, h, w) normalized, unpadded image
    from :func:`anzoo.data.transforms.preprocess_image` and its :class:`ImageMeta`. Decoding
    and resizing run in ``__getitem__``, i.e. in DataLoader workers.

    Args:
        ann_file: annotation file path, or an already loaded ``COCO`` index.
        image_dir: folder holding the ``file_name`` of each image.
        image_ids: subset (in this order); default all images in file order (as
            ``COCO.getImgIds()``, like mmdetection v1).
        scale: test-time resize limits.
        check_files: check up front that every image file exists (fails fast, before a long
            evaluation, naming the missing files).
        max_pixels: per-image pixel limit passed to :func:`load_image`.

    Raises:
        DatasetError: missing folder or images, unknown image ids; in ``__getitem__``, an image
            that cannot be read (naming its id and path).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike | COCO,
        image_dir: str | os.PathLike,
        image_ids: Sequence[int] | None = None,
        *,
        scale: Sequence[int] = TEST_SCALE,
        check_files: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.coco = ann_file if isinstance(ann_file, COCO) else load_coco_annotations(ann_file)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder {self.image_dir} does not exist")
        if image_ids is None:
            self.image_ids = [int(i) for i in self.coco.getImgIds()]
        else:
            self.image_ids = [int(i) for i in image_ids]
            unknown = [i for i in self.image_ids if i not in self.coco.imgs]
            if unknown:
                raise DatasetError(
                    f"{len(unknown)} image ids are not in the annotation file, e.g. {unknown[:5]}"
                )
        self.scale = tuple(scale)
        self.max_pixels = max_pixels
        self.category_ids = category_ids_of(self.coco)
        self.class_names = class_names_of(self.coco)
        if check_files:
            missing = [str(self.image_path(i)) for i in range(len(self)) if not self.image_path(i).is_file()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} of {len(self)} images are missing from {self.image_dir}, "
                    f"e.g. {', '.join(missing[:3])}"
                )

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, index: int) -> dict[str, Any]:
        return self.coco.imgs[self.image_ids[index]]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.image_info(index)["file_name"]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) from the annotation file, else from the image header."""
        info = self.image_info(index)
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
        try:
            return read_image_size(self.image_path(index))
        except AnzooError as exc:
            raise DatasetError(f"image {info['id']}: {exc}") from exc

    def padded_shapes(self, size_divisor: int = SIZE_DIVISOR) -> list[tuple[int, int]]:
        """Padded (H, W) of every item, computed without decoding (for batching)."""
        shapes = []
        for index in range(len(self)):
            h, w = self.image_size(index)
            new_w, new_h, _ = rescale_size(w, h, self.scale)
            shapes.append(padded_shape(new_h, new_w, size_divisor))
        return shapes

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, ImageMeta]:
        image_id = self.image_ids[index]
        path = self.image_path(index)
        if not path.is_file():
            raise DatasetError(f"image {image_id}: file {path} does not exist")
        try:
            image = load_image(path, max_pixels=self.max_pixels)
        except AnzooError as exc:
            raise DatasetError(f"image {image_id}: {exc}") from exc
        # an image of another size than its annotation says is batched by its real padded
        # shape (split_by_padded_shape); the evaluation counts and reports it (size_mismatch)
        tensor, meta = preprocess_image(image, self.scale)
        return image_id, tensor, meta

    def size_mismatch(self, image_id: int, meta: ImageMeta) -> tuple[int, int] | None:
        """The annotated (height, width) of an image whose decoded size differs from it, else None."""
        info = self.coco.imgs[image_id]
        expected = (info.get("height"), info.get("width"))
        if None in expected or tuple(meta.orig_size) == (int(expected[0]), int(expected[1])):
            return None
        return int(expected[0]), int(expected[1])


def collate(
    batch: Sequence[tuple[int, torch.Tensor, ImageMeta]], size_divisor: int = SIZE_DIVISOR
) -> tuple[list[int], torch.Tensor, list[ImageMeta]]:
    """DataLoader ``collate_fn``: (image ids, zero-padded (N, 3, H, W) batch, metas)."""
    ids = [int(item[0]) for item in batch]
    images = pad_to_batch([item[1] for item in batch], size_divisor)
    metas = [item[2] for item in batch]
    return ids, images, metas


def split_by_padded_shape(
    image_ids: Sequence[int], images: torch.Tensor, metas: Sequence[ImageMeta]
) -> list[tuple[list[int], torch.Tensor, list[ImageMeta]]]:
    """A collated batch cut into parts of one padded shape each, cropped to that shape.

    The sampler groups images by the padded shape their *annotated* size predicts. An image
    whose file has another size (re-encoded, rotated) can land among images of another padded
    shape and be padded to theirs, which changes its detections (Attentive Normalization's
    statistics cover the padding; convolutions see it at the border). Its metadata has its real
    padded shape: cropping the zero-padded batch to it gives exactly the tensor of the image
    padded alone, so batching never changes results. A batch of one shape is returned as is.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for k, meta in enumerate(metas):
        groups.setdefault(tuple(meta.pad_shape), []).append(k)
    if len(groups) == 1 and next(iter(groups)) == tuple(images.shape[-2:]):
        return [(list(image_ids), images, list(metas))]
    return [([image_ids[k] for k in members], images[members, :, :h, :w].contiguous(), [metas[k] for k in members])
            for (h, w), members in groups.items()]


class PaddedShapeBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices whose padded shapes are equal, sharded across ranks.

    Why: Attentive Normalization computes statistics over the whole padded feature map, so an
    image gives exactly its single-image result in a batch only if the batch is padded to its
    own padded shape. Batching only equal shapes makes batched inference equal to one by one.

    Order (deterministic, no randomness): indices are grouped by padded shape keeping their
    order; each group is cut into batches of ``batch_size`` (the last one may be smaller);
    batches are ordered by their first index. Rank ``r`` of ``world_size`` takes batches
    ``r, r + world_size, ...``: every index is in exactly one batch of exactly one rank
    (no duplicates, nothing dropped); a rank may get one batch more than another, or none when
    there are fewer batches than ranks.

    Args:
        padded_shapes: the padded (H, W) of every dataset index (e.g.
            :meth:`CocoImageDataset.padded_shapes`).
        batch_size: most images per batch.
        rank, world_size: this process's shard.
        indices: restrict to these dataset indices (default: all).
    """

    def __init__(
        self,
        padded_shapes: Sequence[tuple[int, int]],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        indices: Sequence[int] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        order = list(range(len(padded_shapes))) if indices is None else [int(i) for i in indices]
        if len(set(order)) != len(order):
            raise ValueError("indices contain duplicates")
        position = {index: pos for pos, index in enumerate(order)}
        groups: dict[tuple[int, int], list[int]] = {}
        for index in order:
            groups.setdefault(tuple(padded_shapes[index]), []).append(index)
        batches = [
            members[start : start + batch_size]
            for members in groups.values()
            for start in range(0, len(members), batch_size)
        ]
        batches.sort(key=lambda b: position[b[0]])
        self.all_batches: list[list[int]] = batches
        self.batches: list[list[int]] = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def num_images(self) -> int:
        """Images this rank will see."""
        return sum(len(b) for b in self.batches)

    @classmethod
    def for_dataset(
        cls, dataset: CocoImageDataset, batch_size: int, **kwargs: Any
    ) -> "PaddedShapeBatchSampler":
        """Sampler over ``dataset``'s padded shapes (kwargs: rank, world_size, indices)."""
        return cls(dataset.padded_shapes(), batch_size, **kwargs)


def dataloader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for decode/resize workers: one torch thread each.

    OpenCV's thread count is deliberately left alone: ``cv2.setNumThreads`` in a forked worker,
    after the parent process has used OpenCV's thread pool, deadlocks (observed with OpenCV
    5.0: the DataLoader then waits forever).
    """
    torch.set_num_threads(1)


def raise_worker_errors_plainly(batches: Iterator[T]) -> Iterator[T]:
    """The batches of a DataLoader iterator; a DatasetError raised in a worker process comes
    back with the worker's traceback in its message: keep the line a person needs (the last)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except DatasetError as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else str(exc)
            raise DatasetError(last.removeprefix("anzoo.errors.DatasetError: ")) from None
        yield batch


def build_inference_loader(
    dataset: CocoImageDataset,
    batch_size: int = 1,
    num_workers: int = 2,
    *,
    rank: int = 0,
    world_size: int = 1,
    indices: Sequence[int] | None = None,
    pin_memory: bool = False,
    timeout: float = 0,
) -> DataLoader:
    """DataLoader yielding ``(image_ids, images (N, 3, H, W), metas)`` batches of equal padded
    shape, this rank's shard only (see :class:`PaddedShapeBatchSampler`). ``timeout``: seconds
    to wait for a batch from the workers (0: forever)."""
    sampler = PaddedShapeBatchSampler.for_dataset(
        dataset, batch_size, rank=rank, world_size=world_size, indices=indices
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=dataloader_worker_init if num_workers > 0 else None,
        pin_memory=pin_memory,
        timeout=timeout if num_workers > 0 else 0,
    )

"""Training data: a COCO-format instance-segmentation dataset, its sampler and loader.

As mmdetection v1's ``CocoDataset`` in training mode:

* an annotation is used when it is not ``ignore``d, its ``area`` is positive and its box is
  at least 1 x 1 pixel; the box ``[x, y, w, h]`` becomes ``[x, y, x + w - 1, y + h - 1]``;
  crowd regions (``iscrowd``) are left out (the configs' ``ignore_iof_thr = -1``: they play no
  part in the losses); labels are the dataset's category ids in ascending order;
* images without a usable annotation, or with a side under 32 pixels, are left out;
* images are grouped by aspect ratio (wider than tall or not) and every batch comes from one
  group (mmdet's ``GroupSampler``), shuffled per epoch.

Unlike mmdet, bad annotations do not crash a run: annotations with a degenerate box or an
empty polygon are skipped and counted (:attr:`CocoTrainDataset.stats`). A dataset without
any mask is refused with a :class:`~anzoo.errors.DatasetError`: Mask R-CNN needs masks.
Nor does an image that cannot be used when its turn comes (deleted or damaged after the run
started, or not the size its annotation gives): the next usable image of its aspect group
takes its place, and the item says which image was skipped and why (``skipped``) for the
training loop to warn and count. Batches keep their size, so every process still takes the
same number of steps.

All randomness of the data (shuffling, padding of the groups, the 0.5 flips) is drawn in the
batch sampler from a generator seeded with (seed, epoch): an epoch's batches are a pure
function of those, so a resumed run sees exactly the batches an uninterrupted one would, and
DataLoader workers need no random state of their own.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.coco import (
    category_ids_of,
    class_names_of,
    dataloader_worker_init,
    load_coco_annotations,
)
from ..data.images import DEFAULT_MAX_PIXELS, load_image, read_image_size
from ..data.defaults import TRAIN_SCALE
from ..data.transforms import (
    SIZE_DIVISOR,
    ImageMeta,
    pad_to_batch,
    train_transform,
)
from ..errors import AnzooError, DatasetError

__all__ = ["CocoTrainDataset", "DatasetStats", "GroupedBatchSampler", "TrainBatch", "build_train_loader",
           "train_collate"]

log = logging.getLogger(__name__)

#: mmdetection v1 leaves out training images with a side shorter than this.
MIN_IMAGE_SIZE = 32
#: images tried for one item (itself, then the next of its aspect group) before the item fails:
#: more unusable images in a row means the folder is gone, not a file
MAX_TRIES = 8


@dataclass
class DatasetStats:
    """What the training dataset kept and skipped, and why."""

    images_in_file: int = 0
    images_used: int = 0
    images_without_annotations: int = 0
    images_too_small: int = 0
    annotations_used: int = 0
    crowd_regions: int = 0
    ignored: int = 0
    degenerate_boxes: int = 0
    empty_polygons: int = 0
    without_segmentation: int = 0
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> annotation ids

    def skipped_summary(self) -> str | None:
        parts = [f"{n} {what}" for n, what in (
            (self.degenerate_boxes, "with a degenerate box"),
            (self.empty_polygons, "with an empty polygon"),
            (self.without_segmentation, "without a segmentation"),
        ) if n]
        if not parts:
            return None
        return "skipped annotations: " + ", ".join(parts)

    def _note(self, reason: str, ann_id: Any) -> None:
        ids = self.examples.setdefault(reason, [])
        if len(ids) < 5:
            ids.append(ann_id)


def _box_is_degenerate(ann: dict[str, Any]) -> bool:
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return True
    try:
        _, _, w, h = (float(v) for v in bbox)
        area = float(ann.get("area", 0))
    except (TypeError, ValueError):
        return True
    return not (area > 0 and w >= 1 and h >= 1) or not all(math.isfinite(float(v)) for v in bbox)


def _clean_segmentation(seg: Any) -> Any | None:
    """The segmentation with polygons of fewer than 3 points removed; None when nothing is left
    (or the format is not COCO's polygon list / RLE dict)."""
    if isinstance(seg, dict):
        return seg if "counts" in seg and "size" in seg else None
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0]
        return polys or None
    return None


class CocoTrainDataset(Dataset):
    """Images, boxes, labels and masks of a COCO-format dataset, transformed for training.

    Item ``index`` or ``(index, flip)`` is a dict: ``image_id``, ``image`` (float32 (3, h, w)
    normalized, unpadded), ``meta`` (:class:`ImageMeta`), ``boxes`` (K, 4) float32, ``labels``
    (K,) int64 contiguous labels, ``masks`` (K, h, w) uint8.

    Args:
        ann_file: annotation file, or a loaded ``COCO`` index.
        image_dir: folder of the images' ``file_name``.
        scale: (long, short) resize limits (the configs: 1333, 800).
        check_files: check that every used image exists (fails fast, naming missing files).

    Raises:
        DatasetError: no annotation has a mask, no usable image, missing files.
    """

    def __init__(self, ann_file: str | os.PathLike | COCO, image_dir: str | os.PathLike,
                 scale: Sequence[int] = TRAIN_SCALE, *, check_files: bool = True,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        # annotations without a usable mask are skipped and counted below, not refused
        self.coco = ann_file if isinstance(ann_file, COCO) else load_coco_annotations(ann_file, require_masks=False)
        self.source = str(ann_file) if not isinstance(ann_file, COCO) else "the annotations"
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetError(f"image folder {self.image_dir} does not exist")
        self.scale = tuple(int(s) for s in scale)
        self.max_pixels = max_pixels
        self.category_ids = category_ids_of(self.coco)
        self.class_names = class_names_of(self.coco)
        if not self.category_ids:
            raise DatasetError(f"{self.source} defines no categories")
        self._label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.stats = DatasetStats()
        self.image_ids: list[int] = []
        self._records: dict[int, list[tuple[list[float], int, Any]]] = {}
        self._parse()
        self.flags = np.array([1 if self._aspect(i) > 1 else 0 for i in range(len(self))], dtype=np.int64)
        if check_files:
            missing = [str(self.image_path(i)) for i in range(len(self)) if not self.image_path(i).is_file()]
            if missing:
                raise DatasetError(f"{len(missing)} of {len(self)} training images are missing from "
                                   f"{self.image_dir}, e.g. {', '.join(missing[:3])}")

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        stats = self.stats
        anns_by_image: dict[int, list[dict[str, Any]]] = {}
        any_segmentation = False
        for ann in self.coco.dataset.get("annotations", []):
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
            any_segmentation = any_segmentation or ann.get("segmentation") not in (None, [], {})
        if self.coco.dataset.get("annotations") and not any_segmentation:
            raise DatasetError(
                f"{self.source} has no instance masks (no annotation has a 'segmentation'); "
                "Mask R-CNN and Cascade Mask R-CNN train on masks")
        stats.images_in_file = len(self.coco.imgs)
        for image_id in self.coco.getImgIds():
            info = self.coco.imgs[image_id]
            records = []
            for ann in anns_by_image.get(image_id, []):
                if ann.get("ignore", False):
                    stats.ignored += 1
                    continue
                if _box_is_degenerate(ann):
                    stats.degenerate_boxes += 1
                    stats._note("degenerate_boxes", ann.get("id"))
                    continue
                if ann.get("iscrowd", 0):
                    stats.crowd_regions += 1
                    continue
                if ann.get("segmentation") in (None, [], {}):
                    if isinstance(ann.get("segmentation"), list):
                        stats.empty_polygons += 1
                        stats._note("empty_polygons", ann.get("id"))
                    else:
                        stats.without_segmentation += 1
                        stats._note("without_segmentation", ann.get("id"))
                    continue
                seg = _clean_segmentation(ann["segmentation"])
                if seg is None:
                    stats.empty_polygons += 1
                    stats._note("empty_polygons", ann.get("id"))
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                records.append(([x, y, x + w - 1, y + h - 1], self._label_of[int(ann["category_id"])], seg))
            if not records:
                stats.images_without_annotations += 1
                continue
            height, width = self._info_size(image_id, info)
            if min(height, width) < MIN_IMAGE_SIZE:
                stats.images_too_small += 1
                continue
            self.image_ids.append(int(image_id))
            self._records[int(image_id)] = records
            stats.annotations_used += len(records)
        stats.images_used = len(self.image_ids)
        summary = stats.skipped_summary()
        if summary:
            log.warning("%s: %s (e.g. annotation ids %s)", self.source, summary,
                        {k: v for k, v in stats.examples.items()})
        if not self.image_ids:
            raise DatasetError(
                f"{self.source} has no usable training image: {stats.images_in_file} images, "
                f"{stats.images_without_annotations} without a usable annotation, "
                f"{stats.images_too_small} smaller than {MIN_IMAGE_SIZE} pixels"
                + (f"; {summary}" if summary else ""))

    def _info_size(self, image_id: int, info: dict[str, Any]) -> tuple[int, int]:
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"])
        try:
            h, w = read_image_size(self.image_dir / info["file_name"])
        except AnzooError as exc:
            raise DatasetError(f"image {image_id}: {exc}") from exc
        info["height"], info["width"] = h, w
        return h, w

    def _aspect(self, index: int) -> float:
        info = self.coco.imgs[self.image_ids[index]]
        return float(info["width"]) / float(info["height"])

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, 4) float32 inclusive boxes and (K,) labels of an image, original pixels."""
        records = self._records[self.image_ids[index]]
        boxes = np.asarray([r[0] for r in records], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([r[1] for r in records], dtype=np.int64)
        return boxes, labels

    def decode_masks(self, index: int, height: int, width: int) -> np.ndarray:
        """(K, height, width) uint8 masks (polygons, RLE or uncompressed RLE)."""
        masks = np.zeros((len(self._records[self.image_ids[index]]), height, width), dtype=np.uint8)
        for i, (_, _, seg) in enumerate(self._records[self.image_ids[index]]):
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            decoded = mask_utils.decode(rle)
            if decoded.shape[:2] != (height, width):
                raise DatasetError(f"image {self.image_ids[index]}: a mask of size {decoded.shape[:2]} "
                                   f"for an image of {height}x{width}")
            masks[i] = decoded
        return masks

    def __getitem__(self, item: int | tuple[int, bool]) -> dict[str, Any]:
        """The transformed image ``index`` (flipped or not); when it cannot be used, the next
        usable image of its aspect group, with ``skipped``: the images passed over (``image_id``,
        ``file``, ``problem``, ``replaced_by``). DatasetError after :data:`MAX_TRIES` in a row."""
        index, flip = (item, False) if isinstance(item, (int, np.integer)) else (int(item[0]), bool(item[1]))
        skipped: list[dict[str, Any]] = []
        for candidate in self._candidates(index):
            try:
                out = self.load(candidate, flip)
            except DatasetError as exc:
                skipped.append({"image_id": self.image_ids[candidate], "file": str(self.image_path(candidate)),
                                "problem": str(exc)})
                continue
            out["skipped"] = [dict(s, replaced_by=out["image_id"]) for s in skipped]
            return out
        raise DatasetError(f"{len(skipped)} training images in a row cannot be used, the first: "
                           f"{skipped[0]['problem']}; is {self.image_dir} still readable?")

    def _candidates(self, index: int) -> Iterator[int]:
        """``index``, then the images after it in its aspect group, cyclically (a function of the
        index alone: a resumed run makes the same replacements)."""
        yield index
        group = np.flatnonzero(self.flags == self.flags[index])
        start = int(np.searchsorted(group, index))
        for k in range(1, min(MAX_TRIES, len(group))):
            yield int(group[(start + k) % len(group)])

    def load(self, index: int, flip: bool = False) -> dict[str, Any]:
        """Image ``index`` transformed for training (no replacement; DatasetError when the file
        cannot be read or is not the size the annotation file gives)."""
        image_id = self.image_ids[index]
        path = self.image_path(index)
        try:
            image = load_image(path, max_pixels=self.max_pixels)
        except AnzooError as exc:
            raise DatasetError(f"image {image_id}: {exc}") from exc
        info = self.coco.imgs[image_id]
        height, width = image.shape[:2]
        if (int(info["height"]), int(info["width"])) != (height, width):
            raise DatasetError(f"image {image_id} ({path}) decodes to {height}x{width} (h x w) but the "
                               f"annotation file says {info['height']}x{info['width']}")
        boxes, labels = self.annotations(index)
        masks = self.decode_masks(index, height, width)
        tensor, meta, boxes, masks = train_transform(image, boxes, masks, self.scale, flip)
        return {"image_id": image_id, "image": tensor, "meta": meta, "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels), "masks": torch.from_numpy(masks)}


class TrainBatch(NamedTuple):
    images: torch.Tensor  # padded (B, 3, H, W)
    metas: list[ImageMeta]
    targets: list[dict[str, torch.Tensor]]  # boxes, labels, masks per image
    image_ids: list[int]
    skipped: list[dict[str, Any]]  # images passed over for this batch (see CocoTrainDataset)


def train_collate(items: Sequence[dict[str, Any]], size_divisor: int = SIZE_DIVISOR) -> TrainBatch:
    """The batch of dataset items (:class:`TrainBatch`)."""
    images = pad_to_batch([it["image"] for it in items], size_divisor)
    targets = [{"boxes": it["boxes"], "labels": it["labels"], "masks": it["masks"]} for it in items]
    return TrainBatch(images, [it["meta"] for it in items], targets, [int(it["image_id"]) for it in items],
                      [s for it in items for s in it.get("skipped", ())])


class GroupedBatchSampler(Sampler[list[tuple[int, bool]]]):
    """Per-epoch shuffled batches of one aspect-ratio group, sharded across ranks
    (mmdetection v1's ``DistributedGroupSampler``), each index paired with its flip.

    Each group is shuffled and padded (by repeating its own indices) to a multiple of
    ``batch_size * world_size``; the batches of all groups are shuffled together and rank
    ``r`` takes the ``r``-th contiguous share. Every rank gets the same number of batches.

    Args:
        flags: group of every dataset index (0: not wider than tall, 1: wider).
        batch_size: images per batch (per process).
        seed: with the epoch, seeds the generator of the shuffles and the flips.
        flip_ratio: probability of a horizontal flip.
    """

    def __init__(self, flags: Sequence[int], batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, flip_ratio: float = 0.5) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.flags = np.asarray(flags, dtype=np.int64)
        if self.flags.size == 0:
            raise ValueError("no images to sample from")
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.flip_ratio = float(flip_ratio)
        self.epoch = 0
        self.start_batch = 0
        per_round = batch_size * world_size
        sizes = np.bincount(self.flags)
        self.total_size = int(sum(math.ceil(s / per_round) * per_round for s in sizes if s > 0))
        self.batches_per_rank = self.total_size // per_round

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip its first ``start_batch`` batches (resuming)."""
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, bool]]]:
        """All batches of this rank in ``epoch``."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        per_round = self.batch_size * self.world_size
        indices: list[int] = []
        for group in range(int(self.flags.max()) + 1):
            members = np.nonzero(self.flags == group)[0]
            if members.size == 0:
                continue
            members = members[torch.randperm(members.size, generator=g).numpy()].tolist()
            padded = math.ceil(len(members) / per_round) * per_round
            indices.extend((members * (padded // len(members) + 1))[:padded])
        flips = (torch.rand(len(indices), generator=g) < self.flip_ratio).tolist()
        order = torch.randperm(len(indices) // self.batch_size, generator=g).tolist()
        batches = [[(indices[c * self.batch_size + j], flips[c * self.batch_size + j])
                    for j in range(self.batch_size)] for c in order]
        return batches[self.rank * self.batches_per_rank:(self.rank + 1) * self.batches_per_rank]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        return iter(self.epoch_batches(self.epoch)[self.start_batch:])

    def __len__(self) -> int:
        return self.batches_per_rank - self.start_batch


def build_train_loader(dataset: CocoTrainDataset, sampler: GroupedBatchSampler, num_workers: int = 2,
                       pin_memory: bool = False) -> DataLoader:
    """DataLoader yielding :func:`train_collate` batches in the sampler's order."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=train_collate, num_workers=num_workers,
                      worker_init_fn=dataloader_worker_init if num_workers > 0 else None,
                      pin_memory=pin_memory)

"""Turning :class:`~anzoo.structures.Instances` into COCO results and JSON records.

Box convention. anzoo boxes are mmdetection v1's inclusive ``x1, y1, x2, y2`` (a box covers
pixels x1..x2). :func:`boxes_to_xywh` is the one place that turns them into COCO's
``[x, y, w, h]``:

* ``legacy_box=True`` (default): ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1``, exactly as
  mmdetection v1 wrote its result files (``xyxy2xywh`` in ``core/evaluation/coco_utils.py``).
  The AP of the released checkpoints was computed on boxes written this way, so evaluation
  uses it to reproduce the table; it is also the true pixel extent of an inclusive box.
* ``legacy_box=False``: ``w = x2 - x1``, ``h = y2 - y1``, for boxes in the modern exclusive
  convention (x2 is one past the last pixel), e.g. from torchvision-style models.

The arithmetic is done in float64 on the float32 box values, as mmdetection v1 did
(``bbox.tolist()`` then Python arithmetic), so written numbers match its files.

Masks are written as COCO compressed RLE (pycocotools, column-major) with ``counts`` a str.
A mask kept as its window of the image (:class:`~anzoo.structures.MaskCrop`) is encoded from
the window alone, to the same string as its full-image mask (:func:`encode_crop_rle`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import torch

from ..structures import Instances, MaskCrop

__all__ = [
    "boxes_to_xywh",
    "crop_to_polygons",
    "decode_mask_rle",
    "encode_crop_rle",
    "encode_mask_rle",
    "encode_masks_rle",
    "encode_masks_rle_torch",
    "instances_to_coco",
    "instances_to_records",
    "mask_to_polygons",
    "records_from_parts",
]

MASK_FORMATS = ("rle", "polygon", None)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def boxes_to_xywh(boxes: Any, legacy_box: bool = True) -> np.ndarray:
    """(N, 4) ``x1, y1, x2, y2`` -> (N, 4) float64 COCO ``x, y, w, h`` (see module docstring)."""
    xyxy = _to_numpy(boxes).astype(np.float64).reshape(-1, 4)
    extra = 1.0 if legacy_box else 0.0
    xywh = xyxy.copy()
    xywh[:, 2] = xyxy[:, 2] - xyxy[:, 0] + extra
    xywh[:, 3] = xyxy[:, 3] - xyxy[:, 1] + extra
    return xywh


def encode_mask_rle(mask: Any) -> dict[str, Any]:
    """Binary (H, W) mask -> ``{'size': [h, w], 'counts': str}`` (COCO compressed RLE)."""
    array = _to_numpy(mask)
    if array.ndim != 2:
        raise ValueError(f"encode_mask_rle expects an (H, W) mask, got {array.shape}")
    return encode_masks_rle(array[None])[0]


def encode_masks_rle(masks: Any) -> list[dict[str, Any]]:
    """(N, H, W) binary masks -> N RLE dicts (one pycocotools call for all)."""
    array = _to_numpy(masks)
    if array.ndim != 3:
        raise ValueError(f"encode_masks_rle expects (N, H, W) masks, got {array.shape}")
    if array.shape[0] == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran (column-major) order.
    fortran = np.asfortranarray(np.moveaxis(array.astype(np.uint8, copy=False), 0, -1))
    rles = mask_utils.encode(fortran)
    out = []
    for rle in rles:
        counts = rle["counts"]
        out.append({
            "size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        })
    return out


def _compress_runs(counts: Sequence[int], height: int, width: int) -> dict[str, Any]:
    """Uncompressed COCO run lengths (zeros first) -> the compressed RLE dict pycocotools writes."""
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
    code = rle["counts"]
    return {"size": [height, width], "counts": code.decode("ascii") if isinstance(code, bytes) else code}


def encode_crop_rle(crop: MaskCrop) -> dict[str, Any]:
    """The COCO RLE of ``crop.full()``, computed from the window alone (no full-size array).

    COCO RLE runs over the image column by column. Inside column ``x0 + j`` the window's rows
    ``y0 .. y0 + h - 1`` are the flat pixels ``(x0 + j) * H + y0 + i``; each run of ones of a
    window column is such an interval, and runs that touch across a column boundary (a window
    as tall as the image) are merged, exactly as pycocotools' encoder sees them.
    """
    height, width = crop.image_size
    mask = np.asarray(crop.mask, dtype=bool)
    total = height * width
    if not mask.any():
        return _compress_runs([total], height, width)
    h, w = mask.shape
    # Column-major, with a False row above and below each window column: +1 / -1 mark starts / ends.
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = mask.T
    edges = np.diff(padded, axis=1)
    cols, rows = np.nonzero(edges)  # row-major over (column, row): the scan order of the image
    base = (crop.x0 + cols.astype(np.int64)) * height + crop.y0 + rows
    starts, ends = base[edges[cols, rows] > 0], base[edges[cols, rows] < 0]
    touching = ends[:-1] == starts[1:]  # a run that continues in the next column
    bounds = np.stack([starts, ends], axis=1)
    keep = np.ones(bounds.shape, dtype=bool)
    keep[:-1, 1] &= ~touching
    keep[1:, 0] &= ~touching
    counts = np.diff(np.concatenate(([0], bounds[keep], [total])))
    if counts[-1] == 0:  # the mask ends with a run of ones: no closing run of zeros
        counts = counts[:-1]
    return _compress_runs(counts.tolist(), height, width)


def encode_masks_rle_torch(masks: torch.Tensor) -> list[dict[str, Any]]:
    """(N, H, W) bool masks on any device -> N RLE dicts, equal to :func:`encode_masks_rle`'s.

    The run boundaries are found where the masks are (e.g. on the GPU, next to the pasting)
    and only they cross to the host, not N full-image masks; pycocotools then compresses each
    run-length list. Used by evaluation on CUDA.
    """
    if masks.dim() != 3:
        raise ValueError(f"encode_masks_rle_torch expects (N, H, W) masks, got {tuple(masks.shape)}")
    num, height, width = (int(v) for v in masks.shape)
    if num == 0:
        return []
    # COCO RLE runs over the pixels in column-major order, starting with a run of zeros.
    flat = masks.to(torch.bool).transpose(1, 2).reshape(num, height * width)
    change = torch.empty_like(flat)
    change[:, 0] = flat[:, 0]
    torch.ne(flat[:, 1:], flat[:, :-1], out=change[:, 1:])
    where = change.nonzero().cpu().numpy()  # (K, 2): mask index, pixel index; row-major sorted
    per_mask = np.bincount(where[:, 0], minlength=num)
    ends = np.cumsum(per_mask)
    out = []
    for i in range(num):
        starts = where[ends[i] - per_mask[i]:ends[i], 1]
        counts = np.diff(np.concatenate(([0], starts, [height * width])))
        out.append(_compress_runs(counts.tolist(), height, width))
    return out


def decode_mask_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed with str/bytes counts, or uncompressed with a list) -> bool (H, W)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        compressed = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)


def mask_to_polygons(mask: Any, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons ``[[x1, y1, x2, y2, ...], ...]``.

    One polygon per connected component (``cv2.findContours``, external contours only, so
    holes are not represented: COCO polygons cannot subtract). Vertices are the centres of
    the boundary pixels, i.e. pixel index + 0.5 in COCO's continuous coordinates. Components
    whose contour has fewer than ``min_points`` vertices (single pixels, 1-pixel lines) are
    dropped, so a tiny mask may give ``[]``. For display and the service; evaluation uses RLE.
    """
    array = _to_numpy(mask)
    if array.ndim != 2:
        raise ValueError(f"mask_to_polygons expects an (H, W) mask, got {array.shape}")
    contours, _ = cv2.findContours(
        np.ascontiguousarray(array.astype(np.uint8)), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2)
        if len(points) < min_points:
            continue
        polygons.append([float(v) + 0.5 for v in points.reshape(-1)])
    return polygons


def crop_to_polygons(crop: MaskCrop, min_points: int = 3) -> list[list[float]]:
    """:func:`mask_to_polygons` of ``crop.full()``, from the window alone.

    The window is traced with a one-pixel False border (what surrounds it in the full mask,
    and what OpenCV assumes beyond an image's edge) and the points shifted by its offset, so
    the polygons equal those of the full mask, in the same order.
    """
    h, w = crop.mask.shape
    if h == 0 or w == 0:
        return []
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = crop.mask
    polygons = mask_to_polygons(padded, min_points)
    dx, dy = crop.x0 - 1, crop.y0 - 1
    return [[v + (dx if k % 2 == 0 else dy) for k, v in enumerate(poly)] for poly in polygons]


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} (one per category id), got "
            f"{int(labels.min())}..{int(labels.max())}"
        )


def instances_to_coco(
    instances: Instances,
    image_id: int,
    category_ids: Sequence[int],
    *,
    legacy_box: bool = True,
    with_masks: bool = True,
    rles: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """COCO result records of one image, as mmdetection v1 wrote ``results.{bbox,segm}.json``.

    Each record has ``image_id``, ``category_id`` (``category_ids[label]``), ``bbox``
    (:func:`boxes_to_xywh` with ``legacy_box``), ``score`` (float), and, when the instances
    carry masks and ``with_masks``, ``segmentation`` (RLE, counts str).

    Keep the ``bbox`` in segm files: mmdetection v1 did, and pycocotools' ``loadRes`` then takes
    each detection's ``area`` from the box (w * h) instead of the mask, which decides which
    unmatched detections the small/medium/large segm metrics ignore. Drop ``segmentation``
    for the bbox file (``with_masks=False``) to keep it small.

    ``rles``: the instances' masks already encoded (e.g. by :func:`encode_masks_rle_torch`
    on the GPU); used instead of ``instances.masks`` when given.
    """
    labels = _to_numpy(instances.labels).astype(np.int64)
    _check_labels(labels, len(category_ids))
    xywh = boxes_to_xywh(instances.boxes, legacy_box)
    scores = _to_numpy(instances.scores)
    if rles is not None:
        if len(rles) != len(labels):
            raise ValueError(f"got {len(rles)} RLEs for {len(labels)} instances")
        rles = list(rles) if with_masks else None
    elif with_masks and instances.masks is not None:
        rles = encode_masks_rle(instances.masks)
    records = []
    for i in range(len(labels)):
        record: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_ids[labels[i]]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            record["segmentation"] = rles[i]
        records.append(record)
    return records


def instances_to_records(
    instances: Instances,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    score_thr: float = 0.0,
    mask_format: str | None = "rle",
    *,
    legacy_box: bool = True,
    max_instances: int | None = None,
) -> list[dict[str, Any]]:
    """JSON records for ``anzoo predict`` and the service, highest score first.

    Keeps instances with ``score >= score_thr`` (then the first ``max_instances``). Each
    record: ``category_id`` (dataset id), ``category_name``, ``score``, ``bbox`` ``[x, y, w, h]``
    (same convention as :func:`instances_to_coco`, default inclusive +1 widths) and
    ``segmentation``: RLE dict (``mask_format='rle'``), list of polygons (``'polygon'``), or
    absent (``None``, or instances without masks).
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if len(class_names) != len(category_ids):
        raise ValueError("class_names and category_ids must have the same length")
    kept = instances.above(score_thr).sorted_by_score()
    if max_instances is not None:
        kept = kept.select(slice(0, max(0, int(max_instances))))
    crops = None
    if kept.masks is not None and mask_format is not None:
        crops = (MaskCrop.from_full(mask) for mask in kept.masks)  # one (H, W) mask at a time
    return records_from_parts(kept.boxes, kept.scores, kept.labels, class_names, category_ids,
                              crops, mask_format, legacy_box=legacy_box)


def records_from_parts(
    boxes: Any,
    scores: Any,
    labels: Any,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    masks: Iterable[MaskCrop] | None,
    mask_format: str | None = "rle",
    *,
    legacy_box: bool = True,
) -> list[dict[str, Any]]:
    """The records of :func:`instances_to_records`, in the given order, from the instances'
    fields and their masks as crops (consumed one at a time, so a lazy sequence such as
    :class:`~anzoo.models.detection.postprocess.MaskCrops` never holds more than one mask)."""
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    labels = _to_numpy(labels).astype(np.int64).reshape(-1)
    _check_labels(labels, len(category_ids))
    xywh = boxes_to_xywh(boxes, legacy_box)
    scores = _to_numpy(scores).reshape(-1)
    crops = iter(masks) if masks is not None and mask_format is not None else None
    records = []
    for i in range(len(labels)):
        record: dict[str, Any] = {
            "category_id": int(category_ids[labels[i]]),
            "category_name": str(class_names[labels[i]]),
            "score": float(scores[i]),
            "bbox": [float(v) for v in xywh[i]],
        }
        if crops is not None:
            crop = next(crops)
            record["segmentation"] = encode_crop_rle(crop) if mask_format == "rle" else crop_to_polygons(crop)
        records.append(record)
    return records

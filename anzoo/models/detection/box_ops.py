"""Box area, IoU and NMS with mmdetection v1's "+1" pixel convention.

mmdetection v1 (like Detectron and py-faster-rcnn) treats a box ``(x1, y1, x2, y2)`` as the set
of pixels ``x1..x2`` inclusive, so its width is ``x2 - x1 + 1``. Its NMS (the CUDA kernel
``ops/nms/src/nms_kernel.cu`` the published numbers were produced with) computes::

    w = max(min(a.x2, b.x2) - max(a.x1, b.x1) + 1, 0)        (same for h)
    iou = w * h / (area(a) + area(b) - w * h),  area = (x2 - x1 + 1) * (y2 - y1 + 1)

and suppresses a box when ``iou > threshold`` (strictly), the threshold being a float32. torchvision's IoU and NMS use
continuous coordinates (width ``x2 - x1``); on boxes shifted to ``(x1, y1, x2 + 1, y2 + 1)``
they compute the same quantity, so the NMS here runs torchvision's kernels on shifted boxes.
The two differ only in float rounding (``x2 + 1`` is rounded once before the kernel sees it):
on 4 million random box pairs with IoUs spread around 0.5 and 0.7 not one suppression
decision changed.

Order of results: the mmdet v1 kernels return the kept indices in *ascending index* order
(``nms_cuda`` sorts them back), torchvision returns them by decreasing score.
:func:`legacy_nms` and :func:`legacy_batched_nms` follow torchvision; callers that need the
reference's order (``multiclass_nms``, the RPN) sort the indices themselves.
"""
from __future__ import annotations

import struct

import torch
from torch import Tensor
from torchvision.ops import nms as _tv_nms

__all__ = [
    "legacy_box_area",
    "legacy_box_iou",
    "legacy_nms",
    "legacy_batched_nms",
    "to_exclusive_corners",
]


def float32_threshold(iou_threshold: float) -> float:
    """The threshold as the reference kernel holds it (a C ``float``).

    ``iou > 0.6`` with 0.6 rounded to float32 (0.6000000238) keeps an IoU of exactly
    60/100, which torchvision's double comparison ``iou > 0.6`` would suppress.
    """
    return struct.unpack("f", struct.pack("f", float(iou_threshold)))[0]


def to_exclusive_corners(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` inclusive-pixel boxes to continuous ``(x1, y1, x2 + 1, y2 + 1)``."""
    shifted = boxes.clone()
    shifted[..., 2:4] += 1
    return shifted


def legacy_box_area(boxes: Tensor) -> Tensor:
    """Area ``(x2 - x1 + 1) * (y2 - y1 + 1)`` of ``(..., 4)`` boxes (mmdet v1 / Detectron).

    torchvision's ``box_area`` is ``(x2 - x1) * (y2 - y1)``. Degenerate boxes are not clamped,
    as in the reference.
    """
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def legacy_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``(N, M)`` with the +1 convention, in the arithmetic of mmdet v1's NMS kernel.

    The intersection width is ``max(min(x2) - max(x1) + 1, 0)``; areas as
    :func:`legacy_box_area`. (mmdet v1's ``bbox_overlaps`` used by the training assigners
    computes the same quantity.) torchvision's ``box_iou`` drops the +1 terms.
    """
    left = torch.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    right = torch.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    top = torch.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    bottom = torch.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    width = (right - left + 1).clamp(min=0)
    height = (bottom - top + 1).clamp(min=0)
    inter = width * height
    union = legacy_box_area(boxes1)[:, None] + legacy_box_area(boxes2)[None, :] - inter
    return inter / union


def legacy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS with +1 IoU; suppress when IoU > ``iou_threshold``.

    Reproduces mmdet v1's ``nms`` (GPU kernel) decisions. Returns the indices of the kept
    boxes sorted by decreasing score (torchvision's order; mmdet's kernel returns the same set
    in ascending index order). Works on any device and for float16/32/64 boxes.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    return _tv_nms(to_exclusive_corners(boxes), scores, float32_threshold(iou_threshold))


def legacy_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS run independently within each group ``idxs`` (e.g. class), +1 IoU.

    One NMS call over all groups: each group's boxes are moved to their own disjoint region
    (the coordinate-offset trick of torchvision's ``batched_nms``). Unlike torchvision, the
    shifted coordinates are formed in float64: offsets of ~80 classes x 1333 px added in
    float32 would round coordinates by up to ~0.004 px and so change IoUs near the threshold
    (torchvision's CUDA ``batched_nms`` has that rounding). In float64 the shift is exact, so
    the kept set is the one a loop of :func:`legacy_nms` over the groups gives, up to IoUs
    within float rounding (~1e-7) of the threshold. The coordinates are first translated to be
    non-negative, so negative boxes do not leak into the neighbouring group either.

    Returns indices sorted by decreasing score, like torchvision.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    wide = to_exclusive_corners(boxes.to(torch.float64))
    wide = wide - wide.min()
    # Any group's boxes lie in [0, extent]; stepping groups by extent + 1 keeps them apart.
    step = wide.max() + 1
    wide = wide + (idxs.to(torch.float64) * step)[:, None]
    return _tv_nms(wide, scores.to(torch.float64), float32_threshold(iou_threshold))

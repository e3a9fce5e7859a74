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

Ties: a saturated sigmoid gives many exactly equal float32 scores (the RPN's objectness of a
confident model has hundreds per level). Which of them a top-k keeps, and which of two equal
boxes an NMS visits first, is left unspecified by ``torch.topk`` and by the sorts inside NMS
kernels, and differs between PyTorch, the reference's CUDA sort and ONNX Runtime. Every
selection here follows one rule instead, ONNX ``TopK``'s: among equal scores the lower index
comes first (:func:`descending_order`, :func:`top_k`; the NMS functions visit boxes in that
order). So the eager model and its ONNX export keep the same boxes.
"""
from __future__ import annotations

import struct

import torch
from torch import Tensor
from torchvision.ops import nms as _tv_nms

__all__ = [
    "dim_size",
    "descending_order",
    "top_k",
    "nms_priority",
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


def dim_size(x: Tensor, dim: int = 0) -> Tensor | int:
    """``x.shape[dim]``: a tensor when traced for an export (so it stays dynamic in the graph),
    else an int."""
    if torch.jit.is_tracing():
        return torch._shape_as_tensor(x)[dim]
    return int(x.shape[dim])


def descending_order(scores: Tensor, dim: int = -1) -> Tensor:
    """Indices that sort ``scores`` along ``dim`` by decreasing value, equal values by
    increasing index (a stable sort; ONNX ``TopK`` when traced for an export)."""
    if torch.jit.is_tracing():
        return scores.topk(dim_size(scores, dim), dim=dim).indices
    return torch.sort(scores, dim=dim, descending=True, stable=True).indices


def top_k(scores: Tensor, k: int | Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """``scores.topk(k, dim)`` with equal values in increasing index order, so the ``k`` kept
    among ties are always the lowest indices. ``k`` must not exceed the size along ``dim``; a
    tensor ``k`` (dynamic, when traced) is passed on to ONNX ``TopK``."""
    if torch.jit.is_tracing():
        return scores.topk(k, dim=dim)
    values, indices = torch.sort(scores, dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, int(k)), indices.narrow(dim, 0, int(k))


def nms_priority(scores: Tensor, dim: int = -1) -> Tensor:
    """Distinct float32 priorities ``n .. 1`` along ``dim`` in :func:`descending_order`: an NMS
    fed these instead of the scores visits boxes by decreasing score and, among equal scores,
    by increasing index, whatever its own sort does with ties. (Exact below 2**24 boxes.) On
    the CPU, torchvision's, ONNX Runtime's and OpenVINO's NMS were measured to visit ties by
    index already; the priorities keep the rule where a kernel's sort is not stable (CUDA)."""
    order = descending_order(scores, dim)
    ranks = torch.arange(dim_size(scores, dim), 0, -1, device=scores.device).to(torch.float32)
    shape = [1] * scores.dim()
    shape[dim] = -1
    ranks = ranks.reshape(shape).expand_as(order)
    return torch.zeros_like(scores, dtype=torch.float32).scatter(dim, order, ranks)


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
    in ascending index order), equal scores by increasing index (the module's tie rule).
    Works on any device and for float16/32/64 boxes (float16 ones are compared in float32).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # the priorities must stay distinct (float16 holds 2048 integers)
    priority = nms_priority(scores).to(boxes.dtype)
    return _tv_nms(to_exclusive_corners(boxes), priority, float32_threshold(iou_threshold))


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

    Returns indices sorted by decreasing score, like torchvision, equal scores by increasing
    index (the module's tie rule).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    wide = to_exclusive_corners(boxes.to(torch.float64))
    wide = wide - wide.min()
    # Any group's boxes lie in [0, extent]; stepping groups by extent + 1 keeps them apart.
    step = wide.max() + 1
    wide = wide + (idxs.to(torch.float64) * step)[:, None]
    return _tv_nms(wide, nms_priority(scores).to(torch.float64), float32_threshold(iou_threshold))

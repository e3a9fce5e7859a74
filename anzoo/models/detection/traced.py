"""The test-time detector as one traceable graph, for an ONNX export (``anzoo.export``).

:class:`TracedDetector` wraps a :class:`TwoStageDetector` and runs the same test path as
``detect`` for one image, with the same modules and the same legacy arithmetic, but written
without Python branches on data so that ``torch.onnx.export`` (the TorchScript tracer) records
every step as ONNX operators:

* anchors from the traced feature-map size, not from the generator's cache;
* the RPN's per-level top ``nms_pre`` with ``k = min(nms_pre, anchors)`` as a tensor, the
  survivors of each level's NMS put back in the reference's order (score rank, or anchor
  index when the level has at most ``nms_pre`` anchors) before the first ``nms_post`` are kept;
* NMS with the +1 convention as ONNX ``NonMaxSuppression`` on boxes shifted to
  ``(x1, y1, x2 + 1, y2 + 1)`` (the same IoU), the threshold held as a float32; per-class NMS
  with the classes as the operator's batch (:class:`_ClassNMS`);
* equal scores broken by index as in eager mode (``box_ops``' tie rule): ONNX ``TopK`` puts
  the lower index first, and every NMS is given distinct priorities rather than the scores;
* the legacy RoIAlign as ONNX ``RoiAlign`` (``output_half_pixel``: torchvision's
  ``aligned=False``) plus the sub-cell RoIs recomputed with primitive operators
  (``roi_align.py`` switches to its branch-free form when traced);
* clipping to the unpadded image size given as an input, the float32 round trips of
  ``legacy_rescale_boxes`` / ``legacy_mask_boxes`` with the scale factor given as an input.

Inputs: ``image`` ``(1, 3, H, W)`` float32, normalized and padded to a multiple of 32 exactly as
``anzoo.data.transforms`` makes it; ``image_shape`` ``(2,)`` int64, the ``(h, w)`` before padding;
``scale_factor`` ``()`` float32. Outputs, in ``detect``'s order: ``boxes`` ``(N, 4)`` in
original-image pixels, ``scores`` ``(N,)``, ``labels`` ``(N,)`` int64, ``mask_probs``
``(N, 28, 28)``, ``mask_boxes`` ``(N, 4)`` (the boxes the masks are pasted into).
"""
from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from .anchors import LegacyAnchorGenerator
from .box_coder import LegacyBoxCoder
from .box_ops import (
    dim_size,
    float32_threshold,
    legacy_batched_nms,
    legacy_nms,
    nms_priority,
    top_k,
)
from .config import RCNNTestConfig
from .detector import TwoStageDetector
from .roi_heads import CascadeRoIHeads, MaskRoIHeads
from .rpn import LegacyRPN

__all__ = ["TracedDetector", "class_nms", "traced_proposals"]

OUTPUT_NAMES = ("boxes", "scores", "labels", "mask_probs", "mask_boxes")


def _at_most(x: Tensor, limit: int, dim: int = 0) -> Tensor | int:
    """``min(limit, x.shape[dim])``, dynamic when traced."""
    n = dim_size(x, dim)
    return torch.clamp(n, max=limit) if isinstance(n, Tensor) else min(limit, n)


def _as_tensor(flag: Tensor | bool) -> Tensor:
    """A condition from :func:`dim_size` as a tensor (a traced one stays in the graph)."""
    return flag if isinstance(flag, Tensor) else torch.tensor(flag)


def _clip(boxes: Tensor, image_shape: Tensor) -> Tensor:
    """``(..., 4)`` boxes clamped to ``[0, w - 1] x [0, h - 1]`` (LegacyBoxCoder's clipping, with
    the size as a tensor)."""
    h, w = image_shape[0].float() - 1, image_shape[1].float() - 1
    upper = torch.stack([w, h, w, h])
    return torch.minimum(boxes.clamp(min=0), upper)


def _decode(coder: LegacyBoxCoder, rois: Tensor, deltas: Tensor, image_shape: Tensor) -> Tensor:
    """``coder.decode`` clipped to ``image_shape``; ``(N, 4k)`` out as in."""
    boxes = coder.decode(rois, deltas)
    return _clip(boxes.reshape(boxes.shape[0], -1, 4), image_shape).reshape(boxes.shape)


def _as_rois(boxes: Tensor) -> Tensor:
    """``(K, 4)`` boxes of the one image -> ``(K, 5)`` RoIs with batch index 0."""
    return torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)


class _ClassNMS(torch.autograd.Function):
    """NMS within each class: ``boxes`` ``(C, N, 4)`` inclusive-pixel corners, ``scores`` ``(C, 1, N)``
    (distinct priorities within a class, see :func:`class_nms`); returns ``(M, 3)`` int64
    ``[class, 0, row]`` of the kept boxes with score ``> score_thr``.

    Eager: :func:`legacy_batched_nms`. Exported: ONNX ``NonMaxSuppression`` with the classes as
    its batch (its own suppression is ``iou > threshold`` and its score test ``> threshold``,
    as mmdet v1's kernel and ``multiclass_nms``)."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
        candidate = scores[:, 0, :] > score_threshold
        cls_idx, row_idx = torch.nonzero(candidate, as_tuple=True)
        keep = legacy_batched_nms(boxes[cls_idx, row_idx], scores[cls_idx, 0, row_idx], cls_idx, iou_threshold)
        cls_idx, row_idx = cls_idx[keep], row_idx[keep]
        return torch.stack([cls_idx, torch.zeros_like(cls_idx), row_idx], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, score_threshold: float):  # noqa: ANN001, ANN205
        max_out = g.op("Constant", value_t=torch.tensor([sys.maxsize], dtype=torch.int64))
        iou = g.op("Constant", value_t=torch.tensor([float32_threshold(iou_threshold)], dtype=torch.float32))
        thr = g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32))
        # +1 areas: the same IoU on (x1, y1, x2 + 1, y2 + 1) (box_ops.to_exclusive_corners)
        shift = g.op("Constant", value_t=torch.tensor([0, 0, 1, 1], dtype=torch.float32))
        return g.op("NonMaxSuppression", g.op("Add", boxes, shift), scores, max_out, iou, thr)


def class_nms(boxes: Tensor, scores: Tensor, cfg: RCNNTestConfig) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~.postprocess.multiclass_nms` in traceable form: ``boxes`` ``(N, 4 (C + 1))`` or
    ``(N, 4)``, ``scores`` ``(N, C + 1)`` -> ``(boxes, scores, labels)`` in the same order
    (class-major, rows ascending; by decreasing score when more than ``max_per_img`` survive)."""
    num_rows, num_classes = boxes.shape[0], scores.shape[1] - 1
    if boxes.shape[1] == 4:
        cls_boxes = boxes[None].expand(num_classes, -1, -1)
    else:
        cls_boxes = boxes.reshape(num_rows, num_classes + 1, 4)[:, 1:].transpose(0, 1)
    cls_scores = scores[:, 1:].t()
    # the NMS sees each class's rank (box_ops' tie rule: equal scores by increasing row), 0 for
    # the rows at or below score_thr, so ONNX Runtime breaks ties as the eager model does
    priority = torch.where(cls_scores > cfg.score_thr, nms_priority(cls_scores, dim=1), torch.zeros_like(cls_scores))
    selected = _ClassNMS.apply(cls_boxes.contiguous(), priority[:, None, :].contiguous(), cfg.nms_iou, 0.0)
    cls_idx, row_idx = selected[:, 0], selected[:, 2]
    # the reference's order: (class, row) ascending, then the best max_per_img by score if more
    order = (cls_idx * dim_size(boxes) + row_idx).sort().indices
    cls_idx, row_idx = cls_idx[order], row_idx[order]
    det_scores = cls_scores[cls_idx, row_idx]
    if cfg.max_per_img is not None:
        k = _at_most(det_scores, cfg.max_per_img)
        best = top_k(det_scores, k)[1]
        many = _as_tensor(dim_size(det_scores) > cfg.max_per_img)
        pick = torch.where(many, best, torch.arange(k, device=best.device))
        cls_idx, row_idx, det_scores = cls_idx[pick], row_idx[pick], det_scores[pick]
    return cls_boxes[cls_idx, row_idx], det_scores, cls_idx


def traced_proposals(rpn: LegacyRPN, features: list[Tensor], image_shape: Tensor) -> Tensor:
    """``select_proposals`` of ``rpn`` (its ``test_cfg``) for one image, in traceable form:
    ``(K, 4)`` boxes by decreasing score."""
    cfg = rpn.test_cfg
    objectness, deltas = rpn.head_outputs(features)
    boxes, scores = [], []
    for level, (logits, reg) in enumerate(zip(objectness, deltas)):
        anchors = _grid_anchors(rpn.anchor_generator, level, logits)
        level_scores = logits.permute(0, 2, 3, 1).reshape(-1).double().sigmoid().float()
        reg = reg.float().permute(0, 2, 3, 1).reshape(-1, 4)
        num = dim_size(level_scores)
        top_scores, top = top_k(level_scores, _at_most(level_scores, cfg.nms_pre))
        level_boxes = _decode(rpn.box_coder, anchors[top], reg[top], image_shape)
        keep = legacy_nms(level_boxes, top_scores, cfg.nms_thr)
        # the reference keeps the first nms_post survivors in its candidates' order: score
        # rank after a top-k, anchor order when the level had no more than nms_pre anchors
        rank = torch.where(_as_tensor(num > cfg.nms_pre), keep, top[keep])
        keep = keep[rank.sort().indices[: cfg.nms_post]]
        boxes.append(level_boxes[keep])
        scores.append(top_scores[keep])
    all_boxes, all_scores = torch.cat(boxes), torch.cat(scores)
    best = top_k(all_scores, _at_most(all_scores, cfg.max_num))[1]
    return all_boxes[best]


def _grid_anchors(generator: LegacyAnchorGenerator, level: int, logits: Tensor) -> Tensor:
    """``grid_anchors_single`` from the traced size of ``logits`` ``(1, A, H, W)``."""
    stride = generator.strides[level]
    base = generator.base_anchors[level].to(logits.device)
    shift_x = torch.arange(dim_size(logits, 3), device=logits.device) * stride
    shift_y = torch.arange(dim_size(logits, 2), device=logits.device) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1).to(base.dtype)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)


class TracedDetector(nn.Module):
    """``detector``'s test path for one image as a traceable module (see the module docstring)."""

    def __init__(self, detector: TwoStageDetector) -> None:
        super().__init__()
        cfg = detector.rpn.test_cfg
        if cfg.nms_across_levels or cfg.min_bbox_size > 0:
            raise ValueError("the export supports the released RPN settings (no NMS across levels, "
                             "min_bbox_size 0)")
        if not isinstance(detector.roi_heads, (MaskRoIHeads, CascadeRoIHeads)):
            raise TypeError(f"cannot export RoI heads of type {type(detector.roi_heads).__name__}")
        self.detector = detector.eval()

    def forward(self, image: Tensor, image_shape: Tensor, scale_factor: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        features = self.detector.extract_features(image)
        proposals = traced_proposals(self.detector.rpn, features, image_shape)
        heads = self.detector.roi_heads
        if isinstance(heads, CascadeRoIHeads):
            rois, scores, deltas, coder = self._cascade_boxes(heads, features[:4], proposals, image_shape)
            mask_heads = [stage.mask_head for stage in heads.stages]
        else:
            cls_logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features[:4], _as_rois(proposals))))
            rois, scores, deltas, coder = proposals, torch.softmax(cls_logits.float(), dim=1), deltas.float(), heads.box_coder
            mask_heads = [heads.mask_head]
        boxes = _decode(coder, rois, deltas, image_shape)
        boxes = boxes * (1.0 / scale_factor)  # legacy_rescale_boxes: times the float32 reciprocal
        boxes, scores, labels = class_nms(boxes, scores, heads.test_cfg)
        mask_probs, mask_boxes = self._masks(heads, mask_heads, features[:4], boxes, labels, scale_factor)
        return boxes, scores, labels, mask_probs, mask_boxes

    @staticmethod
    def _cascade_boxes(heads: CascadeRoIHeads, features: list[Tensor], proposals: Tensor, image_shape: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor, LegacyBoxCoder]:
        """CascadeRoIHeads.predict's box part: the last stage's RoIs and deltas, the softmax of
        the stages' mean logits."""
        rois, logits_sum, deltas = proposals, None, None
        last = len(heads.stages) - 1
        for i, stage in enumerate(heads.stages):
            cls_logits, deltas = stage.box_predictor(stage.box_head(heads.box_roi_pool(features, _as_rois(rois))))
            cls_logits, deltas = cls_logits.float(), deltas.float()
            logits_sum = cls_logits if logits_sum is None else logits_sum + cls_logits
            if i < last:
                rois = _decode(stage.box_coder, rois, deltas, image_shape)
        assert logits_sum is not None and deltas is not None
        scores = torch.softmax(logits_sum / len(heads.stages), dim=1)
        return rois, scores, deltas, heads.stages[-1].box_coder

    @staticmethod
    def _masks(heads: MaskRoIHeads | CascadeRoIHeads, mask_heads: list[nn.Module], features: list[Tensor],
               boxes: Tensor, labels: Tensor, scale_factor: Tensor) -> tuple[Tensor, Tensor]:
        """RoIHeads._predict_masks for one image: the label's sigmoid map (mean over the mask
        heads) and the paste boxes (legacy_mask_boxes' float32 round trip)."""
        scaled = boxes * scale_factor
        paste_boxes = scaled / scale_factor
        # one spare RoI after the detections, its output dropped: with no detections a GroupNorm
        # in the mask head would reshape 0 RoIs to (0, groups, -1), which ONNX Runtime refuses
        spare = torch.tensor([[0.0, 0.0, 0.0, 15.0, 15.0]], device=boxes.device)
        mask_feats = heads.mask_roi_pool(features, torch.cat([_as_rois(scaled), spare]))
        probs = torch.sigmoid(mask_heads[0](mask_feats).float())
        for head in mask_heads[1:]:
            probs = probs + torch.sigmoid(head(mask_feats).float())
        if len(mask_heads) > 1:
            probs = probs / len(mask_heads)
        probs = probs[:-1]
        chosen = probs[torch.arange(dim_size(probs), device=probs.device), labels + 1]
        return chosen, paste_boxes

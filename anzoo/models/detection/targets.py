"""Training targets as mmdetection v1 computes them: assignment, sampling, box and mask targets.

* :class:`MaxIoUAssigner` (``core/bbox/assigners/max_iou_assigner.py``): every candidate box
  starts as "ignore" (-1); boxes whose best IoU with any ground truth is below ``neg_iou_thr``
  become negatives (0); boxes whose best IoU reaches ``pos_iou_thr`` take that ground truth;
  then each ground truth whose best IoU reaches ``min_pos_iou`` claims *every* box that reaches
  exactly that best IoU (``gt_max_assign_all``), later ground truths overriding earlier ones.
  IoUs use the +1 pixel convention (:func:`legacy_box_iou`).
* :class:`RandomSampler` (``core/bbox/samplers/random_sampler.py``): up to
  ``num * pos_fraction`` positives drawn at random, negatives fill the rest of ``num``; the
  sampled indices come back sorted (mmdet's ``unique()``). With ``add_gt_as_proposals`` the
  ground-truth boxes are prepended to the candidates first (the R-CNN stages).
* :func:`rpn_targets`: anchors outside the image (``allowed_border = 0``) or beyond the
  image's own padded size are left out, the rest assigned and sampled per image;
  regression targets are ``bbox2delta`` (:meth:`LegacyBoxCoder.encode`).
* :func:`rcnn_targets`: class labels (1-based, 0 = background), per-RoI regression targets.
* :func:`mask_targets`: each positive RoI's integer box crops its ground-truth mask, which
  is resized (bilinear, uint8, as ``mmcv.imresize``) to 28x28 - on the CPU, as mmdet did.

Labels here are *class channels*: 0 is background and ``c + 1`` is anzoo's contiguous label
``c``, which is how the box classifier and the mask head lay out their outputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .box_coder import LegacyBoxCoder
from .box_ops import legacy_box_iou
from .config import RCNNTrainConfig

__all__ = [
    "AssignResult",
    "MaxIoUAssigner",
    "RPNTargets",
    "RandomSampler",
    "SamplingResult",
    "anchor_inside_flags",
    "mask_target_single",
    "mask_targets",
    "rcnn_targets",
    "rpn_targets",
    "sample_rois",
]


@dataclass
class AssignResult:
    """Per candidate box: ``gt_inds`` -1 ignore, 0 negative, k > 0 ground truth k - 1;
    ``max_overlaps`` its best IoU; ``labels`` the assigned class channel (0 where not positive)."""

    num_gts: int
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor | None = None

    def add_gt_(self, gt_labels: Tensor) -> None:
        """Prepend the ground truths themselves as positives (mmdet's ``add_gt_``)."""
        own = torch.arange(1, self.num_gts + 1, dtype=torch.long, device=self.gt_inds.device)
        self.gt_inds = torch.cat([own, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(self.num_gts), self.max_overlaps])
        if self.labels is not None:
            self.labels = torch.cat([gt_labels.to(self.labels.dtype), self.labels])


class MaxIoUAssigner:
    """mmdet v1's ``MaxIoUAssigner`` (``ignore_iof_thr=-1``: ignored boxes play no part)."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float, min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True) -> None:
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.min_pos_iou = float(min_pos_iou)
        self.gt_max_assign_all = gt_max_assign_all

    def assign(self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` candidate boxes to ``(K, 4)`` ground truths (class channels
        ``gt_labels``). Without ground truths every box is a negative (mmdet refuses such images;
        the training dataset leaves them out, this keeps a stray one from crashing)."""
        boxes = boxes[:, :4]
        num_boxes, num_gts = boxes.shape[0], gt_boxes.shape[0]
        device = boxes.device
        if num_gts == 0 or num_boxes == 0:
            gt_inds = torch.zeros(num_boxes, dtype=torch.long, device=device)
            labels = None if gt_labels is None else torch.zeros(num_boxes, dtype=torch.long, device=device)
            return AssignResult(num_gts, gt_inds, boxes.new_zeros(num_boxes), labels)
        overlaps = legacy_box_iou(gt_boxes.to(boxes.dtype), boxes)  # (K, N)
        gt_inds = torch.full((num_boxes,), -1, dtype=torch.long, device=device)
        max_overlaps, argmax_overlaps = overlaps.max(dim=0)
        gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        positive = max_overlaps >= self.pos_iou_thr
        gt_inds[positive] = argmax_overlaps[positive] + 1
        # each ground truth claims its best boxes; a later one overrides an earlier one
        eligible = gt_max_overlaps >= self.min_pos_iou  # (K,)
        if self.gt_max_assign_all:
            claims = (overlaps == gt_max_overlaps[:, None]) & eligible[:, None]  # (K, N)
            order = torch.arange(1, num_gts + 1, device=device)[:, None]
            claimant = torch.where(claims, order, torch.zeros_like(order)).max(dim=0).values
            gt_inds = torch.where(claimant > 0, claimant, gt_inds)
        else:
            for i in torch.nonzero(eligible).flatten().tolist():
                gt_inds[gt_argmax_overlaps[i]] = i + 1
        labels = None
        if gt_labels is not None:
            labels = torch.zeros(num_boxes, dtype=torch.long, device=device)
            pos = gt_inds > 0
            labels[pos] = gt_labels.to(device=device, dtype=torch.long)[gt_inds[pos] - 1]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)


@dataclass
class SamplingResult:
    """Sampled candidates of one image; ``boxes`` = positives then negatives."""

    pos_inds: Tensor
    neg_inds: Tensor
    pos_boxes: Tensor
    neg_boxes: Tensor
    pos_is_gt: Tensor  # bool, per positive: it is a ground truth added as a proposal
    pos_assigned_gt_inds: Tensor  # 0-based ground-truth index of each positive
    pos_gt_boxes: Tensor
    pos_gt_labels: Tensor | None

    @property
    def boxes(self) -> Tensor:
        return torch.cat([self.pos_boxes, self.neg_boxes])

    @property
    def num_pos(self) -> int:
        return int(self.pos_inds.numel())


class RandomSampler:
    """mmdet v1's ``RandomSampler`` (``neg_pos_ub = -1``). Draws from torch's global RNG."""

    def __init__(self, num: int, pos_fraction: float, add_gt_as_proposals: bool = True) -> None:
        self.num = int(num)
        self.pos_fraction = float(pos_fraction)
        self.add_gt_as_proposals = add_gt_as_proposals

    @staticmethod
    def _choose(candidates: Tensor, count: int) -> Tensor:
        if candidates.numel() <= count:
            return candidates
        perm = torch.randperm(candidates.numel(), device=candidates.device)[:count]
        return candidates[perm]

    def sample(self, assign: AssignResult, boxes: Tensor, gt_boxes: Tensor,
               gt_labels: Tensor | None = None) -> SamplingResult:
        """Sample from ``boxes`` (updates ``assign`` in place when ground truths are added)."""
        boxes = boxes[:, :4]
        gt_boxes = gt_boxes.to(boxes.dtype)
        is_gt = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
        if self.add_gt_as_proposals and gt_boxes.shape[0] > 0:
            boxes = torch.cat([gt_boxes, boxes])
            assert gt_labels is not None, "add_gt_as_proposals needs the ground-truth labels"
            assign.add_gt_(gt_labels)
            is_gt = torch.cat([torch.ones(gt_boxes.shape[0], dtype=torch.bool, device=boxes.device), is_gt])
        wanted_pos = int(self.num * self.pos_fraction)
        pos_inds = self._choose(torch.nonzero(assign.gt_inds > 0).flatten(), wanted_pos).unique()
        wanted_neg = self.num - pos_inds.numel()
        neg_inds = self._choose(torch.nonzero(assign.gt_inds == 0).flatten(), wanted_neg).unique()
        assigned = assign.gt_inds[pos_inds] - 1
        pos_gt_boxes = gt_boxes[assigned] if gt_boxes.shape[0] else boxes.new_zeros((0, 4))
        labels = assign.labels[pos_inds] if assign.labels is not None else None
        return SamplingResult(pos_inds, neg_inds, boxes[pos_inds], boxes[neg_inds], is_gt[pos_inds],
                              assigned, pos_gt_boxes, labels)


# --------------------------------------------------------------------------------------- RPN
def anchor_inside_flags(anchors: Tensor, valid: Tensor, img_shape: tuple[int, int],
                        allowed_border: float = 0) -> Tensor:
    """Valid anchors lying within the resized image, up to ``allowed_border`` pixels outside
    (a negative border keeps every valid anchor)."""
    if allowed_border < 0:
        return valid
    h, w = img_shape
    return (valid & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
            & (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border))


@dataclass
class RPNTargets:
    """Per image, over all anchors (levels concatenated): class label (1 object, 0 background),
    label weight, regression target and weight; and the loss normaliser of the batch."""

    labels: Tensor  # (B, N) float
    label_weights: Tensor  # (B, N)
    bbox_targets: Tensor  # (B, N, 4)
    bbox_weights: Tensor  # (B, N, 4)
    num_total_samples: int


def rpn_targets(anchors: Tensor, valid_flags: Sequence[Tensor], gt_boxes: Sequence[Tensor],
                img_shapes: Sequence[tuple[int, int]], coder: LegacyBoxCoder,
                assigner: MaxIoUAssigner, sampler: RandomSampler, allowed_border: float = 0
                ) -> RPNTargets:
    """mmdet v1's ``anchor_target`` with sampling, for ``(N, 4)`` anchors shared by the batch."""
    labels, label_weights, bbox_targets, bbox_weights = [], [], [], []
    num_pos_total = num_neg_total = 0
    for valid, gts, shape in zip(valid_flags, gt_boxes, img_shapes):
        inside = anchor_inside_flags(anchors, valid, shape, allowed_border)
        inside_idx = torch.nonzero(inside).flatten()
        inner = anchors[inside_idx]
        lab = anchors.new_zeros(anchors.shape[0])
        lab_w = anchors.new_zeros(anchors.shape[0])
        tgt = anchors.new_zeros(anchors.shape)
        tgt_w = anchors.new_zeros(anchors.shape)
        pos_count = neg_count = 0
        if inner.shape[0] > 0:
            assign = assigner.assign(inner, gts)
            res = sampler.sample(assign, inner, gts)
            pos, neg = inside_idx[res.pos_inds], inside_idx[res.neg_inds]
            if pos.numel():
                tgt[pos] = coder.encode(res.pos_boxes, res.pos_gt_boxes)
                tgt_w[pos] = 1.0
                lab[pos] = 1.0
                lab_w[pos] = 1.0
            lab_w[neg] = 1.0
            pos_count, neg_count = int(pos.numel()), int(neg.numel())
        num_pos_total += max(pos_count, 1)
        num_neg_total += max(neg_count, 1)
        labels.append(lab)
        label_weights.append(lab_w)
        bbox_targets.append(tgt)
        bbox_weights.append(tgt_w)
    return RPNTargets(torch.stack(labels), torch.stack(label_weights), torch.stack(bbox_targets),
                      torch.stack(bbox_weights), num_pos_total + num_neg_total)


# ----------------------------------------------------------------------------------- R-CNN
def rcnn_targets(samples: Sequence[SamplingResult], coder: LegacyBoxCoder
                 ) -> tuple[Tensor, Tensor]:
    """Class channel per sampled RoI (0 for negatives) and ``(R, 4)`` regression targets
    (zero for negatives), RoIs in ``boxes_to_rois([s.boxes for s in samples])`` order."""
    labels, targets = [], []
    for s in samples:
        num = s.num_pos + int(s.neg_inds.numel())
        lab = torch.zeros(num, dtype=torch.long, device=s.pos_boxes.device)
        tgt = s.pos_boxes.new_zeros((num, 4))
        if s.num_pos:
            assert s.pos_gt_labels is not None
            lab[: s.num_pos] = s.pos_gt_labels
            tgt[: s.num_pos] = coder.encode(s.pos_boxes, s.pos_gt_boxes)
        labels.append(lab)
        targets.append(tgt)
    return torch.cat(labels), torch.cat(targets)


def mask_target_single(boxes: np.ndarray, gt_inds: np.ndarray, gt_masks: np.ndarray,
                       size: int = 28) -> np.ndarray:
    """``(P, size, size)`` uint8 targets of one image (mmdet v1's ``mask_target_single``).

    ``boxes`` ``(P, 4)`` float positive RoIs, ``gt_inds`` their ground truth, ``gt_masks``
    ``(K, H, W)`` uint8 0/1 masks of the (resized, flipped) image. The RoI is clipped to the
    mask, truncated to integers, and ``mask[y1:y1 + h, x1:x1 + w]`` (``w = max(x2 - x1 + 1, 1)``)
    resized bilinearly on uint8, which rounds back to 0/1.
    """
    num = boxes.shape[0]
    out = np.zeros((num, size, size), dtype=np.uint8)
    if num == 0:
        return out
    _, max_h, max_w = gt_masks.shape
    boxes = boxes.astype(np.float32).copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, max_w - 1)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, max_h - 1)
    ints = boxes.astype(np.int32)
    for i in range(num):
        x1, y1, x2, y2 = (int(v) for v in ints[i])
        w = max(x2 - x1 + 1, 1)
        h = max(y2 - y1 + 1, 1)
        crop = np.ascontiguousarray(gt_masks[int(gt_inds[i]), y1:y1 + h, x1:x1 + w])
        out[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def mask_targets(samples: Sequence[SamplingResult], gt_masks: Sequence[Tensor | np.ndarray],
                 size: int = 28) -> Tensor:
    """Float ``(P, size, size)`` targets of all positives, on the RoIs' device."""
    parts = []
    device = samples[0].pos_boxes.device if samples else torch.device("cpu")
    for s, masks in zip(samples, gt_masks):
        if s.num_pos == 0:
            continue
        masks_np = masks.cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
        parts.append(mask_target_single(s.pos_boxes.detach().float().cpu().numpy(),
                                        s.pos_assigned_gt_inds.cpu().numpy(), masks_np, size))
    if not parts:
        return torch.zeros((0, size, size), device=device)
    return torch.from_numpy(np.concatenate(parts)).to(device=device, dtype=torch.float32)


def sample_rois(proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_classes: Sequence[Tensor],
                cfg: RCNNTrainConfig) -> list[SamplingResult]:
    """Assign and sample each image's proposals for one R-CNN stage."""
    assigner = MaxIoUAssigner(cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou)
    sampler = RandomSampler(cfg.num_samples, cfg.pos_fraction, cfg.add_gt_as_proposals)
    samples = []
    for props, gts, classes in zip(proposals, gt_boxes, gt_classes):
        props = props.detach()[:, :4].float()
        gts = gts.to(props.device).float()
        classes = classes.to(props.device)
        samples.append(sampler.sample(assigner.assign(props, gts, classes), props, gts, classes))
    return samples

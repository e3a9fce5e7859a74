"""The configs' losses, reduced the way mmdetection v1 reduced them.

* RPN: sigmoid binary cross-entropy on the objectness logits and SmoothL1 (beta 1/9) on the
  deltas, both summed over the sampled anchors of the batch and divided by the number of
  sampled anchors (``num_total_samples``).
* R-CNN box head: softmax cross-entropy averaged over the sampled RoIs; SmoothL1 (beta 1) on
  the positives' deltas of their ground-truth class (or the class-agnostic deltas), summed
  and divided by the number of *all* sampled RoIs (mmdet's ``avg_factor=bbox_targets.size(0)``).
* Mask head: binary cross-entropy with logits on the ground-truth class channel of each
  positive RoI's 28x28 logits, averaged over all pixels.

Every loss is computed in float32 (the reference's ``force_fp32``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["accuracy", "box_head_loss", "mask_loss", "rpn_loss", "smooth_l1_loss"]


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise SmoothL1: ``0.5 d^2 / beta`` below ``beta``, ``d - 0.5 beta`` above."""
    diff = (pred - target).abs()
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def rpn_loss(objectness: Tensor, deltas: Tensor, labels: Tensor, label_weights: Tensor,
             bbox_targets: Tensor, bbox_weights: Tensor, num_total_samples: int,
             beta: float = 1.0 / 9.0) -> tuple[Tensor, Tensor]:
    """(classification, regression) losses from ``(B, N)`` logits and ``(B, N, 4)`` deltas."""
    objectness, deltas = objectness.float(), deltas.float()
    norm = float(max(num_total_samples, 1))
    cls = F.binary_cross_entropy_with_logits(objectness, labels, reduction="none")
    loss_cls = (cls * label_weights).sum() / norm
    reg = smooth_l1_loss(deltas, bbox_targets, beta) * bbox_weights
    loss_bbox = reg.sum() / norm
    return loss_cls, loss_bbox


def box_head_loss(cls_logits: Tensor, deltas: Tensor, labels: Tensor, bbox_targets: Tensor,
                  class_agnostic: bool, beta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Box classifier and regressor losses of ``R`` sampled RoIs (labels: class channels)."""
    cls_logits, deltas = cls_logits.float(), deltas.float()
    num = labels.shape[0]
    loss_cls = F.cross_entropy(cls_logits, labels, reduction="sum") / max(num, 1)
    pos = torch.nonzero(labels > 0).flatten()
    if class_agnostic:
        pos_deltas = deltas.view(num, 4)[pos]
    else:
        pos_deltas = deltas.view(num, -1, 4)[pos, labels[pos]]
    # an empty selection still yields a zero loss connected to the graph
    loss_bbox = smooth_l1_loss(pos_deltas, bbox_targets[pos], beta).sum() / max(num, 1)
    return loss_cls, loss_bbox


def mask_loss(mask_logits: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """BCE on channel ``labels[i]`` of ``(P, C + 1, 28, 28)`` logits against ``(P, 28, 28)``."""
    if labels.numel() == 0:
        return mask_logits.sum() * 0.0
    chosen = mask_logits.float()[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets, reduction="mean")


@torch.no_grad()
def accuracy(cls_logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 classification accuracy in percent (logged, not optimised)."""
    if labels.numel() == 0:
        return cls_logits.new_tensor(0.0)
    return (cls_logits.argmax(dim=1) == labels).float().mean() * 100.0

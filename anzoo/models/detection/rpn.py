"""Region proposal network with mmdetection v1's proposal selection (``anchor_heads/rpn_head.py``).

The head is torchvision's ``RPNHead`` (3x3 conv + ReLU, 1x1 ``cls_logits`` with A channels,
1x1 ``bbox_pred`` with 4A channels). Its output layout equals mmdet's ``RPNHead`` with a
sigmoid classifier: ``rpn_cls`` channel a is anchor a, ``rpn_reg`` channels ``4a .. 4a + 3``
are the (dx, dy, dw, dh) of anchor a. So the checkpoint weights copy over unchanged:

=====================  =========================
mmdet v1               this module
=====================  =========================
rpn_head.rpn_conv.*    head.conv.0.0.*
rpn_head.rpn_cls.*     head.cls_logits.*
rpn_head.rpn_reg.*     head.bbox_pred.*
=====================  =========================

Proposal selection, per image and per level (mmdet's ``get_bboxes_single``):

1. scores = sigmoid(logits) laid out (H, W, A), deltas (H, W, A, 4), matching the anchors;
2. if the level has more than ``nms_pre`` anchors, keep the top ``nms_pre`` by score
   (sorted), otherwise keep all in anchor order;
3. decode with stds (1, 1, 1, 1) and clip to the resized, unpadded image ``(h, w)``;
4. if ``min_bbox_size > 0``, drop boxes with ``x2 - x1 + 1`` or ``y2 - y1 + 1`` below it
   (the configs use 0: zero-size boxes stay);
5. NMS with +1 IoU at ``nms_thr``; survivors in index order (mmdet's kernel order, which
   after step 2 is score order), the first ``nms_post`` kept;

then all levels are concatenated and the top ``max_num`` by score returned (sorted by
decreasing score). There is no NMS across levels (``nms_across_levels=False`` in all configs).

torchvision's ``RegionProposalNetwork`` differs in anchors, in box coding, in taking the
top-k before sigmoid per level but running a batched NMS across levels with
``post_nms_top_n`` per image, and in removing small boxes (1e-3) and low scores.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import RPNHead

from .anchors import LegacyAnchorGenerator
from .box_coder import LegacyBoxCoder
from .box_ops import legacy_batched_nms, legacy_nms, top_k
from .config import RPN_TARGET_CFG, RPN_TEST_CFG, RPN_TRAIN_CFG, RPNProposalConfig, RPNTargetConfig
from .losses import rpn_loss
from .targets import MaxIoUAssigner, RandomSampler, rpn_targets

__all__ = ["LegacyRPN", "select_proposals"]


def select_proposals(
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    anchors: Sequence[Tensor],
    image_shapes: Sequence[tuple[int, int]],
    box_coder: LegacyBoxCoder,
    cfg: RPNProposalConfig,
) -> tuple[list[Tensor], list[Tensor]]:
    """mmdet v1's RPN proposal selection for a batch.

    Args:
        objectness: per level ``(B, A, H, W)`` logits.
        deltas: per level ``(B, 4A, H, W)`` regression outputs.
        anchors: per level ``(H * W * A, 4)`` anchors, flattened (y, x, anchor).
        image_shapes: per image ``(h, w)`` of the resized image before padding.
        box_coder: decoder (stds 1 for the configs).
        cfg: the selection parameters.

    Returns:
        ``(boxes, scores)``: per image a ``(K_i, 4)`` float32 tensor of proposals
        ``(x1, y1, x2, y2)`` in resized-image pixels and their ``(K_i,)`` sigmoid scores, both
        sorted by decreasing score, ``K_i <= max_num``. (With ``nms_across_levels`` the
        reference's order instead: a second NMS over all levels, survivors in index order,
        the first ``max_num``.)

    Scores exactly equal in float32 are common (the sigmoid saturates). Among them the lower
    index goes first, in the top-k and in the NMS (``box_ops``' tie rule, the one an ONNX
    export follows too); the reference left it to PyTorch's CUDA sort, so rare tie-breaking
    differences to it are expected.
    """
    num_levels = len(objectness)
    if not (len(deltas) == len(anchors) == num_levels):
        raise ValueError("objectness, deltas and anchors must have one entry per level")
    batch = objectness[0].shape[0]
    if len(image_shapes) != batch:
        raise ValueError(f"{batch} images in the features but {len(image_shapes)} image shapes")
    boxes, scores, groups = _level_candidates(objectness, deltas, anchors, image_shapes, box_coder, cfg)
    if cfg.min_bbox_size > 0:
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        valid = torch.nonzero((w >= cfg.min_bbox_size) & (h >= cfg.min_bbox_size)).squeeze(1)
        boxes, scores, groups = boxes[valid], scores[valid], groups[valid]
    keep = _nms_per_level(boxes, scores, groups, batch * num_levels, cfg)
    boxes, scores, images = boxes[keep], scores[keep], groups[keep] // num_levels
    out_boxes, out_scores = [], []
    for i in range(batch):
        mine = torch.nonzero(images == i).squeeze(1)
        img_boxes, img_scores = _top_of_image(boxes[mine], scores[mine], cfg)
        out_boxes.append(img_boxes)
        out_scores.append(img_scores)
    return out_boxes, out_scores


def _level_candidates(objectness: Sequence[Tensor], deltas: Sequence[Tensor], anchors: Sequence[Tensor],
                      image_shapes: Sequence[tuple[int, int]], box_coder: LegacyBoxCoder, cfg: RPNProposalConfig
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-3 of the module docstring: every level's top ``nms_pre`` boxes, decoded and
    clipped, with their scores and group (image * levels + level), flattened image-major, then
    level, then rank (a group's candidates are contiguous)."""
    num_levels, batch = len(objectness), objectness[0].shape[0]
    device = objectness[0].device
    cand_boxes, cand_scores, cand_groups = [], [], []
    for level, (logits, reg, level_anchors) in enumerate(zip(objectness, deltas, anchors)):
        num_anchors = logits.shape[1]
        # sigmoid in float64, rounded once: float32 sigmoid differs by an ulp between SIMD and
        # scalar code paths, which would make the scores depend on the batch composition
        scores = logits.permute(0, 2, 3, 1).reshape(batch, -1).double().sigmoid().float()
        reg = reg.float().permute(0, 2, 3, 1).reshape(batch, -1, 4)
        if reg.shape[1] != scores.shape[1] or level_anchors.shape[0] != scores.shape[1]:
            raise ValueError(
                f"level {level}: {scores.shape[1]} scores, {reg.shape[1]} deltas, {level_anchors.shape[0]} anchors "
                f"({num_anchors} anchors per location)"
            )
        if cfg.nms_pre > 0 and scores.shape[1] > cfg.nms_pre:
            scores, top = top_k(scores, cfg.nms_pre, dim=1)
            reg = reg.gather(1, top[..., None].expand(-1, -1, 4))
            level_anchors = level_anchors[top]  # (B, k, 4)
        else:
            level_anchors = level_anchors[None].expand(batch, -1, -1)
        decoded = [
            box_coder.decode(level_anchors[i], reg[i], (int(image_shapes[i][0]), int(image_shapes[i][1])))
            for i in range(batch)
        ]
        cand_boxes.append(torch.stack(decoded))
        cand_scores.append(scores)
        groups = torch.arange(batch, device=device)[:, None] * num_levels + level
        cand_groups.append(groups.expand(batch, scores.shape[1]))
    return (torch.cat(cand_boxes, dim=1).reshape(-1, 4), torch.cat(cand_scores, dim=1).reshape(-1),
            torch.cat(cand_groups, dim=1).reshape(-1))


def _nms_per_level(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int,
                   cfg: RPNProposalConfig) -> Tensor:
    """Step 5: NMS within each (image, level) group, survivors in index order, the first
    ``nms_post`` of each group; returns the kept indices."""
    keep = legacy_batched_nms(boxes, scores, groups, cfg.nms_thr).sort().values
    kept_groups = groups[keep]
    counts = torch.bincount(kept_groups, minlength=num_groups)
    first = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=boxes.device) - first[kept_groups]
    return keep[rank < cfg.nms_post]


def _top_of_image(boxes: Tensor, scores: Tensor, cfg: RPNProposalConfig) -> tuple[Tensor, Tensor]:
    """One image's proposals from all its levels: the top ``max_num`` by score (or, with
    ``nms_across_levels``, a second NMS and the first ``max_num`` survivors)."""
    if cfg.nms_across_levels:
        survivors = legacy_nms(boxes, scores, cfg.nms_thr).sort().values[: cfg.max_num]
        return boxes[survivors], scores[survivors]
    scores, top = top_k(scores, min(cfg.max_num, scores.shape[0]))
    return boxes[top], scores


class LegacyRPN(nn.Module):
    """mmdet v1 ``RPNHead`` (sigmoid objectness) with its anchors, box coding, proposal
    selection and, in training, its losses.

    ``forward(features, image_shapes, targets=None, pad_shapes=None)`` takes the 5 FPN maps
    (P2-P6, strides 4-64) of a batch and the ``(h, w)`` of each resized, unpadded image, and
    returns ``(proposals, losses)``: per image a ``(K_i, 5)`` tensor ``[x1, y1, x2, y2,
    objectness]`` (resized-image pixels, sorted by decreasing score: mmdet's proposal layout)
    and, when ``targets`` are given, ``loss_rpn_cls`` and ``loss_rpn_bbox`` (else ``{}``).

    The selection parameters are ``test_cfg`` in eval mode and ``train_cfg`` in train mode
    (mmdet's ``rpn_proposal``); ``target_cfg`` sets the anchor targets of the losses.
    """

    def __init__(
        self,
        in_channels: int = 256,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        test_cfg: RPNProposalConfig = RPN_TEST_CFG,
        train_cfg: RPNProposalConfig = RPN_TRAIN_CFG,
        target_cfg: RPNTargetConfig = RPN_TARGET_CFG,
    ) -> None:
        super().__init__()
        self.anchor_generator = LegacyAnchorGenerator(strides, scales, ratios)
        self.box_coder = LegacyBoxCoder(target_means, target_stds)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors)
        self.test_cfg = test_cfg
        self.train_cfg = train_cfg
        self.target_cfg = target_cfg

    @property
    def proposal_cfg(self) -> RPNProposalConfig:
        return self.train_cfg if self.training else self.test_cfg

    def head_outputs(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``(B, A, H, W)`` objectness logits and ``(B, 4A, H, W)`` deltas."""
        if len(features) != self.anchor_generator.num_levels:
            raise ValueError(f"expected {self.anchor_generator.num_levels} feature maps, got {len(features)}")
        objectness, deltas = self.head(list(features))
        return objectness, deltas

    def anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        return self.anchor_generator.grid_anchors(sizes, device=features[0].device)

    def forward(
        self,
        features: Sequence[Tensor],
        image_shapes: Sequence[tuple[int, int]],
        targets: Sequence[dict[str, Tensor]] | None = None,
        pad_shapes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals of a batch, and its losses when ``targets`` (per image ``boxes``
        ``(K_i, 4)`` in resized-image pixels) and ``pad_shapes`` (per image ``(h, w)`` padded
        to the size divisor on its own) are given."""
        objectness, deltas = self.head_outputs(features)
        anchors = self.anchors(features)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            if pad_shapes is None:
                raise ValueError("the RPN's losses need the padded shape of every image")
            losses = self.losses(objectness, deltas, anchors, [t["boxes"] for t in targets], image_shapes,
                                 pad_shapes)
        with torch.no_grad():
            boxes, scores = select_proposals(
                [o.detach() for o in objectness],
                [d.detach() for d in deltas],
                anchors,
                image_shapes,
                self.box_coder,
                self.proposal_cfg,
            )
        return [torch.cat([b, s[:, None]], dim=1) for b, s in zip(boxes, scores)], losses

    def losses(
        self,
        objectness: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        image_shapes: Sequence[tuple[int, int]],
        pad_shapes: Sequence[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """mmdet v1's ``RPNHead.loss``: ``loss_rpn_cls`` and ``loss_rpn_bbox`` of a batch.

        Args:
            objectness, deltas: :meth:`head_outputs` of the batch.
            anchors: :meth:`anchors` (per level ``(H*W*A, 4)``).
            gt_boxes: per image ``(K_i, 4)`` ground-truth boxes in resized-image pixels
                (crowd regions left out).
            image_shapes: per image ``(h, w)`` after resizing, before padding.
            pad_shapes: per image ``(h, w)`` padded to the size divisor on its own (anchors
                beyond it are invalid, as in mmdet's ``valid_flags``).
        """
        cfg = self.target_cfg
        sizes = [(int(o.shape[-2]), int(o.shape[-1])) for o in objectness]
        batch = objectness[0].shape[0]
        flat_anchors = torch.cat(list(anchors))
        valid = []
        for pad in pad_shapes:
            valid_sizes = self.anchor_generator.valid_sizes_for_image(sizes, tuple(pad))
            flags = self.anchor_generator.valid_flags(sizes, valid_sizes, device=flat_anchors.device)
            valid.append(torch.cat(flags))
        with torch.no_grad():
            targets = rpn_targets(
                flat_anchors, valid, [g.to(flat_anchors.device).float() for g in gt_boxes],
                image_shapes, self.box_coder,
                MaxIoUAssigner(cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou),
                RandomSampler(cfg.num_samples, cfg.pos_fraction, add_gt_as_proposals=False),
                cfg.allowed_border,
            )
        logits = torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1) for o in objectness], dim=1)
        regs = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in deltas], dim=1)
        loss_cls, loss_bbox = rpn_loss(logits, regs, targets.labels, targets.label_weights,
                                       targets.bbox_targets, targets.bbox_weights,
                                       targets.num_total_samples, cfg.smooth_l1_beta)
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

"""Second-stage heads at test time: Mask R-CNN's single box/mask stage and Cascade's three.

Both follow mmdetection v1's ``simple_test`` (see ``MMDET_V1_INFERENCE.md``, points 7-12):
RoIs are pooled with the legacy multi-level RoIAlign, class scores are a softmax over
background + classes, boxes are decoded per image against the resized image and divided by
the scale factor before the per-class NMS, and the mask RoIs are the final boxes times the
scale factor. Images of a batch share one pass through the heads (every head op is per RoI).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .box_coder import LegacyBoxCoder
from .detections import Detections
from .heads import BoxPredictor, ConvFCBoxHead, MaskHead
from .losses import accuracy, box_head_loss, mask_loss
from .postprocess import legacy_mask_boxes, legacy_rescale_boxes, multiclass_nms
from .roi_align import LegacyMultiScaleRoIAlign
from .targets import (CASCADE_STAGE_LOSS_WEIGHTS, CASCADE_TRAIN_CFGS, MASK_RCNN_TRAIN_CFG, RCNNTrainConfig,
                      SamplingResult, mask_targets, rcnn_targets, sample_rois)

__all__ = ["TestConfig", "MaskRoIHeads", "CascadeStage", "CascadeRoIHeads", "boxes_to_rois",
           "CASCADE_STDS"]

#: Box-delta standard deviations of the three Cascade stages.
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
MASK_RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


class TestConfig:
    """The configs' ``test_cfg.rcnn``: score > 0.05, per-class NMS 0.5, 100 per image."""

    def __init__(self, score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100) -> None:
        self.score_thr = score_thr
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image (K_i, 4) boxes -> (sum K_i, 5) RoIs [image index, x1, y1, x2, y2]."""
    rois = []
    for i, b in enumerate(boxes):
        idx = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
        rois.append(torch.cat([idx, b[:, :4]], dim=1))
    if not rois:
        return torch.zeros((0, 5))
    return torch.cat(rois, dim=0)


def _split_sizes(boxes: Sequence[torch.Tensor]) -> list[int]:
    return [int(b.shape[0]) for b in boxes]


class _RoIHeadsBase(nn.Module):
    def __init__(self, num_classes: int, test_cfg: TestConfig | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.test_cfg = test_cfg or TestConfig()
        # RoI extractors hold no parameters: 7x7 for boxes, 14x14 for masks, levels 4..32.
        self.box_roi_pool = LegacyMultiScaleRoIAlign(7)
        self.mask_roi_pool = LegacyMultiScaleRoIAlign(14)

    def _detect(self, rois_boxes: torch.Tensor, scores: torch.Tensor, deltas: torch.Tensor,
                coder: LegacyBoxCoder, img_shape: tuple[int, int], scale_factor: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes = legacy_rescale_boxes(coder.decode(rois_boxes, deltas, max_shape=img_shape), scale_factor)
        return multiclass_nms(boxes, scores, self.test_cfg.score_thr, self.test_cfg.nms_iou,
                              self.test_cfg.max_per_img)

    def _mask_rois(self, detections: list[Detections], scale_factors: Sequence[float]) -> torch.Tensor:
        scaled = []
        for det, sf in zip(detections, scale_factors):
            # float32 round trip, as mmdetection v1 computed it (see Detections.mask_boxes).
            rois_boxes, det.mask_boxes = legacy_mask_boxes(det.boxes, sf)
            scaled.append(rois_boxes)
        return boxes_to_rois(scaled)

    @staticmethod
    def _select_label_channel(mask_probs: torch.Tensor, detections: list[Detections]) -> None:
        labels = torch.cat([d.labels for d in detections]) + 1  # channel 0 is background
        chosen = mask_probs[torch.arange(mask_probs.shape[0], device=mask_probs.device), labels]
        for det, part in zip(detections, chosen.split([len(d) for d in detections])):
            det.mask_probs = part


class MaskRoIHeads(_RoIHeadsBase):
    """Mask R-CNN: one box head ("4conv1fc" in the zoo's rows) and one FCN mask head."""

    def __init__(self, box_head: ConvFCBoxHead, mask_head: MaskHead, num_classes: int,
                 test_cfg: TestConfig | None = None) -> None:
        super().__init__(num_classes, test_cfg)
        self.box_head = box_head
        self.box_predictor = BoxPredictor(box_head.out_channels, num_classes, class_agnostic=False)
        self.mask_head = mask_head
        self.box_coder = LegacyBoxCoder(stds=MASK_RCNN_STDS)

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                img_shapes: Sequence[tuple[int, int]], scale_factors: Sequence[float],
                orig_sizes: Sequence[tuple[int, int]], with_masks: bool = True) -> list[Detections]:
        rois = boxes_to_rois(proposals)
        cls_logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, rois)))
        scores = torch.softmax(cls_logits.float(), dim=1)
        deltas = deltas.float()
        detections = []
        sizes = _split_sizes(proposals)
        for i, (r, s, d) in enumerate(zip(rois.split(sizes), scores.split(sizes), deltas.split(sizes))):
            boxes, det_scores, labels = self._detect(r[:, 1:], s, d, self.box_coder, img_shapes[i],
                                                     scale_factors[i])
            detections.append(Detections(tuple(orig_sizes[i]), boxes, det_scores, labels))
        if with_masks:
            self._predict_masks(features, detections, scale_factors)
        return detections

    def _predict_masks(self, features: list[torch.Tensor], detections: list[Detections],
                       scale_factors: Sequence[float]) -> None:
        mask_rois = self._mask_rois(detections, scale_factors)
        if mask_rois.shape[0] == 0:
            for det in detections:
                det.mask_probs = det.boxes.new_zeros((0, 28, 28))
            return
        logits = self.mask_head(self.mask_roi_pool(features, mask_rois))
        self._select_label_channel(torch.sigmoid(logits.float()), detections)

    # ------------------------------------------------------------------ training
    #: ``train_cfg.rcnn`` (None: the configs' MASK_RCNN_TRAIN_CFG); replace to experiment.
    train_cfg: RCNNTrainConfig | None = None

    def forward_train(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                      gt_boxes: Sequence[torch.Tensor], gt_classes: Sequence[torch.Tensor],
                      gt_masks: Sequence[torch.Tensor], img_shapes: Sequence[tuple[int, int]]
                      ) -> dict[str, torch.Tensor]:
        """mmdet v1 ``TwoStageDetector.forward_train`` after the RPN: sample RoIs, box and mask
        losses. ``gt_classes`` are class channels (label + 1); ``gt_masks`` per image
        ``(K_i, h, w)`` uint8 masks of the resized image (CPU)."""
        cfg = self.train_cfg or MASK_RCNN_TRAIN_CFG
        samples = sample_rois(proposals, gt_boxes, gt_classes, cfg)
        losses, _, _, _ = _train_stage(self, features, samples, self.box_head, self.box_predictor,
                                       self.mask_head, self.box_coder, gt_masks, cfg)
        return losses


class CascadeStage(nn.Module):
    """One Cascade stage: a 2-fc box head with class-agnostic regression and a mask head."""

    def __init__(self, box_head: ConvFCBoxHead, mask_head: MaskHead, num_classes: int,
                 stds: Sequence[float]) -> None:
        super().__init__()
        self.box_head = box_head
        self.box_predictor = BoxPredictor(box_head.out_channels, num_classes, class_agnostic=True)
        self.mask_head = mask_head
        self.box_coder = LegacyBoxCoder(stds=tuple(stds))


class CascadeRoIHeads(_RoIHeadsBase):
    """Cascade Mask R-CNN test path (mmdetection v1 ``CascadeRCNN.simple_test``).

    Each stage refines the RoIs of the previous one; the final class scores are the softmax
    of the *mean of the stages' raw logits*, the final boxes the last stage's deltas applied
    to the last stage's RoIs, and the masks the mean of the three heads' sigmoid maps.
    """

    def __init__(self, stages: Sequence[CascadeStage], num_classes: int,
                 test_cfg: TestConfig | None = None) -> None:
        super().__init__(num_classes, test_cfg)
        self.stages = nn.ModuleList(stages)

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                img_shapes: Sequence[tuple[int, int]], scale_factors: Sequence[float],
                orig_sizes: Sequence[tuple[int, int]], with_masks: bool = True) -> list[Detections]:
        sizes = _split_sizes(proposals)
        rois = boxes_to_rois(proposals)
        logits_sum = None
        deltas = None
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            cls_logits, deltas = stage.box_predictor(stage.box_head(self.box_roi_pool(features, rois)))
            cls_logits, deltas = cls_logits.float(), deltas.float()
            logits_sum = cls_logits if logits_sum is None else logits_sum + cls_logits
            if i < last:  # regress_by_class (class-agnostic): refine every RoI, clipped per image
                refined = [stage.box_coder.decode(r[:, 1:], d, max_shape=img_shapes[j])
                           for j, (r, d) in enumerate(zip(rois.split(sizes), deltas.split(sizes)))]
                rois = torch.cat([rois[:, :1], torch.cat(refined)], dim=1) if refined else rois
        assert logits_sum is not None and deltas is not None
        scores = torch.softmax(logits_sum / len(self.stages), dim=1)
        final_coder = self.stages[-1].box_coder
        detections = []
        for i, (r, s, d) in enumerate(zip(rois.split(sizes), scores.split(sizes), deltas.split(sizes))):
            boxes, det_scores, labels = self._detect(r[:, 1:], s, d, final_coder, img_shapes[i],
                                                     scale_factors[i])
            detections.append(Detections(tuple(orig_sizes[i]), boxes, det_scores, labels))
        if with_masks:
            mask_rois = self._mask_rois(detections, scale_factors)
            if mask_rois.shape[0] == 0:
                for det in detections:
                    det.mask_probs = det.boxes.new_zeros((0, 28, 28))
            else:
                mask_feats = self.mask_roi_pool(features, mask_rois)
                probs = sum(torch.sigmoid(stage.mask_head(mask_feats).float()) for stage in self.stages)
                self._select_label_channel(probs / len(self.stages), detections)
        return detections

    # ------------------------------------------------------------------ training
    #: per-stage ``train_cfg.rcnn`` and ``stage_loss_weights`` (None: the configs').
    train_cfgs: Sequence[RCNNTrainConfig] | None = None
    stage_loss_weights: Sequence[float] | None = None

    def forward_train(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                      gt_boxes: Sequence[torch.Tensor], gt_classes: Sequence[torch.Tensor],
                      gt_masks: Sequence[torch.Tensor], img_shapes: Sequence[tuple[int, int]]
                      ) -> dict[str, torch.Tensor]:
        """mmdet v1 ``CascadeRCNN.forward_train`` after the RPN. Stage i samples from the
        previous stage's refined RoIs (ground truths added as proposals dropped again), its
        losses are weighted by ``stage_loss_weights[i]`` and named ``s{i}.loss_*``."""
        cfgs = list(self.train_cfgs or CASCADE_TRAIN_CFGS)
        weights = list(self.stage_loss_weights or CASCADE_STAGE_LOSS_WEIGHTS)
        if len(cfgs) != len(self.stages) or len(weights) != len(self.stages):
            raise ValueError(f"{len(self.stages)} stages but {len(cfgs)} train configs and "
                             f"{len(weights)} loss weights")
        losses: dict[str, torch.Tensor] = {}
        last = len(self.stages) - 1
        for i, (stage, cfg, weight) in enumerate(zip(self.stages, cfgs, weights)):
            samples = sample_rois(proposals, gt_boxes, gt_classes, cfg)
            stage_losses, rois, labels, deltas = _train_stage(
                self, features, samples, stage.box_head, stage.box_predictor, stage.mask_head,
                stage.box_coder, gt_masks, cfg)
            for name, value in stage_losses.items():
                losses[f"s{i}.{name}"] = value * weight if "loss" in name else value
            if i < last:
                with torch.no_grad():
                    proposals = _refine_rois(rois, labels, deltas.detach().float(), samples,
                                             stage.box_coder, img_shapes)
        return losses


def _train_stage(heads: _RoIHeadsBase, features: list[torch.Tensor], samples: list[SamplingResult],
                 box_head: nn.Module, box_predictor: BoxPredictor, mask_head: nn.Module,
                 coder: LegacyBoxCoder, gt_masks: Sequence[torch.Tensor], cfg: RCNNTrainConfig
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Box and mask losses of one stage; also returns its RoIs, their class channels and deltas
    (for Cascade's refinement)."""
    rois = boxes_to_rois([s.boxes for s in samples]).to(features[0].device)
    cls_logits, deltas = box_predictor(box_head(heads.box_roi_pool(features, rois)))
    labels, bbox_targets = rcnn_targets(samples, coder)
    loss_cls, loss_bbox = box_head_loss(cls_logits, deltas, labels, bbox_targets,
                                        box_predictor.class_agnostic, cfg.smooth_l1_beta)
    # the mask head runs even without positives (zero loss) so every rank uses it under DDP
    pos_rois = boxes_to_rois([s.pos_boxes for s in samples]).to(features[0].device)
    mask_logits = mask_head(heads.mask_roi_pool(features, pos_rois))
    pos_labels = torch.cat([s.pos_gt_labels for s in samples if s.pos_gt_labels is not None]) \
        if samples else torch.zeros(0, dtype=torch.long, device=rois.device)
    targets = mask_targets(samples, gt_masks, cfg.mask_size)
    losses = {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "acc": accuracy(cls_logits.float(), labels),
              "loss_mask": mask_loss(mask_logits, targets, pos_labels)}
    return losses, rois, labels, deltas


def _refine_rois(rois: torch.Tensor, labels: torch.Tensor, deltas: torch.Tensor,
                 samples: Sequence[SamplingResult], coder: LegacyBoxCoder,
                 img_shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """mmdet v1 ``BBoxHead.refine_bboxes``: apply a stage's deltas to its sampled RoIs, clipped
    to each image, and drop the ground truths that were added as proposals."""
    if deltas.shape[1] != 4:  # class-specific regression: the deltas of the RoI's class
        cols = (labels[:, None] * 4 + torch.arange(4, device=labels.device)[None, :])
        deltas = deltas.gather(1, cols)
    refined, start = [], 0
    for s, shape in zip(samples, img_shapes):
        count = s.num_pos + int(s.neg_inds.numel())
        boxes = coder.decode(rois[start:start + count, 1:], deltas[start:start + count], max_shape=shape)
        keep = torch.ones(count, dtype=torch.bool, device=boxes.device)
        keep[: s.num_pos] = ~s.pos_is_gt.to(boxes.device)
        refined.append(boxes[keep])
        start += count
    return refined

"""Second-stage heads: Mask R-CNN's single box/mask stage and Cascade Mask R-CNN's three.

:class:`RoIHeads` declares what the detector calls, as torchvision's ``RoIHeads``:
``heads(features, proposals, image_shapes, scale_factors, orig_sizes, targets=None)`` returns
``(detections, losses)``; detections at test time, the loss terms in training (with
``targets``). Both heads reproduce what mmdetection v1's ``simple_test`` did with the released
weights:

* RoIs are pooled with the legacy multi-level RoIAlign (:mod:`.roi_align`): a RoI goes to
  level ``floor(log2(sqrt(area) / 56 + 1e-6))`` clamped to 0..3, boxes are inclusive pixels
  (``x2 + 1``), 2 samples per bin, no half-pixel shift, RoIs under a pixel not enlarged;
* class scores are a softmax over background + classes (channel 0 is the background);
* boxes are decoded per image against the resized image (clipped to ``[0, w - 1] x
  [0, h - 1]``) and divided by the scale factor *before* the per-class NMS, which so runs in
  original-image pixels (+1 IoU): scores strictly above ``score_thr`` (0.05), NMS at 0.5, at
  most 100 per image (sorted by score only when more remain, :func:`.multiclass_nms`);
* the mask RoIs are the final boxes times the scale factor (in float32, kept in
  ``Detections.mask_boxes``), and the mask of a detection is the sigmoid of its label's
  channel of the 28x28 logits;
* Cascade: each stage refines the RoIs of the previous one with class-agnostic deltas
  (stds 0.1/0.2, 0.05/0.1, 0.033/0.067); the final scores are the softmax of the *mean of the
  stages' raw logits*, the final boxes the last stage's deltas applied to the last stage's
  RoIs, and the masks the mean of the three mask heads' sigmoid maps.

Images of a batch share one pass through the heads (every head op is per RoI).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from .box_coder import LegacyBoxCoder
from .config import (CASCADE_STAGE_LOSS_WEIGHTS, CASCADE_TRAIN_CFGS, MASK_RCNN_TRAIN_CFG, RCNN_TEST_CFG,
                     RCNNTestConfig, RCNNTrainConfig)
from .detections import Detections
from .heads import BoxPredictor, ConvFCBoxHead, MaskHead
from .losses import accuracy, box_head_loss, mask_loss
from .postprocess import legacy_mask_boxes, legacy_rescale_boxes, multiclass_nms
from .roi_align import LegacyMultiScaleRoIAlign
from .targets import SamplingResult, mask_targets, rcnn_targets, sample_rois

__all__ = ["RoIHeads", "MaskRoIHeads", "CascadeStage", "CascadeRoIHeads", "boxes_to_rois", "CASCADE_STDS"]

#: Box-delta standard deviations of the three Cascade stages.
CASCADE_STDS = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
MASK_RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image (K_i, 4) boxes (or (K_i, 5) proposals, score last) -> (sum K_i, 5) RoIs
    [image index, x1, y1, x2, y2]."""
    rois = []
    for i, b in enumerate(boxes):
        idx = torch.full((b.shape[0], 1), float(i), dtype=b.dtype, device=b.device)
        rois.append(torch.cat([idx, b[:, :4]], dim=1))
    if not rois:
        return torch.zeros((0, 5))
    return torch.cat(rois, dim=0)


def _split_sizes(boxes: Sequence[torch.Tensor]) -> list[int]:
    return [int(b.shape[0]) for b in boxes]


class RoIHeads(nn.Module, ABC):
    """What a detector's second stage offers: detections at test time, losses in training.

    Args:
        num_classes: object classes, without the background.
        test_cfg: score threshold, NMS and detections per image.
        train_cfgs: assignment and sampling of each stage (one per stage).
        stage_loss_weights: the weight of each stage's loss terms.
    """

    def __init__(self, num_classes: int, num_stages: int, test_cfg: RCNNTestConfig,
                 train_cfgs: Sequence[RCNNTrainConfig], stage_loss_weights: Sequence[float]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.configure(test_cfg, train_cfgs, stage_loss_weights)
        # RoI extractors hold no parameters: 7x7 for boxes, 14x14 for masks, levels 4..32.
        self.box_roi_pool = LegacyMultiScaleRoIAlign(7)
        self.mask_roi_pool = LegacyMultiScaleRoIAlign(14)

    def configure(self, test_cfg: RCNNTestConfig, train_cfgs: Sequence[RCNNTrainConfig],
                  stage_loss_weights: Sequence[float]) -> None:
        """Set the test and training settings (one train config and loss weight per stage)."""
        if len(train_cfgs) != self.num_stages or len(stage_loss_weights) != self.num_stages:
            raise ValueError(f"{self.num_stages} stage(s) but {len(train_cfgs)} train configs and "
                             f"{len(stage_loss_weights)} loss weights")
        self.test_cfg = test_cfg
        self.train_cfgs = tuple(train_cfgs)
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)

    def forward(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: Sequence[tuple[int, int]], scale_factors: Sequence[float],
                orig_sizes: Sequence[tuple[int, int]], targets: Sequence[dict[str, torch.Tensor]] | None = None,
                with_masks: bool = True) -> tuple[list[Detections], dict[str, torch.Tensor]]:
        """``(detections, {})`` without targets, ``([], losses)`` with them.

        Args:
            features: the FPN levels P2-P5.
            proposals: per image ``(K_i, 4)`` boxes or ``(K_i, 5)`` RPN proposals, resized-image
                pixels.
            image_shapes: per image ``(h, w)`` after resizing, before padding.
            scale_factors, orig_sizes: per image the resize factor and original ``(h, w)``
                (detections come back in original-image pixels).
            targets: per image ``boxes`` ``(K, 4)`` float in resized-image pixels, ``labels``
                ``(K,)`` contiguous labels ``0..C-1`` and ``masks`` ``(K, h, w)`` uint8 (CPU).
            with_masks: compute the detections' mask probabilities.
        """
        if targets is None:
            return self.predict(features, proposals, image_shapes, scale_factors, orig_sizes,
                                with_masks=with_masks), {}
        return [], self.losses(features, proposals, targets, image_shapes)

    @abstractmethod
    def predict(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
                img_shapes: Sequence[tuple[int, int]], scale_factors: Sequence[float],
                orig_sizes: Sequence[tuple[int, int]], with_masks: bool = True) -> list[Detections]:
        """Detections of each image, in original-image pixels."""

    @abstractmethod
    def losses(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
               targets: Sequence[dict[str, torch.Tensor]], img_shapes: Sequence[tuple[int, int]]
               ) -> dict[str, torch.Tensor]:
        """The loss terms (``loss_*``, summed by the trainer) and logged values (``acc``)."""

    @abstractmethod
    def box_predictors(self) -> list[BoxPredictor]:
        """The box classifier and regressor of every stage."""

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

    def _predict_masks(self, features: list[torch.Tensor], detections: list[Detections],
                       scale_factors: Sequence[float], mask_heads: Sequence[nn.Module]) -> None:
        """Each detection's mask probabilities: the sigmoid of its label's channel, averaged
        over ``mask_heads`` (Cascade's three; Mask R-CNN's one)."""
        mask_rois = self._mask_rois(detections, scale_factors)
        if mask_rois.shape[0] == 0:
            for det in detections:
                det.mask_probs = det.boxes.new_zeros((0, 28, 28))
            return
        mask_feats = self.mask_roi_pool(features, mask_rois)
        if len(mask_heads) == 1:
            probs = torch.sigmoid(mask_heads[0](mask_feats).float())
        else:
            probs = sum(torch.sigmoid(head(mask_feats).float()) for head in mask_heads) / len(mask_heads)
        labels = torch.cat([d.labels for d in detections]) + 1  # channel 0 is background
        chosen = probs[torch.arange(probs.shape[0], device=probs.device), labels]
        for det, part in zip(detections, chosen.split([len(d) for d in detections])):
            det.mask_probs = part


def _class_channels(targets: Sequence[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The targets' labels as class channels (label + 1: channel 0 is the background)."""
    return [t["labels"] + 1 for t in targets]


class MaskRoIHeads(RoIHeads):
    """Mask R-CNN: one box head ("4conv1fc" in the zoo's rows) and one FCN mask head."""

    def __init__(self, box_head: ConvFCBoxHead, mask_head: MaskHead, num_classes: int,
                 test_cfg: RCNNTestConfig = RCNN_TEST_CFG,
                 train_cfgs: Sequence[RCNNTrainConfig] = (MASK_RCNN_TRAIN_CFG,),
                 stage_loss_weights: Sequence[float] = (1.0,)) -> None:
        super().__init__(num_classes, 1, test_cfg, train_cfgs, stage_loss_weights)
        self.box_head = box_head
        self.box_predictor = BoxPredictor(box_head.out_channels, num_classes, class_agnostic=False)
        self.mask_head = mask_head
        self.box_coder = LegacyBoxCoder(stds=MASK_RCNN_STDS)

    def box_predictors(self) -> list[BoxPredictor]:
        return [self.box_predictor]

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
            self._predict_masks(features, detections, scale_factors, [self.mask_head])
        return detections

    def losses(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
               targets: Sequence[dict[str, torch.Tensor]], img_shapes: Sequence[tuple[int, int]]
               ) -> dict[str, torch.Tensor]:
        """mmdet v1 ``TwoStageDetector.forward_train`` after the RPN: sample RoIs, box and mask
        losses (``loss_cls``, ``loss_bbox``, ``loss_mask``; ``acc`` logged only)."""
        (cfg,), (weight,) = self.train_cfgs, self.stage_loss_weights
        gt_boxes = [t["boxes"] for t in targets]
        samples = sample_rois(proposals, gt_boxes, _class_channels(targets), cfg)
        losses, _, _, _ = _train_stage(self, features, samples, self.box_head, self.box_predictor,
                                       self.mask_head, self.box_coder, [t["masks"] for t in targets], cfg)
        return _weighted(losses, weight)


class CascadeStage(nn.Module):
    """One Cascade stage: a 2-fc box head with class-agnostic regression and a mask head."""

    def __init__(self, box_head: ConvFCBoxHead, mask_head: MaskHead, num_classes: int,
                 stds: Sequence[float]) -> None:
        super().__init__()
        self.box_head = box_head
        self.box_predictor = BoxPredictor(box_head.out_channels, num_classes, class_agnostic=True)
        self.mask_head = mask_head
        self.box_coder = LegacyBoxCoder(stds=tuple(stds))


class CascadeRoIHeads(RoIHeads):
    """Cascade Mask R-CNN (mmdetection v1 ``CascadeRCNN``): stages that refine the RoIs in turn
    (see the module docstring for how their outputs combine at test time)."""

    def __init__(self, stages: Sequence[CascadeStage], num_classes: int,
                 test_cfg: RCNNTestConfig = RCNN_TEST_CFG,
                 train_cfgs: Sequence[RCNNTrainConfig] = CASCADE_TRAIN_CFGS,
                 stage_loss_weights: Sequence[float] = CASCADE_STAGE_LOSS_WEIGHTS) -> None:
        super().__init__(num_classes, len(stages), test_cfg, train_cfgs, stage_loss_weights)
        self.stages = nn.ModuleList(stages)

    def box_predictors(self) -> list[BoxPredictor]:
        return [stage.box_predictor for stage in self.stages]

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
            self._predict_masks(features, detections, scale_factors, [stage.mask_head for stage in self.stages])
        return detections

    def losses(self, features: list[torch.Tensor], proposals: list[torch.Tensor],
               targets: Sequence[dict[str, torch.Tensor]], img_shapes: Sequence[tuple[int, int]]
               ) -> dict[str, torch.Tensor]:
        """mmdet v1 ``CascadeRCNN.forward_train`` after the RPN. Stage i samples from the
        previous stage's refined RoIs (ground truths added as proposals dropped again), its
        losses are weighted by ``stage_loss_weights[i]`` and named ``s{i}.loss_*``."""
        gt_boxes, gt_classes = [t["boxes"] for t in targets], _class_channels(targets)
        gt_masks = [t["masks"] for t in targets]
        losses: dict[str, torch.Tensor] = {}
        last = len(self.stages) - 1
        for i, (stage, cfg, weight) in enumerate(zip(self.stages, self.train_cfgs, self.stage_loss_weights)):
            samples = sample_rois(proposals, gt_boxes, gt_classes, cfg)
            stage_losses, rois, labels, deltas = _train_stage(
                self, features, samples, stage.box_head, stage.box_predictor, stage.mask_head,
                stage.box_coder, gt_masks, cfg)
            losses.update({f"s{i}.{name}": value for name, value in _weighted(stage_losses, weight).items()})
            if i < last:
                with torch.no_grad():
                    proposals = _refine_rois(rois, labels, deltas.detach().float(), samples,
                                             stage.box_coder, img_shapes)
        return losses


def _weighted(losses: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """The ``loss_*`` terms times ``weight`` (others, such as ``acc``, as they are)."""
    return {name: value * weight if "loss" in name else value for name, value in losses.items()}


def _train_stage(heads: RoIHeads, features: list[torch.Tensor], samples: list[SamplingResult],
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

"""The test-time and training settings of the released configs, pinned by hand-built inputs.

mmdetection v1's configs (``configs/attn_norm/*.py``) set, for every row:

* ``test_cfg.rcnn``: score > 0.05, per-class NMS at IoU 0.5, at most 100 detections per image;
* ``test_cfg.rpn``: per level the top 1000 (``nms_pre``), NMS at 0.7, the first 1000 survivors
  (``nms_post``), then the best 1000 over all levels (``max_num``);
* ``train_cfg.rpn_proposal``: the same with 2000;
* ``train_cfg.rcnn``: IoU 0.5 (Cascade's stages 0.5, 0.6, 0.7), 512 RoIs, a quarter positive.

Each setting is checked on the detector ``create_model`` builds (on the meta device: no weights
are made) by feeding its RoI heads or RPN hand-built scores and boxes whose outcome changes on
either side of the value: two boxes with +1 IoU 0.550 are one detection at NMS 0.5 and two at
0.6, a pair at 0.449 stays two at 0.5 and becomes one at 0.4, and so on. The slow parity test
also depends on them, but only these fail fast and say which setting moved.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anzoo.factory import create_model
from anzoo.models.detection.box_ops import legacy_box_iou
from anzoo.models.detection.config import (CASCADE_TRAIN_CFGS, MASK_RCNN_TRAIN_CFG, RPN_TARGET_CFG, RPN_TEST_CFG,
                                           RPN_TRAIN_CFG)
from anzoo.models.detection.targets import sample_rois

NUM_CLASSES = 80


@pytest.fixture(scope="module")
def detectors() -> dict[str, nn.Module]:
    """The zoo's Mask R-CNN and Cascade Mask R-CNN, built without weights."""
    with torch.device("meta"):
        return {name: create_model(model_id, device=torch.device("meta"))
                for name, model_id in (("mask_rcnn", "r50-bn"), ("cascade", "cascade-r101-bn"))}


# --------------------------------------------------------------------------- R-CNN (test_cfg.rcnn)
class FixedBoxPredictor(nn.Module):
    """Class scores ``probs`` (through the heads' softmax: logits = log p) and zero deltas."""

    def __init__(self, probs: torch.Tensor, class_agnostic: bool) -> None:
        super().__init__()
        self.logits = probs.log()
        self.delta_columns = 4 if class_agnostic else 4 * probs.shape[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.shape[0] == self.logits.shape[0], "one row of scores per RoI"
        return self.logits, torch.zeros(self.logits.shape[0], self.delta_columns)


def rcnn_detect(model: nn.Module, boxes: list[list[float]], class_probs: list[dict[int, float]],
                image: tuple[int, int] = (400, 800)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's RoI heads on proposals ``boxes`` whose classifier gives ``class_probs``
    (contiguous label -> probability; the rest goes to the background), zero box deltas,
    scale factor 1: returns the detections' boxes, scores and labels."""
    probs = torch.full((len(boxes), NUM_CLASSES + 1), 1e-7)
    for row, given in enumerate(class_probs):
        for label, p in given.items():
            probs[row, label + 1] = p
        probs[row, 0] = 1 - probs[row, 1:].sum()
    heads = model.roi_heads
    stages = list(heads.stages) if hasattr(heads, "stages") else [heads]
    originals = [(stage.box_head, stage.box_predictor) for stage in stages]
    try:  # (monkeypatch cannot restore a submodule: it is not in the instance __dict__)
        for stage in stages:
            stage.box_head = nn.Identity()
            stage.box_predictor = FixedBoxPredictor(probs, class_agnostic=stage is not heads)
        h, w = image
        features = [torch.zeros(1, 1, h // s, w // s) for s in (4, 8, 16, 32)]
        (det,) = heads.predict(features, [torch.tensor(boxes, dtype=torch.float32)], [image], [1.0], [image],
                               with_masks=False)
    finally:
        for stage, (box_head, box_predictor) in zip(stages, originals):
            stage.box_head, stage.box_predictor = box_head, box_predictor
    return det.boxes, det.scores, det.labels


def shifted(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


A = [0.0, 0.0, 99.0, 99.0]  # 100 x 100 pixels
B = [300.0, 0.0, 399.0, 99.0]


def test_pairs_for_the_nms_cases_have_the_overlaps_they_claim() -> None:
    iou = legacy_box_iou(torch.tensor([A, A, B, B]), torch.tensor([shifted(A, 29), shifted(A, 14),
                                                                   shifted(B, 38), shifted(B, 21)])).diagonal()
    assert iou.tolist() == pytest.approx([71 / 129, 86 / 114, 62 / 138, 79 / 121])
    assert [round(v, 3) for v in iou.tolist()] == [0.550, 0.754, 0.449, 0.653]


@pytest.mark.parametrize("detector", ["mask_rcnn", "cascade"])
def test_rcnn_nms_is_0_5(detectors, detector: str) -> None:
    model = detectors[detector]
    assert model.roi_heads.test_cfg.nms_iou == 0.5
    # IoU 0.550 (A): the second box is suppressed at 0.5 (it would stay at 0.6);
    # IoU 0.449 (B): both stay at 0.5 (one would go at 0.4)
    boxes = [A, shifted(A, 29), B, shifted(B, 38)]
    out_boxes, scores, labels = rcnn_detect(model, boxes, [{0: 0.9}, {0: 0.8}, {0: 0.7}, {0: 0.6}])
    assert out_boxes.tolist() == [A, B, shifted(B, 38)]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert labels.tolist() == [0, 0, 0]
    # other classes never suppress each other
    _, scores, labels = rcnn_detect(model, [A, shifted(A, 29)], [{0: 0.9}, {1: 0.8}])
    assert labels.tolist() == [0, 1]


@pytest.mark.parametrize("detector", ["mask_rcnn", "cascade"])
def test_rcnn_score_threshold_is_above_0_05(detectors, detector: str) -> None:
    model = detectors[detector]
    assert model.roi_heads.test_cfg.score_thr == 0.05
    boxes = [[100.0 * i, 0.0, 100.0 * i + 49, 49.0] for i in range(4)]
    probs = [{0: 0.0502}, {0: 0.0498}, {1: 0.0505}, {1: 0.0495}]
    _, scores, labels = rcnn_detect(model, boxes, probs)
    assert scores.tolist() == pytest.approx([0.0502, 0.0505]) and labels.tolist() == [0, 1]


@pytest.mark.parametrize("detector", ["mask_rcnn", "cascade"])
def test_rcnn_keeps_the_best_100_per_image(detectors, detector: str) -> None:
    model = detectors[detector]
    assert model.roi_heads.test_cfg.max_per_img == 100
    # 101 disjoint boxes, one class, scores 0.5 .. 0.6: the lowest one goes
    boxes = [[20.0 * (i % 30), 20.0 * (i // 30), 20.0 * (i % 30) + 9, 20.0 * (i // 30) + 9] for i in range(101)]
    probs = [{3: 0.5 + 0.001 * i} for i in range(101)]
    _, scores, _ = rcnn_detect(model, boxes, probs)
    assert len(scores) == 100
    assert scores.tolist() == pytest.approx([0.5 + 0.001 * i for i in range(100, 0, -1)])
    # 100 survivors are not cut (nor sorted: class / row order, as mmdetection v1)
    _, scores, _ = rcnn_detect(model, boxes[:100], probs[:100])
    assert scores.tolist() == pytest.approx([0.5 + 0.001 * i for i in range(100)])


# --------------------------------------------------------------------------- RPN (test_cfg.rpn, rpn_proposal)
def logit(p: float) -> float:
    return math.log(p / (1 - p))


def grid(count: int, step: int = 5, columns: int = 50) -> list[list[float]]:
    """``count`` disjoint 4 x 4 boxes on a grid (no two overlap)."""
    return [[float(step * (i % columns)), float(step * (i // columns)), float(step * (i % columns) + 3),
             float(step * (i // columns) + 3)] for i in range(count)]


def rpn_proposals(model: nn.Module, levels: list[tuple[list[list[float]], list[float]]],
                  monkeypatch: pytest.MonkeyPatch, training: bool = False,
                  image: tuple[int, int] = (400, 800)) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's RPN on hand-built levels: per level its anchors and objectness probabilities
    (one anchor per location, zero deltas: each proposal is its anchor)."""
    objectness = [torch.tensor([logit(p) for p in probs]).reshape(1, 1, 1, -1) for _, probs in levels]
    deltas = [torch.zeros(1, 4, 1, len(probs)) for _, probs in levels]
    anchors = [torch.tensor(boxes, dtype=torch.float32) for boxes, _ in levels]
    rpn = model.rpn
    monkeypatch.setattr(rpn, "head_outputs", lambda features: (objectness, deltas))
    monkeypatch.setattr(rpn, "anchors", lambda features: anchors)
    monkeypatch.setattr(rpn, "training", training)
    (proposals,), _ = rpn([torch.zeros(1)] * len(levels), [image])
    return proposals[:, :4], proposals[:, 4]


def decreasing(count: int) -> list[float]:
    """Distinct objectness probabilities, highest first."""
    return [0.99 - 0.98 * i / count for i in range(count)]


@pytest.mark.parametrize("training", [False, True], ids=["test", "train"])
def test_rpn_nms_is_0_7(detectors, training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    model = detectors["mask_rcnn"]
    cfg = model.rpn.train_cfg if training else model.rpn.test_cfg
    assert cfg.nms_thr == 0.7 and not cfg.nms_across_levels and cfg.min_bbox_size == 0
    # IoU 0.754: suppressed at 0.7 (kept at 0.8); IoU 0.653: kept at 0.7 (suppressed at 0.6)
    anchors = [A, shifted(A, 14), B, shifted(B, 21)]
    boxes, scores = rpn_proposals(model, [(anchors, [0.9, 0.8, 0.7, 0.6])], monkeypatch, training)
    assert boxes.tolist() == [A, B, shifted(B, 21)]
    assert scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    # no NMS across levels: the same box on another level stays
    boxes, _ = rpn_proposals(model, [([A], [0.9]), ([shifted(A, 14)], [0.8])], monkeypatch, training)
    assert len(boxes) == 2


@pytest.mark.parametrize("training,n", [(False, 1000), (True, 2000)], ids=["test", "train"])
def test_rpn_proposal_counts(detectors, training: bool, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """nms_pre = nms_post = max_num = n (1000 at test time, 2000 in training)."""
    model = detectors["mask_rcnn"]
    cfg = model.rpn.train_cfg if training else model.rpn.test_cfg
    assert (cfg.nms_pre, cfg.nms_post, cfg.max_num) == (n, n, n)
    assert model.rpn.test_cfg == RPN_TEST_CFG and model.rpn.train_cfg == RPN_TRAIN_CFG
    disjoint = grid(n + n // 2)
    # nms_pre: a level whose best n anchors are n / 2 pairs of equal boxes (one of each pair
    # survives the NMS), followed by n / 5 more distinct boxes: the top-n cut before the NMS
    # leaves n / 2 proposals (a larger cut would let the last n / 5 in, a smaller one fewer)
    pairs = [box for box in disjoint[: n // 2] for _ in range(2)]
    level = pairs + disjoint[n // 2: n // 2 + n // 5]
    boxes, _ = rpn_proposals(model, [(level, decreasing(len(level)))], monkeypatch, training)
    assert len(boxes) == n // 2
    # nms_post and max_num: n disjoint boxes all survive; on two levels the best n of 2n remain
    boxes, scores = rpn_proposals(model, [(disjoint[:n], decreasing(n))], monkeypatch, training)
    assert len(boxes) == n
    two = [(disjoint[:n], decreasing(n)), (disjoint[:n], [p - 0.005 for p in decreasing(n)])]
    boxes, scores = rpn_proposals(model, two, monkeypatch, training)
    assert len(boxes) == n
    assert torch.all(scores[:-1] >= scores[1:])  # sorted by decreasing score


# --------------------------------------------------------------------------- training assignment
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_rcnn_training_thresholds_and_sample_sizes(detectors, stage: int) -> None:
    heads = detectors["mask_rcnn"].roi_heads if stage == 0 else detectors["cascade"].roi_heads
    cfg = heads.train_cfgs[stage]
    threshold = (0.5, 0.6, 0.7)[stage]
    assert (cfg.pos_iou_thr, cfg.neg_iou_thr, cfg.min_pos_iou) == (threshold,) * 3
    assert (cfg.num_samples, cfg.pos_fraction, cfg.add_gt_as_proposals) == (512, 0.25, True)
    assert heads.train_cfgs == ((MASK_RCNN_TRAIN_CFG,) if stage == 0 else CASCADE_TRAIN_CFGS)
    # one ground truth; a proposal just above the threshold, one just below, 599 far away
    gt = torch.tensor([[0.0, 0.0, 99.0, 99.0]])
    # shifts along x giving +1 IoU (100 - d) / (100 + d) just above / below the threshold
    above = max(d for d in range(60) if (100 - d) / (100 + d) > threshold)
    below = min(d for d in range(60) if (100 - d) / (100 + d) < threshold)
    far = [[300.0 + i, 300.0, 310.0 + i, 310.0] for i in range(599)]
    proposals = torch.tensor([shifted(gt[0].tolist(), above), shifted(gt[0].tolist(), below)] + far)
    torch.manual_seed(0)
    (sample,) = sample_rois([proposals], [gt], [torch.tensor([1])], cfg)
    positives = sample.pos_boxes.tolist()
    assert positives == [gt[0].tolist(), proposals[0].tolist()]  # the ground truth is a proposal too
    assert proposals[1].tolist() in sample.neg_boxes.tolist()
    assert sample.neg_inds.numel() == 512 - 2  # the sample is filled up to 512 with negatives
    # 200 positives: a quarter of 512 is sampled
    many = torch.tensor([shifted(gt[0].tolist(), d / 100) for d in range(200)] + far)
    (sample,) = sample_rois([many], [gt], [torch.tensor([1])], cfg)
    assert sample.num_pos == 128 and sample.neg_inds.numel() == 512 - 128


def test_rpn_training_targets_config() -> None:
    """``train_cfg.rpn``: positives above IoU 0.7, negatives below 0.3, 256 anchors, half positive."""
    assert (RPN_TARGET_CFG.pos_iou_thr, RPN_TARGET_CFG.neg_iou_thr, RPN_TARGET_CFG.min_pos_iou) == (0.7, 0.3, 0.3)
    assert (RPN_TARGET_CFG.num_samples, RPN_TARGET_CFG.pos_fraction, RPN_TARGET_CFG.allowed_border) == (256, 0.5, 0)

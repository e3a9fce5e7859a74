"""mmdetection v1 RPN proposal selection (rpn_head.py get_bboxes_single) on hand-built cases."""
from __future__ import annotations

import math

import pytest
import torch

from anzoo.models.detection.box_coder import LegacyBoxCoder
from anzoo.models.detection.config import RPN_TEST_CFG, RPNProposalConfig
from anzoo.models.detection.rpn import LegacyRPN, select_proposals


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def _level(scores: list[float], width: int) -> torch.Tensor:
    """(1, 1, 1, W) logits of a 1-row level with one anchor per location."""
    return torch.tensor([logit(p) for p in scores]).reshape(1, 1, 1, width)


def _zero_deltas(width: int) -> torch.Tensor:
    return torch.zeros(1, 4, 1, width)


def test_hand_built_selection() -> None:
    # level 0: three locations; a1 overlaps a0 (+1 IoU 90/110 = 0.82 > 0.7)
    anchors0 = torch.tensor([[0.0, 0, 9, 9], [1.0, 0, 10, 9], [20.0, 0, 29, 9]])
    # level 1: one location with the same box as a0: no NMS across levels, it survives
    anchors1 = torch.tensor([[0.0, 0, 9, 9]])
    objectness = [_level([0.5, 0.9, 0.3], 3), _level([0.7], 1)]
    deltas = [_zero_deltas(3), _zero_deltas(1)]
    cfg = RPNProposalConfig(nms_pre=2, nms_post=10, max_num=10, nms_thr=0.7)
    boxes, scores = select_proposals(objectness, deltas, [anchors0, anchors1], [(8, 30)], LegacyBoxCoder(), cfg)
    # level 0: top 2 by score = a1 (.9), a0 (.5); a0 suppressed by a1; a2 dropped by nms_pre.
    # boxes clipped to y <= 8 - 1 = 7
    # approx (relative 1e-6): float32 scores vs the decimals, measured <= 2.4e-8 apart on every kernel choice
    assert scores[0].tolist() == pytest.approx([0.9, 0.7])
    assert boxes[0].tolist() == [[1, 0, 10, 7], [0, 0, 9, 7]]
    # max_num keeps the best over all levels
    cfg1 = RPNProposalConfig(nms_pre=2, nms_post=10, max_num=1, nms_thr=0.7)
    boxes, scores = select_proposals(objectness, deltas, [anchors0, anchors1], [(8, 30)], LegacyBoxCoder(), cfg1)
    assert scores[0].tolist() == pytest.approx([0.9]) and boxes[0].tolist() == [[1, 0, 10, 7]]
    # without the nms_pre cut, a2 survives as well
    cfg3 = RPNProposalConfig(nms_pre=3, nms_post=10, max_num=10, nms_thr=0.7)
    _, scores = select_proposals(objectness, deltas, [anchors0, anchors1], [(8, 30)], LegacyBoxCoder(), cfg3)
    assert scores[0].tolist() == pytest.approx([0.9, 0.7, 0.3])


def test_nms_post_takes_index_order_when_level_is_not_cut() -> None:
    # a level with no more anchors than nms_pre keeps anchor order; the NMS kernel returns
    # survivors in index order, so nms_post keeps the first anchors, not the best ones
    anchors = torch.tensor([[0.0, 0, 9, 9], [20.0, 0, 29, 9], [40.0, 0, 49, 9]])
    objectness = [_level([0.2, 0.3, 0.9], 3)]
    cfg = RPNProposalConfig(nms_pre=5, nms_post=2, max_num=10, nms_thr=0.7)
    boxes, scores = select_proposals(objectness, [_zero_deltas(3)], [anchors], [(20, 60)], LegacyBoxCoder(), cfg)
    assert scores[0].tolist() == pytest.approx([0.3, 0.2])
    # with the top-k cut active (nms_pre < count) the order is by score
    cfg = RPNProposalConfig(nms_pre=3 - 1, nms_post=1, max_num=10, nms_thr=0.7)
    _, scores = select_proposals(objectness, [_zero_deltas(3)], [anchors], [(20, 60)], LegacyBoxCoder(), cfg)
    assert scores[0].tolist() == pytest.approx([0.9])


def test_zero_size_boxes_kept_and_min_size_filter() -> None:
    # an anchor entirely outside the image clips to a zero-size box at the corner
    anchors = torch.tensor([[100.0, 100, 120, 120], [0.0, 0, 9, 9]])
    objectness = [_level([0.9, 0.8], 2)]
    boxes, scores = select_proposals(
        objectness, [_zero_deltas(2)], [anchors], [(20, 30)], LegacyBoxCoder(), RPN_TEST_CFG
    )
    assert boxes[0].tolist() == [[29, 19, 29, 19], [0, 0, 9, 9]]
    cfg = RPNProposalConfig(min_bbox_size=2)
    boxes, _ = select_proposals(objectness, [_zero_deltas(2)], [anchors], [(20, 30)], LegacyBoxCoder(), cfg)
    assert boxes[0].tolist() == [[0, 0, 9, 9]]


def test_decoding_uses_deltas_in_anchor_layout() -> None:
    anchors = torch.tensor([[0.0, 0, 9, 9], [20.0, 0, 29, 9]])
    objectness = [_level([0.9, 0.8], 2)]
    deltas = torch.zeros(1, 4, 1, 2)
    deltas[0, 0, 0, 1] = 0.5  # dx of the second location: centre + 5 px
    boxes, _ = select_proposals(objectness, [deltas], [anchors], [(20, 60)], LegacyBoxCoder(), RPN_TEST_CFG)
    assert boxes[0].tolist() == [[0, 0, 9, 9], [25, 0, 34, 9]]


def _random_inputs(batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    sizes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    objectness = [torch.randn(batch, 3, h, w, generator=gen) for h, w in sizes]
    deltas = [torch.randn(batch, 12, h, w, generator=gen) * 0.3 for h, w in sizes]
    return sizes, objectness, deltas


def test_batch_equals_single_images() -> None:
    rpn = LegacyRPN(in_channels=4)
    sizes, objectness, deltas = _random_inputs(2, 0)
    anchors = rpn.anchor_generator.grid_anchors(sizes)
    shapes = [(45, 60), (38, 64)]
    cfg = RPNProposalConfig(nms_pre=100, nms_post=60, max_num=120, nms_thr=0.7)
    boxes, scores = select_proposals(objectness, deltas, anchors, shapes, rpn.box_coder, cfg)
    for i in range(2):
        one_boxes, one_scores = select_proposals(
            [o[i : i + 1] for o in objectness], [d[i : i + 1] for d in deltas], anchors, [shapes[i]], rpn.box_coder, cfg
        )
        assert torch.equal(boxes[i], one_boxes[0]) and torch.equal(scores[i], one_scores[0])
        assert 0 < boxes[i].shape[0] <= 120
        assert torch.all(scores[i][1:] <= scores[i][:-1])
        h, w = shapes[i]
        assert boxes[i][:, [0, 2]].max() <= w - 1 and boxes[i][:, [1, 3]].max() <= h - 1 and boxes[i].min() >= 0


def _stable_top(scores: torch.Tensor, k: int) -> list[int]:
    """The top ``k`` indices, equal scores by increasing index (plain Python)."""
    return sorted(range(scores.numel()), key=lambda i: (-scores[i].item(), i))[:k]


@pytest.mark.parametrize("tied", [False, True], ids=["random", "saturated"])
def test_matches_per_level_reference_loop(tied: bool) -> None:
    """The batched selection equals a direct per-level transcription of get_bboxes_single,
    also when most scores are equal (logits past float32's sigmoid saturation, as a
    confident RPN gives): ties go to the lower anchor index, in the top-k and in the NMS."""
    from helpers.legacy_kernels import kernel_nms

    rpn = LegacyRPN(in_channels=4)
    sizes, objectness, deltas = _random_inputs(1, 1)
    if tied:  # sigmoid(x) is exactly 1.0 in float32 for x > 17; a quarter stay distinct
        objectness = [torch.where(o > -0.7, o + 30.0, o) for o in objectness]
    anchors = rpn.anchor_generator.grid_anchors(sizes)
    cfg = RPNProposalConfig(nms_pre=150, nms_post=40, max_num=60, nms_thr=0.7)
    shape = (47, 63)
    got_boxes, got_scores = select_proposals(objectness, deltas, anchors, [shape], rpn.box_coder, cfg)
    props, props_scores = [], []
    for logits, reg, anc in zip(objectness, deltas, anchors):
        scores = logits[0].permute(1, 2, 0).reshape(-1).double().sigmoid().float()
        reg = reg[0].permute(1, 2, 0).reshape(-1, 4)
        if scores.numel() > cfg.nms_pre:
            top = torch.tensor(_stable_top(scores, cfg.nms_pre))
            scores, reg, anc = scores[top], reg[top], anc[top]
        boxes = rpn.box_coder.decode(anc, reg, shape)
        keep = sorted(kernel_nms(boxes.tolist(), scores.tolist(), cfg.nms_thr))[: cfg.nms_post]
        props.append(boxes[keep])
        props_scores.append(scores[keep])
    all_scores = torch.cat(props_scores)
    if tied:
        assert (all_scores == 1.0).sum() > cfg.max_num  # the cut falls among equal scores
    top = torch.tensor(_stable_top(all_scores, cfg.max_num))
    assert torch.equal(got_scores[0], all_scores[top])
    assert torch.equal(got_boxes[0], torch.cat(props)[top])


def test_legacy_rpn_head_layout_and_forward() -> None:
    rpn = LegacyRPN(in_channels=4).eval()
    assert sorted(rpn.state_dict()) == sorted(
        ["head.conv.0.0.weight", "head.conv.0.0.bias", "head.cls_logits.weight", "head.cls_logits.bias",
         "head.bbox_pred.weight", "head.bbox_pred.bias"]
    )
    assert rpn.head.cls_logits.out_channels == 3 and rpn.head.bbox_pred.out_channels == 12
    assert rpn.proposal_cfg == RPN_TEST_CFG
    rpn.train()
    assert rpn.proposal_cfg.nms_pre == 2000 and rpn.proposal_cfg.max_num == 2000
    with pytest.raises(ValueError):
        rpn([torch.zeros(1, 4, 2, 2)] * 4, [(8, 8)])


def test_legacy_rpn_channel_layout_matches_anchors() -> None:
    # one level, stride 16, 2 x 3 locations; constant head: anchor a has logit (1, 2, 0)[a],
    # and bbox_pred channel 4 * 1 + 0 (dx of anchor 1, mmdet's rpn_reg layout) is 0.25
    cfg = RPNProposalConfig(nms_pre=1000, nms_post=1000, max_num=1000, nms_thr=1.0)
    rpn = LegacyRPN(in_channels=4, strides=(16,), test_cfg=cfg).eval()
    with torch.no_grad():
        for p in rpn.parameters():
            p.zero_()
        rpn.head.cls_logits.bias.copy_(torch.tensor([1.0, 2.0, 0.0]))
        rpn.head.bbox_pred.bias[4] = 0.25
        rpn.head.bbox_pred.bias[2] = 1.0  # dw of anchor 0
    (proposals,), _ = rpn([torch.randn(1, 4, 2, 3)], [(32, 48)])
    boxes, scores = [proposals[:, :4]], [proposals[:, 4]]
    assert boxes[0].shape == (18, 4)
    anchors = rpn.anchor_generator.grid_anchors([(2, 3)])[0]

    def expected(anchor: int, dx: float = 0.0, dw: float = 0.0) -> set[tuple[float, ...]]:
        d = torch.tensor([[dx, 0.0, dw, 0.0]]).expand(6, 4)
        return {tuple(b) for b in rpn.box_coder.decode(anchors[anchor::3], d, (32, 48)).tolist()}

    def got(p: float) -> set[tuple[float, ...]]:
        sel = (scores[0] - p).abs() < 1e-6
        assert sel.sum() == 6
        return {tuple(b) for b in boxes[0][sel].tolist()}

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert got(sig(2.0)) == expected(1, dx=0.25)
    assert got(sig(1.0)) == expected(0, dw=1.0)
    assert got(sig(0.0)) == expected(2)
    assert scores[0][:6].tolist() == pytest.approx([sig(2.0)] * 6)

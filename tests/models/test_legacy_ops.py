"""mmdetection v1 conventions: anchors, box coding, +1 IoU / NMS, RoI levels, RoIAlign.

Expected numbers are derived by hand from the reference formulas (written out in the
comments) or from plain-Python transcriptions of the reference CUDA kernels below.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from anzoo.models.detection.anchors import LegacyAnchorGenerator, legacy_base_anchors
from anzoo.models.detection.box_coder import LegacyBoxCoder
from anzoo.models.detection.box_ops import (
    descending_order,
    legacy_batched_nms,
    legacy_box_area,
    legacy_box_iou,
    legacy_nms,
    top_k,
)
from anzoo.models.detection.roi_align import (
    LegacyMultiScaleRoIAlign,
    legacy_roi_align,
    legacy_roi_align_torch,
    legacy_roi_sizes,
    map_roi_levels,
    to_inclusive_end,
)

from helpers.legacy_kernels import kernel_nms, kernel_roi_align


# ----------------------------------------------------------------------------- anchors
def test_base_anchors_stride_4_and_16() -> None:
    # stride 4: centre 1.5; ratio 0.5: h = 4*8*sqrt(.5) = 22.627, w = 4*8/sqrt(.5) = 45.255
    # x: 1.5 -/+ 0.5*(45.255-1) = -20.63 / 23.63 -> -21 / 24; y: 1.5 -/+ 10.81 -> -9 / 12
    # ratio 1: 32 x 32 -> 1.5 -/+ 15.5 = -14 / 17
    expected_4 = [[-21, -9, 24, 12], [-14, -14, 17, 17], [-9, -21, 12, 24]]
    # stride 16: centre 7.5; ratio .5: w = 181.02, h = 90.51 -> x 7.5 -/+ 90.01 = -82.51 / 97.51
    # -> -83 / 98; y 7.5 -/+ 44.75 -> -37 / 52; ratio 1: 128 -> 7.5 -/+ 63.5 = -56 / 71
    expected_16 = [[-83, -37, 98, 52], [-56, -56, 71, 71], [-37, -83, 52, 98]]
    assert legacy_base_anchors(4, (8,), (0.5, 1.0, 2.0)).tolist() == expected_4
    assert legacy_base_anchors(16, (8,), (0.5, 1.0, 2.0)).tolist() == expected_16
    gen = LegacyAnchorGenerator()
    assert gen.num_anchors == 3
    assert gen.base_anchors[0].tolist() == expected_4
    assert gen.base_anchors[2].tolist() == expected_16
    # stride 64, ratio 1: 512 px, centre 31.5 -> 31.5 -/+ 255.5
    assert gen.base_anchors[4][1].tolist() == [-224, -224, 287, 287]


def test_base_anchors_scale_major_order() -> None:
    # every ratio with all its scales: (r0, s0), (r0, s1), (r1, s0), ...
    anchors = legacy_base_anchors(8, (1, 2), (1.0, 4.0))
    # ratio 1, scale 1: 8x8 centred 3.5 -> 0..7; scale 2: 16x16 -> -4..11
    # ratio 4: h = 2 * base * scale, w = base * scale / 2
    assert anchors.tolist() == [[0, 0, 7, 7], [-4, -4, 11, 11], [2, -4, 5, 11], [0, -12, 7, 19]]


def test_grid_anchors_layout_y_x_anchor_no_half_stride() -> None:
    gen = LegacyAnchorGenerator(strides=(16,), scales=(8,), ratios=(0.5, 1.0, 2.0))
    (anchors,) = gen.grid_anchors([(2, 3)], device="cpu")
    assert anchors.shape == (2 * 3 * 3, 4) and anchors.dtype == torch.float32
    base = gen.base_anchors[0]
    for y in range(2):
        for x in range(3):
            for a in range(3):
                shift = torch.tensor([16.0 * x, 16.0 * y, 16.0 * x, 16.0 * y])
                assert torch.equal(anchors[(y * 3 + x) * 3 + a], base[a] + shift)


def test_grid_anchors_multi_level_shapes() -> None:
    gen = LegacyAnchorGenerator()
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    anchors = gen.grid_anchors(sizes, device="cpu")
    assert [a.shape[0] for a in anchors] == [h * w * 3 for h, w in sizes]
    # last location of level 1 (stride 8): (y, x) = (3, 4), ratio 2 anchor
    assert anchors[1][-1].tolist() == (gen.base_anchors[1][2] + torch.tensor([32.0, 24, 32, 24])).tolist()
    with pytest.raises(ValueError):
        gen.grid_anchors(sizes[:4])


def test_valid_flags() -> None:
    gen = LegacyAnchorGenerator(strides=(4, 8))
    flags = gen.valid_flags([(3, 4), (2, 2)], [(2, 3), (2, 1)])
    grid0 = flags[0].reshape(3, 4, 3)
    assert flags[0].dtype == torch.bool
    assert grid0[:2, :3].all() and not grid0[2].any() and not grid0[:, 3].any()
    assert flags[1].reshape(2, 2, 3)[:, 0].all() and not flags[1].reshape(2, 2, 3)[:, 1].any()
    # pad shape 30 x 20 at strides 4 / 8: ceil(30/4)=8 -> min(8, 7) = 7; ceil(20/4)=5; ceil(30/8)=4
    assert gen.valid_sizes_for_image([(7, 6), (4, 3)], (30, 20)) == [(7, 5), (4, 3)]
    with pytest.raises(ValueError):
        gen.valid_flags([(3, 4), (2, 2)], [(4, 4), (2, 2)])


# ----------------------------------------------------------------------------- box coder
def test_decode_by_hand() -> None:
    coder = LegacyBoxCoder()
    # roi 0..9 (10 px wide, centre 4.5); dx = 0.1 -> cx = 4.5 + 1 = 5.5; dw = log 2 -> w = 20
    # x1 = 5.5 - 10 + 0.5 = -4, x2 = 5.5 + 10 - 0.5 = 15
    # y: dy = 0.2 -> cy = 6.5, dh = 0 -> h = 10: y1 = 6.5 - 5 + 0.5 = 2, y2 = 6.5 + 5 - 0.5 = 11
    rois = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    deltas = torch.tensor([[0.1, 0.2, math.log(2.0), 0.0]])
    # float32 arithmetic on small numbers: measured 0 here and below, on every kernel choice
    # (tools/kernel_spread.py --tests)
    assert torch.allclose(coder.decode(rois, deltas), torch.tensor([[-4.0, 2.0, 15.0, 11.0]]), atol=1e-5)
    # clipped to [0, W - 1] x [0, H - 1] with (H, W) = (11, 14): x2 -> 13, y2 -> 10
    assert torch.allclose(coder.decode(rois, deltas, (11, 14)), torch.tensor([[0.0, 2.0, 13.0, 10.0]]), atol=1e-5)


def test_decode_stds_class_specific_and_clamp() -> None:
    coder = LegacyBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    rois = torch.tensor([[10.0, 20.0, 29.0, 59.0]])  # w 20, h 40, centre (19.5, 39.5)
    # class 0: zero deltas -> roi itself; class 1: dx = 1 * 0.1 -> cx + 2; dh = 5 * 0.2 = 1 -> h * e
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 5.0]])
    out = coder.decode(rois, deltas)
    assert out.shape == (1, 8)
    h = 40 * math.e
    expected = [10, 20, 29, 59, 12, 39.5 - h / 2 + 0.5, 31, 39.5 + h / 2 - 0.5]
    assert torch.allclose(out, torch.tensor([expected]), atol=1e-4)  # measured: 7.6e-6 (float32 exp)
    # dw clamped at |log(16/1000)|: exp of it is 1000/16 = 62.5 -> a 1-px roi becomes 62.5 px
    big = LegacyBoxCoder().decode(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    w = big[0, 2] - big[0, 0] + 1
    h = big[0, 3] - big[0, 1] + 1
    # measured: relative 6e-8 and 1.7e-6
    assert w.item() == pytest.approx(62.5, rel=1e-5) and h.item() == pytest.approx(1 / 62.5, rel=1e-4)


def test_encode_is_inverse_of_decode() -> None:
    gen = torch.Generator().manual_seed(0)
    coder = LegacyBoxCoder(means=(0.01, -0.02, 0.0, 0.03), stds=(0.1, 0.1, 0.2, 0.2))
    xy = torch.rand(50, 2, generator=gen) * 100
    wh = torch.rand(50, 2, generator=gen) * 80 + 12
    proposals = torch.cat([xy, xy + wh], 1)
    gt = proposals + torch.randn(50, 4, generator=gen).clamp(-2, 2) * 2
    deltas = coder.encode(proposals, gt)
    assert torch.allclose(coder.decode(proposals, deltas), gt, atol=1e-3)  # measured: 7.6e-6
    # hand: proposal 0..9, gt 2..21: gx - px = 11.5 - 4.5 = 7 -> 0.7; w 20 / 10 -> log 2
    d = LegacyBoxCoder().encode(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[2.0, 0, 21, 9]]))
    assert torch.allclose(d, torch.tensor([[0.7, 0.0, math.log(2), 0.0]]), atol=1e-6)


def test_decode_does_not_depend_on_batch_composition() -> None:
    gen = torch.Generator().manual_seed(1)
    rois = torch.rand(37, 4, generator=gen) * 50
    rois[:, 2:] += rois[:, :2]
    deltas = torch.randn(37, 8, generator=gen)
    coder = LegacyBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    full = coder.decode(rois, deltas, (90, 120))
    for start, stop in ((0, 1), (3, 20), (20, 37)):
        assert torch.equal(coder.decode(rois[start:stop], deltas[start:stop], (90, 120)), full[start:stop])


# ----------------------------------------------------------------------------- IoU / NMS
def test_area_and_iou_plus_one() -> None:
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[0.0, 0.0, 9.0, 5.0], [4.0, 0.0, 8.0, 4.0], [20.0, 20.0, 30.0, 30.0]])
    assert legacy_box_area(a).tolist() == [100, 25]
    iou = legacy_box_iou(a, b)
    # [0,0,9,9] vs [0,0,9,5]: 60 / 100; [0,0,4,4] vs [4,0,8,4] share one pixel column: 5 / 45
    assert iou[0, 0].item() == pytest.approx(0.6)  # approx: float32 vs the decimal, <= 2.4e-8 apart
    assert iou[1, 1].item() == pytest.approx(5 / 45)
    assert iou[0, 2].item() == 0 and iou[1, 2].item() == 0
    # [0,0,4,4] inside [0,0,9,9]: 25/100; [0,0,9,9] vs [4,0,8,4]: 25/100
    assert iou[1, 0].item() == pytest.approx(25 / 60)
    assert iou[0, 1].item() == pytest.approx(0.25)


def test_nms_plus_one_flips_decision() -> None:
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 5.0]])
    scores = torch.tensor([0.9, 0.8])
    # +1 IoU 0.6 > 0.58 -> suppressed; continuous IoU 45/81 = 0.556 would keep it
    assert legacy_nms(boxes, scores, 0.58).tolist() == [0]
    assert legacy_nms(boxes, scores, 0.61).tolist() == [0, 1]
    # touching boxes: +1 IoU 5/45 = 0.11 > 0.1; continuous IoU 0
    touching = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]])
    assert legacy_nms(touching, scores, 0.1).tolist() == [0]
    # strict '>': IoU exactly 0.6 at threshold 0.6 is kept
    assert legacy_nms(boxes, scores, 0.6).tolist() == [0, 1]
    assert legacy_nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_nms_matches_kernel_transcription_random() -> None:
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(120, 2, generator=gen) * 60
    wh = torch.rand(120, 2, generator=gen) * 30
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(120, generator=gen)
    for thr in (0.3, 0.5, 0.7):
        assert legacy_nms(boxes, scores, thr).tolist() == kernel_nms(boxes.tolist(), scores.tolist(), thr)


def test_batched_nms_equals_per_class_loop() -> None:
    gen = torch.Generator().manual_seed(5)
    n = 400
    xy = torch.rand(n, 2, generator=gen) * 200 - 20  # some negative coordinates
    wh = torch.rand(n, 2, generator=gen) * 80
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 7, (n,), generator=gen)
    for thr in (0.3, 0.5, 0.7):
        keep = legacy_batched_nms(boxes, scores, idxs, thr)
        # sorted by decreasing score
        assert torch.all(scores[keep][1:] <= scores[keep][:-1])
        expected = []
        for c in range(7):
            members = torch.nonzero(idxs == c).squeeze(1)
            expected += members[legacy_nms(boxes[members], scores[members], thr)].tolist()
        assert sorted(keep.tolist()) == sorted(expected)
    # a box of group 1 identical to one of group 0 is not suppressed by it
    same = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    assert legacy_batched_nms(same, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]


def test_equal_scores_go_to_the_lower_index() -> None:
    """box_ops' tie rule (ONNX TopK's): among equal scores the lower index first, in a top-k,
    along any dim, whatever order torch.topk or a kernel's own sort would give."""
    gen = torch.Generator().manual_seed(11)
    scores = torch.randint(0, 6, (3000,), generator=gen).float()  # 6 values, ~500 of each
    expected = sorted(range(3000), key=lambda i: (-scores[i].item(), i))
    assert descending_order(scores).tolist() == expected
    values, idx = top_k(scores, 700)
    assert idx.tolist() == expected[:700] and torch.equal(values, scores[idx])
    rows = scores.reshape(3, 1000)
    _, idx = top_k(rows, 300, dim=1)
    for r in range(3):
        assert idx[r].tolist() == sorted(range(1000), key=lambda i: (-rows[r, i].item(), i))[:300]


def test_nms_visits_equal_scores_by_index() -> None:
    """Identical boxes with equal scores: the lower index survives, in one group or several;
    many equal scores among random boxes: the kernel transcription visiting ties by index."""
    same = torch.tensor([[5.0, 5.0, 20.0, 20.0]] * 4)
    scores = torch.tensor([0.5, 0.9, 0.9, 0.9])
    assert legacy_nms(same, scores, 0.5).tolist() == [1]
    assert legacy_nms(same.flip(0), scores.flip(0), 0.5).tolist() == [0]
    assert legacy_batched_nms(same, scores, torch.tensor([0, 1, 1, 0]), 0.5).tolist() == [1, 3]
    gen = torch.Generator().manual_seed(4)
    xy = torch.rand(300, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=gen) * 30], 1)
    tied = torch.randint(0, 4, (300,), generator=gen).float() / 4  # 4 values
    for thr in (0.3, 0.7):
        assert legacy_nms(boxes, tied, thr).tolist() == kernel_nms(boxes.tolist(), tied.tolist(), thr)


# ----------------------------------------------------------------------------- RoI levels
def test_map_roi_levels_boundaries() -> None:
    def roi(side: float) -> list[float]:
        return [0.0, 10.0, 10.0, 10.0 + side - 1, 10.0 + side - 1]  # (x2 - x1 + 1) = side

    sides = [8, 111, 111.9, 112, 223, 224, 447, 448, 2000]
    levels = map_roi_levels(torch.tensor([roi(s) for s in sides]), 4)
    assert levels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert levels.dtype == torch.int64
    # non-square: sqrt(56 * 224) = 112 -> level 1; sqrt(56 * 223) < 112 -> 0
    rect = torch.tensor([[0, 0, 0, 55, 223.0], [0, 0, 0, 55, 222.0]])
    assert map_roi_levels(rect, 4).tolist() == [1, 0]
    assert map_roi_levels(torch.tensor([roi(448)]), 3).tolist() == [2]


# ----------------------------------------------------------------------------- RoIAlign
def _features(seed: int = 0, shape=(2, 3, 9, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# rois in image pixels for spatial_scale 1/4 (feature map 9 x 11 -> image 36 x 44)
TINY_ROIS = [
    [0, 10.0, 12.0, 11.5, 13.0],  # 2.5 x 2 px -> 0.625 x 0.5 cells
    [1, 20.3, 7.7, 20.3, 30.0],  # 1 px wide (0.25 cell), tall
    [0, 5.0, 5.0, 3.0, 4.0],  # x2 + 1 < x1: negative size -> 0 (all samples at the start)
    [1, 40.0, 33.0, 43.0, 35.5],  # at the right / bottom edge
    [0, -6.0, -7.0, -4.5, -5.0],  # left of / above the map: samples in (-1, 0) clamp to 0
    [1, 45.0, 37.0, 46.5, 38.0],  # past the end: y > 9, x > 11 -> zeros
    [1, 43.9, 35.9, 44.5, 36.5],  # straddling the end: samples at <= size read the last cell
    [0, 16.0, 16.0, 16.0, 16.0],  # x2 == x1: exactly 1 px = 0.25 cell
]
NORMAL_ROIS = [
    [0, 0.0, 0.0, 43.0, 35.0],
    [1, 3.2, 5.9, 30.7, 20.1],
    [0, -10.0, -8.0, 12.0, 50.0],
    [1, 30.0, 2.0, 60.0, 9.0],  # 8 px = 2 cells tall
]


def test_roi_align_torch_matches_kernel_transcription_on_tiny_rois() -> None:
    feats = _features()
    rois = torch.tensor(TINY_ROIS)
    width, height = legacy_roi_sizes(rois, 0.25)
    assert bool(((width < 1) | (height < 1)).all())
    expected = kernel_roi_align(feats.numpy(), rois.numpy(), 7, 0.25, 2)
    got = legacy_roi_align_torch(feats, rois, 7, 0.25, 2)
    # measured: 0 (bit-identical to the kernel's transcription) here and below, on every kernel choice
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    # the RoI entirely past the end samples nothing; the negative-size RoI reads one point
    assert not got[5].any()
    assert torch.allclose(got[2], got[2][:, :1, :1].expand(-1, 7, 7))
    # torchvision stretches these RoIs to one cell: different values
    tv = tv_roi_align(feats, to_inclusive_end(rois), 7, 0.25, 2, aligned=False)
    assert (tv - got).abs().amax(dim=(1, 2, 3))[[0, 1, 2, 7]].min() > 1e-3


def test_roi_align_torch_equals_torchvision_on_normal_rois() -> None:
    feats = _features(1)
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(60, 2, generator=gen) * 50 - 5
    wh = torch.rand(60, 2, generator=gen) * 40 + 4
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=gen).float(), xy, xy + wh], 1)
    rois = torch.cat([rois, torch.tensor(NORMAL_ROIS)])
    for size in (7, 14):
        tv = tv_roi_align(feats, to_inclusive_end(rois), size, 0.25, 2, aligned=False)
        torch.testing.assert_close(legacy_roi_align_torch(feats, rois, size, 0.25, 2), tv, rtol=0, atol=1e-6)
    expected = kernel_roi_align(feats.numpy(), np.array(NORMAL_ROIS, dtype=np.float32), 7, 0.25, 2)
    np.testing.assert_allclose(legacy_roi_align_torch(feats, torch.tensor(NORMAL_ROIS), 7, 0.25, 2).numpy(), expected,
                               rtol=0, atol=1e-5)


def test_legacy_roi_align_mixed_batch() -> None:
    feats = _features(4)
    rois = torch.tensor([NORMAL_ROIS[0], TINY_ROIS[0], NORMAL_ROIS[1], TINY_ROIS[1], TINY_ROIS[3]])
    expected = kernel_roi_align(feats.numpy(), rois.numpy(), 7, 0.25, 2)
    got = legacy_roi_align(feats, rois, 7, 0.25, 2)
    assert got.shape == (5, 3, 7, 7)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    assert legacy_roi_align(feats, torch.zeros((0, 5)), 7, 0.25).shape == (0, 3, 7, 7)
    half = legacy_roi_align(feats.half(), rois.half(), 7, 0.25, 2)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), got, rtol=0, atol=0.05)  # float16 rounding: measured 3.5e-3
    with pytest.raises(ValueError):
        legacy_roi_align_torch(feats, rois, 7, 0.25, 0)


def test_multiscale_roi_align_routes_by_level() -> None:
    gen = torch.Generator().manual_seed(7)
    feats = [torch.randn(1, 2, 64 // s, 80 // s, generator=gen) for s in (4, 8, 16, 32)]
    pooler = LegacyMultiScaleRoIAlign(7)
    # sides 50 -> level 0, 150 -> 1, 300 -> 2, 600 -> 3, and a 2-px roi -> level 0, sub-cell
    rois = torch.tensor(
        [[0, 3.0, 4.0, 52.0, 53.0], [0, 10, 0, 159, 149], [0, 0, 0, 299, 299], [0, 0, 0, 599, 599], [0, 7.0, 9.0, 8.0, 10.0]]
    )
    assert pooler.map_roi_levels(rois).tolist() == [0, 1, 2, 3, 0]
    out = pooler(feats, rois)
    assert out.shape == (5, 2, 7, 7)
    for i, (level, stride) in enumerate(zip([0, 1, 2, 3, 0], (4, 8, 16, 32, 4))):
        expected = kernel_roi_align(feats[level].numpy(), rois[i : i + 1].numpy(), 7, 1 / stride, 2)
        np.testing.assert_allclose(out[i : i + 1].numpy(), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        pooler(feats[:3], rois)

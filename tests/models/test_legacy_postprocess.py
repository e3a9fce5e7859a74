"""mmdetection v1 post-processing: multiclass NMS and mask pasting."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anzoo.models.detection.postprocess import (
    _linear_taps,
    legacy_mask_boxes,
    legacy_paste_windows,
    legacy_rescale_boxes,
    multiclass_nms,
    paste_mask_crops,
    paste_masks_fast,
    paste_masks_legacy,
)

from helpers.legacy_kernels import kernel_multiclass_nms


# ----------------------------------------------------------------------------- multiclass NMS
def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor(
        [
            [0.1, 0.90, 0.05],  # class 2 at exactly the threshold: not a candidate
            [0.1, 0.80, 0.30],
            [0.1, 0.95, 0.06],
            [0.1, 0.05, 0.70],
        ]
    )
    bg = [0.0, 0.0, 1.0, 1.0]
    boxes = torch.tensor(
        [
            bg + [0, 0, 9, 9] + [100, 100, 109, 109],
            bg + [1, 0, 10, 9] + [0, 0, 9, 9],  # class 1: +1 IoU with row 0 = 90/110 > 0.5
            bg + [50, 50, 59, 59] + [20, 0, 29, 9],
            bg + [0, 0, 9, 9] + [40, 0, 49, 9],
        ],
        dtype=torch.float32,
    )
    return boxes, scores


def test_multiclass_nms_hand_case_order_and_threshold() -> None:
    boxes, scores = _hand_case()
    out_boxes, out_scores, labels = multiclass_nms(boxes, scores, 0.05, 0.5, 100)
    # class 1: rows 0, 1, 2 are candidates; row 1 suppressed by row 0; kept rows in row
    # order (0 before 2 although 2 scores higher); then class 2: rows 1, 2, 3
    assert out_scores.tolist() == pytest.approx([0.90, 0.95, 0.30, 0.06, 0.70])
    assert labels.tolist() == [0, 0, 1, 1, 1] and labels.dtype == torch.int64
    assert out_boxes.tolist() == [[0, 0, 9, 9], [50, 50, 59, 59], [0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]]
    # more survivors than max_per_img: sorted by score, cut
    _, top_scores, top_labels = multiclass_nms(boxes, scores, 0.05, 0.5, 3)
    assert top_scores.tolist() == pytest.approx([0.95, 0.90, 0.70]) and top_labels.tolist() == [0, 0, 1]
    # exactly max_per_img survivors: left in class / row order
    _, five_scores, _ = multiclass_nms(boxes, scores, 0.05, 0.5, 5)
    assert five_scores.tolist() == pytest.approx([0.90, 0.95, 0.30, 0.06, 0.70])
    # no limit
    assert multiclass_nms(boxes, scores, 0.05, 0.5, None)[1].numel() == 5


def test_multiclass_nms_ties_and_empty() -> None:
    scores = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.6, 0.0], [0.0, 0.0, 0.5]])
    boxes = torch.tensor([[0.0, 0, 9, 9], [30.0, 0, 39, 9], [60.0, 0, 69, 9]])  # class-agnostic
    out_boxes, out_scores, labels = multiclass_nms(boxes, scores, 0.05, 0.5, 2)
    # survivors: (c1, r0, .5), (c1, r1, .6), (c2, r0, .5), (c2, r2, .5); sorted stably by score
    assert out_scores.tolist() == pytest.approx([0.6, 0.5])
    assert labels.tolist() == [0, 0] and out_boxes.tolist() == [[30, 0, 39, 9], [0, 0, 9, 9]]
    empty = multiclass_nms(boxes, torch.full((3, 3), 0.01), 0.05, 0.5, 100)
    assert [t.shape for t in empty] == [(0, 4), (0,), (0,)]
    with pytest.raises(ValueError):
        multiclass_nms(torch.zeros((3, 8)), scores, 0.05, 0.5, 100)


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_multiclass_nms_matches_reference_loop(class_agnostic: bool) -> None:
    gen = torch.Generator().manual_seed(11)
    rows, classes = 150, 6
    logits = torch.randn(rows, classes, generator=gen) * 2
    scores = logits.softmax(dim=1)
    centres = torch.rand(rows, 1, 2, generator=gen) * 120
    sizes = torch.rand(rows, 1, 2, generator=gen) * 40 + 5
    jitter = torch.randn(rows, classes, 4, generator=gen) * 3
    boxes = (torch.cat([centres - sizes / 2, centres + sizes / 2], -1) + jitter).reshape(rows, 4 * classes)
    if class_agnostic:
        boxes = boxes[:, :4].contiguous()
    for max_num in (100, 20):
        got = multiclass_nms(boxes, scores, 0.05, 0.5, max_num)
        exp_boxes, exp_scores, exp_labels = kernel_multiclass_nms(boxes.numpy(), scores.numpy(), 0.05, 0.5, max_num)
        assert got[2].tolist() == exp_labels
        assert np.array_equal(got[1].numpy(), exp_scores)
        assert np.array_equal(got[0].numpy(), exp_boxes)
    assert len(exp_labels) == 20


# ----------------------------------------------------------------------------- mask paste
def test_paste_windows_truncate_and_min_size() -> None:
    boxes = torch.tensor([[10.7, 5.2, 37.9, 32.99], [3.9, 3.9, 2.1, 3.0], [-0.5, 0.0, 0.2, 0.0]])
    x1, y1, w, h = legacy_paste_windows(boxes)
    assert x1.tolist() == [10, 3, 0] and y1.tolist() == [5, 3, 0]
    # int(2.1) - 3 + 1 = 0 -> at least 1; int(-0.5) = 0 (toward zero)
    assert w.tolist() == [28, 1, 1] and h.tolist() == [28, 1, 1]


@pytest.mark.parametrize("paste", [paste_masks_legacy, paste_masks_fast])
def test_paste_same_size_box_is_identity(paste) -> None:
    probs = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[10.7, 5.2, 37.9, 32.99]])  # -> x 10..37, y 5..32: 28 x 28
    masks = paste(probs, boxes, (40, 50))
    assert masks.shape == (1, 40, 50) and masks.dtype == torch.bool
    expected = torch.zeros(40, 50, dtype=torch.bool)
    expected[5:33, 10:38] = probs[0] > 0.5
    assert torch.equal(masks[0], expected)


@pytest.mark.parametrize("paste", [paste_masks_legacy, paste_masks_fast])
def test_paste_ramp_by_hand(paste) -> None:
    # value j / 27 in column j; box 40 px wide: column x of the box reads position
    # f = (x + 0.5) * 28 / 40 - 0.5; f / 27 > 0.5 <=> f > 13.5 <=> x > 19.5
    ramp = (torch.arange(28.0) / 27).expand(28, 28)[None]
    masks = paste(ramp, torch.tensor([[5.0, 2.0, 44.0, 11.0]]), (20, 60))
    expected = torch.zeros(20, 60, dtype=torch.bool)
    expected[2:12, 25:45] = True  # box columns 20..39 -> image columns 25..44
    assert torch.equal(masks[0], expected)
    # threshold is strict: a constant 0.5 map pastes nothing
    assert not paste(torch.full((1, 28, 28), 0.5), torch.tensor([[0.0, 0.0, 9.0, 9.0]]), (12, 12)).any()


@pytest.mark.parametrize("paste", [paste_masks_legacy, paste_masks_fast])
def test_paste_border_crossing_boxes_are_cropped(paste) -> None:
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(3, 28, 28, generator=gen)
    # integer corners so that shifting them does not change the truncation
    boxes = torch.tensor([[-6.0, 3.0, 20.0, 50.0], [30.0, -9.0, 70.0, 12.0], [-20.0, -20.0, 100.0, 100.0]])
    small = paste(probs, boxes, (40, 45))
    pad = 32
    big = paste(probs, boxes + pad, (40 + 2 * pad, 45 + 2 * pad))
    assert torch.equal(small, big[:, pad : pad + 40, pad : pad + 45])
    assert big[:, :pad].any()  # the parts outside the small image exist in the big one
    # windows entirely outside the image give empty masks
    outside = torch.tensor([[50.0, 0.0, 60.0, 10.0], [0.0, -30.0, 10.0, -12.0]])
    assert not paste(torch.ones(2, 28, 28), outside, (40, 45)).any()


def _smooth_maps(num: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num, 1, 6, 6, generator=gen) * 4
    return torch.sigmoid(F.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=False))[:, 0]


def _random_boxes(num: int, img_h: int, img_w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 4, (num,), generator=gen)
    centre = torch.rand(num, 2, generator=gen) * torch.tensor([img_w, img_h]) * 1.2 - 0.1 * torch.tensor([img_w, img_h])
    size = torch.where(
        kind[:, None] == 0,
        torch.rand(num, 2, generator=gen) * 3,  # tiny, also below 1 px and degenerate
        torch.where(
            kind[:, None] == 1,
            torch.rand(num, 2, generator=gen) * 2 * torch.tensor([img_w, img_h]),  # huge
            torch.rand(num, 2, generator=gen) * 120 + 3,
        ),
    )
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    flipped = kind == 3  # x2 < x1: width forced to 1
    boxes[flipped] = boxes[flipped][:, [2, 1, 0, 3]]
    return boxes


def test_paste_fast_agrees_with_legacy() -> None:
    img_h, img_w = 150, 210
    probs = _smooth_maps(160, 0)
    boxes = _random_boxes(160, img_h, img_w, 1)
    legacy = paste_masks_legacy(probs, boxes, (img_h, img_w))
    fast = paste_masks_fast(probs, boxes, (img_h, img_w), max_elements=1 << 18)  # several chunks
    inter = (legacy & fast).flatten(1).sum(1).double()
    union = (legacy | fast).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= 0.99
    assert (legacy ^ fast).sum() <= 5  # isolated pixels at most
    assert union.gt(0).sum() > 100  # the comparison is not vacuous


@pytest.mark.parametrize("mode, paste", [("legacy", paste_masks_legacy), ("fast", paste_masks_fast)])
def test_mask_crops_are_the_windows_of_the_full_paste(mode: str, paste) -> None:
    """Each lazily pasted crop equals its window of the all-boxes paste, and the paste is zero
    outside it: tiny, huge, flipped, border-crossing and outside boxes (_random_boxes)."""
    img_h, img_w = 90, 130
    probs = _smooth_maps(120, 4)
    boxes = _random_boxes(120, img_h, img_w, 5)
    full = paste(probs, boxes, (img_h, img_w)).numpy()
    crops = paste_mask_crops(probs, boxes, (img_h, img_w), mode=mode)
    assert len(crops) == 120 and crops.areas == [c.area for c in crops]
    for i, crop in enumerate(crops):
        assert crop.image_size == (img_h, img_w)
        assert np.array_equal(crop.full(), full[i]), i
    assert sum(c.mask.any() for c in crops) > 60  # not vacuous
    assert any(c.area == 0 for c in crops) and any(c.area == img_h * img_w for c in crops)


def test_paste_fast_is_bit_exact_with_opencv_without_ipp() -> None:
    img_h, img_w = 120, 160
    probs = _smooth_maps(80, 2)
    boxes = _random_boxes(80, img_h, img_w, 3)
    _, _, w, h = legacy_paste_windows(boxes)
    assert not ((w == 14) & (h == 14)).any()  # OpenCV's INTER_AREA switch (see below)
    use_ipp = cv2.ipp.useIPP()
    try:
        cv2.ipp.setUseIPP(False)
        legacy = paste_masks_legacy(probs, boxes, (img_h, img_w))
    finally:
        cv2.ipp.setUseIPP(use_ipp)
    assert torch.equal(legacy, paste_masks_fast(probs, boxes, (img_h, img_w)))


def _resize_like_fast(m: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize one map with the fast paste's taps (window = whole box)."""
    zero = torch.zeros(1, dtype=torch.int64)
    x_lo, x_hi, a0, a1 = _linear_taps(zero, zero, torch.tensor([w]), w, m.shape[1], horizontal=True)
    y_lo, y_hi, b0, b1 = _linear_taps(zero, zero, torch.tensor([h]), h, m.shape[0], horizontal=False)
    t = torch.from_numpy(m)
    horiz = t[:, x_lo[0]] * a0[0] + t[:, x_hi[0]] * a1[0]
    return (horiz[y_lo[0]] * b0[0][:, None] + horiz[y_hi[0]] * b1[0][:, None]).numpy()


def test_opencv_linear_resize_is_half_pixel_bilinear() -> None:
    """cv2.resize(INTER_LINEAR) on float32 = F.interpolate(bilinear, align_corners=False) up to
    float rounding of the source coordinate, for up- and down-scaling alike."""
    rng = np.random.default_rng(0)
    use_ipp = cv2.ipp.useIPP()
    try:
        for trial, (w, h) in enumerate([(1, 1), (3, 50), (14, 14), (29, 28), (56, 56), (97, 13), (400, 333), (20, 700)]):
            m = rng.random((28, 28), dtype=np.float32)
            ref = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
            ref = ref.reshape(h, w)
            interp = F.interpolate(torch.from_numpy(m)[None, None], size=(h, w), mode="bilinear", align_corners=False)
            # measured: 2e-6 and 1.4e-6 on every torch kernel choice (tools/kernel_spread.py --tests)
            np.testing.assert_allclose(interp[0, 0].numpy(), ref, rtol=0, atol=1e-5)
            np.testing.assert_allclose(_resize_like_fast(m, w, h), ref, rtol=0, atol=1e-5)
            cv2.ipp.setUseIPP(False)
            plain = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w)
            cv2.ipp.setUseIPP(use_ipp)
            if (w, h) == (14, 14):
                # exact 2x downscale in both axes: OpenCV switches to INTER_AREA (mathematically
                # the same average, summed in another order)
                np.testing.assert_allclose(_resize_like_fast(m, w, h), plain, rtol=0, atol=1e-6)  # measured: 6e-8
            else:
                assert np.array_equal(_resize_like_fast(m, w, h), plain)
    finally:
        cv2.ipp.setUseIPP(use_ipp)


def test_legacy_mask_boxes_float_round_trip() -> None:
    # 127 * 2.0828125 / 2.0828125 in float32 is 126.99999, which the reference truncates to 126
    det = torch.tensor([[127.0, 19.0, 300.0, 200.0]])
    rois, paste_boxes = legacy_mask_boxes(det, 2.0828125)
    assert rois.dtype == torch.float32
    assert torch.allclose(rois, det * 2.0828125)
    x1, y1, _, _ = legacy_paste_windows(paste_boxes)
    assert x1.item() == 126 and y1.item() == 19
    f32 = np.float32
    assert np.array_equal(paste_boxes.numpy(), (det.numpy() * f32(2.0828125)) / f32(2.0828125))


def test_legacy_rescale_boxes_multiplies_by_float32_reciprocal() -> None:
    boxes = torch.tensor([[100.0, 333.0, 999.0, 127.0]])
    out = legacy_rescale_boxes(boxes, 2.0828125)
    f32 = np.float32
    expected = boxes.numpy() * (f32(1) / f32(2.0828125))
    assert np.array_equal(out.numpy(), expected)
    # differs from a true float32 division in the last bit for some values
    assert out[0, 0].item() == pytest.approx(48.012005, abs=1e-6)  # float32 vs the decimal: 1.5e-7
    assert (out != boxes / torch.tensor(2.0828125)).any()


def test_paste_empty() -> None:
    for paste in (paste_masks_legacy, paste_masks_fast):
        assert paste(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7)).shape == (0, 5, 7)

"""anzoo.visualize.draw_instances: mask colours where the masks are, boxes, labels, any image size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anzoo.structures import Instances
from anzoo.visualize import MASK_ALPHA, PALETTE, draw_instances

NAMES = ["person", "dog"]


def _square_instance(size: int = 96, score: float = 0.93, label: int = 0) -> Instances:
    mask = np.zeros((1, size, size), bool)
    mask[0, 40:80, 30:70] = True
    return Instances((size, size), [[30, 40, 69, 79]], [score], [label], mask)


def test_mask_colour_where_the_mask_is() -> None:
    black = np.zeros((96, 96, 3), np.uint8)
    out = draw_instances(black, _square_instance(), NAMES)
    assert isinstance(out, Image.Image) and out.size == (96, 96) and out.mode == "RGB"
    pixels = np.asarray(out)
    blended = np.rint(np.array(PALETTE[0]) * MASK_ALPHA).astype(np.uint8)
    interior = pixels[45:75, 35:65]  # inside the mask, away from the outline
    assert (interior == blended).all()
    assert (pixels[85:, 80:] == 0).all()  # far from everything: untouched
    assert (pixels[60, 69] == PALETTE[0]).all() and (pixels[79, 50] == PALETTE[0]).all()  # outline
    # The label sits above the box on a filled background of the instance colour.
    label_area = pixels[:40, 30:]
    assert (label_area == PALETTE[0]).all(axis=2).sum() > 50
    assert (label_area != PALETTE[0]).any(axis=2).sum() > 0  # the text itself
    assert (np.asarray(_square_instance().masks[0]) == True).sum() == 1600  # noqa: E712


def test_blending_keeps_the_photo_visible() -> None:
    grey = np.full((96, 96, 3), 200, np.uint8)
    pixels = np.asarray(draw_instances(grey, _square_instance(), NAMES, draw_boxes=False, draw_labels=False))
    expected = np.rint(200 * (1 - MASK_ALPHA) + np.array(PALETTE[0]) * MASK_ALPHA).astype(np.uint8)
    assert (pixels[40:80, 30:70] == expected).all()
    assert (pixels[:40] == 200).all() and (pixels[80:] == 200).all()


def test_score_threshold_and_colour_order() -> None:
    a = _square_instance(score=0.9)
    mask_b = np.zeros((1, 96, 96), bool)
    mask_b[0, 5:20, 5:20] = True
    b = Instances((96, 96), [[5, 5, 19, 19]], [0.2], [1], mask_b)
    both = Instances.cat([b, a])
    black = np.zeros((96, 96, 3), np.uint8)
    # Threshold 0.5: the 0.2 instance leaves no trace.
    pixels = np.asarray(draw_instances(black, both, NAMES, score_thr=0.5, draw_labels=False))
    assert (pixels[8:18, 8:18] == 0).all()
    # No threshold: highest score gets PALETTE[0], the next PALETTE[1].
    pixels = np.asarray(draw_instances(black, both, NAMES, draw_labels=False))
    assert (pixels[10, 10] == np.rint(np.array(PALETTE[1]) * MASK_ALPHA)).all()
    assert (pixels[60, 50] == np.rint(np.array(PALETTE[0]) * MASK_ALPHA)).all()


@pytest.mark.parametrize("shape", [(6, 9), (1500, 2200)])
def test_tiny_and_large_images(shape: tuple[int, int]) -> None:
    h, w = shape
    image = np.full((h, w, 3), 90, np.uint8)
    mask = np.zeros((1, h, w), bool)
    mask[0, h // 3: 2 * h // 3 + 1, w // 3: 2 * w // 3 + 1] = True
    inst = Instances((h, w), [[w // 3, h // 3, 2 * w // 3, 2 * h // 3]], [0.5], [1], mask)
    out = draw_instances(image, inst, NAMES)
    assert out.size == (w, h)
    assert (np.asarray(out) != 90).any()


def test_without_masks_and_without_instances() -> None:
    image = np.zeros((50, 60, 3), np.uint8)
    inst = Instances((50, 60), [[10, 10, 40, 45]], [0.7], [0], None)
    pixels = np.asarray(draw_instances(image, inst, NAMES))
    assert (pixels[40, 10] == PALETTE[0]).all()  # the left edge of the box
    assert (pixels[40, 25] == 0).all()  # no mask: inside (below the label) stays black
    empty = draw_instances(image, Instances.empty((50, 60)), NAMES)
    assert np.array_equal(np.asarray(empty), image)
    gray = draw_instances(np.zeros((50, 60), np.uint8), inst, NAMES)
    assert gray.size == (60, 50)
    with pytest.raises(ValueError):
        draw_instances(np.zeros((50, 60, 3), np.float32), inst, NAMES)


# The boxes of detections at the image border and other degenerate ones (inclusive x1, y1, x2, y2).
ODD_BOXES = {
    "sub-pixel at the right border": ([511.2, 410.0, 511.4, 416.8], (410, 511)),
    "zero extent (a point)": ([100.0, 120.0, 100.0, 120.0], (120, 100)),
    "sub-pixel height": ([40.0, 60.3, 90.0, 60.6], (60, 40)),
    "negative extent (corners swapped)": ([90.0, 80.0, 30.0, 20.0], (20, 30)),
    "partly outside": ([-40.0, 500.0, 30.0, 600.0], (500, 0)),
    "bottom-right corner pixel": ([511.9, 511.9, 511.95, 511.99], (511, 511)),
}
OUTSIDE_BOXES = {
    "left of the image": [-30.0, 10.0, -5.0, 40.0],
    "below the image": [10.0, 512.0, 40.0, 530.0],
    "non-finite": [float("nan"), 1.0, float("inf"), 5.0],
}


@pytest.mark.parametrize("size", [512, 1333])  # outlines 1 and 3 px wide
@pytest.mark.parametrize("name", list(ODD_BOXES))
def test_degenerate_boxes_are_drawn_as_lines_or_points(name: str, size: int) -> None:
    box, (row, col) = ODD_BOXES[name]
    image = np.zeros((size, size, 3), np.uint8)
    inst = Instances((size, size), [box], [0.8], [0], None)
    pixels = np.asarray(draw_instances(image, inst, NAMES, draw_labels=False))
    assert (pixels[row, col] == PALETTE[0]).all()  # the box's first pixel is on the outline
    drawn = (pixels != 0).any(axis=2)
    rows, cols = np.nonzero(drawn)
    x1, y1, x2, y2 = box
    assert rows.min() >= min(y1, y2) - 1 and cols.min() >= min(x1, x2) - 1  # nothing far from the box
    line = max(1, round(size / 400))
    assert rows.max() <= max(max(y1, y2), min(y1, y2) + line) and cols.max() <= max(max(x1, x2), min(x1, x2) + line)
    assert np.array_equal(np.asarray(draw_instances(image, inst, NAMES)).shape, (size, size, 3))  # with its label


@pytest.mark.parametrize("name", list(OUTSIDE_BOXES))
def test_boxes_outside_the_image_draw_no_outline(name: str) -> None:
    image = np.zeros((512, 512, 3), np.uint8)
    inst = Instances((512, 512), [OUTSIDE_BOXES[name]], [0.8], [0], None)
    assert not np.asarray(draw_instances(image, inst, NAMES, draw_labels=False)).any()
    labelled = np.asarray(draw_instances(image, inst, NAMES))  # the label alone, inside the image
    assert labelled.shape == (512, 512, 3) and (labelled.any() == (name != "non-finite"))


def test_masks_given_as_crops_draw_as_full_masks() -> None:
    from anzoo.structures import MaskCrop

    rng = np.random.default_rng(0)
    h, w = 70, 90
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    crops = [MaskCrop(5, 8, rng.random((30, 40)) > 0.4, (h, w)),
             MaskCrop(50, 40, rng.random((30, 40)) > 0.4, (h, w)),  # overlaps nothing, at the border
             MaskCrop(20, 20, rng.random((40, 50)) > 0.5, (h, w)),  # overlaps the first
             MaskCrop(0, 0, np.zeros((0, 0), bool), (h, w))]
    boxes = [[5, 8, 44, 37], [50, 40, 89, 69], [20, 20, 69, 59], [0, 0, 1, 1]]
    scores, labels = [0.5, 0.9, 0.7, 0.6], [0, 1, 0, 1]
    full = Instances((h, w), boxes, scores, labels, np.stack([c.full() for c in crops]))
    lazy = Instances((h, w), boxes, scores, labels)
    expected = np.asarray(draw_instances(image, full, NAMES, 0.55))
    assert np.array_equal(np.asarray(draw_instances(image, lazy, NAMES, 0.55, masks=crops)), expected)
    assert not np.array_equal(expected, image)

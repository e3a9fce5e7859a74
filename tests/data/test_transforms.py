"""anzoo.data.transforms: mmdetection v1 / mmcv 0.2 test-time preprocessing, exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anzoo.data.transforms import (
    IMAGE_MEAN,
    IMAGE_STD,
    ImageMeta,
    pad_to_batch,
    padded_shape,
    preprocess_image,
    rescale_size,
    resize_image,
)


@pytest.mark.parametrize(
    "width, height, expected",
    [
        # 640x480: s = min(1333/640, 800/480) = 800/480; 640 * 1.6667 = 1066.67 -> 1067
        (640, 480, (1067, 800, 800 / 480)),
        (480, 640, (800, 1067, 800 / 480)),
        # exactly the target: unchanged
        (1333, 800, (1333, 800, 1.0)),
        # 500x375: s = 800/375 = 2.1333; 500 * s = 1066.67 -> 1067
        (500, 375, (1067, 800, 800 / 375)),
        # very wide: the long side decides, s = 1333/2000; 100 * s = 66.65 -> int(67.15) = 67
        (2000, 100, (1333, 67, 1333 / 2000)),
        (100, 2000, (67, 1333, 1333 / 2000)),
        # large: scaled down, 3000x2000 -> s = 0.4
        (3000, 2000, (1200, 800, 0.4)),
        # round half up, not half to even: 5 * 0.5 = 2.5 -> 3 (Python's round() gives 2)
        (2666, 5, (1333, 3, 0.5)),
        # tiny images are scaled up: 1x1 -> 800x800
        (1, 1, (800, 800, 800.0)),
    ],
)
def test_rescale_size(width: int, height: int, expected: tuple) -> None:
    new_w, new_h, factor = rescale_size(width, height)
    assert (new_w, new_h) == expected[:2]
    assert isinstance(factor, float)
    assert factor == pytest.approx(expected[2], rel=1e-15)


def test_rescale_scale_is_unordered_pair() -> None:
    assert rescale_size(640, 480, (800, 1333)) == rescale_size(640, 480, (1333, 800))


@pytest.mark.parametrize(
    "h, w, expected",
    [(800, 1067, (800, 1088)), (1067, 800, (1088, 800)), (800, 1333, (800, 1344)),
     (67, 1333, (96, 1344)), (32, 64, (32, 64)), (1, 1, (32, 32)), (33, 31, (64, 32))],
)
def test_padded_shape(h: int, w: int, expected: tuple) -> None:
    assert padded_shape(h, w) == expected


def test_resize_is_opencv_bilinear_on_uint8() -> None:
    # Hand-computed half-pixel-centre bilinear: source x = (i + 0.5) * 2/4 - 0.5
    # = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) -> 0, 63.75, 191.25, 255.
    out = resize_image(np.array([[0, 255]], np.uint8), 4, 1)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 64, 191, 255]]
    with pytest.raises(TypeError):
        resize_image(np.zeros((2, 2), np.float32), 4, 4)


def test_normalization_values_constant_image() -> None:
    image = np.empty((48, 64, 3), np.uint8)
    image[...] = (255, 0, 128)
    tensor, meta = preprocess_image(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 800, 1067)
    expected = [(255 - 123.675) / 58.395, (0 - 116.28) / 57.12, (128 - 103.53) / 57.375]
    for c in range(3):
        assert torch.allclose(tensor[c], torch.full_like(tensor[c], expected[c]), atol=1e-6)
    # Bit-exact float32 "(x - mean) / std" (a subtraction then a true division).
    exact = (np.float32(255) - np.float32(IMAGE_MEAN[0])) / np.float32(IMAGE_STD[0])
    assert tensor[0, 0, 0].item() == float(exact)
    assert meta == ImageMeta(orig_size=(48, 64), img_shape=(800, 1067), pad_shape=(800, 1088),
                             scale_factor=800 / 48)


def _fixture_image() -> np.ndarray:
    i, j, c = np.meshgrid(np.arange(6), np.arange(9), np.arange(3), indexing="ij")
    return ((i * 37 + j * 11 + c * 53) % 256).astype(np.uint8)


def test_matches_frozen_mmcv_reference() -> None:
    """Numbers computed once with mmcv 0.2.16's imrescale / imnormalize / impad_to_multiple
    (BGR input, to_rgb=True) on this 6x9 image, frozen here (again with
    ``tools/reference_values/mmcv_transforms.py``, which also checks test_rescale_size's cases)."""
    tensor, meta = preprocess_image(_fixture_image())
    assert meta.img_shape == (800, 1200) and meta.pad_shape == (800, 1216)
    assert meta.scale_factor == 133.33333333333334
    padded = pad_to_batch([tensor])[0]
    reference = {
        (0, 0): [-2.1179039478302, -1.1078431606292725, 0.0430501289665699],
        (100, 333): [-1.5870366096496582, -0.5651260614395142, 0.5833551287651062],
        (401, 650): [0.2966862916946411, 1.3606443405151367, 0.2173420637845993],
        (799, 1199): [-1.8267831802368164, -0.8102240562438965, 0.33934643864631653],
    }
    for (y, x), values in reference.items():
        assert padded[:, y, x].tolist() == values  # bit-exact float32
    # Whole-image checksum: one pixel off by one grey level would move it by ~0.017.
    assert padded.double().sum().item() == pytest.approx(824351.5208298634, abs=1e-3)  # measured: 0 everywhere
    assert padded[:, :, 1200:].abs().max().item() == 0.0


def test_meta_scale_factor_is_single_float_not_per_axis() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    _, meta = preprocess_image(image)
    assert meta.img_shape == (800, 1067)
    assert isinstance(meta.scale_factor, float)
    assert meta.scale_factor == 800 / 480
    assert meta.scale_factor != 1067 / 640  # the per-axis ratio differs, and is not used


def test_pad_to_batch_zero_pads_bottom_right() -> None:
    a = torch.full((3, 800, 1067), 1.5)
    b = torch.full((3, 790, 1060), -2.0)
    batch = pad_to_batch([a, b])
    assert batch.shape == (2, 3, 800, 1088)
    assert torch.equal(batch[0, :, :, :1067], a)
    assert batch[0, :, :, 1067:].abs().sum().item() == 0
    assert torch.equal(batch[1, :, :790, :1060], b)
    assert batch[1, :, 790:, :].abs().sum().item() == 0
    assert batch[1, :, :, 1060:].abs().sum().item() == 0
    # The padded size of a batch of one equals the image's own pad_shape.
    tensor, meta = preprocess_image(np.zeros((100, 333, 3), np.uint8))
    assert tuple(pad_to_batch([tensor]).shape[2:]) == meta.pad_shape
    with pytest.raises(ValueError):
        pad_to_batch([])


def test_preprocess_rejects_wrong_input() -> None:
    with pytest.raises(ValueError):
        preprocess_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        preprocess_image(np.zeros((10, 10, 3), np.float32))


def test_too_thin_image_is_an_image_error():
    import pytest

    from anzoo.errors import ImageError

    with pytest.raises(ImageError, match="too thin"):
        preprocess_image(np.zeros((1, 3000, 3), np.uint8))

"""Image transforms, reproducing mmdetection v1 (mmcv 0.2.x) exactly.

The released checkpoints were evaluated with this test-time pipeline (every config under
``configs/attn_norm/`` of the reference fork)::

    Resize(img_scale=(1333, 800), keep_ratio=True) -> Normalize(mean, std, to_rgb) -> Pad(32)

Its numerics, which :func:`preprocess_image` follows step by step:

1. **Scale factor**: one float, ``s = min(1333 / long side, 800 / short side)`` (mmcv's
   ``imrescale`` with a (long, short) scale tuple). The image may be scaled up.
2. **New size**: ``int(w * s + 0.5)``, ``int(h * s + 0.5)`` (round half up, in double precision).
3. **Resize**: ``cv2.resize`` with ``INTER_LINEAR`` on the **uint8** image (OpenCV's fixed-point
   bilinear path; resizing a float image gives different numbers).
4. **Normalize**: ``(float32(img) - mean) / std`` in float32, RGB order, mean (123.675, 116.28,
   103.53), std (58.395, 57.12, 57.375): a subtraction then a true division, as numpy does in
   mmcv's ``imnormalize`` (multiplying by 1 / std would change the last bit).
5. **Pad**: zeros (in normalized space, i.e. after step 4) on the bottom and right, up to the
   next multiple of 32 of each side.

The scale factor kept for mapping boxes back to the original image is that **single Python
float** (with ``keep_ratio=True`` mmdetection v1 stores ``scale_factor`` as a float, and its
box head tests ``isinstance(scale_factor, float)`` to divide boxes by it), not the per-axis
ratios ``new_w / w`` and ``new_h / h``, which differ from it slightly because of the rounding in
step 2.

Test-time preprocessing comes first in this module; training-time augmentation (random flip of
image, boxes and masks; mask rescaling) belongs after it, sharing :class:`ImageMeta`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .defaults import TEST_SCALE

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "SIZE_DIVISOR",
    "TEST_SCALE",
    "ImageMeta",
    "normalize_image",
    "pad_to_batch",
    "padded_shape",
    "preprocess_image",
    "rescale_factor",
    "rescale_size",
    "resize_image",
    # training
    "flip_boxes",
    "rescale_boxes",
    "rescale_masks",
    "train_transform",
]

#: Per-channel mean and std of the ImageNet-pretrained backbones, RGB order, 0..255 range.
IMAGE_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGE_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
#: Padded height and width are multiples of this (the coarsest FPN stride).
SIZE_DIVISOR = 32

_MEAN_F32 = np.asarray(IMAGE_MEAN, dtype=np.float32)
_STD_F32 = np.asarray(IMAGE_STD, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """Geometry of one preprocessed image; everything needed to map outputs back.

    Attributes:
        orig_size: (height, width) of the image as loaded (after EXIF orientation).
        img_shape: (height, width) after resizing, before padding. Boxes are clipped to it.
        pad_shape: (height, width) after padding this image alone to the size divisor.
        scale_factor: the single float the image was scaled by (see the module docstring);
            original-image boxes = network boxes / scale_factor.
        flipped: whether the image was mirrored left-right (training only; never at test time).
    """

    orig_size: tuple[int, int]
    img_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    scale_factor: float
    flipped: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rescale_factor(width: int, height: int, scale: Sequence[int] = TEST_SCALE) -> float:
    """mmcv ``imrescale``'s factor: the largest that keeps both edges within ``scale``.

    ``scale`` is an unordered pair: its larger number bounds the long edge, its smaller the
    short edge.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    max_long_edge, max_short_edge = max(scale), min(scale)
    return min(max_long_edge / max(height, width), max_short_edge / min(height, width))


def rescale_size(
    width: int, height: int, scale: Sequence[int] = TEST_SCALE
) -> tuple[int, int, float]:
    """(new_width, new_height, scale_factor) of the keep-ratio resize, mmcv 0.2 rounding."""
    factor = rescale_factor(width, height, scale)
    return int(width * factor + 0.5), int(height * factor + 0.5), factor


def padded_shape(height: int, width: int, size_divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``size_divisor``."""
    return (
        int(math.ceil(height / size_divisor)) * size_divisor,
        int(math.ceil(width / size_divisor)) * size_divisor,
    )


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, C) image with OpenCV, as mmcv ``imresize`` does."""
    if image.dtype != np.uint8:
        raise TypeError(f"resize_image expects uint8 pixels, got {image.dtype}")
    return cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (H, W, 3): ``(x - mean) / std`` in float32."""
    return (image.astype(np.float32) - _MEAN_F32) / _STD_F32


def preprocess_image(
    image: np.ndarray, scale: Sequence[int] = TEST_SCALE, size_divisor: int = SIZE_DIVISOR
) -> tuple[torch.Tensor, ImageMeta]:
    """mmdetection v1's test-time preprocessing of one image.

    Args:
        image: (H, W, 3) uint8 RGB, e.g. from :func:`anzoo.data.images.load_image`.
        scale: (long, short) edge limits of the resize.
        size_divisor: the padding multiple recorded in ``meta.pad_shape``.

    Returns:
        The normalized image as a contiguous float32 tensor (3, new_h, new_w), **not padded**
        (:func:`pad_to_batch` pads a batch), and its :class:`ImageMeta`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"preprocess_image expects an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}"
        )
    height, width = image.shape[:2]
    new_w, new_h, factor = rescale_size(width, height, scale)
    if new_w < 1 or new_h < 1:  # e.g. 1x400 at 1333x800: a side rounds to 0 pixels
        from ..errors import ImageError

        raise ImageError(f"image of {width}x{height} pixels is too thin to resize to the test scale "
                         f"{max(scale)}x{min(scale)}")
    resized = resize_image(image, new_w, new_h)
    chw = np.ascontiguousarray(normalize_image(resized).transpose(2, 0, 1))
    meta = ImageMeta(
        orig_size=(height, width),
        img_shape=(new_h, new_w),
        pad_shape=padded_shape(new_h, new_w, size_divisor),
        scale_factor=factor,
    )
    return torch.from_numpy(chw), meta


def pad_to_batch(tensors: Sequence[torch.Tensor], size_divisor: int = SIZE_DIVISOR) -> torch.Tensor:
    """Stack (C, h, w) tensors into (N, C, H, W), zero-padded on the bottom and right.

    H and W are the largest h and w of the batch, rounded up to ``size_divisor``. Because
    Attentive Normalization computes statistics over the whole padded map, an image gives the
    same output in a batch as alone only when the batch's padded size equals its own
    ``pad_shape``: batch images of the same padded shape together
    (:class:`anzoo.data.coco.PaddedShapeBatchSampler`).
    """
    if not tensors:
        raise ValueError("pad_to_batch needs at least one tensor")
    channels = tensors[0].shape[0]
    if any(t.dim() != 3 or t.shape[0] != channels for t in tensors):
        raise ValueError(f"pad_to_batch expects (C, h, w) tensors with the same C, got "
                         f"{[tuple(t.shape) for t in tensors]}")
    max_h = max(int(t.shape[1]) for t in tensors)
    max_w = max(int(t.shape[2]) for t in tensors)
    out_h, out_w = padded_shape(max_h, max_w, size_divisor)
    batch = tensors[0].new_zeros((len(tensors), channels, out_h, out_w))
    for i, tensor in enumerate(tensors):
        batch[i, :, : tensor.shape[1], : tensor.shape[2]].copy_(tensor)
    return batch


# ============================================================================ training
# mmdetection v1's training pipeline (``datasets/pipelines/transforms.py`` of the reference
# fork, as every config under ``configs/attn_norm/`` uses it)::
#
#     Resize(img_scale=(1333, 800), keep_ratio=True) -> RandomFlip(0.5) -> Normalize -> Pad(32)
#
# * the image is resized exactly as at test time (:func:`preprocess_image` steps 1-3);
# * boxes ``(x1, y1, x2, y2)`` (inclusive pixels) are multiplied by the single scale factor
#   and clipped to ``[0, w - 1] x [0, h - 1]`` of the resized image, in float32;
# * masks are resized to the image's new size with nearest-neighbour interpolation
#   (``mmcv.imrescale(mask, scale_factor, interpolation='nearest')`` gives the same size);
# * a horizontal flip mirrors the image and masks and maps ``x1' = w - x2 - 1``,
#   ``x2' = w - x1 - 1``;
# * masks stay at the resized image's size here: mmdet pads them to the padded shape, but
#   every RoI a mask is cropped with lies inside the resized image, so the padding is never read.


def rescale_boxes(boxes: np.ndarray, scale_factor: float, img_shape: tuple[int, int]) -> np.ndarray:
    """``(K, 4)`` boxes times ``scale_factor``, clipped to the resized image ``(h, w)``."""
    out = np.asarray(boxes, dtype=np.float32) * np.float32(scale_factor)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, img_shape[1] - 1)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, img_shape[0] - 1)
    return out


def rescale_masks(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """``(K, H, W)`` uint8 masks resized to ``(K, height, width)``, nearest neighbour."""
    out = np.empty((masks.shape[0], int(height), int(width)), dtype=np.uint8)
    for i, mask in enumerate(masks):
        out[i] = cv2.resize(np.ascontiguousarray(mask), (int(width), int(height)),
                            interpolation=cv2.INTER_NEAREST)
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror ``(K, 4)`` inclusive-pixel boxes in an image ``width`` pixels wide."""
    flipped = np.array(boxes, dtype=np.float32, copy=True)
    flipped[:, 0] = width - boxes[:, 2] - 1
    flipped[:, 2] = width - boxes[:, 0] - 1
    return flipped


def train_transform(
    image: np.ndarray,
    boxes: np.ndarray,
    masks: np.ndarray,
    scale: Sequence[int] = TEST_SCALE,
    flip: bool = False,
    size_divisor: int = SIZE_DIVISOR,
) -> tuple[torch.Tensor, ImageMeta, np.ndarray, np.ndarray]:
    """mmdetection v1's training transform of one image and its annotations.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (K, 4) float ``(x1, y1, x2, y2)`` in original-image pixels, inclusive corners
            (COCO ``[x, y, w, h]`` becomes ``[x, y, x + w - 1, y + h - 1]``).
        masks: (K, H, W) uint8 0/1 masks of the original image.
        scale: (long, short) edge limits of the keep-ratio resize.
        flip: mirror left-right (the caller draws it, with probability 0.5 in the recipe).

    Returns:
        The normalized, unpadded float32 image (3, h, w), its :class:`ImageMeta`
        (``flipped`` set), the boxes (K, 4) float32 and masks (K, h, w) uint8 of the result.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"train_transform expects an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.shape[1:] != (height, width):
        raise ValueError(f"masks of shape {masks.shape[1:]} for an image of {(height, width)}")
    new_w, new_h, factor = rescale_size(width, height, scale)
    resized = resize_image(image, new_w, new_h)
    boxes = rescale_boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), factor, (new_h, new_w))
    masks = rescale_masks(masks, new_w, new_h)
    if flip:
        resized = resized[:, ::-1]
        boxes = flip_boxes(boxes, new_w)
        masks = np.ascontiguousarray(masks[:, :, ::-1])
    chw = np.ascontiguousarray(normalize_image(resized).transpose(2, 0, 1))
    meta = ImageMeta(orig_size=(height, width), img_shape=(new_h, new_w),
                     pad_shape=padded_shape(new_h, new_w, size_divisor), scale_factor=factor,
                     flipped=bool(flip))
    return torch.from_numpy(chw), meta, boxes, masks

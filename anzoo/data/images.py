"""Reading user images into one canonical form: an (H, W, 3) uint8 RGB array.

Every entry point of anzoo (``predict``, ``eval``, ``serve``, training) goes through
:func:`load_image`, so every input gets the same treatment:

* Formats: whatever Pillow decodes; the ones we promise are JPEG, PNG, WebP, BMP and TIFF.
  Multi-frame files (TIFF pages, animated WebP) give their first frame.
* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), as OpenCV's
  ``cv2.imread(..., IMREAD_COLOR)`` does, which is how mmdetection v1 read images.
* Alpha is **dropped**, not composited: RGBA, LA and transparent palette images keep the
  colour stored under each pixel. This is what ``cv2.imread`` (mmdetection v1), torchvision's
  ``read_image(mode=RGB)`` and detectron2 do, so detections match those tools on such files.
* Grayscale ("1", "L") is replicated to three channels; palette ("P", "PA"), CMYK and YCbCr
  are converted by Pillow.
* 16-bit images ("I;16", "I;16B", and "I", which is how Pillow often presents 16-bit data) are
  brought to 8 bits by keeping the high byte (``value >> 8``), as OpenCV does, not by clipping
  at 255; "I" values outside 0..65535 are clipped first. Float images ("F") are read as
  intensities in 0..1 when their maximum is at most 1, else in 0..255, then rounded.
* Numpy arrays are taken as already decoded: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8
  in **RGB(A)** channel order (a BGR array from ``cv2.imread`` must be flipped by the caller:
  ``img[..., ::-1]``); uint16 arrays are reduced by ``>> 8`` as above.

For JPEG, PNG (8 and 16 bit, gray, RGBA, palette), WebP, BMP, TIFF and all EXIF orientations
the result was checked to equal ``cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]`` pixel for
pixel (OpenCV 5.0, Pillow 13); CMYK JPEGs differ by at most 1 level (different conversion).

Anything that cannot be read raises :class:`anzoo.errors.ImageError` naming the input: a
missing or empty file, a file that is not an image, a truncated image, and an image with more
than ``max_pixels`` pixels. The pixel count is checked from the file header, before the pixels
are decoded, so a decompression bomb never gets allocated.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from anzoo.errors import AnzooError, ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "iter_image_files",
    "load_image",
    "read_image_size",
]

logger = logging.getLogger(__name__)

#: Largest image accepted by default: 8192 x 8192 pixels (64 Mpx, 192 MiB decoded as RGB).
#: Pillow's own bomb guard stays in force above 2 x ``Image.MAX_IMAGE_PIXELS`` even with
#: ``max_pixels=None``.
DEFAULT_MAX_PIXELS = 8192 * 8192

#: File extensions :func:`iter_image_files` picks up in a directory (lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff"}
)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

_EXIF_ORIENTATION_TAG = 0x0112
# Orientations 5..8 swap width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Read ``source`` as an (H, W, 3) uint8 RGB array, see the module docstring for the rules.

    Args:
        source: a path, the encoded bytes of a file, a PIL image or a decoded numpy array.
        max_pixels: largest accepted ``H * W``; ``None`` turns the check off.
        name: how to call the input in error messages (default: the path, or "image data").

    Raises:
        ImageError: the input is missing, empty, not an image, truncated or too large.
    """
    label = name or _describe(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, label, max_pixels)
    if isinstance(source, Image.Image):
        return _decode_pil(source, label, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError(f"{label}: empty image data (0 bytes)")
        return _open_and_decode(io.BytesIO(data), label, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = _check_file(Path(source), label)
        with open(path, "rb") as fh:
            return _open_and_decode(fh, label, max_pixels)
    raise TypeError(f"load_image() cannot read a {type(source).__name__}")


def read_image_size(source: str | os.PathLike | bytes, *, name: str | None = None) -> tuple[int, int]:
    """(height, width) of the image :func:`load_image` would return, from the header only.

    EXIF orientation is taken into account; the pixels are not decoded. Used to group images
    by their padded shape before loading them.
    """
    label = name or _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not source:
            raise ImageError(f"{label}: empty image data (0 bytes)")
        fh: io.IOBase = io.BytesIO(bytes(source))
    else:
        fh = open(_check_file(Path(source), label), "rb")
    with fh:
        with _open_pil(fh, label) as img:
            width, height = img.size
            if _exif_orientation(img, label) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    return height, width


def iter_image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into the list of image files to process.

    A file is kept whatever its extension (the user named it; reading it will tell whether it
    is an image). A directory contributes its files whose extension is in
    :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted by name, **not recursively**; hidden
    files (``.name``) are skipped. Order follows the arguments; duplicates are dropped.

    Raises:
        ImageError: a path does not exist (all missing paths are named).
    """
    found: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    child
                    for child in path.iterdir()
                    if child.is_file()
                    and not child.name.startswith(".")
                    and child.suffix.lower() in IMAGE_EXTENSIONS
                )
            )
        elif path.exists():
            found.append(path)
        else:
            missing.append(str(path))
    if missing:
        raise ImageError("no such file or directory: " + ", ".join(missing))
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# --------------------------------------------------------------------------------------------
# internals


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, np.ndarray):
        return "image array"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return str(filename) if filename else "PIL image"
    return "image data"


def _check_file(path: Path, label: str) -> Path:
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if not path.is_file():
        raise ImageError(f"{label}: not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{label}: empty file (0 bytes)")
    return path


def _open_pil(fh, label: str) -> Image.Image:
    try:
        return Image.open(fh)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: image too large to decode safely ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not an image file (or an unsupported format)") from exc
    except Exception as exc:  # a malformed header: Pillow raises many kinds
        raise ImageError(f"{label}: cannot read the image header ({exc})") from exc


def _open_and_decode(fh, label: str, max_pixels: int | None) -> np.ndarray:
    with _open_pil(fh, label) as img:
        return _decode_pil(img, label, max_pixels)


def _check_pixels(width: int, height: int, label: str, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{label}: image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels"
        )


def _exif_orientation(img: Image.Image, label: str) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception as exc:  # malformed EXIF must not make a readable image unreadable
        logger.warning("%s: ignoring unreadable EXIF data (%s)", label, exc)
        return 1


def _decode_pil(img: Image.Image, label: str, max_pixels: int | None) -> np.ndarray:
    # Size comes from the header; nothing has been decoded yet for a freshly opened file.
    _check_pixels(img.width, img.height, label, max_pixels)
    try:
        img.load()
    except Exception as exc:
        if isinstance(exc, AnzooError):
            raise
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, (EOFError, SyntaxError)):
            raise ImageError(f"{label}: truncated or corrupt image ({reason})") from exc
        raise ImageError(f"{label}: cannot decode the image ({reason})") from exc
    if _exif_orientation(img, label) != 1:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:
            logger.warning("%s: EXIF orientation not applied (%s)", label, exc)
    try:
        return _pil_to_rgb(img)
    except ValueError as exc:
        raise ImageError(f"{label}: {exc}") from exc


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        rgb = np.asarray(img)
    elif mode in _SIXTEEN_BIT_MODES:
        rgb = _gray_to_rgb(_sixteen_to_eight(np.asarray(img)))
    elif mode == "F":
        rgb = _gray_to_rgb(_float_to_eight(np.asarray(img, dtype=np.float32)))
    elif mode in ("1", "L"):
        rgb = _gray_to_rgb(np.asarray(img.convert("L")))
    elif mode == "LA":
        rgb = _gray_to_rgb(np.asarray(img)[..., 0])
    elif mode in ("P", "PA"):
        # Via RGBA so that Pillow resolves transparency; the alpha is then dropped.
        rgb = np.asarray(img.convert("RGBA"))[..., :3]
    elif mode in ("RGBA", "RGBa", "RGBX"):
        rgb = np.asarray(img)[..., :3]
    else:  # CMYK, YCbCr, LAB, HSV, ...
        try:
            rgb = np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise ValueError(f"unsupported image mode {mode!r} ({exc})") from exc
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "i":
        values = np.clip(values, 0, 65535)
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    finite_max = float(values.max()) if values.size else 0.0
    if finite_max <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _array_to_rgb(array: np.ndarray, label: str, max_pixels: int | None) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(
            f"{label}: expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {tuple(array.shape)}"
        )
    if array.dtype == np.uint16:
        array = _sixteen_to_eight(array)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ImageError(
            f"{label}: expected a uint8 (or uint16) array, got {array.dtype}; convert it with "
            "e.g. (img * 255).round().astype(np.uint8) for floats in 0..1"
        )
    _check_pixels(array.shape[1], array.shape[0], label, max_pixels)
    if array.ndim == 2:
        array = _gray_to_rgb(array)
    elif array.shape[2] == 1:
        array = _gray_to_rgb(array[:, :, 0])
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)

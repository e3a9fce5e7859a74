"""Reading user images into one canonical form: an (H, W, 3) uint8 RGB array.

Every entry point of anzoo (``predict``, ``eval``, ``serve``, training) goes through
:func:`load_image`, so every input gets the same treatment:

* Formats: JPEG, PNG, WebP, BMP, TIFF and GIF, and only those (:data:`ACCEPTED_FORMATS`):
  Pillow is asked to try no other decoder, so an EPS file never reaches Ghostscript and an ICO
  wrapping a huge PNG is never decoded. A file in another format Pillow recognises raises
  :class:`~anzoo.errors.UnsupportedImageFormatError` naming it and the accepted formats.
  Multi-frame files (TIFF pages, animated WebP and GIF) give their first frame.
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

Memory: decoding holds Pillow's pixels (1 to 4 bytes per pixel by mode, 4 for RGB) and the
(H, W, 3) result; the mode conversion and the EXIF rotation are done a band of rows at a
time, straight into the result, so no further whole-image copy is made
(:func:`decoded_bytes` estimates the peak from the header).
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from ..errors import AnzooError, ImageError, UnsupportedImageFormatError
from .defaults import DEFAULT_MAX_PIXELS

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageHeader",
    "ImageSource",
    "decoded_bytes",
    "load_image",
    "read_image_header",
    "read_image_size",
]

logger = logging.getLogger(__name__)

#: The formats :func:`load_image` decodes, as Pillow names them (a JPEG with several
#: pictures, MPO, is opened by Pillow's JPEG plugin).
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, TIFF, GIF"

#: File extensions a folder contributes to ``anzoo predict`` (lower case; :mod:`anzoo.data.sources`).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

#: Bytes per pixel of Pillow's decoded storage by mode (multi-band 8-bit modes take 4).
_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Rows are converted this many bytes of Pillow pixels at a time.
_BAND_BYTES = 4 << 20

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


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: the size :func:`load_image` returns (EXIF orientation
    applied), Pillow's mode and format."""

    height: int
    width: int
    mode: str
    format: str

    @property
    def pixels(self) -> int:
        return self.height * self.width


def read_image_header(source: str | os.PathLike | bytes, *, name: str | None = None) -> ImageHeader:
    """The :class:`ImageHeader` of a file or encoded bytes; the pixels are not decoded.

    Raises ImageError (UnsupportedImageFormatError for a format that is not accepted).
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
            if _exif_orientation(img, label, header_only=True) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return ImageHeader(height, width, img.mode, str(img.format))


def read_image_size(source: str | os.PathLike | bytes, *, name: str | None = None) -> tuple[int, int]:
    """(height, width) of the image :func:`load_image` would return, from the header only.

    EXIF orientation is taken into account; the pixels are not decoded. Used to group images
    by their padded shape before loading them.
    """
    header = read_image_header(source, name=name)
    return header.height, header.width


def decoded_bytes(header: ImageHeader) -> int:
    """Peak memory :func:`load_image` needs for this image, from its header: Pillow's decoded
    pixels, the (H, W, 3) uint8 result and one band of converted rows."""
    per_pixel = _PIL_BYTES_PER_PIXEL.get(header.mode, 4)
    return header.pixels * (per_pixel + 3) + 3 * _BAND_BYTES


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
    start = fh.tell()
    try:
        with warnings.catch_warnings():  # the size is checked against max_pixels, with a clear message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fh, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: image too large to decode safely ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        fh.seek(start)
        other = _recognised_format(fh.read(16))
        if other is not None:
            raise UnsupportedImageFormatError(
                f"{label}: {other} images are not supported (accepted formats: {_FORMAT_NAMES})") from exc
        raise ImageError(f"{label}: not an image file (or an unsupported format; accepted formats: "
                         f"{_FORMAT_NAMES})") from exc
    except Exception as exc:  # a malformed header: Pillow raises many kinds
        raise ImageError(f"{label}: cannot read the image header ({exc})") from exc


def _recognised_format(prefix: bytes) -> str | None:
    """The name of a format outside ACCEPTED_FORMATS whose signature ``prefix`` starts with,
    from Pillow's signature checks alone (nothing is opened); None when an accepted format's
    signature matches too (then the file is a broken one of those) or none does."""
    Image.init()
    matches = []
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                matches.append(fmt)
        except Exception:  # a signature check that needs more bytes than the file has
            continue
    if not matches or any(fmt in ACCEPTED_FORMATS for fmt in matches):
        return None
    return matches[0]


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


def _exif_orientation(img: Image.Image, label: str, header_only: bool = False) -> int:
    """The EXIF orientation tag (1 when absent). ``header_only``: never decode to find it; a
    PNG may store its EXIF after the pixels, and Pillow's ``getexif`` would then decode the
    whole image (such a rare file's header size ignores its orientation)."""
    if header_only and img.format == "PNG" and "exif" not in img.info:
        return 1
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
    try:
        return _pil_to_rgb(img, _exif_orientation(img, label))
    except ValueError as exc:
        raise ImageError(f"{label}: {exc}") from exc


def _pil_to_rgb(img: Image.Image, orientation: int = 1) -> np.ndarray:
    """The loaded image as (H, W, 3) uint8 RGB with the EXIF ``orientation`` applied, converted
    a band of rows at a time straight into the result (no whole-image temporary)."""
    width, height = img.size
    out_h, out_w = (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    target = _unoriented_view(out, orientation)  # shaped like the stored image, writing into out
    convert = _band_converter(img)
    rows = max(1, _BAND_BYTES // max(1, 4 * width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = convert(img.crop((0, top, width, bottom)))
        target[top:bottom] = band if band.ndim == 3 else band[:, :, None]
    return out


def _unoriented_view(out: np.ndarray, orientation: int) -> np.ndarray:
    """A view of ``out`` (the oriented image) in the stored image's layout: writing the stored
    pixels into it writes them where ``ImageOps.exif_transpose`` would put them."""
    views: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],  # mirrored: FLIP_LEFT_RIGHT is its own inverse
        3: lambda a: a[::-1, ::-1],  # ROTATE_180
        4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
        5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
        6: lambda a: np.rot90(a, 1),  # stored = out turned back: out is ROTATE_270 of it
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE, its own inverse
        8: lambda a: np.rot90(a, -1),  # out is ROTATE_90 of the stored image
    }
    return views.get(orientation, lambda a: a)(out)


def _band_converter(img: Image.Image) -> Callable[[Image.Image], np.ndarray]:
    """How a band of ``img``'s rows becomes uint8: (k, W, 3) RGB, or (k, W) gray (broadcast)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray
    if mode in _SIXTEEN_BIT_MODES:
        return lambda band: _sixteen_to_eight(np.asarray(band))
    if mode == "F":
        unit = _float_max(img) <= 1.0  # the scale is decided by the whole image's maximum
        return lambda band: _float_to_eight(np.asarray(band), unit)
    if mode == "1":
        return lambda band: np.asarray(band.convert("L"))
    if mode == "L":
        return np.asarray
    if mode == "LA":
        return lambda band: np.asarray(band)[..., 0]
    if mode in ("P", "PA"):
        # Via RGBA so that Pillow resolves transparency; the alpha is then dropped.
        return lambda band: np.asarray(band.convert("RGBA"))[..., :3]
    if mode in ("RGBA", "RGBa", "RGBX"):
        return lambda band: np.asarray(band)[..., :3]

    def other(band: Image.Image) -> np.ndarray:  # CMYK, YCbCr, LAB, HSV, ...
        try:
            return np.asarray(band.convert("RGB"))
        except Exception as exc:
            raise ValueError(f"unsupported image mode {mode!r} ({exc})") from exc

    return other


def _float_max(img: Image.Image) -> float:
    """Largest value of a mode "F" image as :func:`_float_to_eight` sees it (NaN as 0, +inf
    as 255), a band at a time."""
    width, height = img.size
    rows = max(1, _BAND_BYTES // max(1, 4 * width))
    largest = 0.0 if height * width == 0 else -np.inf
    for top in range(0, height, rows):
        band = np.asarray(img.crop((0, top, width, min(height, top + rows))), dtype=np.float32)
        largest = max(largest, float(np.nan_to_num(band, nan=0.0, posinf=255.0, neginf=0.0).max()))
    return largest


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "i":
        values = np.clip(values, 0, 65535)
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def _float_to_eight(values: np.ndarray, unit: bool) -> np.ndarray:
    """Float intensities to uint8: ``unit``: in 0..1 (scaled by 255), else in 0..255."""
    values = np.array(values, dtype=np.float32)  # one writable copy, worked on in place
    np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    if unit:
        values *= 255.0
    return np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8)


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

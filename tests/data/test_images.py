"""anzoo.data.images: every input form and mode becomes (H, W, 3) uint8 RGB; bad inputs fail clearly."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anzoo.data.images import IMAGE_EXTENSIONS, load_image, read_image_size
from anzoo.data.sources import expand_inputs
from anzoo.errors import AnzooError, ImageError, UnsupportedImageFormatError

H, W = 24, 32


def _rgb() -> np.ndarray:
    """Smooth colour ramps: survive lossy codecs within a few levels."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 255 // (W - 1), y * 255 // (H - 1), np.full((H, W), 128)], axis=2).astype(np.uint8)


@pytest.mark.parametrize(
    "fmt, ext, tol",
    [("PNG", "png", 0), ("BMP", "bmp", 0), ("TIFF", "tiff", 0), ("WEBP", "webp", 0), ("JPEG", "jpg", 12)],
)
def test_formats_decode_to_rgb(tmp_path: Path, fmt: str, ext: str, tol: int) -> None:
    path = tmp_path / f"img.{ext}"
    save_kwargs = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(_rgb()).save(path, format=fmt, **save_kwargs)
    out = load_image(path)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.abs(out.astype(int) - _rgb()).max() <= tol
    # Same result from bytes and from a str path.
    assert np.array_equal(load_image(path.read_bytes()), out)
    assert np.array_equal(load_image(str(path)), out)


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert np.array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    Image.fromarray(gray > 127).convert("1").save(tmp_path / "one.png")
    out1 = load_image(tmp_path / "one.png")
    assert set(np.unique(out1)) == {0, 255}
    assert np.array_equal(out1[:, :, 0] == 255, gray > 127)


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgb = _rgb()
    alpha = np.zeros((H, W), np.uint8)  # fully transparent: colour must still come through
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), rgb)
    la = np.dstack([rgb[:, :, 0], alpha])
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(load_image(tmp_path / "la.png"), np.repeat(rgb[:, :, :1], 3, axis=2))


def test_palette_images(tmp_path: Path) -> None:
    # A 4-colour image is stored exactly by an adaptive palette.
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    idx = (np.arange(H * W).reshape(H, W) // 7) % 4
    rgb = colours[idx]
    pal = Image.fromarray(rgb).quantize(colors=4)
    assert pal.mode == "P"
    pal.save(tmp_path / "p.png")
    assert np.array_equal(load_image(tmp_path / "p.png"), rgb)
    pal.info["transparency"] = 0  # one palette entry transparent: colour kept, alpha dropped
    pal.save(tmp_path / "pt.png", transparency=0)
    assert np.array_equal(load_image(tmp_path / "pt.png"), rgb)
    pa = Image.fromarray(rgb).quantize(colors=4).convert("PA")
    assert pa.mode == "PA"
    assert np.array_equal(load_image(pa), rgb)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - _rgb()).max() <= 16


def test_sixteen_bit_scaled_by_high_byte(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    expected = np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    Image.fromarray(values).save(tmp_path / "i16.png")  # little-endian I;16
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    assert np.array_equal(load_image(tmp_path / "i16.png"), expected)
    big = Image.frombytes("I;16B", (W, H), values.astype(">u2").tobytes())
    big.save(tmp_path / "i16b.tiff")
    assert Image.open(tmp_path / "i16b.tiff").mode == "I;16B"
    assert np.array_equal(load_image(tmp_path / "i16b.tiff"), expected)
    # 32-bit "I" (how Pillow often presents 16-bit data): same rule, clipped to 0..65535.
    as_int = values.astype(np.int32)
    as_int[0, 0], as_int[0, 1] = -5, 70000
    Image.fromarray(as_int).save(tmp_path / "i32.tiff")
    assert Image.open(tmp_path / "i32.tiff").mode == "I"
    out = load_image(tmp_path / "i32.tiff")
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255
    assert np.array_equal(out[1:], expected[1:])
    # A 16-bit value of 40000 is 156 in 8 bits, not 255 (no clipping).
    assert load_image(np.full((2, 2), 40000, np.uint16))[0, 0, 0] == 40000 >> 8 == 156


def test_float_images(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    Image.fromarray(unit).save(tmp_path / "f.tiff")
    assert Image.open(tmp_path / "f.tiff").mode == "F"
    out = load_image(tmp_path / "f.tiff")
    assert np.array_equal(out[:, :, 1], np.rint(unit * 255).astype(np.uint8))
    wide = Image.fromarray(unit * 300)  # 0..300: read as 0..255 intensities, clipped
    out = load_image(wide)
    assert out.max() == 255 and out[0, 0, 0] == 0


def _exif_jpeg(path: Path, array: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95, subsampling=0)  # 4:4:4: sharp colour edges


@pytest.mark.parametrize(
    "orientation, transform",
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored image must be turned 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_applied(tmp_path: Path, orientation: int, transform) -> None:
    # Blocky image (8x8 blocks survive JPEG) with distinct quadrants.
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:8, :16] = (255, 0, 0)
    stored[:8, 16:] = (0, 255, 0)
    stored[8:, :16] = (0, 0, 255)
    stored[8:, 16:] = (255, 255, 255)
    path = tmp_path / f"o{orientation}.jpg"
    _exif_jpeg(path, stored, orientation)
    out = load_image(path)
    expected = transform(stored)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected).max() <= 40
    assert read_image_size(path) == expected.shape[:2]
    # The corner pixel tells the orientation unambiguously.
    assert np.argmax(out[1, 1]) == np.argmax(expected[1, 1])


def test_pil_and_array_inputs() -> None:
    rgb = _rgb()
    assert np.array_equal(load_image(Image.fromarray(rgb)), rgb)
    assert np.array_equal(load_image(rgb), rgb)
    assert np.array_equal(load_image(np.dstack([rgb, np.zeros((H, W), np.uint8)])), rgb)
    gray = rgb[:, :, 0]
    assert np.array_equal(load_image(gray), np.repeat(gray[:, :, None], 3, axis=2))
    assert np.array_equal(load_image(gray[:, :, None]), np.repeat(gray[:, :, None], 3, axis=2))
    with pytest.raises(ImageError, match="uint8"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.jpg.*not an image"):
        load_image(path)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"\x00\x01garbage" * 10)


def test_empty_inputs(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png.*empty"):
        load_image(path)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="upload.png.*empty"):
        load_image(b"", name="upload.png")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.jpg.*no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: long pixel data
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}.*(truncated|corrupt|decode)"):
        load_image(path)


def test_pixel_limit_checked_before_decoding(tmp_path: Path, monkeypatch) -> None:
    # A real 200x300 PNG whose decoding would fail if reached: the limit must trigger first.
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(path)
    calls = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: calls.append(1) or original_load(self))
    with pytest.raises(ImageError, match=r"big.png.*300x200 = 60000 pixels.*limit of 59999"):
        load_image(path, max_pixels=59_999)
    assert calls == []  # never decoded
    assert load_image(path, max_pixels=60_000).shape == (200, 300, 3)
    assert load_image(path, max_pixels=None).shape == (200, 300, 3)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(np.zeros((10, 10), np.uint8), max_pixels=99)


def test_decompression_bomb_header_only(tmp_path: Path) -> None:
    # A PNG header claiming 100000 x 100000 pixels with almost no data must be refused
    # from its header (decoding it would need 30 GB).
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    def png_header(width: int, height: int) -> bytes:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        idat = zlib.compress(b"\x00" * 64)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

    # Over anzoo's default limit (50 Mpx) but under Pillow's own guard: our header check.
    with pytest.raises(ImageError, match=r"bomb.png: image is 9000x9000 = 81000000 pixels, over the limit"):
        load_image(png_header(9000, 9000), name="bomb.png")
    assert read_image_size(png_header(9000, 9000)) == (9000, 9000)  # header only, no decoding
    # Far over everything: Pillow's guard fires at open(), still an ImageError.
    with pytest.raises(ImageError, match="bomb.png"):
        load_image(png_header(100_000, 100_000), name="bomb.png", max_pixels=None)


def test_errors_are_anzoo_errors() -> None:
    assert issubclass(ImageError, AnzooError)


# ------------------------------------------------------------------------------- formats
def _ico_wrapping_png(width: int, height: int) -> bytes:
    """An ICO file whose one entry is a PNG announcing width x height pixels (a few rows of data)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
           + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1) * 4)) + chunk(b"IEND", b""))
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def _saved(fmt: str, image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "DDS", "PPM"])
def test_only_the_promised_formats_are_decoded(fmt: str, monkeypatch) -> None:
    """EPS would reach Ghostscript, an ICO wrapping a 12000x12000 PNG was decoded inside
    Image.open (before any pixel check): neither decoder may run; the error names the format
    and the accepted ones."""
    from PIL import EpsImagePlugin, IcoImagePlugin

    def never(*args, **kwargs):
        raise AssertionError("a decoder of a format that is not accepted ran")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", never)
    monkeypatch.setattr(IcoImagePlugin.IcoFile, "frame", never)
    data = {"EPS": EPS, "ICO": _ico_wrapping_png(12_000, 12_000),
            "DDS": _saved("DDS", Image.fromarray(_rgb())), "PPM": _saved("PPM", Image.fromarray(_rgb()))}[fmt]
    for source in (data, None):
        with pytest.raises(UnsupportedImageFormatError,
                           match=rf"upload: {fmt} images are not supported \(accepted formats: JPEG, PNG, WebP, "
                                 r"BMP, TIFF, GIF\)"):
            if source is None:
                read_image_size(data, name="upload")
            else:
                load_image(source, name="upload")


def test_gif_is_accepted(tmp_path: Path) -> None:
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    rgb = colours[(np.arange(H * W).reshape(H, W) // 7) % 4]
    frames = [Image.fromarray(rgb).quantize(colors=4), Image.fromarray(rgb[::-1].copy()).quantize(colors=4)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.array_equal(load_image(tmp_path / "anim.gif"), rgb)  # the first frame
    assert ".gif" in IMAGE_EXTENSIONS
    assert [s.key for s in expand_inputs([str(tmp_path)])[0]] == ["anim.gif"]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_equals_pillows_transpose(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    rgb = np.random.default_rng(orientation).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    image.save(path, exif=exif.tobytes())
    with Image.open(path) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert np.array_equal(load_image(path), expected)
    assert read_image_size(path) == expected.shape[:2]


@pytest.mark.parametrize("mode", [pytest.param("RGB", marks=pytest.mark.slow), "F", "I;16", "P"])
def test_decoding_makes_no_whole_image_copy(mode: str) -> None:
    """Mode conversion and orientation go a band of rows at a time into the result: the Python
    memory peak (numpy and bytes, not Pillow's own pixels) stays near the (H, W, 3) result.
    Before, the peak was 2x the result for RGB (Pillow's tobytes) and 5.7x for a float image."""
    import tracemalloc

    side = 4096
    ramp = np.add.outer(np.arange(side), np.arange(side))
    image = {"RGB": lambda: Image.fromarray(np.dstack([ramp % 256] * 3).astype(np.uint8)),
             "F": lambda: Image.fromarray((ramp / ramp.max()).astype(np.float32)),
             "I;16": lambda: Image.fromarray((ramp * 30).astype(np.uint16)),
             "P": lambda: Image.fromarray((ramp % 256).astype(np.uint8)).convert("P")}[mode]()
    assert image.mode == mode
    image.load()
    tracemalloc.start()
    try:
        out = load_image(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (side, side, 3)
    assert peak < out.nbytes + 16 * 2**20, (peak / 2**20, out.nbytes / 2**20)  # + a few bands of rows

"""Messages that point at what exists, and failed commands that leave nothing behind (issue 14)."""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from anzoo import hub
from anzoo.cli import app
from anzoo.data.images import load_image
from anzoo.errors import ImageError
from helpers.manifests import mmdet_checkpoint

runner = CliRunner()


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_row_without_weights_points_at_the_weights_option(tmp_path: Path) -> None:
    """`predict -m r50-sn` (and eval) name --weights, an option they have, not download's --url."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(photo)
    for args in (["predict", str(photo), "-m", "R50-SN"], ["eval", "r50-sn", "--coco", str(tmp_path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        line = error_line(result)
        assert "--weights FILE" in line and "--url" not in line and "anzoo import r50-sn FILE" in line


def test_an_imported_checkpoint_serves_a_row_without_released_weights(tmp_path: Path, extra_zoo) -> None:
    extra_zoo(models=[{"id": "t-own"}])
    result = runner.invoke(app, ["import", "t-own", str(mmdet_checkpoint("r50-bn", tmp_path / "own.pth"))])
    assert result.exit_code == 0, result.output
    assert hub.fetch_weights("t-own") == hub.cached_weights("t-own") is not None


def test_import_of_another_architecture_names_the_file_and_a_few_keys(tmp_path: Path, anzoo_home: Path) -> None:
    file = mmdet_checkpoint("r50-an", tmp_path / "downloaded.pth")
    result = runner.invoke(app, ["import", "r50-bn", str(file)])
    assert result.exit_code == 1
    line = error_line(result)
    assert str(file) in line and ".partial" not in line and ".zip" not in line
    assert "80 missing keys" in line and "and 77 more" in line and "and 173 more" in line
    assert len(line) < 700, len(line)  # was 1.5 kB of keys
    assert not list((anzoo_home / "models").glob("*r50-bn*[!k]"))  # nothing but the lock file


def test_a_failed_demo_run_leaves_nothing_under_out(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "predictions"
    result = runner.invoke(app, ["predict", "--demo", "astronaut", "-m", "r50-sn", "--out", str(out)])
    assert result.exit_code == 1
    assert not out.exists(), sorted(out.rglob("*"))


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header promises width x height pixels (no pixel data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def test_pillow_decompression_bomb_warning_never_reaches_the_user(tmp_path: Path) -> None:
    big = _png_header(tmp_path / "big.png", 10_000, 9_500)  # 95 Mpx: over Pillow's warning limit
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="over the limit of 50000000 pixels"):
            load_image(big)
    assert [w for w in caught if "DecompressionBomb" in w.category.__name__] == []

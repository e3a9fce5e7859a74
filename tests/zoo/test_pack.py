"""`anzoo pack` / `anzoo unpack`: verified cache entries carried to a machine without network,
every file's sha256 checked on arrival (issue 14)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anzoo import hub
from anzoo.cli import app
from helpers.manifests import mmdet_checkpoint

runner = CliRunner()


@pytest.fixture
def packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANZOO_HOME", str(tmp_path / "online"))
    assert runner.invoke(app, ["import", "r50-bn", str(mmdet_checkpoint("r50-bn", tmp_path / "w.pth"))]).exit_code == 0
    out = tmp_path / "cache.tar"
    result = runner.invoke(app, ["pack", str(out)])  # no ids: everything cached
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{out}: model r50-bn"
    return out


def test_pack_then_unpack_round_trip(packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = hub.cached_weights("r50-bn")
    assert original is not None
    with tarfile.open(packed) as tar:
        assert tar.getnames() == ["anzoo-cache.json", "models/r50-bn/r50-bn.pth", "models/r50-bn/r50-bn.pth.sha256"]
    monkeypatch.setenv("ANZOO_HOME", str(tmp_path / "offline"))
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    assert hub.cached_weights("r50-bn") is None
    result = runner.invoke(app, ["unpack", str(packed)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "offline" / "models" / "r50-bn" / "r50-bn.pth"
    assert result.stdout.strip() == f"model r50-bn: {path}"
    assert hub.fetch_weights("r50-bn") == path and path.read_bytes() == original.read_bytes()
    stamp = path.stat().st_mtime_ns
    again = runner.invoke(app, ["unpack", str(packed)])  # already there: left as it is
    assert again.exit_code == 0 and path.stat().st_mtime_ns == stamp


def test_a_damaged_archive_unpacks_nothing(packed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(packed.read_bytes())
    checkpoint = hub.cached_weights("r50-bn").read_bytes()
    at = data.find(checkpoint[4096:4160])
    assert at > 0
    data[at + 10] ^= 0xFF  # one byte flipped in transit
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    monkeypatch.setenv("ANZOO_HOME", str(tmp_path / "offline"))
    result = runner.invoke(app, ["unpack", str(damaged)])
    assert result.exit_code == 1
    assert "r50-bn's file r50-bn.pth does not match its sha256" in result.stderr
    assert hub.cached_weights("r50-bn") is None
    assert [p.name for p in (tmp_path / "offline" / "models").iterdir()] == [".r50-bn.lock"]  # no partial folder


def test_unpack_refuses_paths_outside_the_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = {"format": "anzoo-cache/1", "entries": [{"kind": "model", "id": "r50-bn", "checkpoint": "../x.pth",
                                                         "files": [{"path": "../x.pth", "size": 1, "sha256": "0" * 64}]}]}
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("anzoo-cache.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("ANZOO_HOME", str(tmp_path / "home"))
    result = runner.invoke(app, ["unpack", str(evil)])
    assert result.exit_code == 1 and "anzoo-cache.json is malformed" in result.stderr
    not_tar = tmp_path / "x.tar"
    not_tar.write_bytes(b"hello")
    result = runner.invoke(app, ["unpack", str(not_tar)])
    assert result.exit_code == 1 and "is not an anzoo cache archive" in result.stderr


def test_pack_of_an_entry_not_cached_names_the_download(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pack", str(tmp_path / "x.tar"), "R50-AN"])
    assert result.exit_code == 1
    assert "the cache holds no weights of model r50-an: `anzoo download r50-an` first" in result.stderr
    assert not (tmp_path / "x.tar").exists()

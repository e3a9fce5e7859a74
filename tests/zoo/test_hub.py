"""The weights cache, against a loopback HTTP server (never the real network)."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from anzoo import hub
from anzoo.checkpoint import read_checkpoint
from anzoo.errors import CacheError, CheckpointError, DownloadError, IntegrityError, OfflineError
from helpers.cache_files import HTML_QUOTA_PAGE, archive_bytes, checkpoint_bytes

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _fast_failures(monkeypatch):
    # No retry pauses in tests (gdown waits a random 0-2 s before a retry).
    monkeypatch.setattr(hub, "DOWNLOAD_RETRIES", 0)


def cache_files(home: Path) -> list[str]:
    """Every file under ANZOO_HOME except lock files, relative."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


# --------------------------------------------------------------------------- success
def test_download_records_sha256_and_reuses_the_file(http_server, extra_zoo, anzoo_home):
    data = checkpoint_bytes()
    url = http_server.add("/files/t.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])

    assert hub.cached_weights("t") is None
    path = hub.fetch_weights("t", progress=False)
    assert path == anzoo_home / "models" / "t" / "t.pth"
    assert path.read_bytes() == data  # a torch.save zip is a checkpoint, not an archive to unpack
    assert (path.parent / "t.pth.sha256").read_text() == f"{sha256(data)}  t.pth\n"
    assert cache_files(anzoo_home) == ["models/t/t.pth", "models/t/t.pth.sha256"]

    assert hub.fetch_weights("t") == path
    assert http_server.count("/files/t.pth") == 1
    state = hub.cache_state("t")
    assert state.cached and state.checkpoint == path and state.sha256 == sha256(data)
    assert state.size == len(data)
    assert hub.cached_weights("t") == path
    assert torch.equal(read_checkpoint(path)["state_dict"]["module.conv.weight"],
                       torch.load(io.BytesIO(data), weights_only=True)["state_dict"]["module.conv.weight"])


def test_cached_folder_is_as_readable_as_the_cache(http_server, extra_zoo, anzoo_home):
    url = http_server.add("/t.pth", checkpoint_bytes())
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    (anzoo_home / "models").mkdir(parents=True)
    (anzoo_home / "models").chmod(0o755)
    path = hub.fetch_weights("t", progress=False)
    assert path.parent.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700: other users read it too


def test_legacy_torch_file_and_custom_filename(http_server, extra_zoo):
    data = checkpoint_bytes(legacy=True)
    assert not data.startswith(b"PK")
    url = http_server.add("/legacy.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url, "filename": "epoch_24.pth"}}])
    path = hub.fetch_weights("t", progress=False)
    assert path.name == "epoch_24.pth" and path.read_bytes() == data


def test_progress_bar_does_not_break_the_download(http_server, extra_zoo):
    url = http_server.add("/t.pth", checkpoint_bytes())
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    assert hub.fetch_weights("t", progress=True).is_file()


@pytest.mark.parametrize("kind", ["backbone", "model"])
def test_zip_archive_is_unpacked(http_server, extra_zoo, anzoo_home, kind):
    inner = checkpoint_bytes(seed=1)
    data = archive_bytes(inner)
    url = http_server.add("/r50.zip", data)
    weights = {"url": url, "sha256": sha256(data)}  # a pin refers to the file as served
    if kind == "backbone":
        extra_zoo(backbones=[{"id": "bb", "arch": "resnet50", "norm": "bn", "weights": weights}])
        path = hub.fetch_backbone_weights("bb", progress=False)
        folder = anzoo_home / "backbones" / "bb"
    else:
        extra_zoo(models=[{"id": "bb", "weights": weights}])
        path = hub.fetch_weights("bb", progress=False)
        folder = anzoo_home / "models" / "bb"
    assert path == folder / "resnet-50-imagenet" / "model_best.pth.tar"
    assert path.read_bytes() == inner
    assert (path.parent / "config.yaml").read_text().startswith("model:")
    assert (path.parent / "model_best.pth.tar.sha256").read_text().split()[0] == sha256(inner)
    assert not list(folder.rglob("*.zip")) and not (folder / ".download").exists()
    # verified (against the checkpoint's own sha256) and reused on the next call
    again = hub.fetch_backbone_weights("bb") if kind == "backbone" else hub.fetch_weights("bb")
    assert again == path and http_server.count("/r50.zip") == 1


# --------------------------------------------------------------------------- failures
def test_connection_dropped_mid_file_leaves_nothing(http_server, extra_zoo, anzoo_home):
    data = checkpoint_bytes(n=200_000)
    url = http_server.add("/t.pth", data, drop_after=len(data) // 2)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("t", progress=False)
    message = str(info.value)
    assert "incomplete" in message.lower() and url in message
    assert "anzoo import t FILE" in message
    assert "partial file" not in message  # gdown's resume advice does not apply: anzoo cleans up
    assert cache_files(anzoo_home) == []
    assert not (anzoo_home / "models" / "t").exists()
    assert hub.cached_weights("t") is None


def test_connection_dropped_with_retries(http_server, extra_zoo, anzoo_home, monkeypatch):
    # gdown retries with a Range request; this server ignores Range, so the retry fails too.
    monkeypatch.setattr(hub, "DOWNLOAD_RETRIES", 1)
    data = checkpoint_bytes(n=100_000)
    url = http_server.add("/t.pth", data, drop_after=1000)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    with pytest.raises(DownloadError):
        hub.fetch_weights("t", progress=False)
    assert http_server.count("/t.pth") == 2
    assert cache_files(anzoo_home) == []


def test_read_timeout(http_server, extra_zoo, monkeypatch):
    monkeypatch.setattr(hub, "READ_TIMEOUT", 0.3)
    data = checkpoint_bytes()
    url = http_server.add("/slow.pth", data, chunk_size=len(data) // 4, chunk_delay=3.0)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"no answer within 0.3 s"):
        hub.fetch_weights("t", progress=False)
    assert time.monotonic() - start < 2.5


def test_pinned_checksum_mismatch(http_server, extra_zoo, anzoo_home):
    data = checkpoint_bytes()
    url = http_server.add("/t.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url, "sha256": "ab" * 32}}])
    with pytest.raises(IntegrityError) as info:
        hub.fetch_weights("t", progress=False)
    assert f"has sha256 {sha256(data)}, but the zoo pins {'ab' * 32}" in str(info.value)
    assert cache_files(anzoo_home) == []


def test_changed_cache_file_is_detected_and_force_fetches_again(http_server, extra_zoo):
    data = checkpoint_bytes()
    url = http_server.add("/t.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    path = hub.fetch_weights("t", progress=False)
    path.write_bytes(data[:-10] + b"0123456789")  # same size, different bytes
    with pytest.raises(IntegrityError) as info:
        hub.fetch_weights("t", progress=False)
    assert "`anzoo download t --force`" in str(info.value)
    assert hub.fetch_weights("t", force=True, progress=False) == path
    assert path.read_bytes() == data and http_server.count("/t.pth") == 2
    assert hub.fetch_weights("t") == path


def test_html_page_instead_of_a_file(http_server, extra_zoo, anzoo_home):
    url = http_server.add("/t.pth", HTML_QUOTA_PAGE, content_type="text/html; charset=utf-8")
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("t", progress=False)
    message = str(info.value)
    assert "gave a web page instead of the weights file (titled 'Google Drive - Quota exceeded')" in message
    assert f"download {url} in a browser, then run `anzoo import t FILE`" in message
    assert cache_files(anzoo_home) == []


def test_http_error_status(http_server, extra_zoo):
    url = http_server.url("/missing.pth")  # not registered: 404
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    with pytest.raises(DownloadError, match=f"{url} answered HTTP 404"):
        hub.fetch_weights("t", progress=False)


def test_drive_refusal_then_mirrors_in_order(http_server, extra_zoo, monkeypatch):
    import gdown.exceptions

    real = hub._gdown_download
    drive_calls = []

    def fake_gdown(**kwargs):
        if "id" in kwargs:  # stands in for Google Drive: refuse, as it does over quota
            drive_calls.append(kwargs["id"])
            raise gdown.exceptions.FileURLRetrievalError(
                "Failed to retrieve file url: Too many users have viewed or downloaded this file "
                "recently. Check FAQ in https://github.com/wkentaro/gdown?tab=readme-ov-file#faq.")
        return real(**kwargs)

    monkeypatch.setattr(hub, "_gdown_download", fake_gdown)
    data = checkpoint_bytes()
    bad = http_server.url("/gone.pth")
    good = http_server.add("/mirror.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"gdrive_id": "1AbCdEfGhIjKlMnOp", "mirrors": [bad, good]}}])
    path = hub.fetch_weights("t", progress=False)
    assert path.read_bytes() == data
    assert drive_calls == ["1AbCdEfGhIjKlMnOp"]
    assert http_server.requests == ["/gone.pth", "/mirror.pth"]


def test_drive_refusal_message(extra_zoo, monkeypatch):
    import gdown.exceptions

    def refuse(**kwargs):
        raise gdown.exceptions.FileURLRetrievalError(
            "Cannot retrieve the public link of the file. You may need to change the permission "
            "to 'Anyone with the link', or have had many accesses. Check FAQ in https://github.com/x.")

    monkeypatch.setattr(hub, "_gdown_download", refuse)
    extra_zoo(models=[{"id": "t", "weights": {"gdrive_id": "1AbCdEfGhIjKlMnOp"}}])
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("t", progress=False)
    message = str(info.value)
    assert "Google Drive refused the file 1AbCdEfGhIjKlMnOp" in message
    assert "download https://drive.google.com/open?id=1AbCdEfGhIjKlMnOp in a browser" in message
    assert "`anzoo import t FILE`" in message
    assert "Check FAQ" not in message


def test_drive_html_page_is_recognised(extra_zoo, monkeypatch):
    def html_instead(**kwargs):  # Drive answered with its warning page and gdown saved it
        Path(kwargs["output"]).write_bytes(HTML_QUOTA_PAGE)
        return kwargs["output"]

    monkeypatch.setattr(hub, "_gdown_download", html_instead)
    extra_zoo(models=[{"id": "t", "weights": {"gdrive_id": "1AbCdEfGhIjKlMnOp"}}])
    with pytest.raises(DownloadError, match=r"web page.*https://drive\.google\.com/open\?id=1AbCdEfGhIjKlMnOp"):
        hub.fetch_weights("t", progress=False)


def test_every_request_has_a_timeout(extra_zoo, monkeypatch, tmp_path):
    seen = {}

    def record(**kwargs):
        seen.update(kwargs)
        Path(kwargs["output"]).write_bytes(checkpoint_bytes())
        return kwargs["output"]

    monkeypatch.setattr(hub, "_gdown_download", record)
    extra_zoo(models=[{"id": "t", "weights": {"gdrive_id": "1AbCdEfGhIjKlMnOp"}}])
    hub.fetch_weights("t", progress=False)
    assert seen["id"] == "1AbCdEfGhIjKlMnOp"
    assert seen["timeout"] == (hub.CONNECT_TIMEOUT, hub.READ_TIMEOUT)


def test_entry_without_weights(http_server):
    with pytest.raises(DownloadError, match=r"model r50-gn has no released weights \(Starred row.*Group Normalization"):
        hub.fetch_weights("r50-gn")
    # ... unless a URL is given
    url = http_server.add("/own.pth", checkpoint_bytes())
    assert hub.fetch_weights("r50-gn", url=url, progress=False).name == "r50-gn.pth"


def test_url_overrides_the_zoo_sources(http_server, extra_zoo):
    zoo_url = http_server.add("/zoo.pth", checkpoint_bytes(seed=1))
    own_url = http_server.add("/own.pth", checkpoint_bytes(seed=2))
    extra_zoo(models=[{"id": "t", "weights": {"url": zoo_url}}])
    assert hub.fetch_weights("t", url=own_url, progress=False).read_bytes() == checkpoint_bytes(seed=2)
    assert http_server.requests == ["/own.pth"]
    with pytest.raises(DownloadError, match="must be an http"):
        hub.fetch_weights("t", url="file:///etc/passwd", force=True)


# --------------------------------------------------------------------------- offline
def test_offline_never_touches_the_network(http_server, extra_zoo, anzoo_home, monkeypatch):
    data = checkpoint_bytes()
    url = http_server.add("/t.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        hub.fetch_weights("t", progress=False)
    message = str(info.value)
    expected = anzoo_home / "models" / "t" / "t.pth"
    assert f"{expected} is missing" in message
    assert f"download {url} in a browser, then run `anzoo import t FILE`" in message
    assert http_server.requests == []

    # a file copied to the named place is picked up (and checked) without the network
    expected.parent.mkdir(parents=True)
    expected.write_bytes(data)
    assert hub.fetch_weights("t") == expected
    assert (expected.parent / "t.pth.sha256").read_text().split()[0] == sha256(data)
    assert http_server.requests == []


def test_offline_uses_the_cache(http_server, extra_zoo, monkeypatch):
    url = http_server.add("/t.pth", checkpoint_bytes())
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    path = hub.fetch_weights("t", progress=False)
    monkeypatch.setenv("ANZOO_OFFLINE", "true")
    assert hub.fetch_weights("t") == path
    with pytest.raises(OfflineError):
        hub.fetch_weights("t", force=True)
    assert http_server.count("/t.pth") == 1


# --------------------------------------------------------------------------- concurrency
FETCH_SNIPPET = ("import sys; from anzoo import hub; "
                 "print(hub.fetch_weights(sys.argv[1], progress=False), flush=True)")


@pytest.mark.slow
def test_two_processes_download_one_entry(http_server, extra_zoo, anzoo_home):
    data = checkpoint_bytes(n=120_000)  # ~480 kB served in ~1.2 s, so the two overlap
    url = http_server.add("/t.pth", data, chunk_size=32 * 1024, chunk_delay=0.08)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SNIPPET, "t"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    paths = {Path(out.strip()) for out, _ in outs}
    assert paths == {anzoo_home / "models" / "t" / "t.pth"}
    assert http_server.count("/t.pth") == 1  # the second process reused the first one's file
    path = paths.pop()
    assert path.read_bytes() == data
    assert cache_files(anzoo_home) == ["models/t/t.pth", "models/t/t.pth.sha256"]


def test_two_threads_download_one_entry(http_server, extra_zoo, anzoo_home):
    data = checkpoint_bytes(n=60_000)
    url = http_server.add("/t.pth", data, chunk_size=32 * 1024, chunk_delay=0.05)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    results, errors = [], []

    def work():
        try:
            results.append(hub.fetch_weights("t", progress=False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert http_server.count("/t.pth") == 1
    assert results[0].read_bytes() == data


def test_leftovers_of_a_killed_download_are_removed(http_server, extra_zoo, anzoo_home):
    url = http_server.add("/t.pth", checkpoint_bytes())
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    leftover = anzoo_home / "models" / ".t.abcd1234.partial"
    leftover.mkdir(parents=True)
    (leftover / ".download").write_bytes(b"half a file")
    other = anzoo_home / "models" / ".t-2.abcd1234.partial"  # another entry's: left alone
    other.mkdir()
    assert hub.cached_weights("t") is None
    hub.fetch_weights("t", progress=False)
    assert not leftover.exists() and other.exists()


# --------------------------------------------------------------------------- import
def test_import_checks_and_caches(tmp_path, anzoo_home):
    data = checkpoint_bytes()
    file = tmp_path / "downloaded.pth"
    file.write_bytes(data)
    path = hub.import_weights("aognet40m-an-gn", file)
    assert path == anzoo_home / "models" / "aognet40m-an-gn" / "aognet40m-an-gn.pth"
    assert path.read_bytes() == data and file.exists()
    assert hub.cached_weights("aognet40m-an-gn") == path
    assert hub.fetch_weights("aognet40m-an-gn") == path  # no network: it is cached and verified


def test_import_archive_for_a_backbone(tmp_path, anzoo_home):
    inner = checkpoint_bytes(seed=3)
    file = tmp_path / "resnet-50-an.zip"
    file.write_bytes(archive_bytes(inner, folder="resnet-50-an-imagenet"))
    path = hub.import_backbone_weights("r50-an", file)
    assert path == anzoo_home / "backbones" / "r50-an" / "resnet-50-an-imagenet" / "model_best.pth.tar"
    assert path.read_bytes() == inner
    assert hub.fetch_backbone_weights("r50-an") == path


def test_import_replaces_a_cached_file(tmp_path):
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    first.write_bytes(checkpoint_bytes(seed=1))
    second.write_bytes(checkpoint_bytes(seed=2))
    path = hub.import_weights("r50-bn", first)
    assert hub.import_weights("r50-bn", second) == path
    assert path.read_bytes() == second.read_bytes()
    assert hub.cache_state("r50-bn").sha256 == sha256(second.read_bytes())


@pytest.mark.parametrize("content, expected", [
    (HTML_QUOTA_PAGE, "gave a web page instead of the weights file"),
    (b"just some text, not a checkpoint", "is neither a PyTorch checkpoint nor a zip archive"),
    (b"\x80\x02garbage that is not a pickle", "is not a readable PyTorch checkpoint"),
])
def test_import_rejects_what_is_not_a_checkpoint(tmp_path, anzoo_home, content, expected):
    file = tmp_path / "bad.pth"
    file.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected):
        hub.import_weights("r50-bn", file)
    assert cache_files(anzoo_home) == []


def test_import_archive_without_checkpoint(tmp_path, anzoo_home):
    file = tmp_path / "x.zip"
    with zipfile.ZipFile(file, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="holds no checkpoint file"):
        hub.import_weights("r50-bn", file)
    assert cache_files(anzoo_home) == []


def test_import_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        hub.import_weights("r50-bn", tmp_path / "nope.pth")


def test_import_validators(tmp_path, anzoo_home):
    file = tmp_path / "a.pth"
    file.write_bytes(checkpoint_bytes())
    calls = []

    def wrong_architecture(model_id, path):
        calls.append((model_id, Path(path).name))
        raise CheckpointError(f"{path} does not fit {model_id}")

    with pytest.raises(CheckpointError, match="does not fit r50-bn"):
        hub.import_weights("r50-bn", file, validate=wrong_architecture)
    assert calls == [("r50-bn", "r50-bn.pth")] and cache_files(anzoo_home) == []

    hub.set_import_validator("model", wrong_architecture)
    try:
        with pytest.raises(CheckpointError):
            hub.import_weights("r50-an", file)
        assert hub.import_backbone_weights("r50-an", file).is_file()  # models only
    finally:
        hub.set_import_validator("model", None)
    assert hub.import_weights("r50-an", file).is_file()


def test_import_pinned_mismatch(tmp_path, extra_zoo):
    extra_zoo(models=[{"id": "t", "weights": {"url": "https://example.org/t.pth", "sha256": "cd" * 32}}])
    file = tmp_path / "t.pth"
    file.write_bytes(checkpoint_bytes())
    with pytest.raises(IntegrityError, match="but the zoo pins"):
        hub.import_weights("t", file)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ANZOO_HOME", str(tmp_path / "x"))
    assert hub.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("ANZOO_HOME")
    assert hub.cache_dir() == Path.home() / ".cache" / "anzoo"


# --------------------------------------------------------------------------- versions
def test_gdown_floor_is_declared_and_an_older_gdown_gives_one_error(extra_zoo, monkeypatch):
    import re

    import gdown

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(rf'"gdown>={re.escape(hub.GDOWN_MIN_VERSION)}"', pyproject)
    assert re.search(r'"torch>=2\.([5-9]|\d\d)"', pyproject)  # torch.serialization.safe_globals

    def gdown_6_2(url=None, output=None, quiet=False, proxy=None, speed=None, use_cookies=True, verify=True,
                  id=None, resume=False, format=None, user_agent=None, log_messages=None, progress=None,
                  skip_download=False, cookies_file=None):  # noqa: A002 - gdown's own names
        raise AssertionError("not reached: the check comes first")

    def gdown_5(url=None, output=None, quiet=False, proxy=None, speed=None, use_cookies=True, verify=True,
                id=None, fuzzy=False, resume=False, format=None, user_agent=None, log_messages=None):  # noqa: A002
        raise AssertionError("not reached")

    extra_zoo(models=[{"id": "t", "weights": {"url": "http://127.0.0.1:9/t.pth"}}])
    monkeypatch.setattr(gdown, "__version__", "6.2.0")
    monkeypatch.setattr(gdown, "download", gdown_6_2)
    with pytest.raises(DownloadError) as info:
        hub.fetch_weights("t", progress=False)
    assert "gdown 6.2.0 is too old for anzoo (its download() takes no hasher, timeout, retries); " \
           "upgrade it: pip install 'gdown>=6.3'" in str(info.value)
    monkeypatch.setattr(gdown, "download", gdown_5)
    with pytest.raises(DownloadError, match="takes no progress, hasher, timeout, retries"):
        hub.fetch_weights("t", progress=False)


# --------------------------------------------------------------------------- cache I/O errors
def _fail(err: int):
    def raise_(*args, **kwargs):
        raise OSError(err, os.strerror(err), str(args[0]) if args else None)
    return raise_


@pytest.mark.parametrize("where, err", [
    ("download", errno.ENOSPC), ("unpack", errno.EFBIG), ("sidecar", errno.EROFS), ("import", errno.EDQUOT),
    ("staging", errno.EACCES),
])
def test_cache_write_errors_are_one_line_naming_the_folder(http_server, extra_zoo, anzoo_home, monkeypatch,
                                                           tmp_path, where, err):
    data = archive_bytes(checkpoint_bytes()) if where == "unpack" else checkpoint_bytes()
    url = http_server.add("/t.bin", data)
    mirror = http_server.add("/mirror.bin", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url, "mirrors": [mirror]}}])
    if where == "download":  # the disk fills up half-way through the transfer
        def half_then_full(**kwargs):
            Path(kwargs["output"]).write_bytes(data[: len(data) // 2])
            _fail(err)(kwargs["output"])
        monkeypatch.setattr(hub, "_gdown_download", half_then_full)
    elif where == "unpack":
        monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda self, path, *a, **k: _fail(err)(path))
    elif where == "sidecar":
        monkeypatch.setattr(hub, "_write_sidecar", _fail(err))
    elif where == "import":
        monkeypatch.setattr(hub.shutil, "copyfileobj", lambda src, dst, *a: _fail(err)(dst.name))
    else:
        monkeypatch.setattr(hub.tempfile, "mkdtemp", lambda *a, dir=None, **k: _fail(err)(dir))
    with pytest.raises(CacheError) as info:
        if where == "import":
            file = tmp_path / "t.pth"
            file.write_bytes(data)
            hub.import_weights("t", file)
        else:
            hub.fetch_weights("t", progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot write to the weights cache {anzoo_home / 'models'}: {os.strerror(err)}")
    assert "\n" not in message and ("ANZOO_HOME" in message)
    assert http_server.count("/mirror.bin") == 0  # another source would not help a full disk
    assert cache_files(anzoo_home) == [] and hub.cached_weights("t") is None


# --------------------------------------------------------------------------- archive bounds
def _claiming_zip(claimed: int, members: int = 2) -> bytes:
    """A small zip whose directory claims ``claimed`` uncompressed bytes per member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(members):
            zf.writestr(f"r50/part{i}.pth", b"x" * 100)
    data = bytearray(buf.getvalue())
    start = data.find(b"PK\x01\x02")
    while start >= 0:  # central directory headers: uncompressed size at offset 24
        data[start + 24: start + 28] = claimed.to_bytes(4, "little")
        start = data.find(b"PK\x01\x02", start + 4)
    return bytes(data)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["claims", "holds", "members"])
def test_archive_bounds_are_checked_before_unpacking(tmp_path, anzoo_home, monkeypatch, case):
    from anzoo import checkpoint

    if case == "claims":  # 600 bytes that claim 7.5 GiB
        data, expected = _claiming_zip(0xF0000000), r"unpacks to 7\.5 GiB; .* at most 4\.0 GiB"
    elif case == "holds":  # 3 MiB of zeros in a 3 kB file, against a 1 MiB limit
        monkeypatch.setattr(checkpoint, "MAX_ARCHIVE_BYTES", 1 << 20)
        data = _zip({"r50/model_best.pth.tar": bytes(3 << 20)})
        expected = r"unpacks to 3\.0 MiB; .* at most 1\.0 MiB"
    else:
        data = _zip({f"r50/{i}.txt": b"" for i in range(1001)} | {"r50/model_best.pth.tar": checkpoint_bytes()})
        expected = "holds 1002 files; a checkpoint archive may hold at most 1000"
    assert len(data) < 200_000
    extracted = []
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a, **k: extracted.append(a))
    file = tmp_path / "bomb.zip"
    file.write_bytes(data)
    with pytest.raises(CheckpointError, match=expected):
        hub.import_backbone_weights("r50-an", file)
    with pytest.raises(CheckpointError, match=expected):  # read in place (--weights FILE): never in memory
        read_checkpoint(file)
    assert extracted == [] and cache_files(anzoo_home) == []


def test_damaged_archive_is_a_checkpoint_error(tmp_path, anzoo_home):
    data = bytearray(archive_bytes(checkpoint_bytes()))
    at = data.find(b"model_best.pth.tar") + 200  # inside the stored checkpoint's bytes
    data[at] ^= 0xFF
    file = tmp_path / "damaged.zip"
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{file} is a damaged zip archive \(Bad CRC-32"):
        hub.import_backbone_weights("r50-an", file)
    assert cache_files(anzoo_home) == []


# --------------------------------------------------------------------------- read-only cache
class _ReadOnlyMountLock:
    """filelock.FileLock on a read-only mount: creating the lock file fails with EROFS."""

    def __init__(self, path, *args, **kwargs):
        self.path = path

    def acquire(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.path)


@pytest.mark.parametrize("how", ["chmod", "read-only mount"])
def test_read_only_cache_serves_its_verified_files(http_server, extra_zoo, anzoo_home, monkeypatch, tmp_path, how):
    import filelock

    url = http_server.add("/t.pth", checkpoint_bytes())
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}, {"id": "u", "weights": {"url": url}}])
    path = hub.fetch_weights("t", progress=False)
    (anzoo_home / "models" / ".t.lock").unlink(missing_ok=True)  # as a cache copied onto a mount
    folders = [p for p in [anzoo_home, *anzoo_home.rglob("*")] if p.is_dir()]
    if how == "chmod":
        for folder in folders:
            folder.chmod(0o555)
        if os.access(anzoo_home / "models", os.W_OK):
            for folder in folders:
                folder.chmod(0o755)
            pytest.skip("chmod does not stop this user (root) from writing; the mount case covers it")
    else:
        monkeypatch.setattr(filelock, "FileLock", _ReadOnlyMountLock)
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    try:
        assert hub.fetch_weights("t") == path
        with pytest.raises(CacheError, match=rf"the weights cache {anzoo_home / 'models'} is read-only and holds "
                                             r"no verified weights of model u: set ANZOO_HOME to a folder"):
            hub.fetch_weights("u")
        with pytest.raises(CacheError, match="is read-only: set ANZOO_HOME"):
            hub.fetch_weights("t", force=True)
        file = tmp_path / "own.pth"
        file.write_bytes(checkpoint_bytes(seed=5))
        with pytest.raises(CacheError, match="is read-only: set ANZOO_HOME"):
            hub.import_weights("t", file)
        assert hub.fetch_weights("t") == path and http_server.count("/t.pth") == 1
    finally:
        for folder in folders:
            folder.chmod(0o755)

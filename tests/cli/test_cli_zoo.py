"""`anzoo list / info / download / import`: output and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anzoo import hub
from anzoo.cli import app
from helpers.cache_files import HTML_QUOTA_PAGE, checkpoint_bytes
from helpers.zoo_rows import EXPECTED_IDS

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def error_line(result) -> str:
    """The one error line a failing command writes to stderr (log lines aside)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- list
def test_list_prints_the_whole_table():
    result = run("list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for header in ("id", "detector", "backbone", "backbone norm", "head", "#params", "box AP",
                   "mask AP", "weights"):
        assert header in out
    for model_id in EXPECTED_IDS:
        assert f" {model_id} " in out
    row = next(line for line in out.splitlines() if " aognet40m-an-gn " in line)
    for cell in ("Mask R-CNN", "AOGNet-40m", "AN (w/ BN)", "AN (w/ GN)", "61.02M", "44.9", "40.2", "available"):
        assert cell in row
    row = next(line for line in out.splitlines() if " r50-sn " in line)
    for cell in ("SN", "41.0", "36.5", "none"):
        assert cell in row
    assert "default model: aognet40m-an-gn" in out


def test_list_filters():
    result = run("list", "--detector", "cascade_mask_rcnn")
    assert result.exit_code == 0
    shown = [m for m in EXPECTED_IDS if f" {m} " in result.stdout]
    assert shown == EXPECTED_IDS[-4:]
    result = run("list", "--backbone", "r101", "--json")
    assert [e["id"] for e in json.loads(result.stdout)] == \
        ["r101-bn", "r101-an", "r101-gn", "r101-an-gn", "cascade-r101-bn", "cascade-r101-an"]
    result = run("list", "--detector", "yolo")
    assert result.exit_code == 2 and "yolo" in result.output


def test_list_json_and_cache_state(tmp_path):
    result = run("list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [e["id"] for e in data] == EXPECTED_IDS
    first = data[0]
    assert {k: first[k] for k in ("id", "detector", "backbone", "backbone_norm", "head_norm",
                                  "params_m", "box_ap", "mask_ap")} == {
        "id": "r50-bn", "detector": "mask_rcnn", "backbone": "resnet50", "backbone_norm": "bn",
        "head_norm": "none", "params_m": 45.71, "box_ap": 39.2, "mask_ap": 35.2}
    assert first["weights"]["source"] == "https://drive.google.com/open?id=1m6_-5ri-ZcVtcrazAIXaPr_0y8KSx42p"
    assert first["weights"]["cached"] is False
    by_id = {e["id"]: e for e in data}
    assert by_id["r50-sn"]["params_m"] is None
    assert by_id["r50-gn"]["weights"] == {**by_id["r50-gn"]["weights"], "source": None, "cached": False}

    file = tmp_path / "w.pth"
    file.write_bytes(checkpoint_bytes())
    hub.import_weights("r101-an", file)
    data = {e["id"]: e for e in json.loads(run("list", "--json").stdout)}
    assert data["r101-an"]["weights"]["cached"] is True
    assert data["r101-an"]["weights"]["path"] == str(hub.cached_weights("r101-an"))
    assert data["r101-bn"]["weights"]["cached"] is False
    row = next(line for line in run("list").stdout.splitlines() if " r101-an " in line)
    assert "cached" in row


def test_list_imagenet_backbones():
    result = run("list", "--imagenet")
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if " aognet40m-an " in line)
    for cell in ("AOGNet-40m", "AN (w/ BN)", "40.39M", "19.33", "4.72", "available"):
        assert cell in row
    data = json.loads(run("list", "--imagenet", "--json").stdout)
    assert [b["id"] for b in data] == ["r50-bn", "r50-an", "r101-bn", "r101-an", "aognet12m-bn",
                                       "aognet12m-an", "aognet40m-bn", "aognet40m-an"]
    assert data[0]["weights"]["source"] == "https://drive.google.com/open?id=1NqGbN5XjEWufq-V3WXz0eXJ2HKDL2wGV"


# --------------------------------------------------------------------------- info
def test_info():
    result = run("info", "aognet40m-an-gn")
    assert result.exit_code == 0
    out = result.stdout
    for text in ("aognet40m-an-gn", "mask_rcnn", "an_gn", "44.9", "40.2", "aognet40m-an",
                 "https://drive.google.com/open?id=1QbVVHi_bE_tEIR0H8u-1FXa2jCzN7GvA",
                 "https://arxiv.org/abs/1711.05847", "https://arxiv.org/abs/1908.01259",
                 "mask_rcnn_aognet_40m_an_conv_head_attn_gn_fpn_2x.py"):
        assert text in out, text
    data = json.loads(run("info", "r50-gn", "--json").stdout)
    assert data["weights"]["source"] is None and data["weights"]["cached"] is False
    assert "Group Normalization paper" in data["notes"]
    assert data["papers"][0]["link"] == "https://arxiv.org/abs/1803.08494"
    data = json.loads(run("info", "--imagenet", "r50-an", "--json").stdout)
    assert data["top1_error"] == 21.59 and data["arch"] == "resnet50"


def test_info_unknown_id_is_one_line_and_exit_2():
    result = run("info", "aognet40m-an-gm")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("error: unknown model 'aognet40m-an-gm'; did you mean aognet40m-an-gn")
    assert result.stdout == ""


def test_broken_zoo_file_is_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - {id: x, detector: yolo}\n")
    monkeypatch.setenv("ANZOO_ZOO", str(bad))
    result = run("list")
    assert result.exit_code == 1
    assert "entry 'x' (models[0]), field 'detector'" in error_line(result)


# --------------------------------------------------------------------------- download
def test_download_and_force(http_server, extra_zoo, anzoo_home):
    data = checkpoint_bytes()
    url = http_server.add("/t.pth", data)
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    result = run("download", "t")
    assert result.exit_code == 0, result.output
    path = anzoo_home / "models" / "t" / "t.pth"
    assert result.stdout.strip() == f"t: {path}"
    assert path.read_bytes() == data
    assert run("download", "t").exit_code == 0 and http_server.count("/t.pth") == 1
    assert run("download", "t", "--force").exit_code == 0 and http_server.count("/t.pth") == 2
    info = json.loads(run("info", "t", "--json").stdout)
    assert info["weights"]["cached"] is True and info["weights"]["size"] == len(data)


def test_download_url_option(http_server):
    url = http_server.add("/own.pth", checkpoint_bytes())
    result = run("download", "r50-gn", "--url", url)
    assert result.exit_code == 0, result.output
    assert hub.cached_weights("r50-gn") is not None
    result = run("download", "r50-gn", "r50-bn", "--url", url)
    assert result.exit_code == 2 and "--url needs exactly one model id" in result.output


def test_download_url_on_a_cached_entry_says_so(http_server, extra_zoo, anzoo_home):
    zoo_url = http_server.add("/zoo.pth", checkpoint_bytes(seed=1))
    own_url = http_server.add("/own.pth", checkpoint_bytes(seed=2))
    extra_zoo(models=[{"id": "t", "weights": {"url": zoo_url}}])
    path = anzoo_home / "models" / "t" / "t.pth"
    assert run("download", "t").exit_code == 0
    result = run("download", "t", "--url", own_url)
    assert result.exit_code == 0, result.output  # the cached file is there, verified
    assert result.stdout.strip() == f"t: {path}"
    said = "".join(result.stderr.split())  # a warning, folded to the terminal's width
    assert "".join(f"WARNING the cache already holds the weights of model t ({path}), so {own_url} was not used; "
                   f"to fetch them from it, add --force: `anzoo download t --url {own_url} --force`".split()) in said
    assert http_server.count("/own.pth") == 0 and path.read_bytes() == checkpoint_bytes(seed=1)

    result = run("download", "t", "--url", own_url, "--force")
    assert result.exit_code == 0 and "already holds" not in result.stderr
    assert http_server.count("/own.pth") == 1 and path.read_bytes() == checkpoint_bytes(seed=2)


def test_download_on_a_full_disk(http_server, extra_zoo, anzoo_home, monkeypatch):
    import errno

    def disk_full(**kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kwargs["output"])

    monkeypatch.setattr(hub, "_gdown_download", disk_full)
    extra_zoo(models=[{"id": "t", "weights": {"url": http_server.url("/t.pth")}}])
    result = run("download", "t")
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: cannot write to the weights cache {anzoo_home / 'models'}: No space left on device")
    assert line.endswith("free some space there, or set ANZOO_HOME to a folder on a disk with room")


def test_download_failures(http_server, extra_zoo):
    url = http_server.add("/t.pth", HTML_QUOTA_PAGE, content_type="text/html")
    extra_zoo(models=[{"id": "t", "weights": {"url": url}}])
    result = run("download", "t")
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith("error: could not fetch the weights of model t:")
    assert "`anzoo import t FILE`" in line

    result = run("download", "r50-sn")
    assert result.exit_code == 1
    assert "has no released weights" in error_line(result)

    result = run("download", "r50-bnn")
    assert result.exit_code == 2
    assert "did you mean r50-bn" in error_line(result)

    result = run("download")
    assert result.exit_code == 2


def test_download_offline(monkeypatch, anzoo_home):
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    result = run("download", "aognet40m-an-gn")
    assert result.exit_code == 1
    line = error_line(result)
    expected = anzoo_home / "models" / "aognet40m-an-gn" / "aognet40m-an-gn.pth"
    assert f"ANZOO_OFFLINE is set and the weights of model aognet40m-an-gn are not in the cache: {expected} is missing" in line
    assert "https://drive.google.com/open?id=1QbVVHi_bE_tEIR0H8u-1FXa2jCzN7GvA" in line


def test_download_all_skips_entries_without_weights(monkeypatch, anzoo_home):
    fetched = []

    def fake_drive(**kwargs):  # stands in for Google Drive
        fetched.append(kwargs["id"])
        Path(kwargs["output"]).write_bytes(checkpoint_bytes(n=10))
        return kwargs["output"]

    monkeypatch.setattr(hub, "_gdown_download", fake_drive)
    result = run("download", "--all")
    assert result.exit_code == 0, result.output
    assert "skipping (no released weights): r50-gn, r50-sn, r101-gn" in result.stderr
    lines = result.stdout.strip().splitlines()
    with_weights = [m for m in EXPECTED_IDS if m not in ("r50-gn", "r50-sn", "r101-gn")]
    assert [line.split(":")[0] for line in lines] == with_weights
    assert len(fetched) == 16

    result = run("download", "--all", "--imagenet")
    assert result.exit_code == 0, result.output
    assert len(fetched) == 24
    assert hub.cached_backbone_weights("aognet40m-an") is not None


def test_download_keeps_going_and_reports_the_first_failure(http_server, extra_zoo):
    good = http_server.add("/good.pth", checkpoint_bytes())
    extra_zoo(models=[{"id": "good", "weights": {"url": good}},
                      {"id": "bad", "weights": {"url": http_server.url("/missing.pth")}}])
    result = run("download", "bad", "good")
    assert result.exit_code == 1
    assert "HTTP 404" in error_line(result)
    assert result.stdout.startswith("good: ")


def test_keyboard_interrupt_exits_130(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "fetch_weights", interrupted)
    result = run("download", "r50-bn")
    assert result.exit_code == 130
    assert error_line(result) == "error: interrupted"


# --------------------------------------------------------------------------- import
@pytest.mark.slow
def test_import(tmp_path, anzoo_home):
    from helpers.manifests import mmdet_checkpoint

    file = mmdet_checkpoint("r50-an", tmp_path / "r50.pth")
    result = run("import", "r50-bn", str(file))  # another architecture: refused
    assert result.exit_code == 1
    assert "does not fit" in error_line(result) or "do not belong" in error_line(result)
    assert hub.cached_weights("r50-bn") is None

    result = run("import", "r50-an", str(file))
    assert result.exit_code == 0, result.output
    path = anzoo_home / "models" / "r50-an" / "r50-an.pth"
    assert result.stdout.strip() == f"r50-an: {path}"
    assert path.read_bytes() == file.read_bytes()

    html = tmp_path / "page.pth"
    html.write_bytes(HTML_QUOTA_PAGE)
    result = run("import", "r50-bn", str(html))
    assert result.exit_code == 1
    assert "web page" in error_line(result)
    assert hub.cached_weights("r50-bn") is None

    result = run("import", "--imagenet", "r50-an", str(file))  # a detector is not a backbone
    assert result.exit_code == 1
    assert hub.cached_backbone_weights("r50-an") is None


# --------------------------------------------------------------------------- entry points
def _anzoo(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anzoo", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_python_m_anzoo_errors_have_no_traceback():
    proc = _anzoo("info", "nope-model")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown model 'nope-model'; run `anzoo list` to see the ids"]
    assert proc.stdout == ""
    proc = _anzoo("-v", "list", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 19
    proc = _anzoo("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("anzoo ")


def test_cli_does_not_import_torch_for_list():
    code = ("import sys; from anzoo.cli import main\n"
            "try:\n    main(['list', '--json'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "False"

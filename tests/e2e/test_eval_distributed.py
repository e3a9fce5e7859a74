"""`anzoo eval` in two processes under torchrun (gloo, CPU) gives exactly one process's metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anzoo.data.synthetic import make_synthetic_coco
from anzoo.factory import save_model
from anzoo.testing import confident_model
from helpers.few_proposals import run_here, run_under_torchrun

# Slow tier (`-m "not slow"` leaves it out): end to end through processes.
pytestmark = pytest.mark.slow


def test_two_processes_give_the_metrics_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "coco"
    make_synthetic_coco(root, num_images=5, with_crowd=True, with_empty_image=True, seed=5)
    torch.manual_seed(0)
    checkpoint = save_model(confident_model("r50-bn", proposals=10, classes=(0, 2)), tmp_path / "model.pth")

    def args(out: Path) -> list[str]:
        return ["eval", "r50-bn", "--coco", str(root), "--weights", str(checkpoint), "--out", str(out),
                "--scale", "128x96", "--workers", "0", "--device", "cpu", "--json"]

    proc = run_under_torchrun(tmp_path, args(tmp_path / "two"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["num_images"] == 5 and two["images_this_run"] == 5
    # rank 0 printed the result once; both ranks' partial files were gathered and removed
    assert json.loads(proc.stdout)["num_images"] == 5
    assert not (tmp_path / "two" / "partial").exists()

    result = run_here(monkeypatch, args(tmp_path / "one"))  # the same command in this one process
    assert result.exit_code == 0, result.output
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["world_size"] == 1
    assert one["metrics"] == two["metrics"]
    assert one["num_detections"] == two["num_detections"] > 0
    for name in ("results.bbox.json", "results.segm.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()


def test_a_held_folder_stops_every_rank_at_once(tmp_path: Path) -> None:
    """Another run holds the --out folder: rank 0 cannot take its lock, and every rank hears so
    at the first broadcast and exits with the message. (Before, only rank 0 knew: torchrun's
    agent then killed the others; a launcher that does not, such as srun, left them waiting
    for the process group's timeout.)"""
    from filelock import FileLock

    root = tmp_path / "coco"
    make_synthetic_coco(root, num_images=2, seed=5)
    checkpoint = save_model(confident_model("r50-bn", proposals=10, classes=(0, 2)), tmp_path / "model.pth")
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".anzoo-eval.lock")):  # the subprocess times out at 300 s: a hang fails
        proc = run_under_torchrun(tmp_path, ["eval", "r50-bn", "--coco", str(root), "--weights", str(checkpoint),
                                             "--out", str(out), "--scale", "128x96", "--workers", "0",
                                             "--device", "cpu"])
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).count("another evaluation is writing to") >= 2  # both ranks say it
    assert not (out / "metrics.json").exists()

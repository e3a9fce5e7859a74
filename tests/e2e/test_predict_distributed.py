"""`anzoo predict` in two processes under torchrun (gloo, CPU) writes exactly one process's
outputs, over nested folders with files of the same name and a video."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anzoo.factory import save_model
from anzoo.testing import confident_model
from helpers.few_proposals import run_here, run_under_torchrun
from helpers.videos import write_video

#: what both runs must write alike
OUTPUTS = ["predictions.jsonl", "failed.txt", "a/x.png", "b/x.png", "b/c/x.png", "v.avi/000002.png"]


@pytest.mark.slow
def test_two_processes_write_the_outputs_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "in"
    for i, (name, h, w) in enumerate([("a/x.png", 60, 80), ("b/x.png", 80, 60), ("b/c/x.png", 60, 80),
                                      ("b/c/y.jpg", 64, 64), ("d.png", 60, 80)]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    write_video(root / "v.avi", frames=3, size=(60, 80))
    (root / "b" / "broken.png").write_bytes(b"not a png")
    torch.manual_seed(0)
    checkpoint = save_model(confident_model("r50-bn", proposals=10, classes=(0, 2)), tmp_path / "model.pth")

    def args(out: Path) -> list[str]:
        return ["predict", str(root), "-r", "--model", "r50-bn", "--weights", str(checkpoint), "--out", str(out),
                "--scale", "128x96", "--workers", "0", "--device", "cpu", "--format", "jsonl",
                "--score-thr", "0.05"]

    proc = run_under_torchrun(tmp_path, args(tmp_path / "two"))
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # broken.png failed on each
    assert "2 process(es)" in proc.stdout and proc.stdout.count("image(s) in") == 1  # rank 0 speaks
    assert not (tmp_path / "two" / "partial").exists()

    result = run_here(monkeypatch, args(tmp_path / "one"))  # the same command in this one process
    assert result.exit_code == 1, result.output
    lines = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 8 and '"file":"b/c/x.png"' in lines[1]
    for name in OUTPUTS:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

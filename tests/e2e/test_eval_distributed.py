"""`anzoo eval` in two processes under torchrun (gloo, CPU) gives exactly one process's metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anzoo.cli import app
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.factory import save_model
from anzoo.testing import confident_model

# The released configs keep 1000 RPN proposals, too slow for a test on a CPU: the CLI runs
# inside a launcher that makes create_model keep 10 (in each torchrun worker and in this process).
LAUNCHER = textwrap.dedent("""
    import sys
    from dataclasses import replace

    import anzoo.factory

    _create_model = anzoo.factory.create_model


    def create_model(*args, **kwargs):
        model = _create_model(*args, **kwargs)
        cfg = model.rpn.test_cfg
        model.rpn.test_cfg = replace(cfg, nms_pre=40, nms_post=10, max_num=10)
        return model


    anzoo.factory.create_model = create_model
    if __name__ == "__main__":
        from anzoo.cli import main

        main(sys.argv[1:])
""")


def test_two_processes_give_the_metrics_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "coco"
    make_synthetic_coco(root, num_images=5, with_crowd=True, with_empty_image=True, seed=5)
    torch.manual_seed(0)
    checkpoint = save_model(confident_model("r50-bn", proposals=10, classes=(0, 2)), tmp_path / "model.pth")
    launcher = tmp_path / "launch_anzoo.py"
    launcher.write_text(LAUNCHER)

    def args(out: Path) -> list[str]:
        return ["eval", "r50-bn", "--coco", str(root), "--weights", str(checkpoint), "--out", str(out),
                "--scale", "128x96", "--workers", "0", "--device", "cpu", "--json"]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher),
         *args(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["num_images"] == 5 and two["images_this_run"] == 5
    # rank 0 printed the result once; both ranks' partial files were gathered and removed
    assert json.loads(proc.stdout)["num_images"] == 5
    assert not (tmp_path / "two" / "partial").exists()

    # the same command in one process (this one), with the launcher's patch
    import anzoo.factory

    real = anzoo.factory.create_model

    def create_model(*a, **k):
        model = real(*a, **k)
        model.rpn.test_cfg = replace(model.rpn.test_cfg, nms_pre=40, nms_post=10, max_num=10)
        return model

    monkeypatch.setattr(anzoo.factory, "create_model", create_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, args(tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert one["world_size"] == 1
    assert one["metrics"] == two["metrics"]
    assert one["num_detections"] == two["num_detections"] > 0
    for name in ("results.bbox.json", "results.segm.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()

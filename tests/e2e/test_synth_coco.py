"""`anzoo synth-coco` feeds `anzoo train` and `anzoo eval` end to end, as the README's Train
and Evaluate sections start (issue 14)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anzoo.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

CHEAP = ["--img-scale", "128x96", "--rpn-proposals", "50", "--rcnn-samples", "16", "--workers", "0",
         "--no-progress", "--no-tensorboard", "--device", "cpu", "--warmup-iters", "1"]


def test_synth_coco_writes_a_coco_dataset_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(app, ["synth-coco", str(out), "--num-images", "3", "--size", "64x48", "--seed", "5"])
    assert result.exit_code == 0, result.output
    for split in ("train2017", "val2017"):
        data = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == 3 and len(list((out / split).iterdir())) == 3
        assert {(i["width"], i["height"]) for i in data["images"]} == {(64, 48)}
        assert {c["id"] for c in data["categories"]} == {1, 3, 18, 44, 62, 85}  # COCO's ids
        assert data["annotations"] and all(a["segmentation"]["size"] == [48, 64] for a in data["annotations"])
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no staging folder left
    again = runner.invoke(app, ["synth-coco", str(out)])
    assert again.exit_code == 1 and "already exists" in again.stderr
    bad = runner.invoke(app, ["synth-coco", str(tmp_path / "x"), "--size", "8x8"])
    assert bad.exit_code == 2 and "--size" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_synth_coco_feeds_train_then_eval(tmp_path: Path) -> None:
    data, work = tmp_path / "synth", tmp_path / "work"
    assert runner.invoke(app, ["synth-coco", str(data), "--num-images", "2", "--size", "128x96"]).exit_code == 0
    result = runner.invoke(app, ["train", "r50-bn", "--coco", str(data), "--work-dir", str(work),
                                 "--no-pretrained-backbone", "--max-iters", "1", "--eval-every", "0", *CHEAP])
    assert result.exit_code == 0, result.output
    model = work / "model_final.pth"
    assert model.is_file()
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "r50-bn", "--coco", str(data), "--weights", str(model), "--out", str(out),
                                 "--scale", "128x96", "--workers", "0", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and set(metrics["metrics"]) == {"bbox", "segm"}

"""Command-line options run end to end, each checked by what it changes: ``anzoo train --amp``
(autocast in the forward), ``--no-pretrained-backbone`` (nothing frozen, batch statistics),
``--train-ann/--train-images/--val-ann/--val-images`` (another layout), ``--max-iters``,
``--keep-checkpoints``, ``--from`` (a file or a zoo id: the weights it starts from) and the
option checks; ``anzoo predict --batch-size/--precision``; ``anzoo eval --batch-size/--precision/--resume``
(with the oracle model of ``test_eval_oracle``, so the AP stays 1.000).

Kept cheap: tiny synthetic images, ``--img-scale 128x96``, one or two iterations, 50 RPN
proposals and 16 sampled RoIs, no DataLoader workers.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import anzoo.factory
from anzoo import hub
from anzoo.checkpoint import read_checkpoint
from anzoo.cli import app
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.factory import create_model, save_model
from anzoo.models.detection.detector import TwoStageDetector
from anzoo.testing import confident_model
from anzoo.training.engine import FINAL_MODEL
from anzoo.training.model import CLASS_SPECIFIC_KEYS

from helpers.oracle import make_oracle_dataset, oracle_for

SCALE = "128x96"
FAST = ["--workers", "0", "--rpn-proposals", "50", "--rcnn-samples", "16", "--log-every", "1",
        "--no-progress", "--no-tensorboard", "--device", "cpu", "--img-scale", SCALE, "--warmup-iters", "1"]

# Slow tier (`-m "not slow"` leaves it out): end to end through processes.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def records(work: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


class Watch:
    """Records, for each call of a detector method, the batch size and the autocast dtype (and
    the stem's weights at the first call); the real method then runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls: list[tuple[int, torch.dtype | None]] = []
        self.first_stem: torch.Tensor | None = None
        real = getattr(TwoStageDetector, name)

        def watched(model: TwoStageDetector, images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            self.calls.append((int(images.shape[0]), dtype))
            if self.first_stem is None and hasattr(model.backbone, "conv1"):
                self.first_stem = model.backbone.conv1.weight.detach().clone()
            return real(model, images, *args, **kwargs)

        monkeypatch.setattr(TwoStageDetector, name, watched)


# --------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def custom_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset outside the COCO layout: custom/labels.json + custom/pictures/ for training,
    custom/val.json + custom/val-pictures/ (2 images) for evaluation."""
    root = tmp_path_factory.mktemp("custom")
    make_synthetic_coco(root / "gen", num_images=1, image_size=(96, 128), split="train2017", seed=3)
    make_synthetic_coco(root / "gen", num_images=2, image_size=(96, 128), split="val2017", seed=4)
    shutil.move(root / "gen" / "annotations" / "instances_train2017.json", root / "labels.json")
    shutil.move(root / "gen" / "train2017", root / "pictures")
    shutil.move(root / "gen" / "annotations" / "instances_val2017.json", root / "val.json")
    shutil.move(root / "gen" / "val2017", root / "val-pictures")
    shutil.rmtree(root / "gen")
    return root


def test_train_from_scratch_on_custom_files_with_max_iters_and_keep_checkpoints(
        custom_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANZOO_OFFLINE", "1")  # --no-pretrained-backbone: nothing to download
    watch = Watch(monkeypatch, "compute_losses")
    work = tmp_path / "work"
    result = CliRunner().invoke(app, [
        "train", "r50-bn", "--work-dir", str(work), "--train-ann", str(custom_layout / "labels.json"),
        "--train-images", str(custom_layout / "pictures"), "--val-ann", str(custom_layout / "val.json"),
        "--val-images", str(custom_layout / "val-pictures"), "--no-pretrained-backbone", "--batch-size", "1",
        "--epochs", "3", "--max-iters", "2", "--keep-checkpoints", "1", "--eval-every", "2", "--lr", "0.01",
        *FAST])
    assert result.exit_code == 0, result.output
    # --max-iters 2 of 3 one-iteration epochs
    assert "stopped early after 2 iterations (2/3 epochs)" in result.output
    assert [r["iter"] for r in records(work, "train")] == [1, 2]
    assert watch.calls == [(1, None)] * 2  # no autocast without --amp
    # --keep-checkpoints 1: only the newest epoch checkpoint is left
    assert sorted(p.name for p in work.glob("*.pth")) == sorted(["epoch_2.pth", "latest.pth", FINAL_MODEL])
    # --train-ann/--train-images and --val-ann/--val-images: the custom files were read
    config = read_json(work / "config.json")
    assert config["config"]["train_ann"] == str(custom_layout / "labels.json")
    assert config["category_ids"] == [1, 3, 18, 44, 62, 85]
    evals = records(work, "eval")
    assert [(e["epoch"], e["images"]) for e in evals] == [(2, 2)]  # --eval-every 2
    # --no-pretrained-backbone: the stem trains (not frozen) and BatchNorm uses batch statistics
    final = read_checkpoint(work / FINAL_MODEL)["state_dict"]
    assert watch.first_stem is not None
    assert not torch.equal(final["backbone.conv1.weight"], watch.first_stem)
    assert final["backbone.bn1.running_mean"].abs().sum() > 0  # 0 at initialisation
    assert config["config"]["pretrained_backbone"] is False


def test_train_amp_autocasts_the_forward(coco_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--amp: float16 with loss scaling on CUDA, bfloat16 on the CPU. CPUs without native
    bfloat16 run its convolutions slowly: the smallest scale, 2 proposals, 4 RoIs."""
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    watch = Watch(monkeypatch, "compute_losses")
    work = tmp_path / "work"
    fast = ["--workers", "0", "--rpn-proposals", "2", "--rcnn-samples", "4", "--log-every", "1", "--no-progress",
            "--no-tensorboard", "--device", "cpu", "--img-scale", "64x64", "--warmup-iters", "1"]
    result = CliRunner().invoke(app, ["train", "r50-bn", "--coco", str(coco_layout), "--work-dir", str(work),
                                      "--no-pretrained-backbone", "--amp", "--batch-size", "1", "--max-iters", "1",
                                      "--eval-every", "0", *fast])
    assert result.exit_code == 0, result.output
    assert watch.calls == [(1, torch.bfloat16)]
    assert read_json(work / "config.json")["config"]["amp"] is True
    (record,) = records(work, "train")
    assert np.isfinite(record["loss"])


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for a released 80-class r50-bn detector, in anzoo's format."""
    torch.manual_seed(7)
    return save_model(create_model("r50-bn"), tmp_path_factory.mktemp("source") / "r50-bn-source.pth")


@pytest.fixture(scope="module")
def coco_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, num_images=1, image_size=(96, 128), split="train2017", seed=5)
    return root


@pytest.mark.parametrize("source", ["file", "zoo-id"])
def test_train_from_starts_from_those_weights(source: str, source_checkpoint: Path, coco_layout: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "zoo-id":  # the released weights, through the cache (offline: never downloaded)
        monkeypatch.setenv("ANZOO_OFFLINE", "1")
        hub.import_weights("r50-bn", source_checkpoint)
    start = str(source_checkpoint) if source == "file" else "r50-bn"
    work = tmp_path / "work"
    # --lr 0: the step changes nothing, so the final weights are the starting weights
    result = CliRunner().invoke(app, ["train", "r50-bn", "--from", start, "--coco", str(coco_layout),
                                      "--work-dir", str(work), "--lr", "0", "--max-iters", "1", "--eval-every", "0",
                                      *FAST])
    assert result.exit_code == 0, result.output
    final = read_checkpoint(work / FINAL_MODEL)["state_dict"]
    src = read_checkpoint(source_checkpoint)["state_dict"]
    shared = [k for k in final if not any(part in k for part in CLASS_SPECIFIC_KEYS)]
    assert len(shared) > 300 and all(torch.equal(final[k], src[k]) for k in shared)
    # 6 dataset classes instead of 80: the class-specific layers start afresh
    assert final["roi_heads.box_predictor.cls_score.weight"].shape[0] == 7
    assert src["roi_heads.box_predictor.cls_score.weight"].shape[0] == 81


@pytest.mark.parametrize("args,message", [
    (["--backbone-weights", "w.pth", "--no-pretrained-backbone"], "not both"),
    (["--train-ann", "a.json"], "--train-ann and --train-images go together"),
    (["--train-images", "imgs"], "--train-ann and --train-images go together"),
    ([], "give --coco DIR, or --train-ann FILE --train-images DIR"),
], ids=["backbone-weights-and-scratch", "ann-alone", "images-alone", "no-data"])
def test_train_option_checks(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "r50-bn", "--work-dir", str(tmp_path / "w"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def predict_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(confident_model("r50-bn", proposals=10), tmp_path_factory.mktemp("w") / "r50-bn.pth")


def limit_proposals(monkeypatch: pytest.MonkeyPatch, proposals: int = 10, max_per_img: int = 100) -> None:
    """Models the CLI creates keep 10 RPN proposals (1000 in the release: minutes on a CPU)."""
    real = anzoo.factory.create_model

    def create(*args: Any, **kwargs: Any) -> TwoStageDetector:
        model = real(*args, **kwargs)
        config = model.config
        model.config = replace(config, rpn_test=replace(config.rpn_test, nms_pre=4 * proposals, nms_post=proposals,
                                                        max_num=proposals),
                               rcnn_test=replace(config.rcnn_test, max_per_img=max_per_img))
        return model

    monkeypatch.setattr(anzoo.factory, "create_model", create)


def test_predict_batch_size_and_precision(predict_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit_proposals(monkeypatch)
    watch = Watch(monkeypatch, "detect")
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(90, 120), (90, 120), (90, 120), (120, 90)]):  # three share a padded shape
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        images.append(str(path))

    def predict(out: str, *options: str, inputs: list[str] = images, scale: str = SCALE
                ) -> dict[str, Any]:
        watch.calls.clear()
        result = CliRunner().invoke(app, ["predict", *inputs, "-m", "r50-bn", "--weights", str(predict_weights),
                                          "--device", "cpu", "--score-thr", "0.05", "--scale", scale,
                                          "--out", str(tmp_path / out), *options])
        assert result.exit_code == 0, result.output
        return {p.name: read_json(p) for p in sorted((tmp_path / out).glob("*.json"))}

    one = predict("one")
    assert watch.calls == [(1, None)] * 4
    two = predict("two", "--batch-size", "2")
    assert sorted(n for n, _ in watch.calls) == [1, 1, 2]  # a pair of the same shape, then the rest
    assert two == one and sum(map(len, one.values())) > 0  # batching never changes results
    # --precision bf16: bfloat16 autocast on the CPU (slow without native support: one image,
    # smallest scale, 2 proposals, 1 detection)
    limit_proposals(monkeypatch, proposals=2, max_per_img=1)
    low = predict("bf16", "--precision", "bf16", inputs=images[:1], scale="32x32")
    assert watch.calls == [(1, torch.bfloat16)]
    assert len(low["img0.json"]) == 1
    assert predict("fp16", "--fp16", inputs=images[:1], scale="32x32") == low  # the deprecated alias
    assert watch.calls == [(1, torch.bfloat16)]


# --------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def oracle_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oracle-coco")
    make_oracle_dataset(root)
    return root


def test_eval_batch_size_precision_and_resume(oracle_dataset: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = oracle_for(oracle_dataset / "annotations" / "instances_val2017.json")
    monkeypatch.setattr(anzoo.factory, "create_model", lambda *args, **kwargs: oracle)
    weights = tmp_path / "oracle.pth"
    weights.write_bytes(b"stands for the oracle")

    def run(out: str, *options: str) -> Any:
        oracle.calls.clear()
        return CliRunner().invoke(app, ["eval", "r50-bn", "--coco", str(oracle_dataset), "--weights", str(weights),
                                        "--out", str(tmp_path / out), "--workers", "0", "--device", "cpu",
                                        "--scale", SCALE, *options])

    def ap(out: str) -> tuple[float, float]:
        metrics = read_json(tmp_path / out / "metrics.json")["metrics"]
        return metrics["bbox"]["AP"], metrics["segm"]["AP"]

    # --batch-size 2: the six images (one padded shape at this scale) go in pairs
    result = run("batched", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert oracle.calls == [(2, None)] * 3 and ap("batched") == pytest.approx((1.0, 1.0))
    # --precision bf16: the model runs under bfloat16 autocast
    result = run("bf16", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert oracle.calls == [(1, torch.bfloat16)] * 6
    assert read_json(tmp_path / "bf16" / "metrics.json")["precision"] == "bf16"
    # --resume: a run stopped after 2 images continues with the 4 others, none counted twice
    oracle.interrupt_after = 2
    result = run("resumed")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    oracle.interrupt_after = None
    result = run("resumed", "--resume")
    assert result.exit_code == 0, result.output
    assert len(oracle.calls) == 4
    metrics = read_json(tmp_path / "resumed" / "metrics.json")
    assert (metrics["images_this_run"], metrics["num_images"]) == (4, 6)
    assert ap("resumed") == pytest.approx((1.0, 1.0))
    # without --resume the partial results are dropped: all six again
    oracle.interrupt_after = 2
    run("restarted")
    oracle.interrupt_after = None
    result = run("restarted")
    assert result.exit_code == 0 and len(oracle.calls) == 6

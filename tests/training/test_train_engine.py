"""End-to-end training on a generated COCO-format dataset, on the CPU at a tiny image scale.

One ``anzoo train`` run (module fixture, 6 iterations) serves several tests: the loss goes
down, the files and metrics are written, the frozen backbone layers are untouched, periodic
evaluation runs and the final model predicts. Resuming and two-process DDP have their own
short runs. Proposal and RoI sample counts are cut down (``--rpn-proposals``,
``--rcnn-samples``) to keep each iteration to about a second.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anzoo.checkpoint import read_checkpoint
from anzoo.cli import app
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.errors import AnzooError, CheckpointError, DatasetError
from anzoo.factory import create_model, save_model
from anzoo.training.config import TrainConfig
from anzoo.training.engine import FINAL_MODEL, train
from anzoo.training.model import build_training_model, transfer_detector_weights

SCALE = (128, 96)
FAST = ["--workers", "0", "--rpn-proposals", "50", "--rcnn-samples", "16", "--log-every", "1",
        "--no-progress", "--no-tensorboard", "--device", "cpu"]


# Slow tier (`-m "not slow"` leaves it out): trains detectors for a few iterations (one run under torchrun).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _backbone_checkpoint(path: Path) -> Path:
    """A stand-in ImageNet checkpoint in the AOGNet-v2 layout (``module.`` keys, classifier)."""
    from anzoo.models.backbones import create_backbone

    torch.manual_seed(123)
    net = create_backbone("r50-bn", num_classes=1000)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    coco = root / "coco"
    make_synthetic_coco(coco, num_images=2, image_size=(96, 128), split="train2017", seed=3)
    make_synthetic_coco(coco, num_images=1, image_size=(96, 128), split="val2017", seed=4)
    weights = _backbone_checkpoint(root / "imagenet.pth")
    work = root / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANZOO_HOME", str(root / "home"))
        result = CliRunner().invoke(app, [
            "train", "r50-bn", "--coco", str(coco), "--work-dir", str(work), "--epochs", "6",
            "--lr", "0.02", "--warmup-iters", "1", "--img-scale", "x".join(map(str, SCALE)),
            "--backbone-weights", str(weights), "--eval-every", "3", *FAST])
    yield {"result": result, "work": work, "coco": coco, "weights": weights}
    # six epoch checkpoints of an R-50 detector with optimizer state: ~2.4 GB
    shutil.rmtree(root, ignore_errors=True)


def _records(work: Path, kind: str = "train") -> list[dict]:
    lines = (work / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_cli_train_loss_is_finite_and_goes_down(cli_run):
    result, work = cli_run["result"], cli_run["work"]
    assert result.exit_code == 0, result.output
    assert "model:" in result.output and FINAL_MODEL in result.output
    recs = _records(work)
    assert [r["iter"] for r in recs] == [1, 2, 3, 4, 5, 6]
    for r in recs:
        for key in ("loss", "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"):
            assert math.isfinite(r[key]), (key, r)
        assert r["time_per_iter"] > 0 and r["memory_mib"] > 0 and 0 <= r["acc"] <= 100
    losses = [r["loss"] for r in recs]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.1, losses
    # lr: warm-up from 1/3 over 1 iteration, then 0.02; 6 epochs of a 2x schedule step at 4 and 6
    assert [round(r["lr"], 6) for r in recs] == [round(0.02 / 3, 6), 0.02, 0.02, 0.02, 0.002, 0.002]


def test_cli_train_writes_checkpoints_and_evaluates(cli_run):
    work = cli_run["work"]
    for name in ["config.json", "latest.pth", FINAL_MODEL] + [f"epoch_{e}.pth" for e in range(1, 7)]:
        assert (work / name).is_file(), name
    config = json.loads((work / "config.json").read_text())
    assert config["iters_per_epoch"] == 1 and config["lr_steps"] == [4, 6] and config["total_epochs"] == 6
    assert config["category_ids"] == [1, 3, 18, 44, 62, 85]
    evals = _records(work, "eval")
    assert [e["epoch"] for e in evals] == [3, 6]
    # each logged evaluation is that of the epoch's weights, evaluated again here from the file
    from anzoo.evaluation import evaluate_model

    coco = cli_run["coco"]
    for e, checkpoint in zip(evals, ("epoch_3.pth", "epoch_6.pth")):
        model = create_model("r50-bn", pretrained=work / checkpoint)
        again = evaluate_model(model, coco / "annotations" / "instances_val2017.json", coco / "val2017",
                               scale=SCALE, workers=0)
        assert {k: e[k] for k in again} == again and e["images"] == 1
    latest = read_checkpoint(work / "latest.pth")["training"]
    assert (latest["epoch"], latest["batch"], latest["iteration"]) == (6, 0, 6)


def test_frozen_parameters_stay_frozen(cli_run):
    start = {k[len("module."):]: v for k, v in read_checkpoint(cli_run["weights"])["state_dict"].items()}
    final = read_checkpoint(cli_run["work"] / FINAL_MODEL)["state_dict"]
    backbone = {k[len("backbone."):]: v for k, v in final.items() if k.startswith("backbone.")}
    frozen = [k for k in backbone if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert frozen and all(torch.equal(backbone[k], start[k]) for k in frozen)
    # BatchNorm statistics are fixed everywhere (norm_eval), trained layers moved
    stats = [k for k in backbone if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(backbone[k], start[k]) for k in stats)
    assert not torch.equal(backbone["layer2.0.conv1.weight"], start["layer2.0.conv1.weight"])
    assert not torch.equal(backbone["layer4.2.conv3.weight"], start["layer4.2.conv3.weight"])
    model = build_training_model(
        TrainConfig("r50-bn", Path("unused"), backbone_weights=cli_run["weights"]), ["a", "b"], [1, 2])
    model.train()
    assert not any(p.requires_grad for p in model.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert not model.backbone.layer3[0].bn1.training  # norm_eval


def test_trained_model_loads_and_predicts(cli_run):
    from anzoo.inference import Predictor

    model = create_model("r50-bn", pretrained=cli_run["work"] / FINAL_MODEL)
    assert model.num_classes == 6 and model.class_names[:2] == ["person", "car"]
    assert model.category_ids == [1, 3, 18, 44, 62, 85]
    # a 6-iteration model is not confident yet
    model.config = replace(model.config, rcnn_test=replace(model.config.rcnn_test, score_thr=0.0))
    image = next((cli_run["coco"] / "val2017").iterdir())
    records = Predictor(model, scale=SCALE).predict_records(image, score_thr=0.0)[0]
    assert records, "no detections at score threshold 0"
    assert {r["category_id"] for r in records} <= {1, 3, 18, 44, 62, 85}
    assert all(r["segmentation"]["size"] == [96, 128] for r in records)


def test_cli_resume_of_a_finished_run_says_so_and_does_nothing(cli_run, caplog):
    """--resume takes the data and the recipe from the run's checkpoint, silently; a finished run
    is left as it is (issue 14)."""
    work = cli_run["work"]
    before = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANZOO_HOME", str(work.parent / "home"))
        result = CliRunner().invoke(app, ["train", "r50-bn", "--work-dir", str(work), "--resume",
                                          "--no-progress", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert f"r50-bn: already finished after 6 iterations (6/6 epochs) in {work}; nothing to do" in result.stdout
    assert "resuming: keeping" not in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == before  # nothing written


def _small_config(coco: Path, work: Path, **kw) -> TrainConfig:
    base = TrainConfig("r50-bn", work_dir=work, coco_dir=coco, epochs=2, batch_size=1, lr=0.01, warmup_iters=2,
                       img_scale=SCALE, pretrained_backbone=False, frozen_stages=1, norm_eval=True, num_workers=0,
                       rpn_proposals=30, rcnn_samples=16, log_every=1, progress=False, eval_every=0,
                       device="cpu")
    return replace(base, **kw)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    coco = tmp_path / "coco"  # one image per aspect group: 2 iterations per epoch at batch 1
    make_synthetic_coco(coco, num_images=2, image_size=[(96, 128), (128, 96)], split="train2017", seed=1)
    straight = train(_small_config(coco, tmp_path / "a", max_iters=3))
    first = train(_small_config(coco, tmp_path / "b", max_iters=1))
    assert first.stopped_early and first.iterations == 1
    state = read_checkpoint(tmp_path / "b" / "latest.pth")["training"]
    assert (state["epoch"], state["batch"], state["iteration"]) == (0, 1, 1)
    resumed = train(_small_config(coco, tmp_path / "b", max_iters=3, resume=True))  # crosses an epoch
    assert resumed.iterations == 3
    a = read_checkpoint(straight.final_model)["state_dict"]
    b = read_checkpoint(resumed.final_model)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in first.history + resumed.history]
    # metrics.jsonl of the resumed run continues the interrupted one
    assert [r["iter"] for r in _records(tmp_path / "b")] == [1, 2, 3]


def _break_second_image(tmp_path: Path) -> tuple[Path, Path, bytes, int]:
    """2 training images of one aspect group; the one the first epoch reaches second (batch 1 of 2
    at batch size 1) is cut short after the dataset was checked. Returns (coco, its path, its
    bytes, its id)."""
    from anzoo.training.batches import CocoTrainDataset, GroupedBatchSampler

    coco = tmp_path / "coco"
    make_synthetic_coco(coco, num_images=2, image_size=(96, 128), split="train2017", seed=1)
    dataset = CocoTrainDataset(coco / "annotations" / "instances_train2017.json", coco / "train2017")
    second = GroupedBatchSampler(dataset.flags, 1, seed=0).epoch_batches(0)[1][0][0]
    path = dataset.image_path(second)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 3])  # a truncated JPEG
    return coco, path, original, dataset.image_ids[second]


def test_an_image_that_breaks_mid_epoch_is_skipped_and_counted(tmp_path):
    coco, path, _, image_id = _break_second_image(tmp_path)
    result = train(_small_config(coco, tmp_path / "w", epochs=1))
    assert result.iterations == 2 and result.epochs_completed == 1 and not result.stopped_early
    (skip,) = result.skipped_images
    assert (skip["image_id"], skip["file"], skip["iter"], skip["epoch"]) == (image_id, str(path), 2, 1)
    assert f"image {image_id}" in skip["problem"] and skip["replaced_by"] != image_id
    records = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["train", "skipped", "train"]
    assert records[1] == skip
    assert [r["skipped_images"] for r in records if r["type"] == "train"] == [0, 1]
    assert read_checkpoint(tmp_path / "w" / "latest.pth")["training"]["skipped_images"] == 1


def test_strict_data_saves_the_epochs_work_before_stopping(tmp_path):
    coco, path, original, image_id = _break_second_image(tmp_path)
    work = tmp_path / "w"
    with pytest.raises(DatasetError, match=f"image {image_id}: .*--strict-data: stopped before iteration 2 "
                                           f"and saved {work / 'latest.pth'}"):
        train(_small_config(coco, work, epochs=1, strict_data=True))
    state = read_checkpoint(work / "latest.pth")["training"]
    assert (state["epoch"], state["batch"], state["iteration"]) == (0, 1, 1)
    path.write_bytes(original)  # the file is mended; the run continues at the batch that failed
    resumed = train(_small_config(coco, work, epochs=1, strict_data=True, resume=True))
    assert resumed.iterations == 2 and resumed.epochs_completed == 1 and resumed.skipped_images == []
    assert [r["iter"] for r in _records(work)] == [1, 2]


def test_a_bad_evaluation_file_stops_training_before_the_first_step(tmp_path):
    coco = tmp_path / "coco"
    make_synthetic_coco(coco, num_images=1, image_size=(96, 128), split="train2017", seed=1)
    val = make_synthetic_coco(coco, num_images=2, image_size=(96, 128), split="val2017", seed=2)
    data = json.loads(val.read_text())
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    val.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances_val2017.json is not in COCO format: annotation id 1: "
                                           r"appears 2 times"):
        train(_small_config(coco, tmp_path / "w", eval_every=1))
    assert not (tmp_path / "w").exists()  # nothing was trained or written


def test_cli_strict_data_option_reaches_the_config(tmp_path, monkeypatch):
    import anzoo.training.engine as engine

    seen = []
    monkeypatch.setattr(engine, "train", lambda config: seen.append(config) or engine.TrainResult(
        tmp_path, None, None, 0, 0, 1, True))
    for extra, strict in (([], False), (["--strict-data"], True)):
        result = CliRunner().invoke(app, ["train", "r50-bn", "--coco", str(tmp_path), "--work-dir",
                                          str(tmp_path / "w"), *extra])
        assert result.exit_code == 0, result.output
        assert seen[-1].strict_data is strict


def test_keep_checkpoints_and_latest_is_a_link(tmp_path):
    coco = tmp_path / "coco"
    make_synthetic_coco(coco, num_images=1, image_size=(96, 128), split="train2017", seed=2)
    work = tmp_path / "w"
    result = train(_small_config(coco, work, epochs=3, keep_checkpoints=1))
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_3.pth", "latest.pth", FINAL_MODEL]
    latest, newest = (work / "latest.pth").stat(), (work / "epoch_3.pth").stat()
    assert latest.st_ino == newest.st_ino  # one file on disk, two names
    assert result.latest_checkpoint == work / "latest.pth"
    assert read_checkpoint(work / "latest.pth")["training"]["epoch"] == 3


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(_small_config(tmp_path, tmp_path / "w", resume=True))
    with pytest.raises(AnzooError, match="no released ImageNet backbone"):
        build_training_model(TrainConfig("r50-gn", Path("w")), ["a"], [1])


def test_finetune_replaces_class_layers_and_names_travel(tmp_path):
    torch.manual_seed(0)
    source = create_model("r50-bn")  # stands in for a released 80-class detector
    src_path = save_model(source, tmp_path / "src.pth")
    config = TrainConfig("r50-bn", tmp_path / "w", from_model=str(src_path))
    model = build_training_model(config, ["widget", "gadget"], [7, 9])
    sd, src = model.state_dict(), source.state_dict()
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 12
    assert model.roi_heads.mask_head.predictor.mask_fcn_logits.out_channels == 3
    same = [k for k in sd if not any(p in k for p in ("cls_score", "bbox_pred", "mask_fcn_logits"))]
    assert all(torch.equal(sd[k], src[k]) for k in same)
    path = save_model(model, tmp_path / "tuned.pth")
    loaded = create_model("r50-bn", pretrained=path)
    assert loaded.class_names == ["widget", "gadget"] and loaded.category_ids == [7, 9]
    # another architecture does not fit
    with pytest.raises(CheckpointError, match="do not fit"):
        transfer_detector_weights(src, build_training_model(TrainConfig("r101-bn", tmp_path, pretrained_backbone=False),
                                                            ["a"], [1], load_weights=False))


_DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from anzoo.training import TrainConfig, train
    coco, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = TrainConfig("r50-bn", work_dir=out / "work", coco_dir=coco, epochs=1, batch_size=1, lr=0.01,
                      warmup_iters=1, img_scale=(128, 96), pretrained_backbone=False, frozen_stages=1,
                      norm_eval=True, num_workers=0, rpn_proposals=30, rcnn_samples=16, log_every=1,
                      progress=False, eval_every=1, device="cpu")
    res = train(cfg)
    sd = res.model.state_dict()
    digest = hashlib.sha256()
    for key in sorted(sd):
        digest.update(sd[key].contiguous().numpy().tobytes())
    rank = os.environ["RANK"]
    (out / f"rank{rank}.json").write_text(json.dumps({"digest": digest.hexdigest(), "iters": res.iterations,
                                                      "world": torch.distributed.is_available()}))
""")


def test_two_processes_under_torchrun_agree(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to the interpreter")
    coco = tmp_path / "coco"
    make_synthetic_coco(coco, num_images=4, image_size=[(96, 128), (128, 96)], split="train2017", seed=1)
    make_synthetic_coco(coco, num_images=3, image_size=(96, 128), split="val2017", seed=5)
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANZOO_HOME": str(tmp_path / "home")}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(coco),
                           str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # 4 images, one per process per iteration: 2 iterations, the same weights on both ranks
    assert ranks[0]["iters"] == ranks[1]["iters"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]
    work = tmp_path / "work"  # only rank 0 writes
    assert [r["iter"] for r in _records(work)] == [1, 2]
    # the evaluation after the epoch: both processes shared the 3 images, rank 0 reports them
    evals = _records(work, "eval")
    assert len(evals) == 1 and evals[0]["images"] == 3
    # the two processes' evaluation is exactly one process's on the same weights and images
    from anzoo.evaluation import evaluate_model

    alone = evaluate_model(create_model("r50-bn", pretrained=work / FINAL_MODEL), coco / "annotations" /
                           "instances_val2017.json", coco / "val2017", scale=(128, 96), workers=0)
    assert {k: evals[0][k] for k in alone} == alone
    assert not (work / ".eval").exists()
    saved = read_checkpoint(work / FINAL_MODEL)["state_dict"]
    digest = __import__("hashlib").sha256()
    for key in sorted(saved):
        digest.update(saved[key].contiguous().numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["digest"]
    assert read_checkpoint(work / "latest.pth")["training"]["world_size"] == 2

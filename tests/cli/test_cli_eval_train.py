"""`anzoo eval` and `anzoo train` as a newcomer meets them (issue 14): workers within the CPUs,
Ctrl-C saying how to resume, the offline backbone error naming the way out, a finished run
resumed doing nothing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import anzoo.evaluation
from anzoo.cli import app
from anzoo.data.synthetic import make_synthetic_coco

runner = CliRunner()


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    make_synthetic_coco(root, num_images=1, image_size=(32, 48), split="val2017", seed=0)
    return root


@pytest.fixture
def eval_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake(model_id: str, files: Any, out: Path, **options: Any) -> Any:
        calls.append({"model_id": model_id, "out": out, **options})
        raise KeyboardInterrupt

    monkeypatch.setattr(anzoo.evaluation, "evaluate_zoo_model", fake)
    return calls


@pytest.mark.parametrize("cpus,expected", [({0}, 1), ({0, 1}, 2), (set(range(16)), 4)])
def test_eval_default_workers_stay_within_the_cpus(coco: Path, eval_calls: list, monkeypatch: pytest.MonkeyPatch,
                                                   cpus: set[int], expected: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    runner.invoke(app, ["eval", "R50-BN", "--coco", str(coco)])
    assert eval_calls[-1]["workers"] == expected
    assert eval_calls[-1]["model_id"] == "r50-bn" and eval_calls[-1]["out"] == Path("anzoo-eval/r50-bn")
    runner.invoke(app, ["eval", "r50-bn", "--coco", str(coco), "--workers", "3"])
    assert eval_calls[-1]["workers"] == 3


def test_eval_interrupted_says_how_to_resume(coco: Path, eval_calls: list, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "r50-bn", "--coco", str(coco), "--out", str(out)])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        f"error: interrupted; the images done so far are kept in {out / 'partial'}: run the same command with "
        "--resume to continue where it stopped"]


def test_train_offline_without_the_backbone_names_the_ways_around(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    coco = tmp_path / "coco"
    make_synthetic_coco(coco, num_images=1, image_size=(32, 48), split="train2017", seed=0)
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    work = tmp_path / "work"
    result = runner.invoke(app, ["train", "R50-BN", "--coco", str(coco), "--work-dir", str(work), "--device", "cpu",
                                 "--workers", "0", "--no-progress", "--no-tensorboard", "--eval-every", "0"])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ANZOO_OFFLINE is set and the weights of backbone r50-bn are not in the cache")
    assert line.endswith("Or start without it: give an ImageNet checkpoint with --backbone-weights PATH, or train "
                         "from scratch with --no-pretrained-backbone")
    assert not work.exists()  # nothing left behind

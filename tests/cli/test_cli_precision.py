"""``--precision`` on predict, eval and serve: the value reaches the predictor (or the service,
or the evaluation), a wrong one is refused on one line before any model is loaded, and the
deprecated ``--fp16`` still works, with a warning. The model loading and running are replaced
by recorders: what runs is checked in tests/e2e/test_cli_options.py."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
import typer
from typer.testing import CliRunner

import anzoo.bulk
import anzoo.cli.evaluate
import anzoo.evaluation
import anzoo.inference
import anzoo.server.app
import anzoo.server.runner
from anzoo.cli import app
from anzoo.cli import base as cli_base

runner = CliRunner()


def typer_exit(code: int) -> None:
    """`anzoo predict` stops where it would start predicting."""
    raise typer.Exit(code)


class Recorder:
    """Stands for Predictor / create_app / evaluate_zoo_model: records the keyword arguments."""

    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.kwargs.append(kwargs)
        return self

    # the little of a Predictor that `anzoo predict` uses, and of the app that `anzoo serve` reads
    device = "cpu"
    state = SimpleNamespace(service=SimpleNamespace(replicas=[]))

    def predict_files(self, *args: Any, **kwargs: Any) -> list:
        return []


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    rec = Recorder()
    loaded: list[str] = []
    monkeypatch.setattr(cli_base, "load_model", lambda model_id, *a: loaded.append(model_id) or object())
    monkeypatch.setattr(anzoo.inference, "Predictor", rec)
    monkeypatch.setattr(anzoo.bulk, "predict_bulk", lambda *a, **kw: typer_exit(0))
    monkeypatch.setattr(anzoo.server.app, "create_app", rec)
    monkeypatch.setattr(anzoo.server.runner, "check_listen_address", lambda host, port: None)
    monkeypatch.setattr(anzoo.evaluation, "evaluate_zoo_model", lambda *a, **kw: rec(**kw))
    monkeypatch.setattr(anzoo.cli.evaluate, "_print_eval", lambda *a: None)
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: None)
    rec.loaded = loaded  # type: ignore[attr-defined]
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    rec.image = image  # type: ignore[attr-defined]
    return rec


def command_line(command: str, rec: Recorder, tmp_path: Path) -> list[str]:
    if command == "predict":
        return ["predict", str(rec.image), "--out", str(tmp_path / "out")]  # type: ignore[attr-defined]
    if command == "eval":
        return ["eval", "r50-bn", "--ann", str(rec.image), "--images", str(tmp_path)]  # type: ignore[attr-defined]
    return ["serve"]


def invoke(args: list[str]) -> Any:
    return runner.invoke(app, [*args, "--device", "cpu"])


@pytest.fixture(autouse=True)
def no_dataset_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anzoo.evaluation, "resolve_coco_files", lambda *a: None)


@pytest.mark.parametrize("command", ["predict", "eval", "serve"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_reaches_the_predictor(command: str, precision: str, recorder: Recorder, tmp_path: Path) -> None:
    result = invoke([*command_line(command, recorder, tmp_path), "--precision", precision])
    assert result.exit_code == 0, result.output
    assert [kw["precision"] for kw in recorder.kwargs] == [precision]


@pytest.mark.parametrize("command", ["predict", "eval", "serve"])
def test_deprecated_fp16_means_bf16_on_the_cpu_with_a_warning(command: str, recorder: Recorder,
                                                               tmp_path: Path) -> None:
    result = invoke([*command_line(command, recorder, tmp_path), "--fp16"])
    assert result.exit_code == 0, result.output
    assert [kw["precision"] for kw in recorder.kwargs] == ["bf16"]
    assert "--fp16 is deprecated: use --precision bf16" in result.stderr


@pytest.mark.parametrize("command", ["predict", "eval", "serve"])
@pytest.mark.parametrize("value,message", [
    ("fp64", "error: --precision fp64 is not one of fp32, bf16, fp16"),
    ("fp16", "error: --precision fp16 runs on CUDA GPUs only, not on cpu: use --precision bf16"),
])
def test_a_wrong_precision_is_one_line_before_any_loading(command: str, value: str, message: str,
                                                           recorder: Recorder, tmp_path: Path) -> None:
    result = invoke([*command_line(command, recorder, tmp_path), "--precision", value])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [message] and "Traceback" not in result.output
    assert recorder.kwargs == [] and recorder.loaded == []  # type: ignore[attr-defined]

"""What a newcomer meets first (issue 14): help that fits 80 columns with flags shown as flags,
one meaning per option name, case-insensitive model ids, usage errors as the one ``error:``
line every other error is, and --scale as one token."""
from __future__ import annotations

from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from anzoo.cli import app

COMMANDS = typer.main.get_command(app).commands


def invoke(*args: str, columns: int = 80):
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(app, list(args))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_fits_80_columns_and_flags_look_like_flags(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80, [line for line in lines if len(line) > 80]
    assert "<bool>" not in result.stdout and "…" not in result.stdout and "╭" not in result.stdout
    for param in COMMANDS[command].params:
        if getattr(param, "hidden", False):  # deprecated aliases (--fp16) are not listed
            continue
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("--"):
                assert name in result.stdout, name  # never cut, e.g. `--no-pretraine…`
        if getattr(param, "is_flag", False):
            assert param.metavar is None, param.opts
        else:
            assert param.metavar and "<" not in param.metavar and "range" not in param.metavar, param.metavar


def test_a_flag_given_a_value_is_one_line() -> None:
    result = invoke("list", "--json", "true")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: got unexpected extra argument(s) (true) (see `anzoo list --help`)"]


def test_one_meaning_per_option_name() -> None:
    """An option name is a flag in every command or a value in every command, and takes the
    same kind of value everywhere (--backbone is a backbone in `list`, and the switch to the
    ImageNet backbones is --imagenet everywhere; --device is the same free text everywhere)."""
    seen: dict[str, set[tuple[bool, str | None]]] = {}
    for command in COMMANDS.values():
        for param in command.params:
            if param.param_type_name == "option":
                seen.setdefault(param.opts[0], set()).add((bool(getattr(param, "is_flag", False)), param.metavar))
    assert {name: kinds for name, kinds in seen.items() if len(kinds) > 1} == {}
    assert seen["--imagenet"] == {(True, None)} and seen["--backbone"] == {
        (False, "[resnet50|resnet101|aognet12m|aognet40m|r50|r101]")}
    assert seen["--device"] == {(False, "auto|cpu|cuda[:N]")}


@pytest.mark.parametrize("args,expected", [
    (["list", "-d", "maskrcnn"], "error: invalid value for --detector: 'maskrcnn' is not one of 'mask_rcnn', "
                                 "'cascade_mask_rcnn' (see `anzoo list --help`)"),
    (["eval", "r50-bn", "--workers", "-1"], "error: invalid value for --workers"),
    (["predict", "--scale", "1x", "a.jpg"], "error: invalid value for --scale: '1x' is not a scale"),
    (["predict", "--device", "gpu"], "error: invalid value for --device: 'gpu' is not a device"),
    (["download"], "error: give at least one model id, or --all (see `anzoo download --help`)"),
    (["info"], "error: missing argument 'MODEL_ID'"),
    (["lst"], "error: no such command 'lst'"),
])
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Value error" not in result.stderr and "╭" not in result.stderr and "Usage:" not in result.stderr


def test_model_ids_ignore_case_and_the_closest_is_suggested_first() -> None:
    result = invoke("info", "R50-BN", "--json")
    assert result.exit_code == 0, result.output
    assert '"id": "r50-bn"' in result.stdout
    assert invoke("info", "--imagenet", "AOGNet40m-AN", "--json").exit_code == 0
    result = invoke("info", "R50-BM")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown model 'R50-BM'; did you mean r50-bn,"), result.stderr


def test_scale_is_one_token_and_keeps_the_image_path() -> None:
    predict = COMMANDS["predict"]
    ctx = predict.make_context("predict", ["--scale", "800", "photo.jpg"])
    assert ctx.params["images"] == ["photo.jpg"] and ctx.params["scale"] == (1333, 800)
    ctx = predict.make_context("predict", ["photo.jpg", "--scale", "800x1333"])
    assert ctx.params["scale"] == (1333, 800)


def test_list_footnote_only_with_quoted_rows_and_no_trailing_padding() -> None:
    everything = invoke("list")
    assert "GN / SN papers" in everything.stdout
    header = next(line for line in everything.stdout.splitlines() if " detector " in line)
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    described = next(line for line in readme.splitlines() if line.startswith("anzoo list  "))
    assert "weights" in header.split() and '"weights" column' in described  # the same name
    cascade = invoke("list", "--detector", "cascade_mask_rcnn")
    assert cascade.exit_code == 0
    assert "default model: aognet40m-an-gn" in cascade.stdout and "GN / SN" not in cascade.stdout
    for result in (everything, cascade, invoke("list", "--imagenet")):
        assert [line for line in result.stdout.splitlines() if line != line.rstrip()] == []

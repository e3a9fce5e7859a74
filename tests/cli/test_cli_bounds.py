"""Every bound of every numeric option and every choice of the ``anzoo`` commands, both sides,
generated from the commands' own parameter declarations: a value on the bound parses, a value
just past it is refused with exit code 2 and the option's name. A numeric option added without
bounds fails here until it gets some (or a reason in ``UNBOUNDED``)."""
from __future__ import annotations

import enum
import typing
from dataclasses import dataclass
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from anzoo.cli import app
from anzoo.cli.base import SCALE_MAX, SCALE_MIN, TRAIN_SCALE_MIN, Scale

COMMANDS = typer.main.get_command(app).commands

#: numeric options that may take any value, and why
UNBOUNDED = {
    ("train", "seed"): "any integer seeds the random generators",
    ("synth-coco", "seed"): "any integer seeds the drawing",
}


@dataclass(frozen=True)
class Bound:
    command: str
    option: str  # the long flag, e.g. --score-thr
    param: str
    side: str  # "min" or "max"
    value: float
    kind: type
    nargs: int

    @property
    def id(self) -> str:
        return f"{self.command} {self.option} {self.side} {self.value}"

    def args(self, value: Any) -> list[str]:
        return [self.option, *[str(value)] * self.nargs]

    @property
    def outside(self) -> Any:
        step = 1 if self.kind is int else 1e-6
        return self.value - step if self.side == "min" else self.value + step


def _scalar(annotation: Any) -> tuple[type | None, int]:
    """(int | float | an Enum | None, nargs) of an option's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        kinds = {a for a in args}
        assert len(kinds) == 1, annotation
        return kinds.pop(), len(args)
    if args and typing.get_origin(annotation) is not tuple:  # Optional[X]
        return _scalar(args[0]) if len(args) == 1 else (None, 1)
    return annotation, 1


def placeholders(command: str) -> list[str]:
    """Values for the required arguments and options, enough to parse."""
    out = []
    for p in COMMANDS[command].params:
        if p.required:
            out += ["placeholder"] if p.param_type_name == "argument" else [p.opts[0], "placeholder"]
    return out


def numeric_params() -> list[tuple[str, Any, type, int]]:
    found = []
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            kind, nargs = _scalar(p.type_descriptor.annotation)
            if kind in (int, float):
                found.append((name, p, kind, nargs))
    return found


def bounds() -> list[Bound]:
    out = []
    for command, p, kind, nargs in numeric_params():
        if p.min is None and p.max is None:
            assert (command, p.name) in UNBOUNDED, f"anzoo {command} {p.opts[0]} has no bounds"
            continue
        for side in ("min", "max"):
            value = getattr(p, side)
            if value is not None:
                out.append(Bound(command, p.opts[0], p.name, side, value, kind, nargs))
    return out


BOUNDS = bounds()


def test_the_generator_sees_the_known_bounds() -> None:
    ids = {(b.command, b.option, b.side): b.value for b in BOUNDS}
    assert ids[("predict", "--score-thr", "min")] == 0 and ids[("predict", "--score-thr", "max")] == 1
    assert ids[("serve", "--port", "max")] == 65535 and ids[("train", "--rcnn-samples", "min")] == 4
    assert len(BOUNDS) >= 25


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.id for b in BOUNDS])
def test_value_on_the_bound_parses(bound: Bound) -> None:
    cmd = COMMANDS[bound.command]
    ctx = cmd.make_context(bound.command, placeholders(bound.command) + bound.args(bound.value))
    parsed = ctx.params[bound.param]
    assert parsed == (tuple([bound.value] * bound.nargs) if bound.nargs > 1 else bound.value)


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.id for b in BOUNDS])
def test_value_past_the_bound_is_refused(bound: Bound) -> None:
    args = [bound.command, *placeholders(bound.command), *bound.args(bound.outside)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    assert bound.option in result.output and "Traceback" not in result.output


def choice_params() -> list[tuple[str, Any, type[enum.Enum]]]:
    out = []
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            kind, _ = _scalar(p.type_descriptor.annotation)
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                out.append((name, p, kind))
    return out


CHOICES = choice_params()


@pytest.mark.parametrize("command,param,choices", CHOICES, ids=[f"{c} {p.opts[0]}" for c, p, _ in CHOICES])
def test_every_choice_parses_and_another_is_refused(command: str, param: Any, choices: type[enum.Enum]) -> None:
    cmd = COMMANDS[command]
    for choice in choices:
        ctx = cmd.make_context(command, placeholders(command) + [param.opts[0], choice.value])
        assert ctx.params[param.name] == choice
    result = CliRunner().invoke(app, [command, *placeholders(command), param.opts[0], "no-such-choice"])
    assert result.exit_code == 2 and param.opts[0] in result.output, result.output


def test_choices_found() -> None:
    assert {(c, p.opts[0]) for c, p, _ in CHOICES} >= {("list", "--detector"), ("list", "--backbone")}


SCALES = [(name, p) for name, cmd in COMMANDS.items() for p in cmd.params
          if p.type_descriptor.annotation is Scale]


def test_scale_options_found() -> None:
    assert {(c, p.opts[0]) for c, p in SCALES} == {("predict", "--scale"), ("eval", "--scale"),
                                                   ("serve", "--scale"), ("export", "--scale"),
                                                   ("train", "--img-scale")}


@pytest.mark.parametrize("command,param", SCALES, ids=[f"{c} {p.opts[0]}" for c, p in SCALES])
def test_scale_bounds_and_forms(command: str, param: Any) -> None:
    """LONGxSHORT in either order, or SHORT alone; each side within its bounds, both sides."""
    lo = TRAIN_SCALE_MIN if command == "train" else SCALE_MIN
    cmd = COMMANDS[command]
    for text, expected in [(f"{SCALE_MAX}x{lo}", (SCALE_MAX, lo)), (f"{lo}x{SCALE_MAX}", (SCALE_MAX, lo)),
                           ("800", (1333, 800)), ("600X1000", (1000, 600))]:
        ctx = cmd.make_context(command, placeholders(command) + [param.opts[0], text])
        assert ctx.params[param.name] == expected, text
    for text in (f"{lo - 1}x800", f"{SCALE_MAX + 1}x800", "800x", "big", "1x2x3"):
        result = CliRunner().invoke(app, [command, *placeholders(command), param.opts[0], text])
        assert result.exit_code == 2, (text, result.output)
        assert param.opts[0] in result.output and "Traceback" not in result.output


DEVICES = [name for name, cmd in COMMANDS.items() for p in cmd.params if p.name == "device"]


def test_device_is_the_same_option_everywhere() -> None:
    """--device: the same free-text option in every command that has one, its form checked at once."""
    assert set(DEVICES) == {"predict", "eval", "serve", "train"}
    for command in DEVICES:
        param = next(p for p in COMMANDS[command].params if p.name == "device")
        assert param.metavar == "auto|cpu|cuda[:N]"
        for text, expected in [("auto", "auto"), ("CPU", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1")]:
            ctx = COMMANDS[command].make_context(command, placeholders(command) + ["--device", text])
            assert ctx.params["device"] == expected
        result = CliRunner().invoke(app, [command, *placeholders(command), "--device", "gpu"])
        assert result.exit_code == 2 and "--device" in result.output and "'gpu'" in result.output

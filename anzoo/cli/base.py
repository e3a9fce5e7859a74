"""What every ``anzoo`` command shares: the typer app, error handling (:func:`command`),
output helpers and the option types several commands take."""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn, Optional, TypeVar

import typer
import typer.core
from typer import _click
from rich.console import Console
from rich.markup import escape

from ..data.defaults import TEST_SCALE
from ..errors import AnzooError
from ..log import setup_logging, stderr_console
from ..schema import BACKBONE_NAMES
from ..version import __version__

__all__ = ["app", "command", "console", "main", "print_error", "print_json"]

log = logging.getLogger("anzoo")

#: metavars by the type an option takes (typer's own, e.g. `<int range>`, read like types)
_METAVARS = {int: "N", float: "NUM", str: "TEXT", Path: "PATH"}


def _metavar(param: Any) -> str | None:
    """The metavar a parameter is shown with in --help: the argument's name (MODEL_ID, FILES...),
    or the kind of value an option takes (N, NUM, PATH, TEXT); flags have none."""
    if param.param_type_name == "argument":
        return param.name.upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ()) + "]"
    kind = descriptor.annotation
    for arg in getattr(kind, "__args__", ()):  # Optional[X], list[X] -> X
        if arg is not type(None):
            kind = arg
    return _METAVARS.get(kind, param.name.upper())


def _usage_name(param: Any) -> str:
    name = param.metavar + ("..." if param.nargs != 1 else "")
    return name if param.required else f"[{name}]"


def usage_message(exc: _click.exceptions.UsageError) -> str:
    """A usage error as the one line the other errors are: `--detector` instead of click's
    `'--detector' / '-d'`, without pydantic's `Value error, ` prefix, pointing at --help."""
    message = exc.format_message().replace("Value error, ", "")
    message = re.sub(r"'(-[-\w]+)'(?: / '-[-\w]+')*", r"\1", message)
    message = re.sub(r"^Invalid value: ", "", message)
    message = message[:1].lower() + message[1:]
    if exc.ctx is not None:
        message = f"{message.rstrip('.')} (see `{exc.ctx.command_path} --help`)"
    return message


class AnzooGroup(typer.core.TyperGroup):
    """The ``anzoo`` group: plain 80-column help with metavars that say what a value is, and every
    error, usage errors included, as one ``error: ...`` line (typer would draw a boxed panel)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for cmd in self.commands.values():
            for param in cmd.params:
                if param.metavar is None:
                    param.metavar = _metavar(param)
                if param.param_type_name == "argument":  # MODEL_ID, as click writes it, not {MODEL_ID} <str>
                    param.display_type_rich = lambda ctx: None
                    param._usage_display_name = functools.partial(_usage_name, param)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except _click.exceptions.ClickException as exc:
            print_error(usage_message(exc) if isinstance(exc, _click.exceptions.UsageError)
                        else exc.format_message())
            sys.exit(exc.exit_code)
        except AnzooError as exc:  # raised outside a command, e.g. by an option's parser
            print_error(as_flags(str(exc)))
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, _click.exceptions.Abort):
            print_error("interrupted")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="anzoo",
    cls=AnzooGroup,
    rich_markup_mode=None,
    help="Attentive Normalization and AOGNet detectors (Mask R-CNN / Cascade Mask R-CNN on COCO): "
         "the model zoo, its weights cache, and the tools around them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: results go to stdout; logs, progress bars and errors go to stderr (log.stderr_console).
#: Piped output is not cut to 80 columns: tables keep their natural width.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)

F = TypeVar("F", bound=Callable[..., Any])



def print_error(message: str) -> None:
    """One red line on stderr."""
    stderr_console().print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True,
                           highlight=False)


def fail(message: str, exit_code: int = 1) -> NoReturn:
    print_error(message)
    raise typer.Exit(exit_code)


def print_json(obj: Any) -> None:
    """Machine-readable output on stdout (plain text, never wrapped or coloured)."""
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


#: a parameter named in a library error: `limit`, or with its value, `device='cuda'`
_PARAMETER = re.compile(r"`(\w+)(?:='([^']*)')?`")


def as_flags(message: str) -> str:
    """A library error's message as the command line says it: the library names the parameters
    an error is about in backquotes (`limit`, `device='cuda'`), a command names its flags
    (--limit, --device cuda); the commands' options are named after those parameters."""
    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        return "--" + name.replace("_", "-") + (f" {value}" if value is not None else "")

    return _PARAMETER.sub(flag, message)


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` with anzoo's error handling around the function."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except AnzooError as exc:
                fail(as_flags(str(exc)), exc.exit_code)
            except KeyboardInterrupt:
                fail("interrupted", 130)

        app.command(name, **kwargs)(run)
        return fn

    return register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"anzoo {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    version: Annotated[bool | None, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    setup_logging(verbose)


# Option and argument types shared by the commands.
ModelIdArg = Annotated[str, typer.Argument(help="Model id (see `anzoo list`).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Download again even if cached.")]
#: --imagenet switches every zoo command to the ImageNet backbones; --backbone is always a value
#: (a backbone architecture), never a switch
ImagenetOpt = Annotated[bool, typer.Option(
    "--imagenet", help="The ids name ImageNet backbones (`anzoo list --imagenet`), not detectors.")]

#: bounds of the --scale / --img-scale sides: a 0 would resize images to nothing, a huge one
#: would ask OpenCV for more memory than any machine has (a traceback, not an error message)
SCALE_MIN, SCALE_MAX = 32, 4096
#: training's smallest side limit: from scratch (BatchNorm on batch statistics) with one image
#: per process, a 32-pixel image leaves one value per channel at stride 32 and BatchNorm raises
TRAIN_SCALE_MIN = 64

#: --backbone takes a backbone's name or its short name (r50, r101), as the model ids spell it
BackboneChoice = Enum("BackboneChoice", {name: name for name in BACKBONE_NAMES}, type=str)  # type: ignore[misc]


def format_number(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)



#: --device everywhere: free text checked for its form here (which devices exist is checked
#: when the model is placed), so that `cuda:1` works in every command and a typo fails at once
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_device(value: str) -> str:
    device = value.strip().lower()
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"{value!r} is not a device: auto, cpu, cuda or cuda:N")
    return device


DeviceOpt = Annotated[str, typer.Option(
    "--device", parser=parse_device, metavar="auto|cpu|cuda[:N]",
    help="Where the model runs: auto (CUDA when available), cpu, cuda or cuda:N.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Checkpoint to use instead of the cached release (mmdet-v1 or anzoo format).",
    show_default=False)]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="fp32; bf16 (bfloat16 autocast: faster on GPUs and on CPUs with AVX512-BF16 or AMX, "
                        "much slower on other CPUs); fp16 (float16 autocast, CUDA only).")]
Fp16Opt = Annotated[bool, typer.Option(
    "--fp16", help="Deprecated: --precision fp16 on CUDA, bf16 on the CPU.", hidden=True)]


class Scale(NamedTuple):
    """A resize scale: the longest and shortest side limits."""

    long: int
    short: int

    def __str__(self) -> str:
        return f"{self.long}x{self.short}"


def parse_scale(value: str | tuple[int, int], lo: int = SCALE_MIN, hi: int = SCALE_MAX) -> Scale:
    """``1333x800`` (either order) or ``800`` (the shortest side, the longest in the table's
    1333:800 ratio) as a :class:`Scale`; one token, so that `--scale 800 photo.jpg` keeps the photo."""
    if isinstance(value, tuple):  # the default
        return Scale(max(value), min(value))
    parts = re.split(r"[x,]", value.strip().lower())
    try:
        sides = [int(part) for part in parts]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides = [round(sides[0] * TEST_SCALE[0] / TEST_SCALE[1]), sides[0]]
    if len(sides) != 2:
        raise ValueError(f"{value!r} is not a scale: give LONGxSHORT (e.g. 1333x800) or SHORT (e.g. 800)")
    if not all(lo <= side <= hi for side in sides):
        raise ValueError(f"{value!r}: each side must be between {lo} and {hi}")
    return Scale(max(sides), min(sides))


def scale_option(flag: str, what: str, default: tuple[int, int], lo: int = SCALE_MIN) -> Any:
    """A LONGxSHORT option (--scale, --img-scale) with its bounds."""
    return typer.Option(flag, parser=lambda value: parse_scale(value, lo, SCALE_MAX), metavar="LONGxSHORT",
                        show_default=False,
                        help=f"{what}: LONGxSHORT side limits (either order), or SHORT alone (the long "
                             f"side in ratio {TEST_SCALE[0]}:{TEST_SCALE[1]}); each side {lo} to {SCALE_MAX}. "
                             f"[default: {default[0]}x{default[1]}]")


TestScaleOpt = Annotated[Scale, scale_option("--scale", "Test scale", TEST_SCALE)]


def default_workers(most: int) -> int:
    """DataLoader workers when --workers is not given: ``most``, but no more than this process's
    share of the CPUs it may run on (torch warns about more, and they only contend)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # set by torchrun
    return max(1, min(most, cpus // processes))


def check_weights_given(model_id: str, weights: Path | None) -> str:
    """A row without released weights (GN, SN) needs --weights, unless its checkpoint was
    imported: said before anything is loaded, in the options of the command at hand (the
    library's message names `url`, which only `anzoo download` has). Returns the id as the zoo
    spells it."""
    from ..hub import cache_state
    from ..zoo import get_entry

    entry = get_entry(model_id)
    if weights is None and not entry.has_weights and not cache_state(entry.id).cached:
        raise AnzooError(f"model {entry.id} has no released weights: give a checkpoint of your own "
                         f"with --weights FILE (or put it into the cache: `anzoo import {entry.id} FILE`)")
    return entry.id


def load_model(model_id: str, weights: Path | None, device: str) -> Any:
    """A zoo model with its released weights (downloaded when needed) or ``weights``; an
    ``.onnx`` file exported by ``anzoo export`` runs on ONNX Runtime instead."""
    from ..factory import create_model

    if weights is not None and not weights.exists():
        raise AnzooError(f"weights file not found: {weights}")
    check_weights_given(model_id, weights)
    if weights is not None and weights.suffix.lower() == ".onnx":
        return load_exported(model_id, weights)
    return create_model(model_id, pretrained=weights if weights is not None else True, device=device)


def precision_flag(precision: str, fp16: bool, device: str) -> str:
    """--precision (or the deprecated --fp16, with a warning), checked against --device before
    any model is loaded."""
    from ..runtime import check_precision, fp16_alias, resolve_device

    dev = resolve_device(device)
    if fp16:
        alias = fp16_alias(dev)
        log.warning("--fp16 is deprecated: use --precision %s", alias)
        if precision == "fp32":
            precision = alias
    return check_precision(precision, dev)


def load_exported(model_id: str, weights: Path, backend: str = "onnxruntime") -> Any:
    """A file from ``anzoo export``, run by ``backend`` (onnxruntime, openvino)."""
    from ..export import OnnxDetector

    if weights.suffix.lower() != ".onnx" or not weights.exists():
        raise AnzooError(f"--backend {backend} runs a file from `anzoo export`: give --weights FILE.onnx")
    exported = OnnxDetector(weights, backend=backend)
    if exported.model_id != model_id:
        raise AnzooError(f"{weights} was exported from {exported.model_id}, not {model_id}: "
                         f"pass --model {exported.model_id}")
    return exported


def long_short(scale: tuple[int, int]) -> tuple[int, int]:
    """--scale in either order, as (long side, short side)."""
    return max(scale), min(scale)



def main(argv: list[str] | None = None) -> None:
    """The ``anzoo`` console script (and ``python -m anzoo``)."""
    try:
        app(args=argv, prog_name="anzoo")
    except AnzooError as exc:  # raised outside a command, e.g. by an option callback
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)


"""What every ``anzoo`` command shares: the typer app, error handling (:func:`command`),
output helpers and the option types several commands take."""
from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..data.defaults import TEST_SCALE
from ..errors import AnzooError
from ..log import setup_logging, stderr_console
from ..schema import BACKBONE_NAMES
from ..version import __version__

__all__ = ["app", "command", "console", "main", "print_error", "print_json"]

log = logging.getLogger("anzoo")

app = typer.Typer(
    name="anzoo",
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
BackboneFlagOpt = Annotated[bool, typer.Option(
    "--backbone", help="The ids name ImageNet backbones (`anzoo list --imagenet`), not detectors.")]

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



DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Checkpoint to use instead of the cached release (mmdet-v1 or anzoo format).",
    show_default=False)]
Fp16Opt = Annotated[bool, typer.Option("--fp16", help="Autocast to float16 on CUDA (bfloat16 on CPU).")]
TestScaleOpt = Annotated[tuple[int, int], typer.Option(
    "--scale", min=SCALE_MIN, max=SCALE_MAX,
    help=f"Test scale: longest and shortest side limits (the table used {TEST_SCALE[0]} {TEST_SCALE[1]}).")]


def load_model(model_id: str, weights: Path | None, device: str) -> Any:
    """A zoo model with its released weights (downloaded when needed) or ``weights``; an
    ``.onnx`` file exported by ``anzoo export`` runs on ONNX Runtime instead."""
    from ..factory import create_model

    if weights is not None and not weights.exists():
        raise AnzooError(f"weights file not found: {weights}")
    if weights is not None and weights.suffix.lower() == ".onnx":
        return load_exported(model_id, weights)
    return create_model(model_id, pretrained=weights if weights is not None else True, device=device)


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


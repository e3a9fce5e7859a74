"""The ``anzoo`` command line (typer + rich).

The commands are thin shells over the library: parse, call, format. Each one is registered
with :func:`command`, which turns every :class:`~anzoo.errors.AnzooError` into one red line
``error: <message>`` on stderr (the parameters a library message names in backquotes
written as the flags that set them: :func:`as_flags`) and the error's exit code (no
traceback), and Ctrl-C into exit code 130. Add a command as a function in the section of its
own below, using the shared option types (``ModelIdArg``, ``JsonOpt``, ...) and the output
helpers (``console``, ``print_json``).
"""
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
from rich.table import Table

from . import __version__
from .data.defaults import DEFAULT_MAX_PIXELS, TEST_SCALE
from .errors import AnzooError
from .log import setup_logging, stderr_console
from .schema import BACKBONE_NAMES, BackboneEntry, Detector, ZooEntry
from .zoo import DEFAULT_MODEL

__all__ = ["app", "main", "command"]

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


# =========================================================================== shared helpers
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


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


# =========================================================================== list / info
def _entry_json(entry: ZooEntry | BackboneEntry) -> dict[str, Any]:
    """The entry's JSON (``to_json()``) with the cache's state of its weights."""
    from . import hub

    state = hub.cache_state(entry.id, backbone=isinstance(entry, BackboneEntry))
    data = entry.to_json()
    data["weights"].update({"cached": state.cached, "path": str(state.checkpoint) if state.checkpoint else None,
                            "sha256": state.sha256, "size": state.size})
    return data


def _weights_cell(entry: ZooEntry | BackboneEntry) -> str:
    from . import hub

    if hub.cache_state(entry.id, backbone=isinstance(entry, BackboneEntry)).cached:
        return "[green]cached[/green]"
    return "available" if entry.has_weights else "[dim]none[/dim]"


@command("list")
def list_models(
    detector: Annotated[Detector | None, typer.Option(
        "--detector", "-d", help="Only this detector.")] = None,
    backbone: Annotated[BackboneChoice | None, typer.Option(
        "--backbone", "-b", help="Only this backbone.")] = None,
    imagenet: Annotated[bool, typer.Option(
        "--imagenet", help="List the ImageNet-pretrained backbones instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the models of the zoo and whether their weights are cached."""
    from . import zoo

    detector_name = detector.value if detector else None
    backbone_name = backbone.value if backbone else None
    if imagenet:
        backbones = zoo.list_backbone_entries(backbone=backbone_name)
        if as_json:
            print_json([_entry_json(b) for b in backbones])
            return
        table = Table(title="ImageNet-pretrained backbones (AOGNet-v2)", title_justify="left")
        table.add_column("id", no_wrap=True)
        for col, justify in [("backbone", "left"), ("norm", "left"), ("#params", "right"),
                             ("top-1 err", "right"), ("top-5 err", "right")]:
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        table.add_column("weights", no_wrap=True)
        for b in backbones:
            table.add_row(b.id, b.arch.label, b.norm.label, _num(b.params_m, "{:.2f}M"),
                          _num(b.top1_error, "{:.2f}"), _num(b.top5_error, "{:.2f}"), _weights_cell(b))
        console.print(table)
        return

    entries = zoo.list_entries(detector=detector_name, backbone=backbone_name)
    if as_json:
        print_json([_entry_json(e) for e in entries])
        return
    table = Table(title="anzoo models (COCO val2017)", title_justify="left",
                  caption=f"default model: {zoo.DEFAULT_MODEL}; weights 'none': numbers quoted from "
                          "the GN / SN papers, no weights released",
                  caption_justify="left")
    table.add_column("id", no_wrap=True)
    for col, justify in [("detector", "left"), ("backbone", "left"), ("backbone norm", "left"),
                         ("head", "left"), ("#params", "right"), ("box AP", "right"),
                         ("mask AP", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("weights", no_wrap=True)
    for e in entries:
        table.add_row(e.id, e.detector.label, e.backbone.label, e.backbone_norm.label, e.head_norm.label,
                      _num(e.params_m, "{:.2f}M"), _num(e.box_ap), _num(e.mask_ap), _weights_cell(e))
    console.print(table)


def _info_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        if key in ("weights", "papers"):
            continue
        rows.append((key, "-" if value is None else ", ".join(value) if isinstance(value, list) else str(value)))
    w = data["weights"]
    rows.append(("weights", w["source"] or "none released"))
    for mirror in w["mirrors"]:
        rows.append(("  mirror", mirror))
    if w["sha256_pinned"]:
        rows.append(("  sha256 (pinned)", w["sha256_pinned"]))
    if w["cached"]:
        rows += [("  cached", w["path"]), ("  size", f"{w['size'] / 1e6:.1f} MB"),
                 ("  sha256", w["sha256"] or "-")]
    else:
        rows.append(("  cached", "no"))
    for paper in data["papers"]:
        rows.append(("paper", f"{paper['title']} ({paper['authors']}; {paper['venue']}) {paper['link'] or ''}".strip()))
    return rows


@command("info")
def info(model_id: ModelIdArg, backbone: BackboneFlagOpt = False, as_json: JsonOpt = False) -> None:
    """Show everything about one model: its numbers, sources, papers and cache state."""
    from . import zoo

    data = _entry_json(zoo.get_backbone_entry(model_id) if backbone else zoo.get_entry(model_id))
    if as_json:
        print_json(data)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in _info_rows(data):
        grid.add_row(key, escape(value))
    console.print(grid)


# =========================================================================== download / import
@command("download")
def download(
    ids: Annotated[list[str] | None, typer.Argument(
        help="Model ids to fetch.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every entry that has weights.")] = False,
    force: ForceOpt = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="Fetch from this http(s) URL instead of the zoo's sources (one id only).")] = None,
    backbone: BackboneFlagOpt = False,
) -> None:
    """Fetch weights into the cache ($ANZOO_HOME, default ~/.cache/anzoo)."""
    from . import hub, zoo

    ids = list(ids or [])
    if all_ and ids:
        raise typer.BadParameter("give model ids or --all, not both")
    if url and (all_ or len(ids) != 1):
        raise typer.BadParameter("--url needs exactly one model id")
    if all_:
        entries = zoo.list_backbone_entries() if backbone else zoo.list_entries()
        skipped = [e.id for e in entries if not e.has_weights]
        if skipped:
            stderr_console().print(f"skipping (no released weights): {', '.join(skipped)}",
                                   highlight=False)
        ids = [e.id for e in entries if e.has_weights]
    if not ids:
        raise typer.BadParameter("give at least one model id, or --all")
    fetch = hub.fetch_backbone_weights if backbone else hub.fetch_weights
    exit_code = 0
    for ident in ids:
        try:
            path = fetch(ident, force=force, url=url)
        except AnzooError as exc:
            print_error(as_flags(str(exc)))
            exit_code = exit_code or exc.exit_code
            continue
        console.print(f"{ident}: {path}", highlight=False)
    if exit_code:
        raise typer.Exit(exit_code)


@command("import")
def import_(
    model_id: ModelIdArg,
    file: Annotated[Path, typer.Argument(help="Checkpoint file (or zip archive) obtained by hand.",
                                         show_default=False)],
    backbone: BackboneFlagOpt = False,
) -> None:
    """Check a checkpoint downloaded by hand and put it into the cache."""
    from . import hub
    from .factory import check_backbone_checkpoint_fits, check_checkpoint_fits

    if backbone:
        path = hub.import_backbone_weights(model_id, file, validate=check_backbone_checkpoint_fits)
    else:
        path = hub.import_weights(model_id, file, validate=check_checkpoint_fits)
    console.print(f"{model_id}: {path}", highlight=False)


# =========================================================================== predict / eval / serve
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Checkpoint to use instead of the cached release (mmdet-v1 or anzoo format).",
    show_default=False)]
Fp16Opt = Annotated[bool, typer.Option("--fp16", help="Autocast to float16 on CUDA (bfloat16 on CPU).")]
TestScaleOpt = Annotated[tuple[int, int], typer.Option(
    "--scale", min=SCALE_MIN, max=SCALE_MAX,
    help=f"Test scale: longest and shortest side limits (the table used {TEST_SCALE[0]} {TEST_SCALE[1]}).")]


def load_model(model_id: str, weights: Path | None, device: str) -> Any:
    """A zoo model with its released weights (downloaded when needed) or ``weights``."""
    from .factory import create_model

    if weights is not None and not weights.exists():
        raise AnzooError(f"weights file not found: {weights}")
    return create_model(model_id, pretrained=weights if weights is not None else True, device=device)


def _long_short(scale: tuple[int, int]) -> tuple[int, int]:
    """--scale in either order, as (long side, short side)."""
    return max(scale), min(scale)


# =========================================================================== predict
def _image_paths(images: list[Path], demo: str | None, out: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files to predict (folders expanded, the demo photo saved under ``out``) and
    the arguments that are not images, with why."""
    from .data.images import iter_image_files
    from .errors import ImageError

    paths: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for arg in images:
        try:
            paths.extend(iter_image_files([arg]))
        except ImageError as exc:
            failures.append((arg, str(exc)))
    if demo is not None:
        from .data.demo import save_demo_image

        paths.append(save_demo_image(demo, out / "inputs" / f"{demo}.png"))
    if not paths and not failures:
        raise AnzooError("no images given: pass image files or folders (or --demo astronaut)")
    return paths, failures


def _found(records: list[dict[str, Any]]) -> str:
    """'2 person, 1 dog': the instances of each class, most first."""
    names: dict[str, int] = {}
    for rec in records:
        names[rec["category_name"]] = names.get(rec["category_name"], 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(names.items(), key=lambda kv: -kv[1]))


@command("predict")
def predict(
    images: Annotated[Optional[list[Path]], typer.Argument(
        help="Image files or folders (jpg, png, webp, bmp, tiff).", show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model id (see `anzoo list`).")] = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    score_thr: Annotated[float, typer.Option("--score-thr", min=0.0, max=1.0,
                                             help="Keep instances scoring at least this.")] = 0.3,
    device: DeviceOpt = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <name>.json and <name>.png.")] = Path(
        "predictions"),
    fp16: Fp16Opt = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1,
    scale: TestScaleOpt = TEST_SCALE,
    demo: Annotated[Optional[str], typer.Option(
        "--demo", help="Also segment a public-domain demo photo shipped with scikit-image "
                       "(astronaut, coffee, chelsea, rocket, camera).", show_default=False)] = None,
) -> None:
    """Instance segmentation of images: COCO-style JSON (RLE masks) and a picture with the masks drawn."""
    paths, failures = _image_paths(images or [], demo, out)
    for path, message in failures:
        print_error(message)
    if paths:
        from .inference import Predictor

        predictor = Predictor(load_model(model, weights, device), fp16=fp16, batch_size=batch_size,
                              scale=_long_short(scale))
        log.info("%s on %s: %d image(s) -> %s", model, predictor.device, len(paths), out)
        for result in predictor.predict_files(paths, out, score_thr=score_thr):
            if result.error is not None:
                failures.append((result.path, result.error))
                print_error(result.error)
                continue
            found = _found(result.records)
            console.print(f"{result.path}: {len(result.records)} instance(s){': ' + found if found else ''} "
                          f"({result.seconds:.2f} s) -> {result.png_path}", highlight=False)
    if failures:
        raise typer.Exit(1)


# =========================================================================== eval
class EvalDevice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _check_eval_options(model_id: str | None, all_: bool, weights: Path | None) -> None:
    """The option combinations eval refuses, before anything is read."""
    if all_ and model_id:
        raise typer.BadParameter("give a model id or --all, not both")
    if not all_ and not model_id:
        raise typer.BadParameter("give a model id (see `anzoo list`), or --all")
    if all_ and weights is not None:
        raise typer.BadParameter("--weights needs a single model id, not --all")
    if model_id:
        from .zoo import get_entry

        get_entry(model_id)  # an unknown id fails before anything is read


def _check_gpus(gpus: int, device: EvalDevice) -> None:
    """--gpus N on CUDA needs N GPUs here."""
    if device != EvalDevice.cpu:
        import torch

        available = torch.cuda.device_count()
        if available < gpus:
            raise AnzooError(f"--gpus {gpus} needs {gpus} CUDA GPUs, {available} found "
                             f"(--device cpu runs {gpus} CPU processes instead)")


def _eval_argv(model_id: str | None, options: dict[str, Any]) -> list[str]:
    """The `anzoo eval` arguments that reproduce this call (for the torchrun workers of --gpus)."""
    argv = ["eval"] + ([model_id] if model_id else [])
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, tuple):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _print_eval(result: Any, as_json: bool) -> None:
    from .evaluation import comparison_rows, verdict_line

    if as_json:
        print_json(result.to_json(summaries=False))
        return
    table = Table(title=f"{result.model_id or 'model'}: COCO metrics of {result.num_images} images "
                        f"({result.images_per_s:.2f} images/s on {result.device})", title_justify="left")
    table.add_column("metric")
    for col in ("box AP", "table", "Δ", "mask AP", "table", "Δ"):
        table.add_column(col, justify="right")
    for row in comparison_rows(result):
        table.add_row(*row)
    console.print(table)
    colour = {"reproduced": "green", "not reproduced": "red"}.get(result.verdict, "yellow")
    console.print(f"[{colour}]{escape(verdict_line(result))}[/{colour}]", highlight=False)
    console.print(f"results: {result.out_dir}/results.bbox.json, results.segm.json, metrics.json", highlight=False)


def _print_zoo_report(report: Any, as_json: bool) -> None:
    if as_json:
        print_json(json.loads(report.json_file.read_text(encoding="utf-8")))
    else:
        console.print(report.markdown_file.read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"report: {report.markdown_file}", highlight=False)


@command("eval")
def eval_(
    model_id: Annotated[Optional[str], typer.Argument(
        help="Model id (see `anzoo list`); leave out with --all.", show_default=False)] = None,
    coco: Annotated[Optional[Path], typer.Option(
        "--coco", help="COCO folder holding annotations/instances_val2017.json and val2017/.",
        show_default=False)] = None,
    ann: Annotated[Optional[Path], typer.Option(
        "--ann", help="Annotation file (COCO format) instead of the one under --coco.", show_default=False)] = None,
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Image folder instead of the one under --coco.", show_default=False)] = None,
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", help="Checkpoint to evaluate instead of the cached release (mmdet-v1 or anzoo format).",
        show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Results folder (default: anzoo-eval/<id>; with --all: anzoo-eval).",
        show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=1, help="Only the first N images (a partial run: no verdict).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", "-b", min=1, help="Images per forward pass (same padded size only, so results do not "
                                          "change; default: 1 on CPU, 4 on CUDA).", show_default=False)] = None,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=0, help="DataLoader processes decoding and resizing images.")] = 4,
    device: Annotated[EvalDevice, typer.Option("--device", help="Where the model runs.")] = EvalDevice.auto,
    fp16: Annotated[bool, typer.Option("--fp16", help="Autocast to float16 on CUDA.")] = False,
    scale: Annotated[tuple[int, int], typer.Option(
        "--scale", min=SCALE_MIN, max=SCALE_MAX,
        help="Test scale LONG SHORT: longest and shortest side limits.")] = TEST_SCALE,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from its partial results in --out.")] = False,
    all_: Annotated[bool, typer.Option(
        "--all", help="Evaluate every model that has weights; write a report beside the table.")] = False,
    gpus: Annotated[int, typer.Option(
        "--gpus", min=1, help="Run N processes under torchrun, one GPU each (CPU processes with --device cpu); "
                              "the same as `torchrun --nproc_per_node N -m anzoo eval ...`.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a model on COCO val2017 (box and mask AP, pycocotools) beside the table's numbers."""
    from .distributed import launched_by_torchrun, process_rank, run_under_torchrun
    from .evaluation import evaluate_zoo, evaluate_zoo_model, resolve_coco_files

    _check_eval_options(model_id, all_, weights)
    files = resolve_coco_files(coco, ann, images)
    options: dict[str, Any] = {"limit": limit, "batch_size": batch_size, "workers": workers,
                               "device": device.value, "fp16": fp16, "scale": _long_short(scale),
                               "resume": resume}
    if gpus > 1 and not launched_by_torchrun():
        _check_gpus(gpus, device)
        raise typer.Exit(run_under_torchrun(gpus, _eval_argv(model_id, {
            "coco": coco, "ann": ann, "images": images, "weights": weights, "out": out, **options, "all": all_,
            "json": as_json})))
    if process_rank() > 0:  # one process speaks for all
        logging.getLogger("anzoo").setLevel(logging.WARNING)
    if all_:
        report = evaluate_zoo(files, out or Path("anzoo-eval"),
                              on_error=lambda entry_id, exc: print_error(f"{entry_id}: {exc}"), **options)
        if report.markdown_file is not None:  # rank 0
            _print_zoo_report(report, as_json)
            if report.failed:
                raise typer.Exit(1)
        return
    assert model_id is not None
    result = evaluate_zoo_model(model_id, files, out or Path("anzoo-eval") / model_id, weights=weights, **options)
    if process_rank() == 0:
        _print_eval(result, as_json)


# =========================================================================== serve
#: the serve limits, in the units people type (ServeSettings holds them in bytes and seconds)
MaxBatchOpt = Annotated[int, typer.Option(
    "--max-batch", min=1, help="Most images per forward pass (1: no batching).")]
MaxWaitOpt = Annotated[float, typer.Option(
    "--max-wait-ms", min=0.0, help="How long an image may wait for batch mates.")]
MaxQueueOpt = Annotated[int, typer.Option(
    "--max-queue", min=1, help="Images that may wait for the model; beyond: 503 + Retry-After.")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=0.1, help="Seconds a request may take once its body is received: 504 past it, and 503 at "
                               "once when the queue's expected wait is longer.")]
MaxBodyOpt = Annotated[float, typer.Option(
    "--max-body-mb", min=0.001, help="Largest request body, in MB (10^6 bytes).")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Largest image, in pixels (checked before decoding; the model sees at most "
                                "1333x800 of it).")]
ReadTimeoutOpt = Annotated[float, typer.Option(
    "--read-timeout", min=0.1, help="Seconds a request body may pause; it must also arrive within this plus "
                                    "its size at --read-min-rate. Else 408.")]
ReadMinRateOpt = Annotated[float, typer.Option(
    "--read-min-rate", min=0.001, help="Slowest average upload accepted, in kB/s.")]
MaxBufferedOpt = Annotated[float, typer.Option(
    "--max-buffered-mb", min=1.0, help="Request bodies held in memory at once (received, not yet decoded), "
                                       "MB; beyond: 503.")]
DecodeMemoryOpt = Annotated[float, typer.Option(
    "--decode-memory-mb", min=1.0, help="Memory for images being decoded at once (estimated from their "
                                        "headers), MB; other decodes wait.")]
MaxMaskOpt = Annotated[float, typer.Option(
    "--max-mask-mpx", min=0.001, help="Most mask pixels pasted per request, in Mpx (boxes clipped to the "
                                      "image); lower-scoring instances past it are left out.")]
CorsOpt = Annotated[Optional[list[str]], typer.Option(
    "--cors-origin", help="Allow browser pages from this origin (repeatable; '*' for any). "
                          "Off by default.", show_default=False)]


@command("serve")
def serve(
    models: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Model id to serve; repeat for several (the first is the default). "
                              f"Default: {DEFAULT_MODEL}.", show_default=False)] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    host: Annotated[str, typer.Option(
        "--host", help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, envvar="ANZOO_PORT",
                                      help="TCP port (or $ANZOO_PORT).")] = 8000,
    max_batch: MaxBatchOpt = 8,
    max_wait_ms: MaxWaitOpt = 10.0,
    fp16: Fp16Opt = False,
    max_queue: MaxQueueOpt = 64,
    timeout: TimeoutOpt = 60.0,
    max_body_mb: MaxBodyOpt = 20.0,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    read_timeout: ReadTimeoutOpt = 10.0,
    read_min_rate: ReadMinRateOpt = 50.0,
    max_buffered_mb: MaxBufferedOpt = 256.0,
    decode_memory_mb: DecodeMemoryOpt = 1000.0,
    max_mask_mpx: MaxMaskOpt = 200.0,
    cors_origins: CorsOpt = None,
    scale: TestScaleOpt = TEST_SCALE,
) -> None:
    """Serve instance segmentation over HTTP: POST /segment, a web page at /, /metrics.

    Set ANZOO_API_KEY to require 'Authorization: Bearer <key>' on /segment*.
    """
    import os

    import uvicorn

    from .server.app import API_KEY_ENV, ServeSettings, create_app
    from .server.runner import check_listen_address

    model_ids = list(dict.fromkeys(models or [DEFAULT_MODEL]))
    if weights is not None and len(model_ids) != 1:
        raise typer.BadParameter("--weights needs exactly one --model")
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                             request_timeout_s=timeout, max_body_bytes=int(max_body_mb * 1_000_000),
                             max_pixels=max_pixels, cors_origins=tuple(cors_origins or ()),
                             read_timeout_s=read_timeout, read_min_rate=read_min_rate * 1000.0,
                             max_buffered_bytes=int(max_buffered_mb * 1_000_000),
                             decode_memory_bytes=int(decode_memory_mb * 1_000_000),
                             max_mask_pixels=int(max_mask_mpx * 1_000_000))
    check_listen_address(host, port)  # before minutes of downloading and loading
    loaded = {}
    for model_id in model_ids:
        log.info("loading %s", model_id)
        loaded[model_id] = load_model(model_id, weights, device)
    app = create_app(loaded, settings=settings, device=device, fp16=fp16, scale=_long_short(scale))
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it may use it "
                    "(set %s to require one)", host, API_KEY_ENV)
    log.info("serving %s on http://%s:%d (max batch %d, max wait %g ms, queue %d%s)",
             ", ".join(model_ids), host, port, max_batch, max_wait_ms, max_queue,
             ", API key required" if api_key else "")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5,
                timeout_graceful_shutdown=max(5, int(timeout)))


# =========================================================================== train
@command("train")
def train_cmd(
    model_id: ModelIdArg,
    work_dir: Annotated[Path, typer.Option("--work-dir", "-w", help="Folder for checkpoints and logs.",
                                           show_default=False)],
    coco: Annotated[Optional[Path], typer.Option(
        "--coco", help="COCO folder: annotations/instances_train2017.json and train2017/ (val2017 pair "
                       "for periodic evaluation).", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(
        "--epochs", min=1, help="Epochs in all (default: the model's schedule, 24 or 20; LR steps scale "
                                "with it).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per GPU / process.")] = 2,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", min=0.0, help="Base learning rate (default 0.02 x total batch / 16).", show_default=False)] = None,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (float16 + loss scaling on CUDA).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --work-dir exactly where it "
                                                          "stopped.")] = False,
    max_iters: Annotated[Optional[int], typer.Option(
        "--max-iters", min=1, help="Stop after this many iterations in all (a checkpoint is written).",
        show_default=False)] = None,
    img_scale: Annotated[tuple[int, int], typer.Option(
        "--img-scale", min=TRAIN_SCALE_MIN, max=SCALE_MAX,
        help="Training resize: longest and shortest side limits.")] = (1333, 800),
    eval_every: Annotated[int, typer.Option(
        "--eval-every", min=0, help="Evaluate on the val2017 pair every K epochs (0: never).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, data order and sampling.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")] = "auto",
    backbone_weights: Annotated[Optional[Path], typer.Option(
        "--backbone-weights", help="ImageNet checkpoint of the backbone (AOGNet-v2 format) instead of the "
                                   "registry's.", show_default=False)] = None,
    no_pretrained_backbone: Annotated[bool, typer.Option(
        "--no-pretrained-backbone", help="Train from scratch (nothing frozen, BatchNorm in training mode).")
    ] = False,
    train_ann: Annotated[Optional[Path], typer.Option(
        "--train-ann", help="Training annotation file (with --train-images; instead of --coco's).",
        show_default=False)] = None,
    train_images: Annotated[Optional[Path], typer.Option(
        "--train-images", help="Training image folder.", show_default=False)] = None,
    val_ann: Annotated[Optional[Path], typer.Option(
        "--val-ann", help="Evaluation annotation file (with --val-images).", show_default=False)] = None,
    val_images: Annotated[Optional[Path], typer.Option(
        "--val-images", help="Evaluation image folder.", show_default=False)] = None,
    from_: Annotated[Optional[str], typer.Option(
        "--from", help="Fine-tune from a zoo model's released weights (its id) or a checkpoint file; "
                       "class-specific layers start afresh when the classes differ.", show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data-loading processes per GPU.")] = 2,
    keep_checkpoints: Annotated[int, typer.Option(
        "--keep-checkpoints", min=0, help="Keep only the N newest epoch checkpoints (0: all).")] = 0,
    warmup_iters: Annotated[int, typer.Option("--warmup-iters", min=0, help="Linear warm-up iterations.")] = 500,
    rpn_proposals: Annotated[Optional[int], typer.Option(
        "--rpn-proposals", min=1, help="Training proposals per image (recipe: 2000).", show_default=False)] = None,
    rcnn_samples: Annotated[Optional[int], typer.Option(
        "--rcnn-samples", min=4, help="RoIs sampled per image and stage (recipe: 512).", show_default=False)
    ] = None,
    log_every: Annotated[int, typer.Option("--log-every", min=1, help="Iterations between metrics records.")] = 20,
    tensorboard: Annotated[Optional[bool], typer.Option(
        "--tensorboard/--no-tensorboard", help="TensorBoard events (default: when installed).",
        show_default=False)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    strict_data: Annotated[bool, typer.Option(
        "--strict-data", help="Stop at a training image that cannot be used (saving latest.pth there) instead "
                              "of training on the next one and counting it.")] = False,
) -> None:
    """Train a zoo model on a COCO-format dataset (one GPU, or many with `torchrun -m anzoo train`)."""
    if backbone_weights is not None and no_pretrained_backbone:
        raise typer.BadParameter("give --backbone-weights or --no-pretrained-backbone, not both")
    if (train_ann is None) != (train_images is None):
        raise typer.BadParameter("--train-ann and --train-images go together")
    if coco is None and train_ann is None and not resume:  # a resumed run knows its data
        raise typer.BadParameter("give --coco DIR, or --train-ann FILE --train-images DIR")
    from .training import TrainConfig, train

    config = TrainConfig(
        model_id=model_id, work_dir=work_dir, coco_dir=coco, train_ann=train_ann, train_images=train_images,
        val_ann=val_ann, val_images=val_images, epochs=epochs, batch_size=batch_size, lr=lr, amp=amp,
        resume=resume, max_iters=max_iters, img_scale=(max(img_scale), min(img_scale)), eval_every=eval_every,
        seed=seed, device=device, backbone_weights=backbone_weights,
        pretrained_backbone=not no_pretrained_backbone, from_model=from_, num_workers=workers,
        keep_checkpoints=keep_checkpoints,
        warmup_iters=warmup_iters, rpn_proposals=rpn_proposals, rcnn_samples=rcnn_samples,
        log_every=log_every, progress=progress, tensorboard=tensorboard, strict_data=strict_data)
    result = train(config)
    if result.final_model is not None:
        state = "stopped early" if result.stopped_early else "done"
        console.print(f"{model_id}: {state} after {result.iterations} iterations "
                      f"({result.epochs_completed}/{result.total_epochs} epochs); model: {result.final_model}",
                      highlight=False)
        console.print(f"  use it: anzoo predict IMAGE -m {model_id} --weights {result.final_model}",
                      highlight=False)


# =========================================================================== entry point
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


if __name__ == "__main__":  # pragma: no cover
    main()

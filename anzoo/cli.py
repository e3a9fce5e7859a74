"""The ``anzoo`` command line (typer + rich).

The commands are thin shells over the library: parse, call, format. Each one is registered
with :func:`command`, which turns every :class:`~anzoo.errors.AnzooError` into one red line
``error: <message>`` on stderr and the error's exit code (no traceback), and Ctrl-C into
exit code 130. Add a command as a function in the section of its own below, using the
shared option types (``ModelIdArg``, ``JsonOpt``, ...) and the output helpers
(``console``, ``print_json``).
"""
from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import AnzooError
from .log import setup_logging, stderr_console

__all__ = ["app", "main", "command"]

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


def command(name: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` with anzoo's error handling around the function."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except AnzooError as exc:
                fail(str(exc), exc.exit_code)
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

DETECTOR_LABELS = {"mask_rcnn": "Mask R-CNN", "cascade_mask_rcnn": "Cascade Mask R-CNN"}
BACKBONE_LABELS = {"resnet50": "ResNet-50", "resnet101": "ResNet-101", "aognet12m": "AOGNet-12m",
                   "aognet40m": "AOGNet-40m"}
NORM_LABELS = {"bn": "BN", "an": "AN (w/ BN)", "gn": "GN", "sn": "SN"}
HEAD_LABELS = {"none": "-", "gn": "GN", "an_gn": "AN (w/ GN)", "sn": "SN"}


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


# =========================================================================== list / info
def _weights_json(entry: Any, backbone: bool) -> dict[str, Any]:
    from . import hub

    state = hub.cache_state(entry.id, backbone=backbone)
    w = entry.weights
    return {
        "source": w.manual_url if w else None,
        "gdrive_id": w.gdrive_id if w else None,
        "url": w.url if w else None,
        "mirrors": list(w.mirrors) if w else [],
        "sha256_pinned": w.sha256 if w else None,
        "cached": state.cached,
        "path": str(state.checkpoint) if state.checkpoint else None,
        "sha256": state.sha256,
        "size": state.size,
    }


def _weights_cell(entry: Any, backbone: bool) -> str:
    from . import hub

    if hub.cache_state(entry.id, backbone=backbone).cached:
        return "[green]cached[/green]"
    return "available" if entry.has_weights else "[dim]none[/dim]"


def _paper_json(paper: Any) -> dict[str, Any]:
    return {"key": paper.key, "title": paper.title, "authors": paper.authors, "venue": paper.venue,
            "arxiv": paper.arxiv, "link": paper.link}


def _model_json(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.id, "detector": entry.detector, "backbone": entry.backbone,
        "backbone_norm": entry.backbone_norm, "head_norm": entry.head_norm,
        "schedule": entry.schedule, "params_m": entry.params_m, "box_ap": entry.box_ap,
        "mask_ap": entry.mask_ap, "weights": _weights_json(entry, backbone=False),
        "backbone_id": entry.backbone_id, "pretrained_backbone": entry.pretrained_backbone,
        "config": entry.config, "num_classes": entry.num_classes,
        "class_names": list(entry.class_names) if entry.class_names else None,
        "papers": [_paper_json(p) for p in entry.papers], "notes": entry.notes,
        "zoo_file": entry.source,
    }


def _backbone_json(entry: Any) -> dict[str, Any]:
    return {
        "id": entry.id, "arch": entry.arch, "norm": entry.norm, "params_m": entry.params_m,
        "top1_error": entry.top1_error, "top5_error": entry.top5_error,
        "weights": _weights_json(entry, backbone=True), "config": entry.config,
        "papers": [_paper_json(p) for p in entry.papers], "notes": entry.notes,
        "zoo_file": entry.source,
    }


class DetectorName(str, Enum):
    mask_rcnn = "mask_rcnn"
    cascade_mask_rcnn = "cascade_mask_rcnn"


class BackboneName(str, Enum):
    resnet50 = "resnet50"
    resnet101 = "resnet101"
    aognet12m = "aognet12m"
    aognet40m = "aognet40m"
    r50 = "r50"
    r101 = "r101"


@command("list")
def list_models(
    detector: Annotated[DetectorName | None, typer.Option(
        "--detector", "-d", help="Only this detector.")] = None,
    backbone: Annotated[BackboneName | None, typer.Option(
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
        backbones = zoo.list_backbone_entries()
        if backbone_name:
            wanted = {v: k for k, v in zoo.BACKBONE_SHORT_NAMES.items()}.get(backbone_name, backbone_name)
            backbones = [b for b in backbones if b.arch == wanted]
        if as_json:
            print_json([_backbone_json(b) for b in backbones])
            return
        table = Table(title="ImageNet-pretrained backbones (AOGNet-v2)", title_justify="left")
        table.add_column("id", no_wrap=True)
        for col, justify in [("backbone", "left"), ("norm", "left"), ("#params", "right"),
                             ("top-1 err", "right"), ("top-5 err", "right")]:
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        table.add_column("weights", no_wrap=True)
        for b in backbones:
            table.add_row(b.id, BACKBONE_LABELS[b.arch], NORM_LABELS[b.norm],
                          _num(b.params_m, "{:.2f}M"), _num(b.top1_error, "{:.2f}"),
                          _num(b.top5_error, "{:.2f}"), _weights_cell(b, backbone=True))
        console.print(table)
        return

    entries = zoo.list_entries(detector=detector_name, backbone=backbone_name)
    if as_json:
        print_json([_model_json(e) for e in entries])
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
        table.add_row(e.id, DETECTOR_LABELS[e.detector], BACKBONE_LABELS[e.backbone],
                      NORM_LABELS[e.backbone_norm], HEAD_LABELS[e.head_norm],
                      _num(e.params_m, "{:.2f}M"), _num(e.box_ap), _num(e.mask_ap),
                      _weights_cell(e, backbone=False))
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

    data = (_backbone_json(zoo.get_backbone_entry(model_id)) if backbone
            else _model_json(zoo.get_entry(model_id)))
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
            print_error(str(exc))
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

    path = (hub.import_backbone_weights if backbone else hub.import_weights)(model_id, file)
    console.print(f"{model_id}: {path}", highlight=False)


# =========================================================================== predict
# (coming: `anzoo predict`)

# =========================================================================== eval
# (coming: `anzoo eval`)

# =========================================================================== serve
# (coming: `anzoo serve`)

# =========================================================================== train
# (coming: `anzoo train`)


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

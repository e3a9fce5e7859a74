"""``anzoo list``, ``info``, ``download``, ``import``, ``pack`` and ``unpack``: the zoo and its weights cache."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import AnzooError
from ..log import stderr_console
from ..schema import BackboneEntry, Detector, ZooEntry
from .base import (
    BackboneChoice,
    ForceOpt,
    ImagenetOpt,
    JsonOpt,
    ModelIdArg,
    format_number,
    as_flags,
    command,
    console,
    print_error,
    print_json,
)


def _entry_json(entry: ZooEntry | BackboneEntry) -> dict[str, Any]:
    """The entry's JSON (``to_json()``) with the cache's state of its weights."""
    from .. import hub

    state = hub.cache_state(entry.id, backbone=isinstance(entry, BackboneEntry))
    data = entry.to_json()
    data["weights"].update({"cached": state.cached, "path": str(state.checkpoint) if state.checkpoint else None,
                            "sha256": state.sha256, "size": state.size})
    return data


def _weights_cell(entry: ZooEntry | BackboneEntry) -> str:
    from .. import hub

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
    from .. import zoo

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
            table.add_row(b.id, b.arch.label, b.norm.label, format_number(b.params_m, "{:.2f}M"),
                          format_number(b.top1_error, "{:.2f}"), format_number(b.top5_error, "{:.2f}"),
                          _weights_cell(b))
        console.print(table)
        return

    entries = zoo.list_entries(detector=detector_name, backbone=backbone_name)
    if as_json:
        print_json([_entry_json(e) for e in entries])
        return
    quoted = "; weights 'none': numbers quoted from the GN / SN papers, no weights released"
    table = Table(title="anzoo models (COCO val2017)", title_justify="left",
                  caption=f"default model: {zoo.DEFAULT_MODEL}"
                          f"{quoted if any(not e.has_weights for e in entries) else ''}",
                  caption_justify="left")
    table.add_column("id", no_wrap=True)
    for col, justify in [("detector", "left"), ("backbone", "left"), ("backbone norm", "left"),
                         ("head", "left"), ("#params", "right"), ("box AP", "right"),
                         ("mask AP", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    table.add_column("weights", no_wrap=True)
    for e in entries:
        table.add_row(e.id, e.detector.label, e.backbone.label, e.backbone_norm.label, e.head_norm.label,
                      format_number(e.params_m, "{:.2f}M"), format_number(e.box_ap), format_number(e.mask_ap),
                      _weights_cell(e))
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
def info(model_id: ModelIdArg, imagenet: ImagenetOpt = False, as_json: JsonOpt = False) -> None:
    """Show everything about one model: its numbers, sources, papers and cache state."""
    from .. import zoo

    data = _entry_json(zoo.get_backbone_entry(model_id) if imagenet else zoo.get_entry(model_id))
    if as_json:
        print_json(data)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in _info_rows(data):
        grid.add_row(key, escape(value))
    console.print(grid)



@command("download")
def download(
    ids: Annotated[list[str] | None, typer.Argument(
        help="Model ids to fetch.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every entry that has weights.")] = False,
    force: ForceOpt = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="Fetch from this http(s) URL or hf://OWNER/REPO/PATH[@REVISION] instead of the zoo's "
                      "sources (one id only).")] = None,
    imagenet: ImagenetOpt = False,
) -> None:
    """Fetch weights into the cache ($ANZOO_HOME, default ~/.cache/anzoo)."""
    from .. import hub, zoo

    ids = list(ids or [])
    if all_ and ids:
        raise typer.BadParameter("give model ids or --all, not both")
    if url and (all_ or len(ids) != 1):
        raise typer.BadParameter("--url needs exactly one model id")
    if all_:
        entries = zoo.list_backbone_entries() if imagenet else zoo.list_entries()
        skipped = [e.id for e in entries if not e.has_weights]
        if skipped:
            stderr_console().print(f"skipping (no released weights): {', '.join(skipped)}",
                                   highlight=False)
        ids = [e.id for e in entries if e.has_weights]
    if not ids:
        raise typer.BadParameter("give at least one model id, or --all")
    fetch = hub.fetch_backbone_weights if imagenet else hub.fetch_weights
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
    imagenet: ImagenetOpt = False,
) -> None:
    """Check a checkpoint downloaded by hand and put it into the cache."""
    from .. import hub
    from ..factory import check_backbone_checkpoint_fits, check_checkpoint_fits

    if imagenet:
        path = hub.import_backbone_weights(model_id, file, validate=check_backbone_checkpoint_fits)
    else:
        path = hub.import_weights(model_id, file, validate=check_checkpoint_fits)
    console.print(f"{model_id}: {path}", highlight=False)



@command("pack")
def pack(
    out: Annotated[Path, typer.Argument(help="The tar file to write.", show_default=False)],
    ids: Annotated[list[str] | None, typer.Argument(
        help="Model ids to pack (with --imagenet: backbone ids; default: everything cached).",
        show_default=False)] = None,
    imagenet: ImagenetOpt = False,
) -> None:
    """Pack verified cache entries into a tar file, for a machine without network (`anzoo unpack`)."""
    from .. import hub

    if not ids:
        packed = hub.pack_cache(out)  # everything cached, detectors and backbones
    elif imagenet:
        packed = hub.pack_cache(out, backbone_ids=ids)
    else:
        packed = hub.pack_cache(out, model_ids=ids)
    console.print(f"{out}: {', '.join(packed)}", highlight=False)


@command("unpack")
def unpack(archive: Annotated[Path, typer.Argument(help="A tar file written by `anzoo pack`.", show_default=False)]
           ) -> None:
    """Put the entries of an `anzoo pack` archive into the cache, each file's sha256 checked."""
    from .. import hub

    for label, path in hub.unpack_cache(archive):
        console.print(f"{label}: {path}", highlight=False)

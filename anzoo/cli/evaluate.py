"""``anzoo eval``: COCO evaluation beside the table's numbers."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..data.defaults import TEST_SCALE
from ..errors import AnzooError
from .base import (
    DeviceOpt,
    Fp16Opt,
    JsonOpt,
    PrecisionOpt,
    TestScaleOpt,
    check_weights_given,
    default_workers,
    fail,
    long_short,
    precision_flag,
    command,
    console,
    print_error,
    print_json,
)


def _check_eval_options(model_id: str | None, all_: bool, weights: Path | None) -> str | None:
    """The option combinations eval refuses, before anything is read; the model id as the zoo
    spells it."""
    if all_ and model_id:
        raise typer.BadParameter("give a model id or --all, not both")
    if not all_ and not model_id:
        raise typer.BadParameter("give a model id (see `anzoo list`), or --all")
    if all_ and weights is not None:
        raise typer.BadParameter("--weights needs a single model id, not --all")
    return check_weights_given(model_id, weights) if model_id else None  # an unknown id fails here


def _check_gpus(gpus: int, device: str) -> None:
    """--gpus N on CUDA needs N GPUs here."""
    if device != "cpu":
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
        elif isinstance(value, tuple):  # a Scale
            argv += [flag, "x".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _print_eval(result: Any, as_json: bool) -> None:
    from ..evaluation import comparison_rows, verdict_line

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
    workers: Annotated[Optional[int], typer.Option(
        "--workers", "-w", min=0, help="DataLoader processes decoding and resizing images (default: 4, at "
                                       "most the CPUs per process).", show_default=False)] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    fp16: Fp16Opt = False,
    scale: TestScaleOpt = TEST_SCALE,
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
    from ..distributed import launched_by_torchrun, process_rank, run_under_torchrun
    from ..evaluation import evaluate_zoo, evaluate_zoo_model, resolve_coco_files

    model_id = _check_eval_options(model_id, all_, weights)
    precision = precision_flag(precision, fp16, device)
    files = resolve_coco_files(coco, ann, images)
    options: dict[str, Any] = {"limit": limit, "batch_size": batch_size, "workers": workers,
                               "device": device, "precision": precision, "scale": long_short(scale),
                               "resume": resume}
    if gpus > 1 and not launched_by_torchrun():
        _check_gpus(gpus, device)
        raise typer.Exit(run_under_torchrun(gpus, _eval_argv(model_id, {
            "coco": coco, "ann": ann, "images": images, "weights": weights, "out": out, **options, "all": all_,
            "json": as_json})))
    options["workers"] = default_workers(4) if workers is None else workers  # per process, under torchrun too
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
    out = out or Path("anzoo-eval") / model_id
    try:
        result = evaluate_zoo_model(model_id, files, out, weights=weights, **options)
    except KeyboardInterrupt:
        fail(f"interrupted; the images done so far are kept in {out / 'partial'}: run the same command "
             "with --resume to continue where it stopped", 130)
    if process_rank() == 0:
        _print_eval(result, as_json)


"""``anzoo predict``: instance segmentation of images, folders, globs, lists and videos, in one
process or sharded over torchrun's."""
from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from ..data.defaults import DEFAULT_MAX_PIXELS, TEST_SCALE
from ..errors import AnzooError
from ..zoo import DEFAULT_MODEL
from . import base
from .base import (
    DeviceOpt,
    Fp16Opt,
    PrecisionOpt,
    TestScaleOpt,
    WeightsOpt,
    precision_flag,
    command,
    console,
    log,
    long_short,
    print_error,
)


class OutputFormat(str, Enum):
    files = "files"
    jsonl = "jsonl"
    coco = "coco"


def _sources(inputs: list[str], recursive: bool, every: int, demo: str | None, out: Path) -> tuple[list, list]:
    """The sources to predict and the inputs that name nothing readable (``(input, message)``)."""
    from ..data.sources import expand_inputs

    sources, failures = expand_inputs(inputs, recursive=recursive, every=every, exclude=out)
    if demo is not None:
        from ..data.demo import save_demo_image

        from ..hub import cache_dir

        # into the cache, not under --out: a run that fails leaves nothing in the output folder
        demo_sources, _ = expand_inputs([str(save_demo_image(demo, cache_dir() / "demo" / f"{demo}.png"))])
        sources += [s for s in demo_sources if s.path not in {t.path for t in sources}]
    if not sources and not failures:
        raise AnzooError("no images given: pass image or video files, folders, globs or @list.txt "
                         "(or --demo astronaut)")
    return sources, failures


def _found(records: list[dict[str, Any]]) -> str:
    """'2 person, 1 dog': the instances of each class, most first."""
    names: dict[str, int] = {}
    for rec in records:
        names[rec["category_name"]] = names.get(rec["category_name"], 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(names.items(), key=lambda kv: -kv[1]))


def _print_image(done: Any) -> None:
    """One line per image: what was found and where it went."""
    name = done.source.key + (f" frame {done.source.frame}" if done.source.frame is not None else "")
    found = _found(done.records)
    console.print(escape(f"{name}: {len(done.records)} instance(s){': ' + found if found else ''} "
                         f"({done.seconds:.2f} s) -> {done.png_path or done.json_path}"), highlight=False)


def _print_summary(result: Any, out: Path, fmt: OutputFormat) -> None:
    failed = f", {len(result.failed)} failed" if result.failed else ""
    where = ", ".join(result.outputs) if result.outputs else str(out)
    console.print(escape(f"{result.images_this_run} image(s) in {result.seconds:.1f} s ({result.images_per_s:.2f} "
                         f"images/s, {result.world_size} process(es)){failed} -> {where}"), highlight=False)


@command("predict")
def predict(
    images: Annotated[Optional[list[str]], typer.Argument(
        help="Image or video files, folders, globs ('photos/**/*.jpg') or @list.txt (one per line).",
        show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model id (see `anzoo list`).")] = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    score_thr: Annotated[float, typer.Option("--score-thr", min=0.0, max=1.0,
                                             help="Keep instances scoring at least this.")] = 0.3,
    device: DeviceOpt = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("predictions"),
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="files: NAME.json per image; jsonl: predictions.jsonl; coco: results.json + "
                         "images.json.")] = OutputFormat.files,
    render: Annotated[bool, typer.Option("--render/--no-render", help="Write NAME.png with the masks drawn.")] = True,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Read folders' subfolders too.")] = False,
    every: Annotated[int, typer.Option("--every", min=1, help="Videos: every N-th frame.")] = 1,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, max=64, show_default=False,
        help="Processes decoding images (0: in this one; default: 2, at most this process's share "
             "of the CPUs).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    precision: PrecisionOpt = "fp32",
    fp16: Fp16Opt = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256, help="Images per forward pass.")] = 1,
    scale: TestScaleOpt = TEST_SCALE,
    max_pixels: Annotated[int, typer.Option(
        "--max-pixels", min=1, help="Largest image, in pixels (checked from its header, before decoding).")
    ] = DEFAULT_MAX_PIXELS,
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Run an exported --weights FILE.onnx on onnxruntime (what the suffix picks) "
                          "or openvino.", show_default=False)] = None,
    demo: Annotated[Optional[str], typer.Option(
        "--demo", help="Also segment a public-domain demo photo shipped with scikit-image "
                       "(astronaut, coffee, chelsea, rocket, camera).", show_default=False)] = None,
) -> None:
    """Instance segmentation of images and videos: COCO-style records (RLE masks) and pictures with
    the masks drawn. Under `torchrun --nproc-per-node N -m anzoo predict ...` the processes share the images."""
    from ..bulk import predict_bulk
    from ..bulk.outputs import write_failed
    from ..distributed import init_distributed, process_rank
    from ..inference import Predictor
    from ..runtime import resolve_device

    precision = precision_flag(precision, fp16, device)
    if process_rank() > 0:  # one process speaks for all
        logging.getLogger("anzoo").setLevel(logging.WARNING)
    ctx = init_distributed(resolve_device(device))
    try:
        sources, failures = ctx.run_on_main(lambda: _sources(images or [], recursive, every, demo, out))
        if ctx.is_main:
            for _, message in failures:
                print_error(message)
        if not sources:
            if ctx.is_main:
                write_failed(out, failures)
            raise typer.Exit(1)
        loaded = (base.load_model(model, weights, str(ctx.device) if ctx.distributed else device)
                  if backend is None else base.load_exported(model, weights or Path(""), backend))
        predictor = Predictor(loaded, device=ctx.device if ctx.distributed else None, precision=precision,
                              batch_size=batch_size,
                              scale=long_short(scale))
        per_image = output_format == OutputFormat.files and not ctx.distributed
        if ctx.is_main:
            log.info("%s on %s: %d image(s) -> %s", model, predictor.device, len(sources), out)
        result = predict_bulk(
            predictor, sources, out, fmt=output_format.value, render=render, score_thr=score_thr,
            workers=base.default_workers(2) if workers is None else workers, resume=resume, ctx=ctx,
            input_failures=failures, progress=not per_image,
            fingerprint={"model_id": model, "weights": str(weights.resolve()) if weights else "release"},
            on_image=_print_image if per_image else None, max_pixels=max_pixels)
    finally:
        ctx.close()
    if ctx.is_main:
        for path, message in result.failed[len(failures):]:
            print_error(message)
        _print_summary(result, out, output_format)
    if result.failed:
        raise typer.Exit(1)

"""``anzoo predict``: instance segmentation of image files."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..data.defaults import TEST_SCALE
from ..errors import AnzooError
from ..zoo import DEFAULT_MODEL
from . import base
from .base import (
    DeviceOpt,
    Fp16Opt,
    TestScaleOpt,
    WeightsOpt,
    long_short,
    command,
    console,
    log,
    print_error,
)


def _image_paths(images: list[Path], demo: str | None, out: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files to predict (folders expanded, the demo photo saved under ``out``) and
    the arguments that are not images, with why."""
    from ..data.images import iter_image_files
    from ..errors import ImageError

    paths: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for arg in images:
        try:
            paths.extend(iter_image_files([arg]))
        except ImageError as exc:
            failures.append((arg, str(exc)))
    if demo is not None:
        from ..data.demo import save_demo_image

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
    backend: Annotated[Optional[str], typer.Option(
        "--backend", help="Run an exported --weights FILE.onnx on onnxruntime (what the suffix picks) "
                          "or openvino.", show_default=False)] = None,
    demo: Annotated[Optional[str], typer.Option(
        "--demo", help="Also segment a public-domain demo photo shipped with scikit-image "
                       "(astronaut, coffee, chelsea, rocket, camera).", show_default=False)] = None,
) -> None:
    """Instance segmentation of images: COCO-style JSON (RLE masks) and a picture with the masks drawn."""
    paths, failures = _image_paths(images or [], demo, out)
    for path, message in failures:
        print_error(message)
    if paths:
        from ..inference import Predictor

        loaded = (base.load_model(model, weights, device) if backend is None
                  else base.load_exported(model, weights or Path(""), backend))
        predictor = Predictor(loaded, fp16=fp16, batch_size=batch_size,
                              scale=long_short(scale))
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


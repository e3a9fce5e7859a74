"""``anzoo synth-coco``: a small COCO-format dataset to try ``eval`` and ``train`` without COCO."""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, NamedTuple

import typer

from ..errors import AnzooError
from .base import command, console

#: images per split: enough for a first try, bounded so that a typo cannot fill a disk
MAX_IMAGES = 10_000
SIZE_MIN, SIZE_MAX = 16, 4096


class ImageSize(NamedTuple):
    width: int
    height: int


def parse_size(value: str | tuple[int, int]) -> ImageSize:
    if isinstance(value, tuple):  # the default
        return ImageSize(*value)
    match = re.fullmatch(r"(\d+)[x,](\d+)", value.strip().lower())
    if match is None:
        raise ValueError(f"{value!r} is not a size: give WIDTHxHEIGHT, e.g. 320x240")
    size = ImageSize(int(match.group(1)), int(match.group(2)))
    if not all(SIZE_MIN <= side <= SIZE_MAX for side in size):
        raise ValueError(f"{value!r}: each side must be between {SIZE_MIN} and {SIZE_MAX}")
    return size


@command("synth-coco")
def synth_coco(
    out: Annotated[Path, typer.Argument(help="New folder for the dataset (must not exist, or be empty).",
                                        show_default=False)],
    images: Annotated[int, typer.Option("--num-images", "-n", min=1, max=MAX_IMAGES,
                                        help="Images in each split (train2017, val2017).")] = 8,
    size: Annotated[ImageSize, typer.Option(
        "--size", parser=parse_size, metavar="WIDTHxHEIGHT", show_default=False,
        help=f"Image size, each side {SIZE_MIN} to {SIZE_MAX}. [default: 320x240]")] = ImageSize(320, 240),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the drawing: the same seed, the same files.")] = 0,
) -> None:
    """Write a small synthetic dataset in COCO's layout (shapes with exact masks, COCO category
    ids) to try `anzoo eval` and `anzoo train` without COCO."""
    from ..data.synthetic import make_synthetic_coco

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AnzooError(f"{out} already exists and is not an empty folder: give a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    # built beside OUT and renamed when complete: an interrupted run leaves no half dataset
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for split, split_seed in (("train2017", seed), ("val2017", seed + 1)):
            make_synthetic_coco(staging, num_images=images, image_size=(size.height, size.width), seed=split_seed,
                                split=split)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.print(f"{out}: {images} + {images} images ({size.width}x{size.height}) in train2017/ and val2017/, "
                  "annotations/instances_{train,val}2017.json", highlight=False)
    scale = f"{max(size)}x{min(size)}"
    console.print(f"  next: anzoo train r50-bn --coco {out} --work-dir work/synth --no-pretrained-backbone "
                  f"--max-iters 20 --img-scale {scale}", highlight=False)
    console.print(f"  then: anzoo eval r50-bn --coco {out} --weights work/synth/model_final.pth --scale {scale}",
                  highlight=False)

"""Images/s of bulk prediction (`anzoo predict`'s pipeline, :func:`anzoo.bulk.predict_bulk`) in
1 and N processes under torchrun, with and without rendering the overlays.

Generated images (random pixels, a nested folder) and a random-weights zoo model biased to
detect (:func:`anzoo.testing.confident_model`); every run goes through torchrun, one process
included, so all pay the same start-up; images/s is measured by the pipeline itself (the
slowest process's time from its first window to its last write; model loading excluded).
On a CPU each process gets ``cores / processes`` threads.

    python benchmarks/predict_bulk.py                                  # 1 vs 2 processes, render on/off
    python benchmarks/predict_bulk.py --images 64 --size 480 640 --scale 1333 800 --proposals 1000
    python benchmarks/predict_bulk.py --device cuda --processes 1 --batch-size 1 4 --workers 4 --no-render-only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_images(root: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` random images in ``root/<i % 4>/<i>.jpg`` (nested, with the same names in two folders)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / str(i % 4) / f"{i // 4}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def run_one(args: argparse.Namespace) -> None:
    """One process of a run (under torchrun): predict the folder, rank 0 prints a JSON line."""
    import torch

    from anzoo.bulk import predict_bulk
    from anzoo.data.sources import expand_inputs
    from anzoo.distributed import init_distributed
    from anzoo.inference import Predictor
    from anzoo.runtime import resolve_device
    from anzoo.testing import confident_model

    ctx = init_distributed(resolve_device(args.device))
    try:
        model = confident_model(args.models[0], proposals=args.proposals)
        predictor = Predictor(model, device=ctx.device, batch_size=args.batch_size[0], precision=args.precision,
                              scale=tuple(args.scale))
        sources, _ = expand_inputs([args.input], recursive=True)
        result = predict_bulk(predictor, sources, args.out, fmt="jsonl", render=args.render, workers=args.workers,
                              ctx=ctx, progress=False)
        if ctx.is_main:
            print(json.dumps({"images": result.images_this_run, "seconds": result.seconds,
                              "images_per_s": result.images_per_s, "threads": torch.get_num_threads(),
                              "device": str(ctx.device)}), flush=True)
    finally:
        ctx.close()


def launch(args: argparse.Namespace, input_dir: Path, out: Path, processes: int, batch_size: int,
           render: bool) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes) if args.device == "cpu" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           __file__, "--as-worker", "--input", str(input_dir), "--out", str(out), "--device", args.device,
           "--models", args.models[0], "--proposals", str(args.proposals), "--batch-size", str(batch_size),
           "--workers", str(args.workers), "--scale", *map(str, args.scale), "--render" if render else "--no-render"]
    cmd += ["--precision", args.precision]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1]), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--scale", type=int, nargs=2, default=(320, 224), metavar=("LONG", "SHORT"))
    parser.add_argument("--models", nargs=1, default=["r50-bn"])
    parser.add_argument("--proposals", type=int, default=50, help="RPN proposals kept (released configs: 1000)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--no-render-only", action="store_true", help="skip the runs that render")
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--render", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_worker:
        run_one(args)
        return
    with tempfile.TemporaryDirectory(prefix="anzoo-bench-") as tmp:
        root = Path(tmp)
        make_images(root / "in", args.images, tuple(args.size))
        print(f"{args.models[0]}, {args.images} images {args.size[0]}x{args.size[1]} at scale {args.scale}, "
              f"{args.proposals} proposals, {args.workers} DataLoader worker(s) per process, device {args.device}")
        print(f"{'processes':>9s} {'threads':>7s} {'batch':>5s} {'render':>6s} {'images/s':>9s} {'s':>7s}")
        for processes in args.processes:
            for batch_size in args.batch_size:
                for render in ((False,) if args.no_render_only else (True, False)):
                    out = root / f"out-{processes}-{batch_size}-{render}"
                    r = launch(args, root / "in", out, processes, batch_size, render)
                    print(f"{processes:9d} {r['threads']:7d} {batch_size:5d} {'yes' if render else 'no':>6s} "
                          f"{r['images_per_s']:9.2f} {r['seconds']:7.1f}", flush=True)


if __name__ == "__main__":
    main()

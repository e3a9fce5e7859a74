"""Throughput of the whole ``anzoo eval`` pipeline on a generated COCO-format set, per model.

Everything a COCO evaluation does is timed: DataLoader workers decode and resize the images,
the model detects (batched, fp32/bf16/fp16), masks are pasted and RLE-encoded in worker threads
and the results appended to the partial files; images/s counts that loop (``EvalResult.
images_per_s``), "wall" adds writing the results files and COCOeval. The models have random
weights biased to detect (``anzoo.testing.confident_model``) with the release's 1000 RPN
proposals, so each image yields the at most 100 detections, with masks, that a trained model
gives on a busy COCO image: a worst case for the pasting and encoding. With ``--pretrained``
the cached released weights are used instead (they detect less on synthetic shapes).

    python benchmarks/eval_speed.py                                  # CPU, r50-bn, 8 images
    python benchmarks/eval_speed.py --device cuda --precision fp16 --batch-size 4 --images 300 \\
        --models r50-bn aognet40m-an-gn cascade-aognet40m-an
    python benchmarks/eval_speed.py --proposals 50 --size 160 224 --scale 320 224   # a quick look
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from anzoo.data.synthetic import make_synthetic_coco
from anzoo.evaluation import evaluate
from anzoo.factory import create_model, resolve_device
from anzoo.testing import confident_model

GPU_MODELS = ["r50-bn", "aognet40m-an-gn", "cascade-aognet40m-an"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None,
                   help=f"zoo ids (default: r50-bn on CPU, {' '.join(GPU_MODELS)} on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="fp32, bf16 (CPU or GPU) or fp16 (CUDA) autocast")
    p.add_argument("--batch-size", type=int, default=None, help="default: 1 on CPU, 4 on CUDA")
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes")
    p.add_argument("--post-threads", type=int, default=None, help="mask paste / RLE threads")
    p.add_argument("--images", type=int, default=None, help="timed images (default: 8 on CPU, 300 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed images first (default: 2 CPU, 20 CUDA)")
    p.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                   help="generated image size (COCO's typical 480x640)")
    p.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"))
    p.add_argument("--proposals", type=int, default=1000, help="RPN proposals per image (release: 1000)")
    p.add_argument("--pretrained", action="store_true", help="the cached released weights, not random ones")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--verbose", action="store_true", help="show anzoo's log")
    return p.parse_args()


def build_model(model_id: str, args: argparse.Namespace) -> torch.nn.Module:
    if args.pretrained:
        return create_model(model_id, pretrained=True)
    return confident_model(model_id, proposals=args.proposals)


def run_model(model_id: str, args: argparse.Namespace, root: Path, ann: Path, device: torch.device) -> dict:
    model = build_model(model_id, args)
    options = {"batch_size": args.batch_size, "workers": args.workers, "device": device, "precision": args.precision,
               "scale": tuple(args.scale), "post_threads": args.post_threads,
               "channels_last": args.channels_last, "progress": False}
    if args.warmup:
        evaluate(model, ann, root / "val2017", root / "out-warmup", limit=args.warmup, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = evaluate(model, ann, root / "val2017", root / f"out-{model_id}", **options)
    wall = time.perf_counter() - start
    row = {"model": model_id, "device": result.device, "precision": args.precision, "batch_size": args.batch_size,
           "images": result.num_images, "detections_per_image": result.num_detections / result.num_images,
           "seconds": result.inference_time_s, "images_per_s": result.images_per_s,
           "wall_images_per_s": result.num_images / wall, "peak_gpu_mib_per_image": None}
    if device.type == "cuda":
        row["peak_gpu_mib_per_image"] = torch.cuda.max_memory_allocated(device) / 2**20 / args.batch_size
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.models = args.models or (GPU_MODELS if cuda else ["r50-bn"])
    args.batch_size = args.batch_size or (4 if cuda else 1)
    args.images = args.images or (300 if cuda else 8)
    args.warmup = (20 if cuda else 2) if args.warmup is None else args.warmup
    rows = []
    with tempfile.TemporaryDirectory(prefix="anzoo-eval-speed-") as tmp:
        root = Path(tmp)
        ann = make_synthetic_coco(root, num_images=args.images, image_size=tuple(args.size), max_objects=6)
        for model_id in args.models:
            rows.append(run_model(model_id, args, root, ann, device))
            r = rows[-1]
            print(f"{model_id}: {r['images_per_s']:.2f} images/s", flush=True)
    header = (f"{'model':<24} {'device':<34} {'prec':>5} {'batch':>5} {'images':>6} {'dets/img':>8} "
              f"{'images/s':>9} {'with COCOeval':>13} {'GPU MiB/img':>11}")
    print()
    print(f"full eval pipeline, {args.size[0]}x{args.size[1]} images at scale {args.scale[0]}x{args.scale[1]}, "
          f"{args.workers} loader workers, {'released' if args.pretrained else 'random'} weights, "
          f"{args.proposals} proposals")
    print(header)
    print("-" * len(header))
    for r in rows:
        mem = "-" if r["peak_gpu_mib_per_image"] is None else f"{r['peak_gpu_mib_per_image']:.0f}"
        print(f"{r['model']:<24} {r['device']:<34} {r['precision']:>5} {r['batch_size']:>5} {r['images']:>6} "
              f"{r['detections_per_image']:>8.1f} {r['images_per_s']:>9.2f} {r['wall_images_per_s']:>13.2f} "
              f"{mem:>11}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

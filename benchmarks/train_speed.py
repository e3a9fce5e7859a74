"""Training seconds per iteration of a zoo architecture, through the real training loop.

Generated COCO-format images (default 480x640, resized by the recipe's 1333x800 rule to
800x1067), the recipe's proposal and RoI counts (2000 proposals, 512 RoIs per image), 2
images per iteration, random weights with the recipe's frozen stem and first stage and fixed
backbone norms (nothing is downloaded; speed does not depend on the values); a few untimed
warm-up iterations, then the median of the logged seconds per iteration (data loading
included; the data-loading share is printed too).

    python benchmarks/train_speed.py                                  # CPU, r50-bn
    python benchmarks/train_speed.py --device cuda --amp --iters 50 --model aognet40m-an
    python benchmarks/train_speed.py --image-size 96 128 --img-scale 128 96 --rcnn-samples 16
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from anzoo.data.synthetic import make_synthetic_coco
from anzoo.training import TrainConfig, train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="r50-bn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="float16 autocast + loss scaling (CUDA)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    p.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--img-scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"))
    p.add_argument("--rpn-proposals", type=int, default=None, help="default: the recipe's 2000")
    p.add_argument("--rcnn-samples", type=int, default=None, help="default: the recipe's 512")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # the weights are random (no download): the "from scratch, expect low accuracy" warning of
    # anzoo.training.model says nothing about speed
    logging.getLogger("anzoo.training.model").setLevel(logging.ERROR)
    total = args.warmup + args.iters
    with tempfile.TemporaryDirectory(prefix="anzoo-train-speed-") as tmp:
        coco = Path(tmp) / "coco"
        images = max(args.batch_size * total, 2)
        make_synthetic_coco(coco, num_images=images, image_size=tuple(args.image_size), split="train2017",
                            max_objects=6)
        config = TrainConfig(
            args.model, work_dir=Path(tmp) / "run", coco_dir=coco, epochs=1, max_iters=total,
            batch_size=args.batch_size, amp=args.amp, img_scale=tuple(args.img_scale), eval_every=0,
            device=args.device, num_workers=args.workers, pretrained_backbone=False, frozen_stages=1,
            norm_eval=True, rpn_proposals=args.rpn_proposals, rcnn_samples=args.rcnn_samples, log_every=1,
            progress=False, tensorboard=False)
        result = train(config)
    timed = result.history[args.warmup:]
    per_iter = statistics.median(r["time_per_iter"] for r in timed)
    data = statistics.median(r["data_time"] for r in timed)
    out = {"model": args.model, "device": str(args.device), "amp": args.amp, "batch_size": args.batch_size,
           "image_size": list(args.image_size), "img_scale": list(args.img_scale),
           "rpn_proposals": args.rpn_proposals or 2000, "rcnn_samples": args.rcnn_samples or 512,
           "threads": torch.get_num_threads(), "seconds_per_iter": round(per_iter, 4),
           "data_seconds_per_iter": round(data, 4), "images_per_second": round(args.batch_size / per_iter, 3),
           "peak_memory_mib": round(max(r["memory_mib"] for r in timed), 1), "iterations_timed": len(timed)}
    h, w = args.image_size  # the recipe's resize: as large as fits both limits, aspect kept
    factor = min(max(args.img_scale) / max(h, w), min(args.img_scale) / min(h, w))
    device = f"{args.device} ({torch.get_num_threads()} threads)" if str(args.device) == "cpu" else str(args.device)
    memory = "peak GPU memory" if str(args.device).startswith("cuda") else "peak RSS"
    print(f"{args.model} on {device}{' with amp' if args.amp else ''}: {per_iter:.3f} s/iteration "
          f"({out['images_per_second']} images/s; data loading {data:.3f} s of it), median of {len(timed)} "
          f"iterations; batch {args.batch_size} of {h}x{w} images trained at {round(h * factor)}x{round(w * factor)}, "
          f"{out['rpn_proposals']} proposals and "
          f"{out['rcnn_samples']} RoIs per image; {memory} {out['peak_memory_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

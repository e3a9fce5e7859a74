"""Does training learn? A small detector learns the generated shapes; prints mask AP after N iterations.

Generates a synthetic COCO-format dataset (``anzoo.data.synthetic``: coloured rectangles,
ellipses, triangles, pentagons with exact masks), trains a zoo architecture on it with
``anzoo.training.train`` (the full loop: data pipeline, RPN and R-CNN targets, SGD schedule,
checkpoints), then evaluates box and mask AP on held-out generated images (``anzoo.evaluation``).
By default the backbone starts from scratch (no ImageNet weights are needed), so nothing is
frozen and its BatchNorm layers use batch statistics. The default learning rate is 0.005: twice
the recipe's linear scaling for 2 images (0.02 x 2 / 16); the recipe's 0.02 of 16 images
makes this from-scratch run diverge (the mask loss blows up during warm-up and the network
never recovers).

    python benchmarks/train_learns.py                 # CPU, r50-bn, 300 iterations (~13 min on 2 cores)
    python benchmarks/train_learns.py --iters 1000 --device cuda --amp
    python benchmarks/train_learns.py --backbone-weights resnet50_imagenet.pth.tar
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from anzoo.data.synthetic import make_synthetic_coco
from anzoo.evaluation import evaluate_model
from anzoo.log import setup_logging
from anzoo.training import TrainConfig, train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="r50-bn", help="zoo id whose architecture is trained")
    p.add_argument("--iters", type=int, default=300, help="training iterations")
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--val-images", type=int, default=16)
    p.add_argument("--image-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.005, help="base learning rate (0.02 diverges here)")
    p.add_argument("--warmup-iters", type=int, default=50)
    p.add_argument("--rpn-proposals", type=int, default=100, help="training proposals per image (recipe 2000)")
    p.add_argument("--rcnn-samples", type=int, default=32, help="RoIs per image (recipe 512)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--backbone-weights", default=None, help="ImageNet checkpoint (default: from scratch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="keep the dataset and checkpoints here (default: a temporary folder, removed at the end)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.work_dir:
        run(args, Path(args.work_dir))
    else:  # the run writes a checkpoint per epoch (360 MB each for R-50): remove them afterwards
        with tempfile.TemporaryDirectory(prefix="anzoo-learns-") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    coco = work / "coco"
    size = tuple(args.image_size)
    make_synthetic_coco(coco, num_images=args.train_images, image_size=size, split="train2017", seed=args.seed,
                        max_objects=4)
    make_synthetic_coco(coco, num_images=args.val_images, image_size=size, split="val2017",
                        seed=args.seed + 10_000, max_objects=4)
    scale = (max(size), min(size))
    iters_per_epoch = math.ceil(args.train_images / args.batch_size)
    config = TrainConfig(
        args.model, work_dir=work / "run", coco_dir=coco, epochs=math.ceil(args.iters / iters_per_epoch),
        max_iters=args.iters, batch_size=args.batch_size, lr=args.lr, amp=args.amp, img_scale=scale,
        eval_every=0, seed=args.seed, device=args.device, num_workers=args.workers,
        warmup_iters=args.warmup_iters, rpn_proposals=args.rpn_proposals, rcnn_samples=args.rcnn_samples,
        backbone_weights=Path(args.backbone_weights) if args.backbone_weights else None,
        pretrained_backbone=bool(args.backbone_weights), log_every=10, progress=True)
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    def term(rec: dict, name: str) -> float:  # Cascade logs s0.loss_cls, s1.loss_cls, ... (weighted)
        return sum(v for k, v in rec.items() if k == name or k.endswith("." + name))

    shown = result.history[:: max(1, len(result.history) // 10)]
    for rec in shown + [r for r in result.history[-1:] if r is not shown[-1]]:
        print(f"iter {rec['iter']:5d}  loss {rec['loss']:.3f}  (rpn {term(rec, 'loss_rpn_cls'):.3f}, "
              f"cls {term(rec, 'loss_cls'):.3f}, mask {term(rec, 'loss_mask'):.3f})  lr {rec['lr']:.4f}")
    peak = max(result.history, key=lambda r: r["loss"])
    if peak["loss"] > 3 * result.history[0]["loss"]:
        print(f"warning: the loss blew up to {peak['loss']:.1f} at iteration {peak['iter']} (it started at "
              f"{result.history[0]['loss']:.2f}): the learning rate is too high for this setting")
    assert result.model is not None
    scores = evaluate_model(result.model, coco / "annotations" / "instances_val2017.json", coco / "val2017",
                            scale=scale, device=args.device, workers=args.workers)
    out = {"model": args.model, "iterations": result.iterations, "train_seconds": round(seconds, 1),
           "seconds_per_iter": round(seconds / max(result.iterations, 1), 3), "device": args.device,
           "image_size": list(size), "batch_size": args.batch_size, "lr": args.lr,
           **{k: round(v, 4) for k, v in scores.items()}}
    print(f"{args.model}: {result.iterations} iterations in {seconds:.0f} s ({out['seconds_per_iter']} s each, "
          f"batch {args.batch_size}, lr {args.lr}) -> box AP {scores['bbox_ap']:.3f} "
          f"(AP50 {scores['bbox_ap50']:.3f}), mask AP {scores['segm_ap']:.3f} (AP50 {scores['segm_ap50']:.3f}) "
          f"on {args.val_images} held-out generated images (COCO AP, 0..1)")
    if scores["segm_ap"] < 0.05:
        print("warning: mask AP is near 0: the model did not learn (see the losses above)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

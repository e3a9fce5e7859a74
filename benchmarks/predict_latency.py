"""Per-image latency of anzoo's detectors beside torchvision's Mask R-CNN, stage by stage, in
every precision.

The reference is torchvision's ``maskrcnn_resnet50_fpn`` (v1: 1-conv RPN head, 2-fc box head,
4-conv mask head: mmdetection v1's R-50 Mask R-CNN); ``maskrcnn_resnet50_fpn_v2`` (4-conv box
head, 2-conv RPN head: heavier) is printed beside it. Every model gets random weights biased so
that each image yields 100 detections (a random classifier detects nothing above 0.05, which
would skip the mask branch and flatter everyone), 1000 RPN proposals, the same image, the same
test scale and thread count, and is timed end to end: uint8 image in, full-image masks out.

Stages: preprocess (resize, normalise, pad), backbone+FPN, RPN, box head (RoIAlign, head,
decoding, NMS), mask head (RoIAlign, FCN), paste (full-image masks). The stage times are the
medians over the repeats; ``total`` is the median of the end-to-end times (not their sum).

    python benchmarks/predict_latency.py                          # r50-bn vs torchvision, fp32 and bf16
    python benchmarks/predict_latency.py --models r50-bn r50-an --scale 1000 600 --precisions fp32
    python benchmarks/predict_latency.py --fold both              # the gain of folding BatchNorms
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

STAGES = ("preprocess", "backbone+FPN", "RPN", "box head", "mask head", "paste")
TORCHVISION = {"tv-v1": "maskrcnn_resnet50_fpn", "tv-v2": "maskrcnn_resnet50_fpn_v2"}


class Stopwatch:
    """Seconds spent in named stages, per run; callables are wrapped on their instance."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: dict[str, float] = defaultdict(float)
        self.runs: list[dict[str, float]] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, obj: Any, attr: str, stage: str, sign: float = 1.0) -> None:
        """Time ``obj.attr`` into ``stage`` (``sign=-1``: subtract it, for a stage nested in another)."""
        real = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            t0 = time.perf_counter()
            out = real(*args, **kwargs)
            self.sync()
            self.current[stage] += sign * (time.perf_counter() - t0)
            return out

        setattr(obj, attr, timed)

    def run(self, fn: Callable[[], int]) -> tuple[float, int]:
        self.current = defaultdict(float)
        self.sync()
        t0 = time.perf_counter()
        n = fn()
        self.sync()
        total = time.perf_counter() - t0
        self.runs.append({**self.current, "total": total})
        return total, n

    def medians(self, skip: int) -> dict[str, float]:
        runs = self.runs[skip:]
        return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in (*STAGES, "total")}


def torchvision_model(name: str, device: torch.device, scale: tuple[int, int]) -> torch.nn.Module:
    from torchvision.models import detection

    torch.manual_seed(0)
    # mmdetection v1's test settings: 1000 proposals (after NMS), 100 detections, score >= 0.05
    model = getattr(detection, TORCHVISION[name])(weights=None, weights_backbone=None, num_classes=91,
                                                  rpn_post_nms_top_n_test=1000, box_detections_per_img=100,
                                                  min_size=min(scale), max_size=max(scale))
    with torch.no_grad():  # as anzoo.testing.confident_model: ~100 detections
        bias = model.roi_heads.box_predictor.cls_score.bias
        bias.zero_()
        bias[0] = 3.0
        bias[[1, 3, 18]] = 6.0
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.1)
    return model.to(device).eval()


def time_torchvision(name: str, image: np.ndarray, args: argparse.Namespace, precision: str) -> tuple[dict, int]:
    from anzoo.runtime import autocast

    device = torch.device(args.device)
    model = torchvision_model(name, device, tuple(args.scale))
    watch = Stopwatch(device)
    watch.wrap(model.transform, "forward", "preprocess")
    watch.wrap(model.backbone, "forward", "backbone+FPN")
    watch.wrap(model.rpn, "forward", "RPN")
    watch.wrap(model.roi_heads, "forward", "box head")
    for part in ("mask_roi_pool", "mask_head", "mask_predictor"):  # inside roi_heads.forward
        watch.wrap(getattr(model.roi_heads, part), "forward", "mask head")
        watch.wrap(getattr(model.roi_heads, part), "forward", "box head", sign=-1.0)
    watch.wrap(model.transform, "postprocess", "paste")

    @torch.inference_mode()
    def run() -> int:
        tensor = torch.from_numpy(image).to(device).permute(2, 0, 1).float().div(255)
        with autocast(precision, device):
            out = model([tensor])[0]
        return int(out["masks"].shape[0])

    return _repeat(watch, run, args)


def time_anzoo(model_id: str, image: np.ndarray, args: argparse.Namespace, precision: str,
               fold: bool) -> tuple[dict, int]:
    from anzoo.inference import Predictor
    from anzoo.testing import confident_model

    device = torch.device(args.device)
    model = confident_model(model_id, proposals=1000, device=str(device))
    pred = Predictor(model, precision=precision, mask_paste=args.mask_paste, scale=tuple(args.scale),
                     fold_norms=fold)
    watch = Stopwatch(device)
    watch.wrap(pred, "preprocess", "preprocess")
    watch.wrap(pred.model, "extract_features", "backbone+FPN")
    watch.wrap(pred.model.rpn, "forward", "RPN")
    watch.wrap(pred.model.roi_heads, "predict", "box head")
    watch.wrap(pred.model.roi_heads, "_predict_masks", "mask head")
    watch.wrap(pred.model.roi_heads, "_predict_masks", "box head", sign=-1.0)
    watch.wrap(pred, "paste", "paste")

    def run() -> int:
        return len(pred.predict_instances([image])[0])

    return _repeat(watch, run, args)


def _repeat(watch: Stopwatch, run: Callable[[], int], args: argparse.Namespace) -> tuple[dict, int]:
    n = 0
    for _ in range(args.warmup + args.repeat):
        _, n = watch.run(run)
    return watch.medians(skip=args.warmup), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["r50-bn"], help="anzoo model ids")
    parser.add_argument("--torchvision", nargs="*", default=list(TORCHVISION), choices=list(TORCHVISION))
    parser.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default: fp32 and bf16 (and fp16 on CUDA)")
    parser.add_argument("--fold", default="on", choices=("on", "off", "both"),
                        help="fold BatchNorms into convolutions (anzoo's default), not, or both")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"),
                        help="the input image (random pixels)")
    parser.add_argument("--scale", type=int, nargs=2, default=(1333, 800), metavar=("LONG", "SHORT"))
    parser.add_argument("--mask-paste", default="auto", choices=("auto", "legacy", "fast"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = args.precisions or (["fp32", "bf16"] + (["fp16"] if args.device.startswith("cuda") else []))
    folds = {"on": [True], "off": [False], "both": [False, True]}[args.fold]

    h, w = args.size
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    print(f"device {args.device}, threads {args.threads}, image {h}x{w} at scale {args.scale[0]}x{args.scale[1]}, "
          f"median of {args.repeat} after {args.warmup} warm-up; seconds per image")
    header = f"{'model':24s} {'prec':>4s} " + " ".join(f"{s:>12s}" for s in STAGES) + f" {'total':>7s} {'dets':>4s} {'vs tv-v1 fp32':>13s}"
    print(header)
    reference = None
    rows: list[tuple[str, str, dict, int]] = []
    for precision in precisions:
        for name in args.torchvision:
            stages, n = time_torchvision(name, image, args, precision)
            rows.append((name, precision, stages, n))
            if name == "tv-v1" and precision == "fp32":
                reference = stages["total"]
            _print(rows[-1], reference)
        for model_id in args.models:
            for fold in folds:
                label = model_id + ("" if args.fold == "on" else (" folded" if fold else " unfolded"))
                stages, n = time_anzoo(model_id, image, args, precision, fold)
                rows.append((label, precision, stages, n))
                _print(rows[-1], reference)


def _print(row: tuple[str, str, dict, int], reference: float | None) -> None:
    label, precision, stages, n = row
    ratio = f"{stages['total'] / reference:12.2f}x" if reference else f"{'-':>13s}"
    print(f"{label:24s} {precision:>4s} " + " ".join(f"{stages[s]:12.3f}" for s in STAGES)
          + f" {stages['total']:7.3f} {n:4d} {ratio}", flush=True)


if __name__ == "__main__":
    main()

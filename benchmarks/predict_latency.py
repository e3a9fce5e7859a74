"""Per-image CPU (or GPU) latency of anzoo's detectors beside torchvision's Mask R-CNN v2.

Both sides get random weights biased so that each image yields ~100 detections (a random
classifier detects nothing above 0.05, which would skip the mask branch and flatter both),
the same 800x1216 image, the same thread count, and are timed end to end: uint8 image in,
full-image masks out (preprocessing, model, mask pasting).

    python benchmarks/predict_latency.py                 # r50-bn vs torchvision, 1 thread... all threads
    python benchmarks/predict_latency.py --models r50-bn r50-an aognet12m-bn --threads 2 --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def torchvision_model(device: torch.device) -> torch.nn.Module:
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():  # same trick as anzoo.testing.confident_model: ~100 detections
        bias = model.roi_heads.box_predictor.cls_score.bias
        bias.zero_()
        bias[0] = 3.0
        bias[[1, 3, 18]] = 6.0
        model.roi_heads.box_predictor.cls_score.weight.mul_(0.1)
    return model.to(device).eval()


def time_it(fn, repeat: int, warmup: int = 1) -> tuple[float, int]:
    n = 0
    for _ in range(warmup):
        n = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50-bn"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--mask-paste", default="auto", choices=("auto", "legacy", "fast"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from anzoo.inference import Predictor
    from anzoo.testing import confident_model

    rng = np.random.default_rng(0)
    h, w = args.size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)

    tv = torchvision_model(device)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)

    @torch.inference_mode()
    def run_tv() -> int:
        out = tv([tensor.to(device)])[0]
        return int(out["boxes"].shape[0])

    tv_s, tv_n = time_it(run_tv, args.repeat)
    print(f"device {device}, threads {args.threads}, image {h}x{w}, median of {args.repeat}")
    print(f"{'model':28s} {'s/image':>9s} {'dets':>5s} {'vs torchvision':>15s}")
    print(f"{'torchvision maskrcnn_r50_v2':28s} {tv_s:9.3f} {tv_n:5d} {'1.00x':>15s}")
    tv = None  # free its memory before the zoo models run
    results = {}
    for model_id in args.models:
        model = confident_model(model_id, proposals=1000, device=str(device))
        pred = Predictor(model, mask_paste=args.mask_paste)

        def run_ours(pred: Predictor = pred) -> int:
            return len(pred.predict_instances([image])[0])

        s, n = time_it(run_ours, args.repeat)
        results[model_id] = s
        print(f"{model_id:28s} {s:9.3f} {n:5d} {s / tv_s:14.2f}x")
        model = pred = None
    for model_id, s in results.items():
        if "-an" in model_id:
            twin = model_id.replace("-an-gn", "-bn").replace("-an", "-bn")
            if twin in results:
                print(f"AN overhead {model_id} over {twin}: {100 * (s / results[twin] - 1):+.1f}%")


if __name__ == "__main__":
    main()

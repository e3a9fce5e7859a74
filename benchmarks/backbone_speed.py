"""Forward time per image of every registered backbone, as the detectors use them.

Detection mode (``num_classes=None``), batch 1, an 800x1216 input (a COCO image after the
1333x800 resize and padding to 32), eval mode under ``torch.inference_mode``; a few warm-up
passes, then the median of N timed passes. Backbones that fail to build (e.g. a family still
under construction) are reported as skipped.

    python benchmarks/backbone_speed.py                      # CPU, all backbones
    python benchmarks/backbone_speed.py --device cuda --amp fp16 --iters 50
    python benchmarks/backbone_speed.py --only r50-an r101-an --json times.json
    python benchmarks/backbone_speed.py --only r50-bn r50-an --fold   # BatchNorms folded or not, interleaved
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator

import copy

import torch

from anzoo.models.backbones import create_backbone, list_backbones
from anzoo.models.layers import fold_batch_norms

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1216)
    p.add_argument("--warmup", type=int, default=3, help="untimed passes first")
    p.add_argument("--iters", type=int, default=10, help="timed passes (median reported)")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none", help="autocast dtype")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--only", nargs="*", default=None, help="backbone names (default: all)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--fold", action="store_true",
                   help="also time a copy with the BatchNorms folded into the convolutions, the two "
                        "passes interleaved (a shared machine's load then weighs on both alike)")
    return p.parse_args()


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def time_backbone(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    try:
        model = create_backbone(name)
    except Exception as exc:  # noqa: BLE001 - a backbone that does not build is skipped
        return {"name": name, "status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    params = sum(p.numel() for p in model.parameters())
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.eval().to(device, memory_format=memory_format)
    models = {"": model}
    if args.fold:
        models["folded_"] = copy.deepcopy(model)
        fold_batch_norms(models["folded_"])
    x = torch.randn(1, 3, args.height, args.width, device=device).contiguous(memory_format=memory_format)
    sync = synchronizer(device)
    times: dict[str, list[float]] = {key: [] for key in models}
    with torch.inference_mode(), autocast(device, args.amp):
        for i in range(args.warmup + args.iters):
            for key, m in models.items():
                sync()
                start = time.perf_counter()
                m(x)
                sync()
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - start)
    del model, models, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out = {"name": name, "status": "ok", "params_m": params / 1e6}
    for key, t in times.items():
        out.update({f"{key}median_ms": 1e3 * statistics.median(t), f"{key}min_ms": 1e3 * min(t)})
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list_backbones()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown backbones: {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]

    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"device {device}{gpu}, input 1x3x{args.height}x{args.width}, amp {args.amp}, "
          f"channels_last {args.channels_last}, warm-up {args.warmup}, median of {args.iters}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'backbone':<18} {'params (M)':>10} {'median ms':>10} {'min ms':>10}"
          + (f" {'folded median':>13} {'folded min':>10} {'gain (min)':>10}" if args.fold else ""))
    results = []
    for name in names:
        r = time_backbone(name, args, device)
        results.append(r)
        if r["status"] == "ok":
            folded = (f" {r['folded_median_ms']:>13.1f} {r['folded_min_ms']:>10.1f} "
                      f"{100 * (1 - r['folded_min_ms'] / r['min_ms']):>9.1f}%") if args.fold else ""
            print(f"{name:<18} {r['params_m']:>10.2f} {r['median_ms']:>10.1f} {r['min_ms']:>10.1f}{folded}", flush=True)
        else:
            print(f"{name:<18} skipped: {r['reason']}", flush=True)
    if args.json:
        meta = {"device": str(device) + gpu, "height": args.height, "width": args.width, "amp": args.amp,
                "channels_last": args.channels_last, "warmup": args.warmup, "iters": args.iters,
                "torch": torch.__version__}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

"""CPU latency of one detector in PyTorch, ONNX Runtime and OpenVINO (the file `anzoo export` writes).

Same image (a photo resized to 800x1216), same thread count, same work: random weights biased
to give ~100 detections (anzoo.testing.confident_model with the released configs' 1000
proposals), timed from the preprocessed image to the detections with 28x28 masks (the
pasting, the same code for all three, is left out). Prints one table, and how far each runtime's
detections are from PyTorch's.

    python benchmarks/export_latency.py --model r50-bn --threads 2 --repeat 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _time(fn, repeat: int) -> float:
    fn()  # warm-up (ONNX Runtime and OpenVINO plan their kernels on the first run)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="r50-bn")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from anzoo.data.transforms import pad_to_batch, preprocess_image
    from anzoo.export import OnnxDetector, compare_detections, export_onnx
    from anzoo.inference import Predictor
    from anzoo.testing import confident_model

    model = confident_model(args.model, proposals=1000)
    image = np.random.default_rng(0).integers(0, 256, tuple(args.size) + (3,), dtype=np.uint8)
    tensor, meta = preprocess_image(image)
    batch = pad_to_batch([tensor])
    reference = Predictor(model)
    rows = [("pytorch", _time(lambda: model.detect(batch, [meta]), args.repeat), None)]
    expected = model.detect(batch, [meta])[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.model}.onnx"
        export_onnx(model, path, verify=False)
        for backend in args.backends:
            runner = OnnxDetector(path, backend=backend, threads=args.threads)
            seconds = _time(lambda: runner.detect(batch, [meta]), args.repeat)
            check = compare_detections("bench", expected, runner.detect(batch, [meta])[0], reference)
            rows.append((backend, seconds, check))
    print(f"{args.model}, {args.size[0]}x{args.size[1]}, {args.threads} thread(s), median of {args.repeat}, "
          f"{len(expected)} detections")
    print(f"{'runtime':<12} {'s/image':>8} {'vs torch':>9}  agreement with PyTorch")
    for name, seconds, check in rows:
        agreement = "-" if check is None else (
            f"boxes {check.max_box_px:.2g} px, scores {check.max_score:.2g}, mask IoU >= {check.min_mask_iou:.4f}, "
            f"{check.ties} near-ties, {'ok' if check.ok else '; '.join(check.problems)}")
        print(f"{name:<12} {seconds:>8.2f} {rows[0][1] / seconds:>8.2f}x  {agreement}")


if __name__ == "__main__":
    main()

"""How far the bfloat16 CPU autocast path moves detections from float32: the figures behind
the tolerance of ``tests/inference/test_fast_paths.py::test_bf16_autocast_on_cpu_stays_close``.

Same model, image and scale as the test; the top detections of the float32 run are matched one
to one with the bfloat16 run's (same label, nearest box, each used once). Run under the kernel
choices the tests must pass with (``ATEN_CPU_CAPABILITY=default|avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, 1 and 2 threads), each in a fresh process::

    python tools/tolerances/bf16_spread.py          # every variant; a table of the spreads
    python tools/tolerances/bf16_spread.py --one    # this process's kernels only (JSON)

bfloat16 convolutions have no native kernel on CPUs without AVX512-BF16/AMX: a variant takes
minutes there.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from variants import spread_main

ROOT = Path(__file__).resolve().parents[2]


def measure() -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "inference")]
    import torch

    torch.set_num_threads(int(os.environ.get("ANZOO_THREADS", "1")))
    from test_fast_paths import BF16_SCALE, TOP, _images, match_one_to_one

    from anzoo.inference import Predictor
    from anzoo.testing import confident_model

    model = confident_model("r50-an-gn", proposals=40)
    image = _images()[:1]
    ref = Predictor(model, scale=BF16_SCALE).predict_instances(image)[0]
    low = Predictor(model, scale=BF16_SCALE, precision="bf16").predict_instances(image)[0]
    pairs = match_one_to_one(ref, low, TOP)
    return {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "detections": [len(ref), len(low)], "matched": len(pairs),
            "box_px": [d for _, _, d, _ in pairs], "score": [s for _, _, _, s in pairs]}


def main() -> None:
    spread_main(__file__, __doc__, measure,
                f"{'variant':32} {'capability':10} {'matched':>7} {'max box px':>10} {'max score':>10}",
                lambda name, r: f"{name:32} {r['capability']:10} {r['matched']:>7} {max(r['box_px']):>10.4f} "
                                f"{max(r['score']):>10.2e}   boxes {['%.3f' % d for d in r['box_px']]}")


if __name__ == "__main__":
    main()

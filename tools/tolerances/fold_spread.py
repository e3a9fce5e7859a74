"""How far folding eval-mode BatchNorms (and AN's normalisation) into the convolutions moves
outputs: the figures behind the tolerances of ``tests/models/test_fold.py`` (backbone features)
and ``tests/inference/test_fast_paths.py::test_folded_norms_keep_detections`` (detections).

Same models, inputs and statistics as the tests. Run under the kernel choices the tests must
pass with (``ATEN_CPU_CAPABILITY=default|avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, 1 and 2 threads),
each in a fresh process::

    python tools/tolerances/fold_spread.py          # every variant; a table of the spreads
    python tools/tolerances/fold_spread.py --one    # this process's kernels only (JSON)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from variants import spread_main

ROOT = Path(__file__).resolve().parents[2]


def measure() -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "inference"), str(ROOT / "tests" / "models")]
    import torch

    torch.set_num_threads(int(os.environ.get("ANZOO_THREADS", "1")))
    from test_fast_paths import folded_and_unfolded
    from test_fold import FOLDED, folded_pair, max_rel_diff

    from anzoo.testing import confident_model

    features = {}
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for name in sorted(FOLDED):
        model, folded, _ = folded_pair(name)
        with torch.inference_mode():
            features[name] = max_rel_diff(model(x), folded(x))
    _, _, ref, out = folded_and_unfolded(confident_model("r50-an-gn", proposals=40))
    box = max(float((a.boxes - b.boxes).abs().max()) for a, b in zip(ref, out))
    score = max(float((a.scores - b.scores).abs().max()) for a, b in zip(ref, out))
    return {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "features_rel": features, "box_px": box, "score": score,
            "same_counts": all(len(a) == len(b) for a, b in zip(ref, out))}


def main() -> None:
    spread_main(__file__, __doc__, measure,
                f"{'variant':32} {'capability':10} {'max feature rel':>15} {'max box px':>10} {'max score':>10}",
                lambda name, r: f"{name:32} {r['capability']:10} {max(r['features_rel'].values()):>15.2e} "
                                f"{r['box_px']:>10.2e} {r['score']:>10.2e}   same counts {r['same_counts']}  "
                                f"features {r['features_rel']}")


if __name__ == "__main__":
    main()

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

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {
    "default, 1 thread": {"ANZOO_THREADS": "1"},
    "default, 2 threads": {"ANZOO_THREADS": "2"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default", "ANZOO_THREADS": "1"},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ANZOO_THREADS": "1"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ANZOO_THREADS": "1"},
}


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", action="store_true", help="measure in this process only")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure()))
        return
    print(f"{'variant':32} {'capability':10} {'max feature rel':>15} {'max box px':>10} {'max score':>10}")
    for name, env in VARIANTS.items():
        out = subprocess.run([sys.executable, __file__, "--one"], env={**os.environ, **env, "OMP_NUM_THREADS":
                                                                       env["ANZOO_THREADS"]},
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:32} {r['capability']:10} {max(r['features_rel'].values()):>15.2e} {r['box_px']:>10.2e} "
              f"{r['score']:>10.2e}   same counts {r['same_counts']}  features {r['features_rel']}")


if __name__ == "__main__":
    main()

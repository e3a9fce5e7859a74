"""Regenerate the AOGNet logits frozen in ``tests/models/test_aognet.py``
(``test_logits_match_reference_fixture``) with the reference network: AOGNet-v2's
``models/aognet/aognet.py``, built from its own ImageNet configs.

The weights are the test's ``formula_state_dict`` (a formula of each key's position in the
released checkpoint's manifest), so no checkpoint is needed; the input is the test's
``sin(0.01 i)`` image of 64 x 64; everything in float64. The reference (research-only licence)
is read from a clone, never copied into anzoo; it needs ``yacs``, put beside it::

    git clone https://github.com/iVMCL/AOGNet-v2 $REF/AOGNet-v2      # checked at a95a869
    pip install --target $PARITY_ROOT/site yacs                        # default /tmp/parity/site
    python tools/reference_values/aognet_logits.py --ref $REF/AOGNet-v2           # prints the values
    python tools/reference_values/aognet_logits.py --ref $REF/AOGNet-v2 --check   # compares with the test

Each model is built in a fresh interpreter (the reference configures itself through a global).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from verdict import report  # noqa: E402

CONFIGS = {"aognet12m-bn": "aognet-12m-imagenet.yaml", "aognet12m-an": "aognet-12m-an-imagenet.yaml"}
INDICES = [0, 1, 2, 3, 4, 5, 500, 999]


def one_model(ref: Path, name: str) -> list[float]:
    """The reference's logits for ``name``, in this (fresh) process."""
    site = Path(os.environ.get("PARITY_ROOT", "/tmp/parity")) / "site"
    sys.path[:0] = [str(ref), str(site), str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "models")]
    import torch
    from models.aognet.aognet import aognet
    from models.config import cfg
    from test_aognet import formula_state_dict

    cfg.merge_from_file(str(ref / "configs" / CONFIGS[name]))
    torch.manual_seed(0)
    model = aognet().double().eval()
    model.load_state_dict(formula_state_dict(name), strict=True)
    x = torch.sin(torch.arange(3 * 64 * 64, dtype=torch.float64) * 0.01).reshape(1, 3, 64, 64)
    with torch.inference_mode():
        return model(x)[0, INDICES].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, default=Path(os.environ.get("REF", "/tmp/ref")) / "AOGNet-v2",
                        help="a clone of iVMCL/AOGNet-v2 (default $REF/AOGNet-v2)")
    parser.add_argument("--check", action="store_true", help="compare with the values the test stores")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_model(args.ref, args.one)))
        return
    found = {}
    for name in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--ref", str(args.ref), "--one", name],
                             capture_output=True, text=True, check=True).stdout
        found[name] = json.loads(out.strip().splitlines()[-1])
    print('@pytest.mark.parametrize("name,expected", [')
    for name, logits in found.items():
        print(f"    ({name!r}, [{', '.join(f'{v:.10g}' for v in logits)}]),")
    print("])")
    if args.check:
        import re

        text = (ROOT / "tests" / "models" / "test_aognet.py").read_text(encoding="utf-8")
        worst = 0.0
        for name, logits in found.items():
            stored = re.search(rf'\("{name}", \[([^\]]*)\]', text)
            assert stored, f"no stored logits for {name}"
            values = [float(v) for v in stored.group(1).split(",")]
            # the test's tolerance: rtol 1e-7 and atol 1e-7 x the largest logit
            scale = max(map(abs, values))
            worst = max(worst, max(abs(a - b) / (1e-7 * (abs(b) + scale)) for a, b in zip(logits, values)))
        print(f"worst difference: {worst:.2g} of the test's tolerance")
        report([] if worst <= 1.0 else ["logits"])


if __name__ == "__main__":
    main()

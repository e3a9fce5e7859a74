"""Print anzoo's differences to the reference detections of every parity fixture.

    python tools/parity/report.py [ROW ...]

PARITY_FIXTURES=DIR reads the fixtures from DIR instead of tests/fixtures/parity.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "models")]
import test_parity  # noqa: E402

if os.environ.get("PARITY_FIXTURES"):
    test_parity.FIXTURES = Path(os.environ["PARITY_FIXTURES"])


def main() -> None:
    if not os.environ.get("OMP_NUM_THREADS"):  # tools/kernel_spread.py sets it per setting
        torch.set_num_threads(2)
    rows = sys.argv[1:] or test_parity.ROWS
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            for diffs in test_parity.parity_diffs(row, Path(tmp)):
                print(json.dumps({"row": row, **diffs}), flush=True)


if __name__ == "__main__":
    main()

"""Print anzoo's differences to the reference detections of every parity fixture.

    python tools/parity/report.py [ROW ...]
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path.insert(0, str(TESTS))
from test_parity import ROWS, parity_diffs  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    rows = sys.argv[1:] or ROWS
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            for diffs in parity_diffs(row, Path(tmp)):
                print(json.dumps({"row": row, **diffs}), flush=True)


if __name__ == "__main__":
    main()

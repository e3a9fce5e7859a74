"""What the reference-value scripts share: ``--check``'s verdict and exit code."""
from __future__ import annotations

import sys


def report(problems: list[str]) -> None:
    """Print whether the test stores the values just made; exit 1 when it does not."""
    print("check: " + ("the test stores these values" if not problems else f"differ: {', '.join(problems)}"))
    sys.exit(1 if problems else 0)

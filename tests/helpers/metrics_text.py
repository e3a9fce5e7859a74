"""Reading one sample of the Prometheus text that ``GET /metrics`` answers."""
from __future__ import annotations


def metric(text: str, sample: str) -> float:
    """The value of ``sample`` (a name with its labels, as written) in the exposition ``text``."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in metrics:\n{text}")

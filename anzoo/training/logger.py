"""What a training run reports: a JSONL metrics file, optional TensorBoard, a progress bar.

``work_dir/metrics.jsonl`` gets one JSON object per logged iteration (``"type": "train"``:
iteration, epoch, lr, every loss term, the total loss, seconds per iteration, data-loading
seconds, peak memory in MiB) and per evaluation (``"type": "eval"``). Only the main process
writes. TensorBoard event files go to ``work_dir/tensorboard`` when the ``tensorboard``
package is installed (``pip install tensorboard``) unless disabled.
"""
from __future__ import annotations

import json
import logging
import math
import resource
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write_text

__all__ = ["METRICS_FILE", "MetricsWriter", "peak_memory_mib"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on ``device``, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf
    return value


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` (and TensorBoard); a no-op when not ``enabled``."""

    def __init__(self, work_dir: Path, enabled: bool = True, tensorboard: bool | None = None,
                 resume_from_iteration: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(work_dir) / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_iteration is not None:
            self._truncate_after(resume_from_iteration)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh file
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    log.warning("TensorBoard logging asked for but the tensorboard package is not installed")
            else:
                self._tb = SummaryWriter(str(Path(work_dir) / "tensorboard"))

    def _truncate_after(self, iteration: int) -> None:
        """Drop records a resumed run will write again (logged after its checkpoint)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(rec.get("iter", 0)) <= iteration:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict[str, Any], scalars: bool = True) -> None:
        """Append ``record``; its numbers also go to TensorBoard unless ``scalars`` is False."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        if self._tb is not None and scalars:
            step = int(record.get("iter", 0))
            prefix = record.get("type", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iter", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

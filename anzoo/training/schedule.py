"""The learning-rate policy of the reference configs (mmcv's ``StepLrUpdaterHook`` with linear
warm-up).

* Steps are counted in epochs: during epoch ``e`` (0-based) the regular rate is
  ``base_lr * gamma ** (number of steps s with e >= s)``; ``step=[16, 22]`` of a 24-epoch
  ("2x") schedule trains epochs 0-15 at ``base_lr``, 16-21 at a tenth, 22-23 at a hundredth.
* Warm-up is counted in iterations: at global iteration ``i < warmup_iters`` the rate is the
  regular rate times ``1 - (1 - i / warmup_iters) * (1 - warmup_ratio)``, i.e. it starts at
  ``warmup_ratio`` (1/3) of it and grows linearly.

The rate is a pure function of (iteration, epoch), so resuming needs nothing but the counters.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import AnzooError

__all__ = ["BASE_BATCH", "BASE_LR", "LRSchedule", "scaled_lr", "schedule_epochs"]

#: The configs' learning rate and the total batch it was tuned for (8 GPUs x 2 images).
BASE_LR = 0.02
BASE_BATCH = 16


def scaled_lr(total_batch: int, base_lr: float = BASE_LR, base_batch: int = BASE_BATCH) -> float:
    """The linear scaling rule: ``base_lr * total_batch / base_batch``."""
    return base_lr * total_batch / base_batch


def schedule_epochs(schedule: str | None, epochs: int | None = None) -> tuple[int, tuple[int, ...]]:
    """(total epochs, step epochs) of a zoo schedule, optionally stretched to ``epochs``.

    '2x' is 24 epochs with steps at 16 and 22 and '1x' 12 epochs with steps at 8 and 11 (the
    mmdetection conventions, ``Nx`` = N x 12 epochs with the steps scaled alike); '20e' is 20
    epochs with steps at 16 and 19 (the Cascade configs). Without a schedule the 2x one is used.
    Another number of epochs scales the steps in proportion (2x at 12 epochs gives 8, 11).
    """
    schedule = schedule or "2x"
    m = re.fullmatch(r"(\d+)(x|e)", schedule)
    if not m:
        raise AnzooError(f"unknown schedule {schedule!r}; expected e.g. '1x', '2x' or '20e'")
    count, unit = int(m.group(1)), m.group(2)
    if unit == "e":  # 20e: steps at 16 and 19
        total, steps = count, (round(count * 16 / 20), round(count * 19 / 20))
    else:  # Nx: N * 12 epochs, steps at 8/12 and 11/12 of them (2x: 16, 22)
        total = 12 * count
        steps = (round(total * 8 / 12), round(total * 11 / 12))
    if epochs is not None and epochs != total:
        if epochs < 1:
            raise AnzooError(f"--epochs must be at least 1, got {epochs}")
        steps = tuple(max(1, round(s * epochs / total)) for s in steps)
        total = epochs
    return total, tuple(int(s) for s in steps)


@dataclass
class LRSchedule:
    """Step decay by epoch with linear warm-up by iteration (see the module docstring)."""

    base_lr: float
    steps: Sequence[int] = (16, 22)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3

    def regular_lr(self, epoch: int) -> float:
        passed = sum(1 for s in self.steps if epoch >= s)
        return self.base_lr * self.gamma ** passed

    def lr_at(self, iteration: int, epoch: int) -> float:
        """Learning rate of global iteration ``iteration`` (0-based) in epoch ``epoch``."""
        lr = self.regular_lr(epoch)
        if self.warmup_iters > 0 and iteration < self.warmup_iters:
            k = (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
            lr = lr * (1 - k)
        return lr

    def apply(self, optimizer, iteration: int, epoch: int) -> float:
        lr = self.lr_at(iteration, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        state = asdict(self)
        state["steps"] = list(self.steps)
        return state

"""The training loop: a :class:`Trainer` steps through epochs and calls its hooks around the steps.

As detectron2's ``TrainerBase``: the loop only iterates and steps (:meth:`Trainer.run_step`:
forward, backward, gradient clipping, optimizer step); everything else a run does - the
learning rate, metrics, the progress bar, checkpoints, periodic evaluation, the
``--strict-data`` stop - is a :class:`HookBase` (:mod:`anzoo.training.hooks`). Epoch based, as
mmdetection v1's runner: a resumed run re-enters its epoch at the batch where it stopped.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.coco import raise_worker_errors_plainly
from ..distributed import DistContext
from ..errors import TrainingDiverged
from ..models.detection import TwoStageDetector
from .batches import GroupedBatchSampler, TrainBatch

__all__ = ["HookBase", "StepResult", "Trainer", "sum_losses"]


class HookBase:
    """Something done at fixed points of a run; :attr:`trainer` is set when it is registered.

    Hooks run in their registration order at each point.
    """

    trainer: Trainer

    def before_train(self) -> None:
        """Before the first step."""

    def before_step(self) -> None:
        """A batch is in (``trainer.batch``), its step not yet taken."""

    def after_step(self) -> None:
        """The step is taken (``trainer.step``); the counters count it."""

    def after_epoch(self) -> None:
        """An epoch is complete (``trainer.epoch`` counts it)."""

    def after_train(self) -> None:
        """The loop ended without an error: every epoch done, or stopped by ``--max-iters``."""

    def on_error(self, exc: BaseException) -> None:
        """An exception (Ctrl-C included) stops the run; it is raised again afterwards."""

    def close(self) -> None:
        """Always called last: release files, bars."""


@dataclass
class StepResult:
    """What the last step computed."""

    losses: dict[str, torch.Tensor]  # the detector's terms (``loss_*`` summed, others logged)
    loss: torch.Tensor  # their sum
    grad_norm: float  # L2 norm of all gradients before clipping


def sum_losses(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the ``loss_*`` terms (accuracies and other logged values left out)."""
    return sum((v for k, v in losses.items() if "loss" in k), torch.zeros((), device=next(iter(losses.values())).device))


class Trainer:
    """Runs the steps of a training run from its counters to ``end_iter`` (or the last epoch).

    Args:
        model: the detector being trained (not DDP-wrapped).
        optimizer, scaler: the optimizer and the AMP grad scaler (disabled without loss scaling).
        loader, sampler: the training batches, the sampler that orders them per epoch.
        info: this process's place in the run (rank, world size, device).
        iters_per_epoch, total_epochs, end_iter: the schedule's size; the run stops at
            ``end_iter`` (``--max-iters``) or after ``total_epochs``.
        amp: autocast the forward (float16 on CUDA, bfloat16 on CPU).
        grad_clip: clip the gradients to this L2 norm (None: no clipping).
        start: ``(epoch, batch within the epoch, iteration)`` to continue from.
        wrapped: the module the steps call (``model`` under DDP); default ``model``.
    """

    def __init__(self, model: TwoStageDetector, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 loader: DataLoader, sampler: GroupedBatchSampler, info: DistContext, *, iters_per_epoch: int,
                 total_epochs: int, end_iter: int, amp: bool = False, grad_clip: float | None = None,
                 start: tuple[int, int, int] = (0, 0, 0), wrapped: nn.Module | None = None) -> None:
        self.model, self.wrapped = model, wrapped if wrapped is not None else model
        self.optimizer, self.scaler = optimizer, scaler
        self.loader, self.sampler, self.info = loader, sampler, info
        self.device = info.device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.iters_per_epoch, self.total_epochs, self.end_iter = iters_per_epoch, total_epochs, end_iter
        self.amp, self.grad_clip = amp, grad_clip
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.epoch, self.batch_in_epoch, self.iteration = start
        #: images passed over so far (all processes, resumed runs included; counted at log steps)
        self.skipped_images = 0
        self.lr = 0.0  # set by the schedule before each step
        self.batch: TrainBatch | None = None
        self.data_time = 0.0  # seconds spent waiting for the current batch
        self.iter_time = 0.0  # seconds of the current iteration: its data wait and its step
        self.step: StepResult | None = None
        self.in_step = False  # inside the optimizer update (an interrupt there leaves nothing to save)
        self.stopped_inside_epoch = False
        self.hooks: list[HookBase] = []

    @property
    def stopped_early(self) -> bool:
        return self.epoch < self.total_epochs

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def _call(self, point: str, *args: object) -> None:
        for hook in self.hooks:
            getattr(hook, point)(*args)

    def train(self) -> None:
        """Run to the end (or to ``end_iter``), calling the hooks."""
        try:
            self._call("before_train")
            while self.epoch < self.total_epochs and self.iteration < self.end_iter:
                if not self._run_epoch():
                    break
            self._call("after_train")
        except BaseException as exc:
            self._call("on_error", exc)
            raise
        finally:
            self._call("close")

    def _run_epoch(self) -> bool:
        """The (rest of the) current epoch; False when ``end_iter`` stopped it inside."""
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        fetch_start = time.perf_counter()
        for batch in raise_worker_errors_plainly(iter(self.loader)):
            self.batch, self.data_time = batch, time.perf_counter() - fetch_start
            self._call("before_step")
            self.run_step(batch)
            self.iter_time = time.perf_counter() - fetch_start  # the data wait and the step, no hook
            self._call("after_step")
            if self.iteration >= self.end_iter and self.batch_in_epoch < self.iters_per_epoch:
                break
            fetch_start = time.perf_counter()
        if self.batch_in_epoch < self.iters_per_epoch:
            self.stopped_inside_epoch = True
            return False
        self.epoch += 1
        self.batch_in_epoch = 0
        self._call("after_epoch")
        return True

    def run_step(self, batch: TrainBatch) -> None:
        """One optimisation step: forward (autocast with ``amp``), backward, gradient clipping,
        optimizer update. Raises TrainingDiverged on non-finite gradients (without loss scaling,
        which skips such steps itself)."""
        images = batch.images.to(self.device, non_blocking=True)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp else nullcontext()
        with autocast:
            losses = self.wrapped(images, batch.metas, batch.targets)
        loss = sum_losses(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().norm() for p in self.params if p.grad is not None])))
        if not self.scaler.is_enabled() and not math.isfinite(grad_norm):
            # every rank sees the same all-reduced gradients, so all stop together
            raise TrainingDiverged(
                f"training diverged at iteration {self.iteration + 1}: the gradients are not finite "
                f"(loss {float(loss):.4g}); try a lower --lr or a longer warm-up")
        self.in_step = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.in_step = False
        self.iteration += 1
        self.batch_in_epoch += 1
        self.step = StepResult(losses, loss, grad_norm)

"""What a training run does around its steps, one hook per concern (see :class:`HookBase`).

* :class:`StrictDataHook` - ``--strict-data``: stop at a batch with an unusable image;
* :class:`LRScheduleHook` - the learning rate of each step;
* :class:`MetricsHook` - ``metrics.jsonl`` / TensorBoard records every ``log_every`` steps, and
  the images passed over;
* :class:`ProgressHook` - the progress bar;
* :class:`CheckpointHook` - ``epoch_N.pth`` and ``latest.pth`` after every epoch, ``latest.pth``
  when a run stops early (``--max-iters``, Ctrl-C, a data error);
* :class:`PeriodicEvalHook` - COCO metrics every ``eval_every`` epochs.

:func:`anzoo.training.engine.train` registers them in this order, which the trainer keeps at each
point: a checkpoint then holds the state an uninterrupted run has there (the strict-data stop
comes before the step's learning rate is set, the evaluation after the epoch's checkpoint).
"""
from __future__ import annotations

import logging
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from ..errors import DatasetError
from ..evaluation.metrics import SHOWN_METRICS
from ..fileio import atomic_path
from ..log import progress_bar
from .config import TrainConfig
from .logger import MetricsWriter, peak_memory_mib
from .periodic_eval import run_periodic_evaluation
from .schedule import LRSchedule
from .state import LATEST, capture_rng_state, epoch_checkpoint_name, save_training_checkpoint
from .trainer import HookBase

__all__ = ["CheckpointHook", "LRScheduleHook", "MetricsHook", "PeriodicEvalHook", "ProgressHook",
           "StrictDataHook", "UnusableImageStop"]

log = logging.getLogger(__name__)

#: skipped images warned about one by one (all are in metrics.jsonl)
SKIP_WARNINGS = 20
#: where the processes put their shares of a periodic evaluation (removed afterwards)
EVAL_DIR = ".eval"


class UnusableImageStop(DatasetError):
    """``--strict-data``: a process met an image that cannot be used (``latest.pth`` is saved at
    that batch by :class:`CheckpointHook`)."""


class LRScheduleHook(HookBase):
    """Sets the learning rate of every step (warm-up by iteration, steps by epoch)."""

    def __init__(self, schedule: LRSchedule) -> None:
        self.schedule = schedule

    def before_step(self) -> None:
        t = self.trainer
        t.lr = self.schedule.apply(t.optimizer, t.iteration, t.epoch)


class StrictDataHook(HookBase):
    """Stops every process before a batch for which any process passed over an image."""

    def __init__(self, latest: Path) -> None:
        self.latest = latest

    def before_step(self) -> None:
        t = self.trainer
        assert t.batch is not None
        # every process learns whether any met an unusable image, so that all stop together
        if t.info.all_reduce_mean({"skipped": float(len(t.batch.skipped))})["skipped"] > 0:
            skipped = t.batch.skipped
            what = skipped[0]["problem"] if skipped else \
                "another process met an image that cannot be used (see its log)"
            raise UnusableImageStop(
                f"{what}. --strict-data: stopped before iteration {t.iteration + 1} and saved {self.latest}; "
                "replace or remove the image (or leave out --strict-data to train on the next image "
                "instead), then continue with --resume")


class MetricsHook(HookBase):
    """Every ``log_every`` steps (and at the end of each epoch) a ``"type": "train"`` record of
    the losses averaged over the processes, the learning rate, the gradient norm, the seconds per
    step and waiting for data, the peak memory; a ``"type": "skipped"`` record per image passed
    over. Only the main process writes; :attr:`history` and :attr:`skipped` keep its records."""

    def __init__(self, writer: MetricsWriter, log_every: int) -> None:
        self.writer = writer
        self.log_every = max(1, log_every)
        self.history: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []  # this process's skipped images, until the next record
        self._window_iters, self._data_time, self._iter_time = 0, 0.0, 0.0

    def before_train(self) -> None:
        self._window_iters, self._data_time, self._iter_time = 0, 0.0, 0.0

    def before_step(self) -> None:
        t = self.trainer
        assert t.batch is not None
        self._data_time += t.data_time
        self._pending += [dict(s, iter=t.iteration + 1, epoch=t.epoch + 1) for s in t.batch.skipped]

    def after_step(self) -> None:
        t = self.trainer
        assert t.step is not None
        self._window_iters += 1
        self._iter_time += t.iter_time
        is_last = t.iteration >= t.end_iter or t.batch_in_epoch >= t.iters_per_epoch
        if t.iteration % self.log_every and not is_last:
            return
        values = {k: float(v.detach()) for k, v in t.step.losses.items()}
        values["loss"] = float(t.step.loss.detach())
        values = t.info.all_reduce_mean(values)
        new_skips = [s for part in t.info.all_gather(self._pending) for s in part]
        self._pending = []
        t.skipped_images += len(new_skips)
        # the steps' own time (waiting for data included): not the evaluations and checkpoint
        # writes that ran between two records
        record = {"type": "train", "iter": t.iteration, "epoch": t.epoch + 1, "lr": t.lr, **values,
                  "grad_norm": t.step.grad_norm, "time_per_iter": self._iter_time / self._window_iters,
                  "data_time": self._data_time / self._window_iters, "memory_mib": peak_memory_mib(t.device),
                  "skipped_images": t.skipped_images}
        if t.info.is_main:
            self._report_skips(new_skips)
            self.writer.write(record)
            self.history.append(record)
        self._window_iters, self._data_time, self._iter_time = 0, 0.0, 0.0

    def _report_skips(self, skips: list[dict[str, Any]]) -> None:
        """A metrics record and (the first few) a warning per image passed over."""
        for skip in skips:
            record = {"type": "skipped", **skip}
            self.writer.write(record, scalars=False)
            self.skipped.append(record)
            if len(self.skipped) <= SKIP_WARNINGS:
                log.warning("skipped a training image: %s; image %s took its place", skip["problem"],
                            skip["replaced_by"])
            elif len(self.skipped) == SKIP_WARNINGS + 1:
                log.warning("more training images were skipped: see the \"skipped\" records of metrics.jsonl")

    def close(self) -> None:
        self.writer.close()


class ProgressHook(HookBase):
    """A progress bar of the iterations (main process, unless disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._stack = ExitStack()
        self._bar: Any = None

    def before_train(self) -> None:
        t = self.trainer
        self._bar = self._stack.enter_context(progress_bar("train", t.end_iter, completed=t.iteration,
                                                           enabled=self.enabled))

    def after_step(self) -> None:
        t = self.trainer
        assert t.step is not None
        self._bar.update(completed=t.iteration, description=f"train epoch {t.epoch + 1}/{t.total_epochs}",
                         info=f"loss {float(t.step.loss.detach()):.3f} lr {t.lr:.2e}")

    def close(self) -> None:
        self._stack.close()


class CheckpointHook(HookBase):
    """Everything needed to continue the run exactly, written by the main process (see
    :mod:`anzoo.training.state`): ``epoch_N.pth`` after every epoch, with ``latest.pth`` a link to
    it, and ``latest.pth`` alone when the run stops inside an epoch (``--max-iters``; Ctrl-C
    outside the optimizer update or a data error, in a single process: under torchrun the others
    are not there to join the checkpoint's exchange; ``--strict-data``, in every process).

    Args:
        keep: keep only the newest ``keep`` epoch checkpoints (0: all).
    """

    def __init__(self, work_dir: Path, config: TrainConfig, schedule: LRSchedule, keep: int = 0) -> None:
        self.work_dir, self.config, self.schedule, self.keep = work_dir, config, schedule, keep
        self.latest: Path | None = None  # set once written

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch
        self.save(epoch_checkpoint_name(epoch))
        if self.keep and self.trainer.info.is_main:
            for old_epoch in range(1, epoch - self.keep + 1):
                (self.work_dir / epoch_checkpoint_name(old_epoch)).unlink(missing_ok=True)

    def after_train(self) -> None:
        if self.trainer.stopped_inside_epoch:  # --max-iters
            self.save()

    def on_error(self, exc: BaseException) -> None:
        t = self.trainer
        if isinstance(exc, UnusableImageStop):
            self.save()
        elif isinstance(exc, KeyboardInterrupt) and not t.in_step and t.info.world_size == 1:
            log.warning("interrupted: saving %s to resume from", self.work_dir / LATEST)
            self.save()
        elif isinstance(exc, DatasetError) and t.batch_in_epoch > 0 and t.info.world_size == 1:
            # images that cannot be used, MAX_TRIES in a row: keep the epoch's work
            log.warning("saving %s to resume from", self.work_dir / LATEST)
            self.save()

    def save(self, name: str | None = None) -> None:
        """The state at the trainer's counters, as ``name`` (and ``latest.pth``) or ``latest.pth``."""
        t = self.trainer
        rng_all = t.info.all_gather(capture_rng_state())
        if not t.info.is_main:
            return
        state = {"version": 1, "epoch": t.epoch, "batch": t.batch_in_epoch, "iteration": t.iteration,
                 "optimizer": t.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "scaler": t.scaler.state_dict() if t.scaler.is_enabled() else None, "rng": rng_all,
                 "config": self.config.to_json(), "world_size": t.info.world_size, "total_epochs": t.total_epochs,
                 "skipped_images": t.skipped_images}
        latest = self.work_dir / LATEST
        if name:
            _link_atomic(save_training_checkpoint(self.work_dir / name, t.model, state), latest)
        else:
            save_training_checkpoint(latest, t.model, state)
        self.latest = latest


def _link_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link where the file system allows (no second
    copy on disk; checkpoints are replaced, never written in place), else a copy."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def eval_table(epoch: int, scores: dict[str, Any]) -> str:
    """A periodic evaluation as a small table: a row per IoU type, a column per metric shown."""
    lines = [f"epoch {epoch} evaluation of {scores['images']} images:",
             " " * 8 + " ".join(f"{name:>7}" for name in SHOWN_METRICS)]
    for kind in ("bbox", "segm"):
        lines.append(f"  {kind:<6}" + " ".join(f"{scores[f'{kind}_{name.lower()}']:7.4f}" for name in SHOWN_METRICS))
    return "\n".join(lines)


class PeriodicEvalHook(HookBase):
    """COCO box and mask metrics every ``every`` epochs, each process evaluating its share of
    the images (they meet in ``work_dir/.eval``, removed afterwards); a ``"type": "eval"``
    record in ``metrics.jsonl`` and :attr:`evaluations`."""

    def __init__(self, every: int, ann_file: Path, image_dir: Path, *, scale: tuple[int, int], workers: int,
                 work_dir: Path, writer: MetricsWriter, coco: COCO | None = None) -> None:
        self.every, self.ann_file, self.image_dir = every, ann_file, image_dir
        self.scale, self.workers, self.work_dir, self.writer, self.coco = scale, workers, work_dir, writer, coco
        self.evaluations: list[dict[str, Any]] = []

    def after_epoch(self) -> None:
        t = self.trainer
        if t.epoch % self.every:
            return
        eval_dir = self.work_dir / EVAL_DIR
        scores = run_periodic_evaluation(t.model, self.ann_file, self.image_dir, scale=self.scale,
                                         device=t.device, workers=self.workers, out_dir=eval_dir,
                                         distributed=t.info.world_size > 1, coco=self.coco)
        t.model.train()
        if t.info.is_main:
            record = {"type": "eval", "iter": t.iteration, "epoch": t.epoch, **scores}
            self.writer.write(record)
            self.evaluations.append(record)
            log.info("%s", eval_table(t.epoch, scores))
        t.info.barrier()
        if t.info.is_main:
            shutil.rmtree(eval_dir, ignore_errors=True)

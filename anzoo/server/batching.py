"""One bounded queue and one worker thread that runs jobs in dynamic batches.

Every job carries a *key*; only jobs with the same key share a batch. The service keys jobs
by ``(model id, padded shape)``: Attentive Normalization reads the statistics of the whole
padded feature map, so an image may only be batched with images padded to the same shape
(this is how :meth:`anzoo.inference.Predictor.batches` groups them too), and then each
result equals the one the image gets alone.

The worker takes the oldest job, then collects more jobs with its key (already queued or
arriving) until it has ``max_batch`` of them or the oldest has waited ``max_wait_s``; jobs
with other keys keep their place for the next round, so nothing starves. ``submit`` never
blocks: when ``max_queue`` jobs are waiting it raises :class:`QueueFullError`.

Results travel through :class:`concurrent.futures.Future`: a caller that gives up cancels
its future, and the worker skips cancelled jobs (``set_running_or_notify_cancel``).

The worker measures how long a job takes (a batch's time over its size, averaged over recent
batches); :meth:`DynamicBatcher.expected_wait` turns it into the wait a job submitted now can
expect, so that callers can refuse work that would time out anyway.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DynamicBatcher", "Job", "QueueFullError", "NotRunningError"]

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """``max_queue`` jobs are already waiting."""


class NotRunningError(Exception):
    """The worker is not started, not ready yet, or stopped."""


@dataclass
class Job:
    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0


#: run_batch(key, payloads) -> one result per payload (an Exception instance fails that job only).
BatchRunner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class DynamicBatcher:
    """See the module docstring.

    Args:
        run_batch: called on the worker thread with a key and the payloads of one batch.
        max_batch: most jobs per batch (1 disables batching).
        max_wait_s: how long the oldest job may wait for batch mates.
        max_queue: most jobs waiting (not counting the batch being run).
        startup: run once on the worker thread before the first job (loading, warm-up);
            :attr:`ready` is set when it returns.
        on_depth: called with the number of waiting jobs whenever it changes.
    """

    def __init__(self, run_batch: BatchRunner, *, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 64, startup: Callable[[], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, name: str = "anzoo-batcher") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._startup = startup
        self._on_depth = on_depth
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        #: measured seconds per job (exponential average over batches); None until one ran
        self.job_seconds: float | None = None
        self._running_jobs = 0

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress; waiting jobs are cancelled."""
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            job.future.cancel()
        self._depth_changed()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds until the result of a job submitted now, from the measured time per job: the
        jobs ahead of it (default: those waiting or running; a caller may count more) and its
        own. 0 when none is ahead (a job on an idle worker is never refused) or before the
        first measurement."""
        if ahead is None:
            with self._cond:
                ahead = len(self._pending) + self._running_jobs
        return (self.job_seconds or 0.0) * (ahead + 1) if ahead else 0.0

    # ------------------------------------------------------------------ submit
    def submit(self, key: Hashable, payload: Any) -> Job:
        """Queue one job; its ``future`` gets the result. Raises QueueFullError / NotRunningError."""
        job = Job(key, payload)
        with self._cond:
            if self._stopping or not self._thread.is_alive() or not self.ready.is_set():
                raise NotRunningError("the model worker is not running")
            if len(self._pending) >= self.max_queue:
                self._drop_cancelled()
                if len(self._pending) >= self.max_queue:
                    raise QueueFullError(f"{len(self._pending)} images are already waiting")
            self._pending.append(job)
            depth = len(self._pending)
            self._cond.notify_all()
        self._depth_changed(depth)
        return job

    # ------------------------------------------------------------------ worker
    def _depth_changed(self, depth: int | None = None) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth if depth is None else depth)

    def _drop_cancelled(self) -> None:
        if any(job.future.cancelled() for job in self._pending):
            self._pending = collections.deque(j for j in self._pending if not j.future.cancelled())

    def _take_matching(self, key: Hashable, batch: list[Job]) -> None:
        """Move queued jobs with ``key`` into ``batch`` (oldest first), up to max_batch."""
        keep: collections.deque[Job] = collections.deque()
        for job in self._pending:
            if len(batch) < self.max_batch and job.key == key:
                if job.future.set_running_or_notify_cancel():
                    batch.append(job)
            elif not job.future.cancelled():
                keep.append(job)
        self._pending = keep

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._pending.popleft()
                if first.future.set_running_or_notify_cancel():
                    break
            batch = [first]
            deadline = first.submitted_at + self.max_wait_s
            while True:
                self._take_matching(first.key, batch)
                remaining = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            depth = len(self._pending)
        self._depth_changed(depth)
        return batch

    def _run(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            job.started_at = started
        with self._cond:
            self._running_jobs = len(batch)
        try:
            results = list(self.run_batch(batch[0].key, [job.payload for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        except BaseException as exc:  # the worker must survive anything a batch does
            log.exception("batch of %d failed", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        finally:
            self._measured(time.perf_counter() - started, len(batch))
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _measured(self, seconds: float, jobs: int) -> None:
        per_job = seconds / jobs
        with self._cond:
            self._running_jobs = 0
            previous = self.job_seconds
            # Recent batches weigh most: the load (batch sizes, image sizes) changes over time.
            self.job_seconds = per_job if previous is None else 0.7 * previous + 0.3 * per_job

    def _main(self) -> None:
        try:
            if self._startup is not None:
                self._startup()
        except BaseException as exc:
            log.exception("model worker failed to start")
            self.startup_error = exc
            with self._cond:
                self._stopping = True
            return
        self.ready.set()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

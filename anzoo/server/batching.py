"""One bounded queue of jobs, run in dynamic batches by one worker thread per model replica.

Every job carries a *key*; only jobs with the same key share a batch. The service keys jobs
by ``(model id, padded shape)``: Attentive Normalization reads the statistics of the whole
padded feature map, so an image may only be batched with images padded to the same shape
(this is how :meth:`anzoo.inference.Predictor.batches` groups them too), and then each
result equals the one the image gets alone.

A worker takes the oldest job, then collects more jobs with its key (already queued or
arriving) until it has ``max_batch`` of them or the oldest has waited ``max_wait_s``; jobs
with other keys keep their place for the next round, so nothing starves. ``submit`` never
blocks: when ``max_queue`` jobs are waiting it raises :class:`QueueFullError`.

With several replicas (one worker thread each, e.g. one per GPU) the queue stays one: the
next batch goes to the least-loaded replica, the idle one in rotation that has run the fewest
jobs (a busy replica takes no job until it is done; ties go to the lowest index). A replica
whose batch raises is taken out of rotation while another one is in it, and its jobs go back
to the front of the queue for the others; when a job fails on a second replica too, the
fault is the job's: it fails, and the first replica comes back into rotation. The last
replica in rotation is never taken out (its failing jobs fail, as with one replica).

Results travel through :class:`concurrent.futures.Future`: a caller that gives up cancels
its future, and the workers skip cancelled jobs (``set_running_or_notify_cancel``).

The workers measure how long a job takes (a batch's time over its size, averaged over recent
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

__all__ = ["DynamicBatcher", "Job", "NotRunningError", "QueueFullError", "ReplicaState"]

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """``max_queue`` jobs are already waiting."""


class NotRunningError(Exception):
    """The workers are not started, not ready yet, or stopped."""


@dataclass
class Job:
    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    #: the replica whose batch with this job raised (the job is being retried on another one)
    failed_on: int | None = None


@dataclass
class ReplicaState:
    """Where one replica stands: ``loading`` (its startup runs), ``ready`` (in rotation),
    ``failed`` (out of rotation; ``error`` says why) or ``stopped``."""

    index: int
    state: str = "loading"
    error: str | None = None
    #: jobs it has run (successfully or not), which the least-loaded pick balances
    jobs_run: int = 0
    #: jobs in the batch it is collecting or running (0: idle)
    running: int = 0


#: run_batch(replica, key, payloads) -> one result per payload (an Exception instance fails that
#: job only); called on the replica's worker thread.
BatchRunner = Callable[[int, Hashable, Sequence[Any]], Sequence[Any]]


class DynamicBatcher:
    """See the module docstring.

    Args:
        run_batch: called on a replica's worker thread with its index, a key and the payloads
            of one batch.
        replicas: worker threads, one per model replica.
        max_batch: most jobs per batch (1 disables batching).
        max_wait_s: how long the oldest job may wait for batch mates.
        max_queue: most jobs waiting (not counting the batches being run).
        startup: run once on each worker thread (with its replica index) before its first job
            (loading, warm-up); :attr:`ready` is set when the first one returns.
        on_depth: called with the number of waiting jobs whenever it changes.
        on_failure: called with a replica's index and the exception when its batch raised.
    """

    def __init__(self, run_batch: BatchRunner, *, replicas: int = 1, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 64, startup: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None,
                 on_failure: Callable[[int, BaseException], None] | None = None,
                 name: str = "anzoo-batcher") -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
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
        self._on_failure = on_failure
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.replicas = [ReplicaState(i) for i in range(replicas)]
        self._threads = [threading.Thread(target=self._main, args=(state,), name=f"{name}-{i}", daemon=True)
                         for i, state in enumerate(self.replicas)]
        self.ready = threading.Event()
        #: set when no replica could start (the last startup error)
        self.startup_error: BaseException | None = None
        #: measured seconds per job on one replica (exponential average over batches); None until one ran
        self.job_seconds: float | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batches in progress; waiting jobs are cancelled."""
        with self._cond:
            self._stopping = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            if not job.future.cancel():  # a job being retried is already running
                job.future.set_exception(NotRunningError("the server is shutting down"))
        self._depth_changed()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        """Not stopping, and a replica is in rotation (or may still come up)."""
        with self._cond:
            return not self._stopping and any(r.state in ("ready", "loading") for r in self.replicas)

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def expected_wait(self, ahead: int | None = None) -> float:
        """Seconds until the result of a job submitted now, from the measured time per job: the
        jobs ahead of it (default: those waiting or running; a caller may count more), shared
        by the replicas in rotation, and its own. 0 when none is ahead (a job on an idle
        worker is never refused) or before the first measurement."""
        with self._cond:
            if ahead is None:
                ahead = len(self._pending) + sum(r.running for r in self.replicas)
            serving = max(1, sum(r.state == "ready" for r in self.replicas))
        return (self.job_seconds or 0.0) * (ahead / serving + 1) if ahead else 0.0

    # ------------------------------------------------------------------ submit
    def submit(self, key: Hashable, payload: Any) -> Job:
        """Queue one job; its ``future`` gets the result. Raises QueueFullError / NotRunningError."""
        job = Job(key, payload)
        with self._cond:
            if self._stopping or not self.ready.is_set():
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

    @staticmethod
    def _claim(job: Job) -> bool:
        """Mark a job as running; False when its caller cancelled it (a retried job already runs)."""
        return job.failed_on is not None or job.future.set_running_or_notify_cancel()

    def _take_matching(self, key: Hashable, batch: list[Job]) -> None:
        """Move queued jobs with ``key`` into ``batch`` (oldest first), up to max_batch."""
        keep: collections.deque[Job] = collections.deque()
        for job in self._pending:
            if len(batch) < self.max_batch and job.key == key:
                if self._claim(job):
                    batch.append(job)
            elif not job.future.cancelled():
                keep.append(job)
        self._pending = keep

    def _least_loaded(self) -> ReplicaState | None:
        """The idle replica in rotation that has run the fewest jobs (called under the lock)."""
        idle = [r for r in self.replicas if r.state == "ready" and not r.running]
        return min(idle, key=lambda r: (r.jobs_run, r.index)) if idle else None

    def _next_batch(self, replica: ReplicaState) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._stopping and not (self._pending and self._least_loaded() is replica):
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._pending.popleft()
                if self._claim(first):
                    break
            batch = [first]
            replica.running = 1
            deadline = first.submitted_at + self.max_wait_s
            while True:
                self._take_matching(first.key, batch)
                remaining = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            replica.running = len(batch)
            depth = len(self._pending)
            self._cond.notify_all()  # another idle replica may now be the least loaded
        self._depth_changed(depth)
        return batch

    def _run(self, replica: ReplicaState, batch: list[Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            job.started_at = started
        try:
            results = list(self.run_batch(replica.index, batch[0].key, [job.payload for job in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        except BaseException as exc:  # the worker must survive anything a batch does
            log.exception("batch of %d failed on replica %d", len(batch), replica.index)
            self._finished(replica, batch, time.perf_counter() - started)
            self._failed(replica, batch, exc)
            return
        self._finished(replica, batch, time.perf_counter() - started)
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _failed(self, replica: ReplicaState, batch: list[Job], exc: BaseException) -> None:
        """A batch raised: retry it on another replica (this one leaves the rotation), or fail its
        jobs (the last replica in rotation; or jobs that failed elsewhere before, which brings
        that replica back)."""
        if self._on_failure is not None:
            self._on_failure(replica.index, exc)
        with self._cond:
            retried = {job.failed_on for job in batch} - {None}
            others = [r for r in self.replicas if r is not replica and r.state == "ready"]
            if not retried and others and not self._stopping:
                replica.state, replica.error = "failed", f"{type(exc).__name__}: {exc}"
                log.error("replica %d is out of rotation (%s); its %d jobs go to the others",
                          replica.index, replica.error, len(batch))
                for job in batch:
                    job.failed_on = replica.index
                self._pending.extendleft(reversed(batch))
                self._cond.notify_all()
                return
            for r in self.replicas:
                if r.index in retried and r.state == "failed":
                    log.warning("replica %d is back in rotation: its jobs failed on replica %d too",
                                r.index, replica.index)
                    r.state, r.error = "ready", None
            self._cond.notify_all()
        for job in batch:
            job.future.set_exception(exc)

    def _finished(self, replica: ReplicaState, batch: list[Job], seconds: float) -> None:
        per_job = seconds / len(batch)
        with self._cond:
            replica.running = 0
            replica.jobs_run += len(batch)
            previous = self.job_seconds
            # Recent batches weigh most: the load (batch sizes, image sizes) changes over time.
            self.job_seconds = per_job if previous is None else 0.7 * previous + 0.3 * per_job
            self._cond.notify_all()

    def _start_replica(self, replica: ReplicaState) -> bool:
        try:
            if self._startup is not None:
                self._startup(replica.index)
        except BaseException as exc:
            log.exception("model replica %d failed to start", replica.index)
            with self._cond:
                replica.state, replica.error = "failed", f"{type(exc).__name__}: {exc}"
                if all(r.state == "failed" for r in self.replicas):
                    self.startup_error = exc
                    self._stopping = True
                    self._cond.notify_all()
            return False
        with self._cond:
            replica.state = "ready"
            self._cond.notify_all()
        self.ready.set()
        return True

    def _main(self, replica: ReplicaState) -> None:
        if not self._start_replica(replica):
            return
        while True:
            batch = self._next_batch(replica)
            if batch is None:
                with self._cond:
                    replica.state = "stopped" if replica.state == "ready" else replica.state
                return
            self._run(replica, batch)

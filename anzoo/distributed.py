"""Several processes under ``torchrun``: the process group and this process's place in it.

``torchrun --nproc_per_node N -m anzoo eval|train ...`` starts N processes with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`init_distributed` joins them into one process group (NCCL between GPUs, gloo on CPUs)
and pins each process to GPU ``LOCAL_RANK``. Without those variables everything runs in one
process and every method of :class:`DistContext` is a no-op.

Training all-reduces its gradients (DDP) and logging values over the default group; the
small Python objects both evaluation and training exchange (images to do, RNG states, the
final metrics) go over a gloo group: with NCCL for the default group, a gloo group is created
beside it for these CPU objects, as detectron2 does.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import AnzooError

__all__ = ["DistContext", "init_distributed", "launched_by_torchrun", "process_rank", "run_under_torchrun",
           "torchrun_command"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a process waits for the others by default (e.g. rank 0 scoring the results).
TIMEOUT = datetime.timedelta(hours=2)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    """This process's rank among those torchrun started (0 when alone), from the environment:
    known before the process group is joined (to keep the other ranks quiet, say)."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class DistContext:
    """This process's place among the cooperating processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: Any = None  # the gloo group for object exchange (None: the default group)
    owns_default_group: bool = False
    _extra_groups: list[Any] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        """The one process that writes logs, checkpoints and the final results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Scalar values averaged over the ranks (for logs)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and hand its value (or its error, as an AnzooError) to every rank."""
        if not self.distributed:
            return fn()
        payload: Any = None
        if self.is_main:
            try:
                payload = ("ok", fn())
            except AnzooError as exc:
                self.broadcast(("error", str(exc)))
                raise
            except BaseException as exc:
                self.broadcast(("error", f"rank 0 failed: {type(exc).__name__}: {exc}"))
                raise
        payload = self.broadcast(payload)
        if payload[0] == "error":
            raise AnzooError(payload[1])
        return payload[1]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)

    def close(self) -> None:
        """Destroy the groups this context created."""
        for group in self._extra_groups:
            dist.destroy_process_group(group)
        self._extra_groups.clear()
        if self.owns_default_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_default_group = False


def init_distributed(device: torch.device | str = "cpu", timeout: datetime.timedelta = TIMEOUT) -> DistContext:
    """Join the process group torchrun describes in the environment (or the one already joined).

    ``device``: the device type wanted; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``
    and the group uses NCCL (plus a gloo group for objects), otherwise gloo. Without torchrun
    (WORLD_SIZE unset or 1) this is a one-process context on ``device``.
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        owns = False
    elif launched_by_torchrun():
        if not dist.is_available():
            raise AnzooError("this PyTorch build has no torch.distributed; run one process")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs: dict[str, Any] = {"backend": "nccl" if device.type == "cuda" else "gloo", "timeout": timeout}
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(**kwargs)
        owns = True
    else:
        return DistContext(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if world == 1:
        return DistContext(device=device, owns_default_group=owns)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device, owns_default_group=owns)
    if dist.get_backend() != "gloo":
        ctx.group = dist.new_group(backend="gloo", timeout=timeout)
        ctx._extra_groups.append(ctx.group)
    log.debug("rank %d of %d (local rank %d, backend %s) on %s", rank, world, local_rank, dist.get_backend(),
              device)
    return ctx


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command line that runs ``anzoo <args>`` in ``nproc`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", "anzoo", *args]


def run_under_torchrun(nproc: int, args: Sequence[str]) -> int:
    """Run ``anzoo <args>`` in ``nproc`` processes under torchrun and wait; their exit code."""
    import subprocess

    cmd = torchrun_command(nproc, args)
    log.info("starting %d processes: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode

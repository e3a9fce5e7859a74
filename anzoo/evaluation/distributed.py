"""Process groups for ``torchrun --nproc_per_node N -m anzoo eval ...``.

Each process evaluates a shard of the images and writes its results to files in the output
folder; rank 0 gathers them from there (one node, or an output folder on a shared file
system). The processes only exchange small Python objects (the list of images to do, timing
counts, the final metrics), over a gloo group: with NCCL for the default group, a gloo group
is created beside it for these CPU objects, as detectron2 does.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ..errors import AnzooError

__all__ = ["DistContext", "init_distributed", "launched_by_torchrun", "torchrun_command"]

log = logging.getLogger(__name__)

#: how long a process waits for the others (e.g. rank 0 writing and evaluating the results).
TIMEOUT = datetime.timedelta(hours=2)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class DistContext:
    """This process's place among the evaluating processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # the gloo group for object exchange (None: single process)
    owns_default_group: bool = False
    _extra_groups: list[Any] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
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

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.group)

    def close(self) -> None:
        """Destroy the groups this context created."""
        if not self.distributed:
            return
        for group in self._extra_groups:
            dist.destroy_process_group(group)
        self._extra_groups.clear()
        if self.owns_default_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_default_group = False


def init_distributed(device_type: str) -> DistContext:
    """Join the process group torchrun describes in the environment (or an existing one).

    ``device_type``: 'cuda' initialises NCCL (plus a gloo group for objects), 'cpu' gloo.
    Without torchrun (WORLD_SIZE unset or 1) this is a one-process context.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        owns = False
    elif launched_by_torchrun():
        if not dist.is_available():
            raise AnzooError("this PyTorch build has no torch.distributed; run one process")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device_type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(**kwargs)
        owns = True
    else:
        return DistContext()
    if world == 1:
        return DistContext(owns_default_group=owns)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, owns_default_group=owns)
    if dist.get_backend() == "gloo":
        ctx.group = None  # the default group
    else:
        ctx.group = dist.new_group(backend="gloo", timeout=TIMEOUT)
        ctx._extra_groups.append(ctx.group)
    log.debug("rank %d of %d (local rank %d, backend %s)", rank, world, local_rank, dist.get_backend())
    return ctx


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command line that runs ``anzoo <args>`` in ``nproc`` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", "anzoo", *args]

"""Multi-process training under ``torchrun``: process group, ranks and small collectives.

``torchrun --nproc_per_node N [--nnodes ...] -m anzoo train ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`init_distributed` joins them into one process group (NCCL between GPUs, gloo on
CPUs) and pins each process to GPU ``LOCAL_RANK``. Without those variables training runs in a
single process and every helper here is a no-op.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from ..evaluation.distributed import launched_by_torchrun

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "is_distributed",
    "launched_by_torchrun",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """The one process that writes logs and checkpoints."""
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device, timeout_s: float = 1800) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; ``device`` is the device
    type wanted (a CUDA device becomes ``cuda:LOCAL_RANK``)."""
    if not launched_by_torchrun():
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not is_distributed():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.debug("rank %d of %d (local %d) on %s, backend %s", rank, world, local, device, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar logging values over the ranks (for the log only)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]

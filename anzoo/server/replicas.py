"""Model replicas: one copy of every served model per device (``anzoo serve --devices``), or
several on the CPU (``--replicas``), each run by a worker thread of the service's batcher.

Replicas on one device share the model's weights (they only read them); a replica on another
device gets its own copy; an exported ONNX file gets a session (ONNX Runtime, with its share
of the threads) or an infer request (OpenVINO) per replica. Every replica's predictor is
configured as the one it is made from (scale, precision, mask pasting, memory format), so that
any of them gives the same answer. CPU
replicas split the torch threads between them: each worker sets its share on its own thread
(OpenMP keeps a thread count per thread; threads started later, such as the decoding pool's,
start with the last one set, a share too).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import AnzooError
from ..inference import Predictor
from ..runtime import resolve_device

__all__ = ["Replica", "build_replicas", "parse_devices"]


@dataclass
class Replica:
    """Every served model (id -> predictor) on one device."""

    index: int
    device: torch.device
    predictors: dict[str, Predictor]
    #: torch CPU threads for its worker (None: leave the process's setting)
    threads: int | None = None


def parse_devices(spec: str) -> list[torch.device]:
    """``--devices``: 'all' (every CUDA GPU), or devices separated by commas ('cuda:0,cuda:1',
    'cpu', 'auto'). Raises AnzooError for a device this machine lacks or one named twice."""
    spec = spec.strip()
    if spec == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise AnzooError("--devices all: no CUDA GPU is available (use --device cpu --replicas N on a CPU)")
        return [torch.device("cuda", i) for i in range(count)]
    devices = []
    for name in filter(None, (part.strip() for part in spec.split(","))):
        try:
            device = resolve_device(name)
        except RuntimeError as exc:  # torch.device's own message for a malformed name
            raise AnzooError(f"--devices: '{name}' is not a device ({exc})") from exc
        if device.type == "cuda":
            device = torch.device("cuda", 0 if device.index is None else device.index)
            if device.index >= torch.cuda.device_count():
                raise AnzooError(f"--devices: {device} does not exist (this machine has "
                                 f"{torch.cuda.device_count()} CUDA GPUs)")
        devices.append(device)
    if not devices:
        raise AnzooError("--devices: name at least one device, e.g. cuda:0,cuda:1 or all")
    if len(set(devices)) != len(devices):
        raise AnzooError(f"--devices: a device is named twice in '{spec}' (use --replicas for several per device)")
    return devices


def _predictor_on(reference: Predictor, device: torch.device, model: torch.nn.Module) -> Predictor:
    return Predictor(model, device=device, precision=reference.precision, batch_size=reference.batch_size,
                     mask_paste=reference.mask_paste, channels_last=reference.channels_last,
                     scale=reference.scale)


def build_replicas(predictors: Mapping[str, Predictor], devices: Sequence[torch.device] | None = None,
                   per_device: int = 1) -> list[Replica]:
    """``per_device`` replicas of ``predictors`` on each of ``devices`` (default: the device of
    the first predictor). The given predictors are the first replica when their device is
    the first one. CPU replicas get an equal share of ``torch.get_num_threads()`` (at least 1)."""
    if per_device < 1:
        raise AnzooError("--replicas must be at least 1")
    first = next(iter(predictors.values()))
    devices = list(devices or [first.device])
    cpu_replicas = per_device * sum(d.type == "cpu" for d in devices)
    threads = max(1, torch.get_num_threads() // cpu_replicas) if cpu_replicas > 1 else None
    replicas: list[Replica] = []
    for device in devices:
        # One copy of each model per device, shared by that device's replicas.
        models = {model_id: p.model if p.device == device or p.exported else copy.deepcopy(p.model).to(device)
                  for model_id, p in predictors.items()}
        for _ in range(per_device):
            on_device = {}
            for model_id, p in predictors.items():
                if p.exported and threads is not None:
                    # an exported file's session serves one replica (OnnxDetector.reopen)
                    on_device[model_id] = _predictor_on(p, device, p.model.reopen(threads))
                elif not replicas and p.device == device:
                    on_device[model_id] = p
                else:
                    on_device[model_id] = _predictor_on(p, device, models[model_id])
            replicas.append(Replica(len(replicas), device, on_device, threads if device.type == "cpu" else None))
    return replicas


"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A training checkpoint is an anzoo model file (:func:`anzoo.save_model`: it loads with
``create_model(ID, pretrained=PATH)``, ``anzoo predict --weights`` and ``anzoo eval
--weights``) with one more key, ``training``: the optimizer, the learning-rate schedule, the
AMP grad scaler, the counters (epoch, batch within the epoch, global iteration), the random
number generator states (torch CPU and CUDA, numpy, Python) and the run's configuration.
Everything is stored as tensors and plain Python values so that ``torch.load(weights_only=True)``
reads it back.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import read_checkpoint
from ..errors import CheckpointError

__all__ = [
    "LATEST",
    "capture_rng_state",
    "epoch_checkpoint_name",
    "load_training_state",
    "restore_rng_state",
    "save_training_checkpoint",
]

log = logging.getLogger(__name__)

#: The checkpoint ``--resume`` reads: rewritten after every epoch and when a run stops early.
LATEST = "latest.pth"


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint written after (1-based) ``epoch``."""
    return f"epoch_{epoch}.pth"


def capture_rng_state() -> dict[str, Any]:
    """The state of every random number generator training draws from."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("checkpoint has CUDA RNG states of %d devices, this machine has %d; not restored",
                        len(cuda_states), torch.cuda.device_count())


def save_training_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module, training: dict[str, Any]
                             ) -> Path:
    """Write ``model`` (anzoo format) with the ``training`` state, atomically."""
    from ..factory import save_model

    return save_model(model, path, training=training)


def load_training_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, training state) of a training checkpoint."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "training" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an anzoo training checkpoint (it has no training state "
                              "to resume from)")
    return ckpt["state_dict"], ckpt["training"]

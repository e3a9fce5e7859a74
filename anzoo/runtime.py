"""Where a model runs: the device choice shared by ``create_model``, the predictor and evaluation.

A small module of its own so that the layers that run models (inference, evaluation,
training) need not import ``factory``, which builds them.
"""
from __future__ import annotations

import torch

from .errors import AnzooError

__all__ = ["device_kind", "resolve_device"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> CUDA when available, else CPU; a clear error for CUDA on a machine without it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnzooError(f"`device='{device}'` was asked for but no CUDA GPU is available (use `device='cpu'`)")
    return dev


def device_kind(device: torch.device) -> str:
    """'cpu', or 'cuda (GPU model)' (not its index: ranks and resumed runs may use another one):
    what results depend on, since other kernels give slightly other numbers."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type

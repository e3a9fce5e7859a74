"""Where and how a model runs: the device and numeric precision choices shared by
``create_model``, the predictor and evaluation.

A small module of its own so that the layers that run models (inference, evaluation,
training) need not import ``factory``, which builds them.
"""
from __future__ import annotations

import warnings
from contextlib import AbstractContextManager

import torch

from .errors import AnzooError

__all__ = ["PRECISIONS", "autocast", "check_precision", "device_kind", "precision_from_fp16", "resolve_device"]

#: the inference precisions: float32; bfloat16 or float16 autocast (convolutions and matrix
#: products in 16 bits, the normalisation statistics and the box decoding stay float32)
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) -> CUDA when available, else CPU; a clear error for CUDA on a machine without it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnzooError(f"`device='{device}'` was asked for but no CUDA GPU is available (use `device='cpu'`)")
    return dev


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and runs on ``device``, else an AnzooError."""
    if precision not in PRECISIONS:
        raise AnzooError(f"`precision='{precision}'` is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        # CPUs autocast float16 without fast kernels, and float16's range overflows where bfloat16's does not
        raise AnzooError(f"`precision='fp16'` runs on CUDA GPUs only, not on {device.type}: use `precision='bf16'`")
    return precision


def precision_from_fp16(fp16: bool, device: torch.device, stacklevel: int = 3) -> str:
    """The precision the deprecated ``fp16`` switch meant: float16 on CUDA, bfloat16 elsewhere
    (a FutureWarning, shown once per calling line as Python does)."""
    warnings.warn("`fp16` is deprecated: use `precision='fp16'` (CUDA) or `precision='bf16'`",
                  FutureWarning, stacklevel=stacklevel)
    return fp16_alias(device) if fp16 else "fp32"


def fp16_alias(device: torch.device) -> str:
    """What the deprecated fp16 switch turns on: float16 on CUDA, bfloat16 elsewhere."""
    return "fp16" if device.type == "cuda" else "bf16"


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (disabled for fp32)."""
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def device_kind(device: torch.device) -> str:
    """'cpu', or 'cuda (GPU model)' (not its index: ranks and resumed runs may use another one):
    what results depend on, since other kernels give slightly other numbers."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type

"""anzoo: the Attentive Normalization and AOGNet detection model zoo."""
from __future__ import annotations

__version__ = "0.1.0"

from .zoo import DEFAULT_MODEL, list_models  # noqa: E402 - after __version__ on purpose

__all__ = ["__version__", "DEFAULT_MODEL", "list_models", "create_model", "create_backbone", "save_model",
           "Predictor", "predict"]

# torch-dependent names are imported on first use, so `anzoo list` starts fast.
_LAZY = {
    "create_model": ("anzoo.factory", "create_model"),
    "save_model": ("anzoo.factory", "save_model"),
    "create_backbone": ("anzoo.models.backbones", "create_backbone"),
    "Predictor": ("anzoo.inference", "Predictor"),
    "predict": ("anzoo.inference", "predict"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'anzoo' has no attribute {name!r}")

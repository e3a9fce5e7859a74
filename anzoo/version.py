"""anzoo's version, in a module of its own so that any layer may record it (``save_model``,
evaluation results, the service) without importing the package top, which re-exports the
upper layers."""
from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"

"""anzoo: the Attentive Normalization and AOGNet detection model zoo."""
from __future__ import annotations

__version__ = "0.1.0"

from .zoo import DEFAULT_MODEL, list_models  # noqa: E402 - after __version__ on purpose

__all__ = ["__version__", "DEFAULT_MODEL", "list_models"]

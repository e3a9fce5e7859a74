"""Images for tests that only need pixels: random noise, encoded as PNG."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def noise_png(height: int, width: int, seed: int = 0) -> bytes:
    """A ``height`` x ``width`` RGB noise image as PNG bytes (the same bytes for the same seed)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()

"""Demo photos: public-domain (NASA, SpaceX) and CC0 images shipped inside scikit-image.

They need no download (scikit-image bundles them), which makes them handy for a first
``anzoo predict`` and for examples. scikit-image is an optional dependency
(``pip install anzoo[demo]``).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import AnzooError
from ..fileio import atomic_path

__all__ = ["demo_image", "demo_image_description", "demo_image_names", "save_demo_image"]

# name -> (loader on skimage.data, what a COCO detector should find there)
_DEMOS: dict[str, tuple[Callable[[object], np.ndarray], str]] = {
    "astronaut": (lambda d: d.astronaut(), "astronaut Eileen Collins, NASA, public domain (person)"),
    "coffee": (lambda d: d.coffee(), "a cup of coffee, CC0 (cup)"),
    "chelsea": (lambda d: d.chelsea(), "Chelsea the cat, CC0 (cat)"),
    "rocket": (lambda d: d.rocket(), "a SpaceX rocket on its pad, public domain"),
    "camera": (lambda d: d.camera(), "a photographer with a camera, grayscale, CC0 (person)"),
}


def demo_image_names() -> list[str]:
    """Names accepted by :func:`demo_image`."""
    return list(_DEMOS)


def demo_image_description(name: str) -> str:
    return _lookup(name)[1]


def demo_image(name: str) -> np.ndarray:
    """The demo photo ``name`` as (H, W, 3) uint8 RGB (grayscale ones are replicated)."""
    loader, _ = _lookup(name)
    try:
        import skimage.data as skdata
    except ImportError as exc:
        raise AnzooError(
            "demo images need scikit-image: pip install 'anzoo[demo]' (or scikit-image)"
        ) from exc
    try:
        image = np.asarray(loader(skdata))
    except Exception as exc:  # a scikit-image build without the bundled file
        raise AnzooError(f"demo image {name!r} is not available in this scikit-image: {exc}") from exc
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8, copy=False))


def save_demo_image(name: str, path: str | os.PathLike) -> Path:
    """Write demo photo ``name`` to ``path`` (format from the extension, default .png)."""
    from PIL import Image

    image = demo_image(name)
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def _lookup(name: str) -> tuple[Callable[[object], np.ndarray], str]:
    try:
        return _DEMOS[name]
    except KeyError:
        raise AnzooError(
            f"unknown demo image {name!r}; choose one of: {', '.join(_DEMOS)}"
        ) from None

"""anzoo.data.demo: bundled scikit-image photos, and a clear error without scikit-image."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from anzoo.data.demo import demo_image, demo_image_names, save_demo_image
from anzoo.data.images import load_image
from anzoo.errors import AnzooError


def test_demo_images(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    names = demo_image_names()
    assert {"astronaut", "coffee", "chelsea"} <= set(names)
    chelsea = demo_image("chelsea")
    assert chelsea.shape == (300, 451, 3) and chelsea.dtype == np.uint8
    camera = demo_image("camera")  # grayscale, replicated to RGB
    assert camera.shape == (512, 512, 3) and (camera[..., 0] == camera[..., 2]).all()
    path = save_demo_image("coffee", tmp_path / "out" / "coffee.png")
    assert np.array_equal(load_image(path), demo_image("coffee"))
    assert save_demo_image("astronaut", tmp_path / "astro").suffix == ".png"


def test_unknown_name() -> None:
    with pytest.raises(AnzooError, match="unknown demo image 'lena'.*astronaut"):
        demo_image("lena")


def test_missing_scikit_image(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(AnzooError, match="scikit-image"):
        demo_image("astronaut")

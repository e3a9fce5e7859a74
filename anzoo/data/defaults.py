"""The data pipeline's defaults that the command line also shows: plain numbers, importable
without numpy or torch (``anzoo list`` starts without them), each written once.

:mod:`anzoo.data.transforms` and :mod:`anzoo.data.images` use and export them.
"""
from __future__ import annotations

__all__ = ["DEFAULT_MAX_PIXELS", "TEST_SCALE", "TRAIN_SCALE"]

#: (long edge, short edge) limits of the test-time resize: the scale the released models
#: were evaluated at (mmdetection v1's ``img_scale=(1333, 800)``).
TEST_SCALE: tuple[int, int] = (1333, 800)

#: (long edge, short edge) limits of the training resize in the reference configs (before the
#: random flip): the same as the test scale.
TRAIN_SCALE: tuple[int, int] = TEST_SCALE

#: Largest image accepted by default: 50 Mpx (e.g. 8660 x 5774; a 48 Mpx phone photo,
#: 8064 x 6048, passes). The detectors look at the image resized to fit TEST_SCALE, at most
#: 1.07 Mpx: a 50 Mpx photo is already shrunk 6.8 times per side, so more pixels only cost
#: memory (about 7 bytes per pixel while decoding) and time, never detections.
#: Pillow's own bomb guard stays in force above 2 x ``Image.MAX_IMAGE_PIXELS`` even with
#: ``max_pixels=None``.
DEFAULT_MAX_PIXELS = 50_000_000

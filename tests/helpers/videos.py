"""Small videos for the tests, written with OpenCV (Motion-JPEG in AVI: every build writes it)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: the grey level of frame i of :func:`write_video`'s videos
LEVELS = [10 * i + 20 for i in range(24)]


def write_video(path: Path, frames: int = 7, size: tuple[int, int] = (48, 64)) -> Path:
    """A video whose frame i is uniformly ``LEVELS[i]``, ``size`` (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size[1], size[0]))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((*size, 3), LEVELS[i], np.uint8))
    writer.release()
    return path

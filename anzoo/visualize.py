"""Drawing detections on an image (for ``anzoo predict`` and ``POST /segment/render``)."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from anzoo.structures import Instances

__all__ = ["PALETTE", "draw_instances", "instance_colour"]

#: Distinct, readable colours (RGB), one per instance in turn (Kelly / Tableau-like).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (0, 128, 128), (128, 128, 0),
    (0, 0, 230), (230, 0, 230), (0, 200, 90), (250, 190, 0), (120, 60, 220),
)

MASK_ALPHA = 0.5


def instance_colour(index: int) -> tuple[int, int, int]:
    """The palette colour of the ``index``-th drawn instance."""
    return PALETTE[index % len(PALETTE)]


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    luminance = 0.299 * r + 0.587 * g + 0.114 * b
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # old Pillow: fixed bitmap font
        return ImageFont.load_default()


def draw_instances(
    image_rgb: np.ndarray | Image.Image,
    instances: Instances,
    class_names: Sequence[str],
    score_thr: float = 0.0,
    *,
    draw_masks: bool = True,
    draw_boxes: bool = True,
    draw_labels: bool = True,
) -> Image.Image:
    """Draw masks (blended at 50 %), box outlines and "name 0.93" labels on a copy of the image.

    Instances with ``score >= score_thr`` are drawn lowest score first, so the most confident
    ones end up on top; instance ``k`` in descending-score order gets ``PALETTE[k]``. Line
    width and font size follow the image size, so both large photos and tiny images stay
    readable; labels are kept inside the image.
    """
    if isinstance(image_rgb, Image.Image):
        base = np.asarray(image_rgb.convert("RGB"))
    else:
        base = np.asarray(image_rgb)
        if base.ndim == 2:
            base = np.repeat(base[:, :, None], 3, axis=2)
        if base.ndim != 3 or base.shape[2] != 3 or base.dtype != np.uint8:
            raise ValueError(f"draw_instances expects (H, W, 3) uint8 RGB, got {base.shape} {base.dtype}")
    height, width = base.shape[:2]
    kept = instances.cpu().above(score_thr).sorted_by_score()
    n = len(kept)
    colours = [instance_colour(k) for k in range(n)]

    canvas = base.astype(np.float32)
    if draw_masks and kept.masks is not None and n:
        masks = kept.masks.numpy()
        if masks.shape[1:] != (height, width):
            raise ValueError(f"masks are {masks.shape[1:]}, image is {(height, width)}")
        for k in reversed(range(n)):  # lowest score first, top score painted last
            region = masks[k]
            colour = np.asarray(colours[k], np.float32)
            canvas[region] = canvas[region] * (1 - MASK_ALPHA) + colour * MASK_ALPHA
    out = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    if not n or not (draw_boxes or draw_labels):
        return out

    draw = ImageDraw.Draw(out)
    line = max(1, round(max(height, width) / 400))
    font = _font(max(10, min(36, round(max(height, width) / 40))))
    boxes = kept.boxes.numpy()
    labels = kept.labels.to(torch.int64).numpy()
    scores = kept.scores.numpy()
    for k in reversed(range(n)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        colour = colours[k]
        if draw_boxes:
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        if draw_labels:
            label = int(labels[k])
            name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
            text = f"{name} {scores[k]:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            text_w, text_h = right - left, bottom - top
            pad = max(1, line)
            box_w, box_h = text_w + 2 * pad, text_h + 2 * pad
            # Above the box when there is room, else inside its top edge; always in the image.
            tx = min(max(0.0, x1), max(0.0, width - box_w))
            ty = y1 - box_h if y1 - box_h >= 0 else y1
            ty = min(max(0.0, ty), max(0.0, height - box_h))
            draw.rectangle([tx, ty, tx + box_w, ty + box_h], fill=colour)
            draw.text((tx + pad - left, ty + pad - top), text, fill=_text_colour(colour), font=font)
    return out

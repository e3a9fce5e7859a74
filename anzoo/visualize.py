"""Drawing detections on an image (for ``anzoo predict`` and ``POST /segment/render``)."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .structures import Instances, MaskCrop

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
    masks: Sequence[MaskCrop] | None = None,
    draw_masks: bool = True,
    draw_boxes: bool = True,
    draw_labels: bool = True,
) -> Image.Image:
    """Draw masks (blended at 50 %), box outlines and "name 0.93" labels on a copy of the image.

    Instances with ``score >= score_thr`` are drawn lowest score first, so the most confident
    ones end up on top; instance ``k`` in descending-score order gets ``PALETTE[k]``. Line
    width and font size follow the image size, so both large photos and tiny images stay
    readable; labels are kept inside the image.

    ``masks``: the instances' masks as crops (``masks[i]`` belongs to ``instances[i]``), for
    instead of ``instances.masks``; a lazy sequence (``Predictor.mask_crops``) is pasted one
    mask at a time, each blended into its window only, so drawing needs no (N, H, W) array.

    Any box is drawn: corners in either order, boxes thinner than a pixel (a line or a point),
    boxes partly outside the image (clipped) and boxes wholly outside it (only their label,
    at the nearest edge). Non-finite boxes are not drawn.
    """
    base = _rgb_copy(image_rgb)
    height, width = base.shape[:2]
    scores = instances.scores.detach().cpu()
    kept = torch.nonzero(scores >= score_thr).flatten()
    order = kept[torch.sort(scores[kept], descending=True, stable=True).indices].tolist()
    colours = [instance_colour(k) for k in range(len(order))]

    if masks is None and instances.masks is not None:
        full = instances.masks.detach().cpu()
        masks = [MaskCrop.from_full(full[i]) for i in range(len(instances))]  # views, no copies
    if draw_masks and masks is not None and order:
        for k in reversed(range(len(order))):  # lowest score first, top score painted last
            crop = masks[order[k]]
            if crop.image_size != (height, width):
                raise ValueError(f"masks are {crop.image_size}, image is {(height, width)}")
            _blend(base, crop, colours[k])
    out = Image.fromarray(base)
    if order and (draw_boxes or draw_labels):
        _draw_boxes_and_labels(out, instances, order, colours, class_names, draw_boxes, draw_labels)
    return out


def _rgb_copy(image: np.ndarray | Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB copy of ``image`` to draw on (a grey one is repeated to RGB)."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    base = np.asarray(image)
    if base.ndim == 2:
        base = np.repeat(base[:, :, None], 3, axis=2)
    if base.ndim != 3 or base.shape[2] != 3 or base.dtype != np.uint8:
        raise ValueError(f"draw_instances expects (H, W, 3) uint8 RGB, got {base.shape} {base.dtype}")
    return base.copy()


def _draw_boxes_and_labels(out: Image.Image, instances: Instances, order: Sequence[int],
                           colours: Sequence[tuple[int, int, int]], class_names: Sequence[str],
                           draw_boxes: bool, draw_labels: bool) -> None:
    """Box outlines and "name 0.93" labels of ``instances[order]`` (``colours[k]`` for the
    ``k``-th), lowest score first, on ``out``."""
    width, height = out.size
    draw = ImageDraw.Draw(out)
    line = max(1, round(max(height, width) / 400))
    font = _font(max(10, min(36, round(max(height, width) / 40))))
    boxes = instances.boxes.detach().cpu().numpy()
    labels = instances.labels.detach().cpu().to(torch.int64).numpy()
    scores = instances.scores.detach().cpu().numpy()
    for k in reversed(range(len(order))):
        i = order[k]
        if not np.isfinite(boxes[i]).all():
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        x1, x2 = min(x1, x2), max(x1, x2)
        y1, y2 = min(y1, y2), max(y1, y2)
        if draw_boxes:
            _outline(draw, (x1, y1, x2, y2), width, height, colours[k], line)
        if draw_labels:
            label = int(labels[i])
            name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
            _label(draw, f"{name} {scores[i]:.2f}", (x1, y1), width, height, colours[k], font, line)


def _label(draw: ImageDraw.ImageDraw, text: str, corner: tuple[float, float], width: int, height: int,
           colour: tuple[int, int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, line: int) -> None:
    """``text`` on a ``colour`` patch above the box's top-left ``corner`` when there is room,
    else inside its top edge; always in the image."""
    x1, y1 = corner
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left, bottom - top
    pad = max(1, line)
    box_w, box_h = text_w + 2 * pad, text_h + 2 * pad
    tx = min(max(0.0, x1), max(0.0, width - box_w))
    ty = y1 - box_h if y1 - box_h >= 0 else y1
    ty = min(max(0.0, ty), max(0.0, height - box_h))
    draw.rectangle([tx, ty, tx + box_w, ty + box_h], fill=colour)
    draw.text((tx + pad - left, ty + pad - top), text, fill=_text_colour(colour), font=font)


def _blend(canvas: np.ndarray, crop: MaskCrop, colour: tuple[int, int, int]) -> None:
    """Blend ``colour`` at MASK_ALPHA into ``canvas`` where the crop's mask is set, in its window only."""
    h, w = crop.mask.shape
    if h == 0 or w == 0:
        return
    window = canvas[crop.y0:crop.y0 + h, crop.x0:crop.x0 + w]
    region = np.asarray(crop.mask, dtype=bool)
    mixed = window[region].astype(np.float32) * (1 - MASK_ALPHA) + np.asarray(colour, np.float32) * MASK_ALPHA
    window[region] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _outline(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], width: int, height: int,
             colour: tuple[int, int, int], line: int) -> None:
    """The outline of an (ordered, inclusive) box on whole pixels, clipped to the image; a box
    less than a pixel wide or tall becomes a line, or a point (PIL's ``rectangle`` outline
    refuses some of these, depending on its version)."""
    x1, y1, x2, y2 = (int(np.floor(v)) for v in box)  # the pixels the box touches
    if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
        return  # wholly outside the image
    left, top = max(0, x1), max(0, y1)
    right, bottom = min(width - 1, x2), min(height - 1, y2)
    if right - left < 1 or bottom - top < 1:  # a line (or a point) as thick as the outlines
        right = max(right, min(width - 1, left + line - 1))
        bottom = max(bottom, min(height - 1, top + line - 1))
        draw.rectangle([left, top, right, bottom], fill=colour)
        return
    draw.rectangle([left, top, right, bottom], outline=colour, width=min(line, 1 + (right - left) // 2,
                                                                         1 + (bottom - top) // 2))

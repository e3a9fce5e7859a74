"""Small synthetic COCO-format datasets with exact masks, for tests, benchmarks and CI.

Each image is a softly textured background with a few non-overlapping filled shapes
(rectangles, ellipses, triangles, pentagons). Every category has its own shape kind and colour,
so a detector can learn them. The same rasterised mask that paints an object's pixels is
stored as its segmentation (compressed RLE) and gives its ``bbox`` (tight, COCO
``[x, y, w, h]`` with ``w`` = number of pixel columns) and ``area`` (pixel count), so the
ground truth written back as detections evaluates to AP 1.0.

Layout written (as COCO)::

    root/annotations/instances_<split>.json
    root/<split>/<image_id:012d>.jpg|png
"""
from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..fileio import atomic_path, atomic_write_json
from .results import encode_mask_rle

__all__ = ["DEFAULT_CATEGORIES", "make_synthetic_coco", "mask_bbox"]

#: Real COCO ids and names, non-contiguous on purpose (exercises the id <-> label mapping).
DEFAULT_CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 44, "name": "bottle", "supercategory": "kitchen"},
    {"id": 62, "name": "chair", "supercategory": "furniture"},
    {"id": 85, "name": "clock", "supercategory": "indoor"},
)

_SHAPES = ("rectangle", "ellipse", "triangle", "pentagon")
# Saturated colours far from the grey background and from one another (RGB).
_COLOURS = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (245, 130, 48), (70, 240, 240), (240, 50, 230), (128, 0, 0), (0, 0, 128),
)
_CROWD_COLOUR = (250, 250, 250)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` of a non-empty binary mask (w, h count pixels)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def make_synthetic_coco(
    root: str | os.PathLike,
    num_images: int = 8,
    image_size: tuple[int, int] | Sequence[tuple[int, int]] = (160, 224),
    categories: Sequence[dict[str, Any]] = DEFAULT_CATEGORIES,
    max_objects: int = 4,
    seed: int = 0,
    split: str = "val2017",
    *,
    min_objects: int = 1,
    image_format: str = "jpg",
    with_crowd: bool = False,
    with_empty_image: bool = False,
) -> Path:
    """Write a synthetic COCO-format dataset under ``root``; return the annotation file path.

    Args:
        root: dataset root (created if needed).
        num_images: number of images.
        image_size: (height, width) of every image, or a list of sizes used in turn.
        categories: COCO ``categories`` records (``id``, ``name``, optional ``supercategory``).
        max_objects, min_objects: objects per image (fewer if they do not fit).
        seed: everything (layout, colours, texture) is a function of the arguments and seed.
        split: name of the image folder and annotation file suffix.
        image_format: ``"jpg"`` (quality 95; pixels near edges change, annotations are exact
            for the drawn shapes) or ``"png"`` (lossless: pixels equal the drawing).
        with_crowd: add one ``iscrowd=1`` region (a patch of small dots, first category) to
            the first image.
        with_empty_image: make the last image background only, with no annotations.
    """
    sizes = _checked_sizes(num_images, image_size, categories, image_format)
    root = Path(root)
    image_dir = root / split
    ann_dir = root / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    cats = [dict(c) for c in categories]
    for c in cats:
        c.setdefault("supercategory", "synthetic")
    images, annotations = [], []
    for i in range(num_images):
        height, width = (int(v) for v in sizes[i % len(sizes)])
        image_id = 100 + 3 * i  # non-contiguous ids, like COCO's
        empty = with_empty_image and i == num_images - 1
        canvas, objects = _draw_image(rng, height, width, len(cats), None if empty else (min_objects, max_objects),
                                      crowd=with_crowd and i == 0)
        file_name = f"{image_id:012d}.{image_format}"
        _save_image(canvas, image_dir / file_name, image_format)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for cat_index, mask, iscrowd in objects:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(cats[cat_index]["id"]),
                "segmentation": encode_mask_rle(mask),
                "area": float(mask.sum()),
                "bbox": mask_bbox(mask),
                "iscrowd": iscrowd,
            })

    dataset = {
        "info": {"description": f"anzoo synthetic COCO-format dataset (seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }
    ann_file = ann_dir / f"instances_{split}.json"
    atomic_write_json(ann_file, dataset, indent=None)
    return ann_file


def _checked_sizes(num_images: int, image_size: tuple[int, int] | Sequence[tuple[int, int]],
                   categories: Sequence[dict[str, Any]], image_format: str) -> list[tuple[int, int]]:
    """The (height, width) of the images in turn, after checking :func:`make_synthetic_coco`'s arguments."""
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    if image_format not in ("jpg", "png"):
        raise ValueError("image_format must be 'jpg' or 'png'")
    if not categories:
        raise ValueError("need at least one category")
    if isinstance(image_size[0], numbers.Integral):
        sizes = [(int(image_size[0]), int(image_size[1]))]
    else:
        sizes = [(int(s[0]), int(s[1])) for s in image_size]
    if not sizes or any(h < 16 or w < 16 for h, w in sizes):
        raise ValueError(f"image sizes must be at least 16x16, got {sizes}")
    return sizes


_Objects = list[tuple[int, np.ndarray, int]]  # (category index, mask, iscrowd)


def _draw_image(rng: np.random.Generator, height: int, width: int, num_categories: int,
                num_objects: tuple[int, int] | None, crowd: bool) -> tuple[np.ndarray, _Objects]:
    """One image and its objects as (category index, mask, iscrowd): the background, between
    ``num_objects`` (min, max) shapes (fewer when they do not fit) and, with ``crowd``, a crowd
    region; ``num_objects`` None: the background only."""
    canvas = _background(rng, height, width)
    occupied = np.zeros((height, width), dtype=bool)
    objects: _Objects = []
    if num_objects is None:
        return canvas, objects
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        cat_index = int(rng.integers(num_categories))
        mask = _place_shape(rng, _SHAPES[cat_index % len(_SHAPES)], occupied)
        if mask is None:
            continue
        canvas[mask] = _COLOURS[cat_index % len(_COLOURS)]
        occupied |= _dilate(mask)
        objects.append((cat_index, mask, 0))
    if crowd:
        region = _place_crowd(rng, occupied)
        if region is not None:
            canvas[region] = _CROWD_COLOUR
            occupied |= _dilate(region)
            objects.append((0, region, 1))
    return canvas, objects


# --------------------------------------------------------------------------------------------
# drawing


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey, low-contrast texture: a smooth random field plus fine noise."""
    grid = (max(2, height // 24), max(2, width // 24))
    grey = rng.uniform(95, 165, size=grid + (1,))
    tint = rng.uniform(-12, 12, size=grid + (3,))
    coarse = (grey + tint).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0.0, 6.0, size=(height, width, 1))
    return np.clip(smooth + fine, 0, 255).astype(np.uint8)


def _dilate(mask: np.ndarray, margin: int = 3) -> np.ndarray:
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _shape_mask(kind: str, height: int, width: int, cx: float, cy: float, size: float,
                aspect: float, angle: float) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    half_w, half_h = size * aspect / 2.0, size / 2.0
    if kind == "rectangle":
        x0, y0 = int(round(cx - half_w)), int(round(cy - half_h))
        x1, y1 = int(round(cx + half_w)), int(round(cy + half_h))
        cv2.rectangle(mask, (x0, y0), (x1, y1), 1, thickness=-1)
    elif kind == "ellipse":
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))),
                    (max(2, int(round(half_w))), max(2, int(round(half_h)))),
                    float(np.degrees(angle)), 0, 360, 1, thickness=-1)
    else:
        sides = 3 if kind == "triangle" else 5
        t = angle + np.arange(sides) * 2 * np.pi / sides
        points = np.stack([cx + half_w * np.cos(t), cy + half_h * np.sin(t)], axis=1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _place_shape(rng: np.random.Generator, kind: str, occupied: np.ndarray,
                 tries: int = 40) -> np.ndarray | None:
    height, width = occupied.shape
    short = min(height, width)
    for _ in range(tries):
        size = rng.uniform(0.2, 0.45) * short
        aspect = rng.uniform(0.7, 1.4)
        angle = rng.uniform(0, 2 * np.pi)
        margin = size * max(aspect, 1.0) / 2 + 2
        if 2 * margin >= min(height, width):
            continue
        cx = rng.uniform(margin, width - margin)
        cy = rng.uniform(margin, height - margin)
        mask = _shape_mask(kind, height, width, cx, cy, size, aspect, angle)
        if mask.sum() >= 16 and not (mask & occupied).any():
            return mask
    return None


def _place_crowd(rng: np.random.Generator, occupied: np.ndarray, tries: int = 40) -> np.ndarray | None:
    """A patch of small dots (a 'crowd'); its mask is the union of the dots."""
    height, width = occupied.shape
    ph, pw = max(8, height // 5), max(8, width // 5)
    for _ in range(tries):
        y0 = int(rng.integers(0, height - ph + 1))
        x0 = int(rng.integers(0, width - pw + 1))
        if occupied[y0:y0 + ph, x0:x0 + pw].any():
            continue
        mask = np.zeros((height, width), np.uint8)
        for _ in range(max(4, (ph * pw) // 40)):
            cv2.circle(mask, (x0 + int(rng.integers(2, pw - 2)), y0 + int(rng.integers(2, ph - 2))),
                       2, 1, thickness=-1)
        return mask.astype(bool)
    return None


def _save_image(rgb: np.ndarray, path: Path, image_format: str) -> None:
    image = Image.fromarray(rgb)
    with atomic_path(path) as tmp:
        if image_format == "jpg":
            image.save(tmp, format="JPEG", quality=95)
        else:
            image.save(tmp, format="PNG")



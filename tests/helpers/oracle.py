"""An oracle detector for evaluation tests: it answers each image with detections a test wrote
by hand (the ground truth, or known perturbations of it), so the metrics an evaluation reports
can be checked against values known in advance instead of against another run.

The oracle has the interface ``anzoo.evaluation`` and the predictor use (``detect``, a
parameter to find the device, ``num_classes``, ``class_names``, ...). It recognises an image by
its original size, so every image of an oracle dataset has its own size
(:func:`make_oracle_dataset`). Masks are given as full-image probability maps pasted into the
whole-image box, so the legacy OpenCV paste reproduces them exactly (a resize to the same
size is the identity).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from anzoo.data.coco import COCO_CATEGORY_IDS, load_coco_annotations
from anzoo.data.results import decode_mask_rle
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.models.detection.detections import Detections

#: heights of the oracle dataset's images (width 224): one size per image.
ORACLE_HEIGHTS = (160, 163, 166, 169, 172, 175)


def make_oracle_dataset(root: Path, *, with_crowd: bool = True, seed: int = 3) -> Path:
    """A synthetic COCO val2017 layout whose images all have different sizes; the last image
    has no objects. Returns the annotation file."""
    return make_synthetic_coco(root, num_images=len(ORACLE_HEIGHTS), image_size=[(h, 224) for h in ORACLE_HEIGHTS],
                               with_crowd=with_crowd, with_empty_image=True, seed=seed, max_objects=4)


def coco_label(category_id: int) -> int:
    """The contiguous label of a COCO category id for an 80-class COCO model."""
    return COCO_CATEGORY_IDS.index(category_id)


def inclusive_box(bbox: Sequence[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` (w counts pixels) -> mmdetection v1's inclusive ``x1, y1, x2, y2``."""
    x, y, w, h = bbox
    return [x, y, x + w - 1, y + h - 1]


@dataclass
class OracleDetection:
    box: list[float]  # inclusive x1, y1, x2, y2
    score: float
    category_id: int
    mask: np.ndarray  # (H, W) bool


def ground_truth(coco: COCO, image_id: int) -> list[OracleDetection]:
    """The image's non-crowd annotations as detections, scores decreasing from 0.9."""
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    return [OracleDetection(inclusive_box(a["bbox"]), 0.9 - 0.01 * k, a["category_id"],
                            decode_mask_rle(a["segmentation"])) for k, a in enumerate(anns)]


class OracleDetector(torch.nn.Module):
    """Answers ``detect`` with the detections ``answer(image_id)`` gives for each image."""

    def __init__(self, coco: COCO, answer: Callable[[int], list[OracleDetection]]) -> None:
        super().__init__()
        self._device_anchor = torch.nn.Parameter(torch.zeros(1))  # the predictor looks for a parameter
        self.num_classes = len(COCO_CATEGORY_IDS)
        self.class_names = None  # COCO's 80 classes
        self.category_ids = None
        self.model_id = None
        self.by_size = {(int(im["height"]), int(im["width"])): int(im["id"]) for im in coco.dataset["images"]}
        assert len(self.by_size) == len(coco.dataset["images"]), "oracle images need distinct sizes"
        self.answer = answer
        #: per call: the batch size and the autocast dtype (None: no autocast)
        self.calls: list[tuple[int, torch.dtype | None]] = []
        self.interrupt_after: int | None = None  # raise KeyboardInterrupt from this call on

    @torch.no_grad()
    def detect(self, images: torch.Tensor, metas: Sequence[Any], with_masks: bool = True) -> list[Detections]:
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.calls.append((int(images.shape[0]), dtype))
        return [self._detections(tuple(meta.orig_size), with_masks) for meta in metas]

    def _detections(self, size: tuple[int, int], with_masks: bool) -> Detections:
        height, width = size
        dets = self.answer(self.by_size[size])
        n = len(dets)
        boxes = torch.tensor([d.box for d in dets], dtype=torch.float32).reshape(n, 4)
        scores = torch.tensor([d.score for d in dets], dtype=torch.float32)
        labels = torch.tensor([coco_label(d.category_id) for d in dets], dtype=torch.int64)
        if not with_masks:
            return Detections((height, width), boxes, scores, labels)
        probs = torch.from_numpy(np.stack([d.mask for d in dets]).astype(np.float32)) if n else \
            torch.zeros((0, height, width))
        whole = torch.tensor([[0.0, 0.0, width - 1.0, height - 1.0]]).expand(n, 4).contiguous()
        return Detections((height, width), boxes, scores, labels, probs, whole)


def oracle_for(ann_file: Path, answer: Callable[[COCO, int], list[OracleDetection]] = ground_truth
               ) -> OracleDetector:
    coco = load_coco_annotations(ann_file)
    return OracleDetector(coco, lambda image_id: answer(coco, image_id))

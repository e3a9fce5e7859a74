"""The one inference path shared by ``anzoo predict``, ``anzoo eval`` and ``anzoo serve``.

::

    image (path | bytes | PIL | ndarray) --load_image--> RGB uint8
        --preprocess_image (mmdetection v1: cv2 resize, normalize)--> tensor + ImageMeta
        --pad to a multiple of 32, batch only images of the same padded shape-->
        --model.detect (device, optional fp16 autocast)--> Detections (boxes, scores, labels, 28x28 masks)
        --paste masks (legacy: OpenCV per box, exact; fast: batched on the device)--> Instances

Only images with the same padded shape share a batch: Attentive Normalization reads the
statistics of the whole (padded) feature map, so padding an image further than mmdetection
v1 did would change its detections. Grouping keeps batched results identical to one-by-one.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .data.images import load_image
from .data.results import instances_to_records
from .data.transforms import ImageMeta, pad_to_batch, padded_shape, preprocess_image
from .factory import resolve_device
from .models.detection.detections import Detections
from .models.detection.detector import TwoStageDetector
from .models.detection.postprocess import paste_masks_fast, paste_masks_legacy
from .structures import Instances

__all__ = ["Predictor", "MASK_PASTE_MODES"]

log = logging.getLogger(__name__)

MASK_PASTE_MODES = ("auto", "legacy", "fast")


class Predictor:
    """Runs a detector on images of any size and returns ``Instances`` per image.

    Args:
        model: a detector from ``anzoo.create_model``.
        device: where to run; None keeps the model's device, 'auto' picks CUDA when present.
        fp16: autocast to float16 on CUDA (bfloat16 on CPU); AN statistics stay float32.
        batch_size: images per forward pass (same padded shape only, see module docstring).
        mask_paste: 'legacy' (OpenCV, exactly mmdetection v1), 'fast' (batched torch on the
            device, equal up to rounding at the 0.5 threshold), 'auto' (fast on CUDA, legacy on CPU).
        channels_last: use the channels-last memory format (faster convolutions on GPUs).
    """

    def __init__(self, model: TwoStageDetector, device: str | torch.device | None = None,
                 fp16: bool = False, batch_size: int = 1, mask_paste: str = "auto",
                 channels_last: bool = False) -> None:
        if mask_paste not in MASK_PASTE_MODES:
            raise ValueError(f"mask_paste must be one of {MASK_PASTE_MODES}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = next(model.parameters()).device if device is None else resolve_device(device)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.fp16 = fp16
        self.batch_size = batch_size
        self.mask_paste = ("fast" if self.device.type == "cuda" else "legacy") if mask_paste == "auto" else mask_paste

    # ----------------------------------------------------------------- stages
    @staticmethod
    def preprocess(image: Any) -> tuple[torch.Tensor, ImageMeta]:
        """Load (if needed) and preprocess one image exactly as mmdetection v1's test pipeline."""
        return preprocess_image(load_image(image))

    def _autocast(self):
        if not self.fp16:
            return torch.autocast(device_type=self.device.type, enabled=False)
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def detect_batch(self, tensors: Sequence[torch.Tensor], metas: Sequence[ImageMeta],
                     with_masks: bool = True) -> list[Detections]:
        """Model forward on preprocessed images (any shapes; padded together)."""
        batch = pad_to_batch(list(tensors))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model.detect(batch, metas, with_masks=with_masks)

    def paste(self, det: Detections, score_thr: float = 0.0) -> Instances:
        """Full-image boolean masks for the detections scoring at least ``score_thr``."""
        if score_thr > 0:
            keep = det.scores >= score_thr
            det = Detections(det.image_size, det.boxes[keep], det.scores[keep], det.labels[keep],
                             None if det.mask_probs is None else det.mask_probs[keep],
                             None if det.mask_boxes is None else det.mask_boxes[keep])
        masks = None
        if det.mask_probs is not None:
            boxes = det.mask_boxes if det.mask_boxes is not None else det.boxes
            if self.mask_paste == "fast":
                masks = paste_masks_fast(det.mask_probs, boxes, det.image_size)
            else:
                masks = paste_masks_legacy(det.mask_probs.cpu(), boxes.cpu(), det.image_size)
        return Instances(image_size=det.image_size, boxes=det.boxes.cpu(), scores=det.scores.cpu(),
                         labels=det.labels.cpu(), masks=None if masks is None else masks.cpu())

    # -------------------------------------------------------------- batching
    def batches(self, metas: Sequence[ImageMeta]) -> list[list[int]]:
        """Indices grouped by padded shape, ``batch_size`` at a time, in first-seen order."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, meta in enumerate(metas):
            groups[padded_shape(*meta.img_shape)].append(i)
        out = []
        for idx in groups.values():
            out.extend(idx[j:j + self.batch_size] for j in range(0, len(idx), self.batch_size))
        return out

    def predict_instances(self, images: Iterable[Any] | Any, score_thr: float = 0.0) -> list[Instances]:
        """Instances for each image, in input order."""
        items = _as_list(images)
        prepared = [self.preprocess(img) for img in items]
        metas = [m for _, m in prepared]
        results: list[Instances | None] = [None] * len(items)
        for idx in self.batches(metas):
            dets = self.detect_batch([prepared[i][0] for i in idx], [metas[i] for i in idx])
            for i, det in zip(idx, dets):
                results[i] = self.paste(det, score_thr)
        return [r for r in results if r is not None]

    def predict_records(self, images: Iterable[Any] | Any, score_thr: float = 0.3,
                        mask_format: str | None = "rle") -> list[list[dict]]:
        """JSON-ready instance records per image (what ``anzoo predict`` writes)."""
        instances = self.predict_instances(images, score_thr=score_thr)
        return [self.records(inst, score_thr=score_thr, mask_format=mask_format) for inst in instances]

    def records(self, inst: Instances, score_thr: float = 0.0, mask_format: str | None = "rle") -> list[dict]:
        from .data.coco import COCO_CATEGORY_IDS, COCO_CLASSES

        names = self.model.class_names or list(COCO_CLASSES)
        cat_ids = list(COCO_CATEGORY_IDS) if self.model.class_names is None else list(range(1, len(names) + 1))
        return instances_to_records(inst, names, cat_ids, score_thr=score_thr, mask_format=mask_format)


def _as_list(images: Iterable[Any] | Any) -> list[Any]:
    if isinstance(images, (str, bytes, np.ndarray)) or hasattr(images, "__fspath__") or hasattr(images, "getpixel"):
        return [images]
    return list(images)

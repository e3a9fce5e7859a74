"""The one inference path shared by ``anzoo predict``, ``anzoo eval`` and ``anzoo serve``.

::

    image (path | bytes | PIL | ndarray) --load_image--> RGB uint8
        --preprocess_image (mmdetection v1: cv2 resize, normalize)--> tensor + ImageMeta
        --pad to a multiple of 32, batch only images of the same padded shape-->
        --model.detect (device, precision: fp32 or bf16/fp16 autocast)--> Detections (boxes, scores, labels, 28x28 masks)
        --rank (score_thr, max_instances, pasted-area cap: before any pasting)-->
        --paste masks (legacy: OpenCV per box, exact; fast: batched on the device)
            --> Instances with (N, H, W) masks (Python API: predict_instances)
            --> or one mask at a time, each only as its box's window (MaskCrop), RLE-encoded or
                drawn and dropped: records, ``anzoo predict`` and the service (memory grows with
                what is returned, never with N x H x W)

Only images with the same padded shape share a batch: Attentive Normalization reads the
statistics of the whole (padded) feature map, so padding an image further than mmdetection
v1 did would change its detections. Grouping keeps batched results identical to one-by-one.
"""
from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.images import load_image
from .data.results import instances_to_records, records_from_parts
from .data.transforms import TEST_SCALE, ImageMeta, pad_to_batch, padded_shape, preprocess_image
from .errors import AnzooError
from .models.detection.detections import Detections
from .models.detection.detector import TwoStageDetector
from .models.detection.postprocess import MaskCrops, clipped_paste_windows, paste_masks_fast, paste_masks_legacy
from .models.layers.fold import count_foldable, fold_batch_norms
from .runtime import autocast, check_precision, precision_from_fp16, resolve_device
from .structures import Instances
from .visualize import draw_instances

__all__ = ["Predictor", "MASK_PASTE_MODES", "predict", "rank_indices"]

log = logging.getLogger(__name__)

MASK_PASTE_MODES = ("auto", "legacy", "fast")


class Predictor:
    """Runs a detector on images of any size and returns ``Instances`` per image.

    Args:
        model: a detector from ``anzoo.create_model``.
        device: where to run; None keeps the model's device, 'auto' picks CUDA when present.
        precision: 'fp32', 'bf16' (bfloat16 autocast, CPU and GPU) or 'fp16' (float16 autocast,
            CUDA only); the normalisation statistics stay float32 in every precision.
        fp16: deprecated alias: True means 'fp16' on CUDA, 'bf16' elsewhere (warns).
        batch_size: images per forward pass (same padded shape only, see module docstring).
        mask_paste: 'legacy' (OpenCV, exactly mmdetection v1), 'fast' (batched torch on the
            device, equal up to rounding at the 0.5 threshold), 'auto' (fast on CUDA, legacy on CPU).
        channels_last: use the channels-last memory format (faster convolutions on GPUs).
        scale: (long, short) test scale; the released models were evaluated at (1333, 800).
        fold_norms: run a copy of ``model`` whose eval-mode BatchNorms (and AN's normalisation)
            are folded into the convolutions before them (:func:`~anzoo.models.layers.fold_batch_norms`):
            the same detections up to float32 rounding, one pass over each feature map less
            per norm; ``model`` itself is left as it is (it can still be trained or saved).
    """

    def __init__(self, model: TwoStageDetector, device: str | torch.device | None = None,
                 precision: str = "fp32", batch_size: int = 1, mask_paste: str = "auto",
                 channels_last: bool = False, scale: tuple[int, int] = TEST_SCALE,
                 fold_norms: bool = True, fp16: bool | None = None) -> None:
        if mask_paste not in MASK_PASTE_MODES:
            raise ValueError(f"mask_paste must be one of {MASK_PASTE_MODES}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        #: whether ``model`` is a file from ``anzoo export`` (anzoo.export.OnnxDetector), run by
        #: its own runtime on the CPU
        self.exported = getattr(model, "runtime", "torch") != "torch"
        if self.exported:
            if precision != "fp32" or fp16 or channels_last or str(device) not in ("None", "auto", "cpu"):
                raise AnzooError(f"an exported model runs on {model.runtime} on the CPU: "
                                 f"no `precision='{precision}'`, `fp16`, `channels_last` or `device='{device}'`")
            device, fold_norms = "cpu", False  # its graph is fixed
        self.device = next(model.parameters()).device if device is None else resolve_device(device)
        if fp16 is not None:
            precision = precision_from_fp16(fp16, self.device)
        self.precision = check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.folded_norms = 0  # norms folded into convolutions in this predictor's copy of the model
        if fold_norms and count_foldable(self.model):
            self.model = copy.deepcopy(self.model)
            self.folded_norms = fold_batch_norms(self.model)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.batch_size = batch_size
        self.scale = tuple(scale)
        self.mask_paste = ("fast" if self.device.type == "cuda" else "legacy") if mask_paste == "auto" else mask_paste

    # ----------------------------------------------------------------- stages
    def preprocess(self, image: Any) -> tuple[torch.Tensor, ImageMeta]:
        """Load (if needed) and preprocess one image exactly as mmdetection v1's test pipeline."""
        return preprocess_image(load_image(image), scale=self.scale)

    @property
    def fp16(self) -> bool:
        """Deprecated: whether the model runs in a 16-bit precision (see ``precision``)."""
        return self.precision != "fp32"

    @torch.inference_mode()
    def detect_batch(self, tensors: Sequence[torch.Tensor] | torch.Tensor, metas: Sequence[ImageMeta],
                     with_masks: bool = True) -> list[Detections]:
        """Model forward on preprocessed images (any shapes; padded together), or on an
        already padded (N, 3, H, W) batch such as the COCO DataLoader yields."""
        if isinstance(tensors, torch.Tensor) and tensors.dim() == 4:
            batch = tensors
        else:
            batch = pad_to_batch(list(tensors))
        if self.device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            return self.model.detect(batch, metas, with_masks=with_masks)

    def paste(self, det: Detections, score_thr: float = 0.0, max_instances: int | None = None) -> Instances:
        """Full-image boolean masks for the detections scoring at least ``score_thr`` (and only
        the ``max_instances`` best of them), in the detector's order. The instances are chosen
        before pasting; each mask is an (H, W) array, for the Python API."""
        keep, _ = rank_indices(det, score_thr, max_instances)
        det = det[keep.sort().values]  # back to the detector's order
        masks = self.paste_masks(det)
        return Instances(image_size=det.image_size, boxes=det.boxes.cpu(), scores=det.scores.cpu(),
                         labels=det.labels.cpu(), masks=None if masks is None else masks.cpu())

    @staticmethod
    def rank(det: Detections, score_thr: float = 0.0, max_instances: int | None = None,
             max_mask_pixels: int | None = None) -> tuple[Detections, int]:
        """The detections to answer with, highest score first, before any pasting, and how
        many the pasted-area cap left out (see :func:`rank_indices`)."""
        keep, dropped = rank_indices(det, score_thr, max_instances, max_mask_pixels)
        return det[keep], dropped

    def mask_crops(self, det: Detections) -> MaskCrops | None:
        """``det``'s masks, pasted one at a time when indexed, each only as its window of the
        image (``mask_paste`` mode as :meth:`paste_masks`); None for box-only detections."""
        if det.mask_probs is None:
            return None
        boxes = det.mask_boxes if det.mask_boxes is not None else det.boxes
        return MaskCrops(det.mask_probs, boxes, det.image_size, mode=self.mask_paste)

    def detection_records(self, det: Detections, mask_format: str | None = "rle") -> list[dict]:
        """JSON records of ``det`` in its order (give it :meth:`rank`'s output), the masks pasted
        and encoded one at a time: the memory used is that of one box's window."""
        masks = self.mask_crops(det) if mask_format is not None else None
        return records_from_parts(det.boxes, det.scores, det.labels, self.class_names(), self.category_ids(),
                                  masks, mask_format)

    def draw(self, image: np.ndarray, det: Detections) -> Image.Image:
        """``det`` drawn on ``image`` (:func:`~anzoo.visualize.draw_instances`), each mask pasted
        and blended in turn, never all at once."""
        boxes_only = Instances(det.image_size, det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
        return draw_instances(image, boxes_only, self.class_names(), masks=self.mask_crops(det))

    def paste_masks(self, det: Detections) -> torch.Tensor | None:
        """(N, h, w) bool full-image masks of all of ``det`` ('fast': on det's device, 'legacy':
        on the CPU), or None for box-only detections. Evaluation calls it in worker threads."""
        if det.mask_probs is None:
            return None
        boxes = det.mask_boxes if det.mask_boxes is not None else det.boxes
        if self.mask_paste == "fast":
            return paste_masks_fast(det.mask_probs, boxes, det.image_size)
        return paste_masks_legacy(det.mask_probs.cpu(), boxes.cpu(), det.image_size)

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

    def detect(self, images: Iterable[Any] | Any, score_thr: float = 0.0) -> list[Detections]:
        """Detections (before pasting) scoring at least ``score_thr`` for each image, in input order."""
        items = _as_list(images)
        prepared = [self.preprocess(img) for img in items]
        metas = [m for _, m in prepared]
        results: list[Detections | None] = [None] * len(items)
        for idx in self.batches(metas):
            dets = self.detect_batch([prepared[i][0] for i in idx], [metas[i] for i in idx])
            for i, det in zip(idx, dets):
                results[i] = det[det.scores >= score_thr]
        return [r for r in results if r is not None]

    def predict_instances(self, images: Iterable[Any] | Any, score_thr: float = 0.0) -> list[Instances]:
        """Instances with (N, H, W) masks for each image, in input order."""
        return [self.paste(det) for det in self.detect(images, score_thr)]

    def predict_records(self, images: Iterable[Any] | Any, score_thr: float = 0.3,
                        mask_format: str | None = "rle") -> list[list[dict]]:
        """JSON-ready instance records per image (what ``anzoo predict`` writes)."""
        return [self.detection_records(self.rank(det, score_thr)[0], mask_format)
                for det in self.detect(images, score_thr)]

    def class_names(self) -> list[str]:
        from .data.coco import COCO_CLASSES

        return list(self.model.class_names or COCO_CLASSES)

    def category_ids(self) -> list[int]:
        """Dataset category id of each contiguous label (COCO's ids for the zoo's models)."""
        from .data.coco import COCO_CATEGORY_IDS

        ids = getattr(self.model, "category_ids", None)
        if ids:
            return list(ids)
        if self.model.class_names is None:
            return list(COCO_CATEGORY_IDS)
        return list(range(1, len(self.model.class_names) + 1))

    def records(self, inst: Instances, score_thr: float = 0.0, mask_format: str | None = "rle",
                max_instances: int | None = None) -> list[dict]:
        return instances_to_records(inst, self.class_names(), self.category_ids(), score_thr=score_thr,
                                    mask_format=mask_format, max_instances=max_instances)


def rank_indices(det: Detections, score_thr: float = 0.0, max_instances: int | None = None,
                 max_mask_pixels: int | None = None) -> tuple[torch.Tensor, int]:
    """Which detections to answer with, chosen before any pasting: the indices of those scoring
    at least ``score_thr``, highest score first (stable), at most ``max_instances`` of them, and,
    with ``max_mask_pixels``, only as many as have paste windows (the boxes clipped to the
    image, :func:`~anzoo.models.detection.postprocess.clipped_paste_windows`) covering at most
    that many pixels together. Returns them and how many that cap left out."""
    keep = torch.nonzero(det.scores >= score_thr).flatten()
    keep = keep[torch.sort(det.scores[keep], descending=True, stable=True).indices]
    if max_instances is not None:
        keep = keep[:max(0, max_instances)]
    dropped = 0
    if max_mask_pixels is not None and det.mask_probs is not None and keep.numel():
        boxes = (det.mask_boxes if det.mask_boxes is not None else det.boxes)[keep]
        _, _, win_w, win_h = clipped_paste_windows(boxes, det.image_size)
        within = int(((win_w * win_h).cumsum(0) <= max_mask_pixels).sum())
        dropped = keep.numel() - within
        keep = keep[:within]
    return keep, dropped


def predict(model: TwoStageDetector, images: Iterable[Any] | Any, score_thr: float = 0.3,
            **predictor_kwargs: Any) -> list[list[dict]]:
    """Instance segmentation of PIL images, numpy arrays or paths (one or a list) with ``model``.

    Returns, per image, its instances as JSON records ``{category_id, category_name, bbox
    [x, y, w, h], score, segmentation (COCO RLE)}``, highest score first: the records ``anzoo
    predict`` writes. ``predictor_kwargs`` go to :class:`Predictor` (``device``, ``scale``, ...).
    """
    return Predictor(model, **predictor_kwargs).predict_records(images, score_thr=score_thr)


def _as_list(images: Iterable[Any] | Any) -> list[Any]:
    if isinstance(images, (str, bytes, np.ndarray)) or hasattr(images, "__fspath__") or hasattr(images, "getpixel"):
        return [images]
    return list(images)

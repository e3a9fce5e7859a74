"""Periodic evaluation during training.

:func:`run_periodic_evaluation` is the one hook the training loop calls. It uses anzoo's
evaluation machinery (``anzoo.evaluation.evaluate_model``) when that module provides it, and
otherwise a small built-in COCO evaluation (:func:`evaluate_coco`: the shared inference path,
pycocotools' ``COCOeval`` for boxes and masks), so periodic evaluation works either way.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from pycocotools.cocoeval import COCOeval

from ..data.coco import CocoImageDataset
from ..data.results import instances_to_coco
from ..data.transforms import TEST_SCALE
from ..models.detection.detector import TwoStageDetector

__all__ = ["run_periodic_evaluation", "evaluate_coco"]

log = logging.getLogger(__name__)


def evaluate_coco(model: TwoStageDetector, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                  scale: Sequence[int] = TEST_SCALE, max_images: int | None = None,
                  device: torch.device | str | None = None) -> dict[str, float]:
    """COCO box and mask AP of ``model`` on a COCO-format dataset (test-time pipeline).

    Returns ``bbox_ap``, ``bbox_ap50``, ``segm_ap``, ``segm_ap50`` (in [0, 1], -1 when nothing
    could be evaluated) and ``images``. The model is left in eval mode.
    """
    from ..inference import Predictor

    dataset = CocoImageDataset(ann_file, image_dir, scale=scale)
    ids = dataset.image_ids[:max_images] if max_images else dataset.image_ids
    predictor = Predictor(model, device=device, mask_paste="auto", scale=tuple(scale))
    category_ids = list(getattr(model, "category_ids", None) or dataset.category_ids)
    records: list[dict[str, Any]] = []
    for index in range(len(ids)):
        image_id, tensor, meta = dataset[index]
        det = predictor.detect_batch([tensor], [meta])[0]
        records.extend(instances_to_coco(predictor.paste(det), image_id, category_ids))
    out: dict[str, float] = {"images": float(len(ids))}
    for iou_type in ("bbox", "segm"):
        if not records:
            out[f"{iou_type}_ap"] = out[f"{iou_type}_ap50"] = -1.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dets = dataset.coco.loadRes(records)
            ev = COCOeval(dataset.coco, dets, iou_type)
            ev.params.imgIds = list(ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[f"{iou_type}_ap"] = float(ev.stats[0])
        out[f"{iou_type}_ap50"] = float(ev.stats[1])
    return out


def run_periodic_evaluation(model: TwoStageDetector, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                            scale: Sequence[int] = TEST_SCALE, device: torch.device | str | None = None
                            ) -> dict[str, float]:
    """Evaluate ``model`` (a bare module, not DDP-wrapped) during training; restores its mode."""
    was_training = model.training
    try:
        try:
            evaluation = importlib.import_module("anzoo.evaluation")
        except ImportError:
            evaluation = None
        evaluate_model = getattr(evaluation, "evaluate_model", None) if evaluation is not None else None
        if evaluate_model is not None:
            try:
                result = evaluate_model(model, ann_file=ann_file, image_dir=image_dir, scale=tuple(scale),
                                        device=device)
            except TypeError as exc:  # an evaluate_model with another signature
                log.warning("anzoo.evaluation.evaluate_model could not be called (%s); "
                            "using the built-in COCO evaluation", exc)
            else:
                return dict(result) if isinstance(result, dict) else {"result": result}
        return evaluate_coco(model, ann_file, image_dir, scale=scale, device=device)
    finally:
        model.train(was_training)

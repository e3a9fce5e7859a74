"""Periodic evaluation during training, through anzoo's evaluation machinery.

:func:`run_periodic_evaluation` is the one hook the training loop calls: COCO box and mask
metrics of the model being trained (``anzoo.evaluation.evaluate_model``, in the main process
alone), with the model put back into training mode afterwards.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from pycocotools.coco import COCO

from ..data.transforms import TEST_SCALE
from ..models.detection.detector import TwoStageDetector

__all__ = ["run_periodic_evaluation"]


def run_periodic_evaluation(model: TwoStageDetector, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                            scale: Sequence[int] = TEST_SCALE, device: torch.device | str | None = None,
                            workers: int = 2, max_images: int | None = None,
                            out_dir: str | os.PathLike | None = None, distributed: bool = False,
                            coco: COCO | None = None) -> dict[str, float]:
    """``images`` and ``bbox_ap``, ``segm_ap``, ``segm_ap50``, ... of ``model`` (a bare module,
    not DDP-wrapped) on a COCO-format dataset; restores the model's mode. ``distributed``:
    called by every training process, each evaluating its share of the images. ``coco``: the
    annotation file already loaded (and checked)."""
    from ..evaluation import evaluate_model

    was_training = model.training
    try:
        return evaluate_model(model, ann_file, image_dir, scale=tuple(scale), device=device, workers=workers,
                              max_images=max_images, out_dir=out_dir, distributed=distributed, coco=coco)
    finally:
        model.train(was_training)

"""Small, fast stand-ins for the released models, for tests and benchmarks.

A randomly initialised detector scores every class near 1/81 and so detects nothing above
mmdetection's 0.05 threshold. ``confident_model`` biases the classifier towards a few classes
and keeps only a few proposals, so a random-weights model produces detections (and masks)
quickly on a CPU while running exactly the same code as a released checkpoint.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .factory import create_model
from .models.detection.detector import TwoStageDetector

__all__ = ["confident_model", "SMALL_SCALE"]

#: A test scale for tiny synthetic images (long side, short side).
SMALL_SCALE = (320, 224)


def confident_model(model_id: str = "r50-bn", *, seed: int = 0, proposals: int = 50,
                    classes: Sequence[int] = (0, 2, 16), logit: float = 6.0,
                    max_per_img: int | None = None, device: str = "cpu") -> TwoStageDetector:
    """A random-weights zoo model whose box classifier favours ``classes`` (contiguous labels).

    The RPN keeps at most ``proposals`` boxes per image (1000 in the released configs), the
    RoI heads at most ``max_per_img`` detections (default: the configs' 100).
    Deterministic for a given seed.
    """
    torch.manual_seed(seed)
    model = create_model(model_id, device=device)
    with torch.no_grad():
        for predictor in model.roi_heads.box_predictors():
            bias = predictor.cls_score.bias
            bias.zero_()
            bias[0] = logit / 2  # background
            for c in classes:
                bias[c + 1] = logit
            predictor.cls_score.weight.mul_(0.1)
    config = model.config
    rpn_test = replace(config.rpn_test, nms_pre=min(config.rpn_test.nms_pre, 4 * proposals),
                       nms_post=min(config.rpn_test.nms_post, proposals), max_num=proposals)
    rcnn_test = config.rcnn_test if max_per_img is None else replace(config.rcnn_test, max_per_img=max_per_img)
    model.config = replace(config, rpn_test=rpn_test, rcnn_test=rcnn_test)
    return model.eval()

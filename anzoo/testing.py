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
                    device: str = "cpu") -> TwoStageDetector:
    """A random-weights zoo model whose box classifier favours ``classes`` (contiguous labels).

    The RPN keeps at most ``proposals`` boxes per image (1000 in the released configs).
    Deterministic for a given seed.
    """
    torch.manual_seed(seed)
    model = create_model(model_id, device=device)
    heads = model.roi_heads
    predictors = [heads.box_predictor] if hasattr(heads, "box_predictor") else \
        [stage.box_predictor for stage in heads.stages]
    with torch.no_grad():
        for predictor in predictors:
            bias = predictor.cls_score.bias
            bias.zero_()
            bias[0] = logit / 2  # background
            for c in classes:
                bias[c + 1] = logit
            predictor.cls_score.weight.mul_(0.1)
    cfg = model.rpn.test_cfg
    model.rpn.test_cfg = replace(cfg, nms_pre=min(cfg.nms_pre, 4 * proposals),
                                 nms_post=min(cfg.nms_post, proposals), max_num=proposals)
    return model.eval()

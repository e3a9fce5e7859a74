"""Build any row of the zoo from its architecture description."""
from __future__ import annotations

from collections.abc import Sequence

from ..backbones import create_backbone
from .detector import TwoStageDetector
from .fpn import FPN
from .heads import ConvFCBoxHead, MaskHead, box_head_norms
from .roi_heads import CASCADE_STDS, CascadeRoIHeads, CascadeStage, MaskRoIHeads
from .rpn import LegacyRPN

__all__ = ["DETECTORS", "HEAD_NORMS", "build_detector", "fpn_norm", "mask_head_norm"]

DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")
HEAD_NORMS = ("none", "gn", "an_gn", "sn")


def fpn_norm(head_norm: str) -> str | None:
    """The FPN carries GN in every row with normalized heads (the -gn, -an-gn and -sn rows)."""
    return None if head_norm == "none" else "gn"


def mask_head_norm(head_norm: str) -> str | None:
    """AN (w/ GN) rows keep plain GN in the mask head; GN/SN rows use their own norm."""
    return {"none": None, "gn": "gn", "an_gn": "gn", "sn": "sn"}[head_norm]


def build_detector(detector: str, backbone: str, head_norm: str = "none", num_classes: int = 80,
                   class_names: Sequence[str] | None = None, frozen_stages: int = 1,
                   norm_eval: bool = True) -> TwoStageDetector:
    """A randomly initialised detector.

    Args:
        detector: 'mask_rcnn' (4conv1fc box head) or 'cascade_mask_rcnn' (3 stages, 2fc heads).
        backbone: a backbone registry name such as 'r50-an' or 'aognet40m-bn'.
        head_norm: 'none', 'gn', 'an_gn' or 'sn' for the FPN and heads.
        num_classes: object classes, without background.
    """
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; expected one of {DETECTORS}")
    if head_norm not in HEAD_NORMS:
        raise ValueError(f"unknown head norm {head_norm!r}; expected one of {HEAD_NORMS}")
    body = create_backbone(backbone, num_classes=None, frozen_stages=frozen_stages, norm_eval=norm_eval)
    fpn = FPN(list(body.out_channels), norm=fpn_norm(head_norm))
    rpn = LegacyRPN(fpn.out_channels)
    if detector == "mask_rcnn":
        roi_heads = MaskRoIHeads(
            ConvFCBoxHead(num_convs=4, num_fcs=1, norms=box_head_norms(head_norm, 4)),
            MaskHead(num_classes, norm=mask_head_norm(head_norm)),
            num_classes)
    else:
        if head_norm != "none":
            raise ValueError("the Cascade Mask R-CNN rows have plain heads (head_norm 'none')")
        stages = [CascadeStage(ConvFCBoxHead(num_convs=0, num_fcs=2), MaskHead(num_classes),
                               num_classes, stds) for stds in CASCADE_STDS]
        roi_heads = CascadeRoIHeads(stages, num_classes)
    return TwoStageDetector(body, fpn, rpn, roi_heads, num_classes, class_names)

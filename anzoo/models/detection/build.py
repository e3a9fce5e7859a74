"""Build any row of the zoo from its architecture description."""
from __future__ import annotations

from collections.abc import Sequence

from ...schema import Detector, HeadNorm
from ..backbones import create_backbone
from .config import DetectorConfig
from .detector import TwoStageDetector
from .fpn import FPN
from .heads import ConvFCBoxHead, MaskHead, box_head_norms
from .roi_heads import CASCADE_STDS, CascadeRoIHeads, CascadeStage, MaskRoIHeads, RoIHeads
from .rpn import LegacyRPN

__all__ = ["build_detector", "fpn_norm", "mask_head_norm"]


def fpn_norm(head_norm: str) -> str | None:
    """The FPN carries GN in every row with normalized heads (the -gn, -an-gn and -sn rows)."""
    return None if head_norm == HeadNorm.none else "gn"


def mask_head_norm(head_norm: str) -> str | None:
    """AN (w/ GN) rows keep plain GN in the mask head; GN/SN rows use their own norm."""
    return {HeadNorm.none: None, HeadNorm.gn: "gn", HeadNorm.an_gn: "gn", HeadNorm.sn: "sn"}[HeadNorm(head_norm)]


def build_detector(detector: str, backbone: str, head_norm: str = "none", num_classes: int = 80,
                   class_names: Sequence[str] | None = None, frozen_stages: int = 1,
                   norm_eval: bool = True, config: DetectorConfig | None = None) -> TwoStageDetector:
    """A randomly initialised detector.

    Args:
        detector: 'mask_rcnn' (4conv1fc box head) or 'cascade_mask_rcnn' (3 stages, 2fc heads).
        backbone: a backbone registry name such as 'r50-an' or 'aognet40m-bn'.
        head_norm: 'none', 'gn', 'an_gn' or 'sn' for the FPN and heads.
        num_classes: object classes, without background.
        config: test and training settings (default: the reference configs' for ``detector``,
            :meth:`DetectorConfig.for_detector`).
    """
    if detector not in Detector.values():
        raise ValueError(f"unknown detector {detector!r}; expected one of {Detector.values()}")
    if head_norm not in HeadNorm.values():
        raise ValueError(f"unknown head norm {head_norm!r}; expected one of {HeadNorm.values()}")
    if Detector(detector) is Detector.cascade_mask_rcnn and head_norm != HeadNorm.none:
        raise ValueError("the Cascade Mask R-CNN rows have plain heads (head_norm 'none')")
    config = config if config is not None else DetectorConfig.for_detector(detector)
    body = create_backbone(backbone, num_classes=None, frozen_stages=frozen_stages, norm_eval=norm_eval)
    fpn = FPN(list(body.out_channels), norm=fpn_norm(head_norm))
    rpn = LegacyRPN(fpn.out_channels, test_cfg=config.rpn_test, train_cfg=config.rpn_train,
                    target_cfg=config.rpn_targets)
    return TwoStageDetector(body, fpn, rpn, _roi_heads(detector, head_norm, num_classes, config), num_classes,
                            class_names)


def _roi_heads(detector: str, head_norm: str, num_classes: int, config: DetectorConfig) -> RoIHeads:
    settings = dict(test_cfg=config.rcnn_test, train_cfgs=config.rcnn_train,
                    stage_loss_weights=config.stage_loss_weights)
    if Detector(detector) is Detector.mask_rcnn:
        return MaskRoIHeads(ConvFCBoxHead(num_convs=4, num_fcs=1, norms=box_head_norms(head_norm, 4)),
                            MaskHead(num_classes, norm=mask_head_norm(head_norm)), num_classes, **settings)
    stages = [CascadeStage(ConvFCBoxHead(num_convs=0, num_fcs=2), MaskHead(num_classes), num_classes, stds)
              for stds in CASCADE_STDS]
    return CascadeRoIHeads(stages, num_classes, **settings)

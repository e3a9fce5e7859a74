"""Mask R-CNN and Cascade Mask R-CNN with mmdetection v1's conventions, on torchvision pieces.

* the detector and its builder: :class:`TwoStageDetector`, :func:`build_detector`, its
  settings :class:`DetectorConfig` (``config.py``: mmdet v1's ``test_cfg`` / ``train_cfg``);
* its stages: :class:`FPN`, :class:`LegacyRPN` (``rpn.py``), the RoI heads (``roi_heads.py``:
  :class:`RoIHeads`, :class:`MaskRoIHeads`, :class:`CascadeRoIHeads`) and their layers
  (``heads.py``);
* the legacy conventions they rest on: anchors, box coding, +1 IoU and NMS, multi-level
  RoIAlign, per-class NMS and mask pasting (``anchors.py``, ``box_coder.py``, ``box_ops.py``,
  ``roi_align.py``, ``postprocess.py``); training targets and losses (``targets.py``,
  ``losses.py``); the original checkpoints' key layout (``convert.py``);
* the test path for one image as a traceable module for the ONNX export (``traced.py``:
  :class:`~.traced.TracedDetector`, used by ``anzoo.export``).
"""
from .anchors import LegacyAnchorGenerator, legacy_base_anchors
from .box_coder import LegacyBoxCoder
from .box_ops import legacy_batched_nms, legacy_box_area, legacy_box_iou, legacy_nms
from .build import build_detector
from .config import (
    DetectorConfig,
    RCNNTestConfig,
    RCNNTrainConfig,
    RPNProposalConfig,
    RPNTargetConfig,
)
from .detections import Detections
from .detector import TwoStageDetector
from .fpn import FPN
from .heads import BoxPredictor, ConvFCBoxHead, MaskHead
from .postprocess import (
    legacy_mask_boxes,
    legacy_rescale_boxes,
    multiclass_nms,
    paste_masks_fast,
    paste_masks_legacy,
)
from .roi_align import LegacyMultiScaleRoIAlign, legacy_roi_align, legacy_roi_align_torch, map_roi_levels
from .roi_heads import CascadeRoIHeads, CascadeStage, MaskRoIHeads, RoIHeads
from .rpn import LegacyRPN, select_proposals

__all__ = [
    "TwoStageDetector", "build_detector", "Detections",
    "DetectorConfig", "RPNProposalConfig", "RPNTargetConfig", "RCNNTestConfig", "RCNNTrainConfig",
    "FPN", "LegacyRPN", "select_proposals",
    "RoIHeads", "MaskRoIHeads", "CascadeRoIHeads", "CascadeStage", "ConvFCBoxHead", "BoxPredictor", "MaskHead",
    "LegacyAnchorGenerator", "legacy_base_anchors",
    "LegacyBoxCoder",
    "legacy_box_area", "legacy_box_iou", "legacy_nms", "legacy_batched_nms",
    "multiclass_nms", "paste_masks_legacy", "paste_masks_fast", "legacy_mask_boxes", "legacy_rescale_boxes",
    "legacy_roi_align", "legacy_roi_align_torch", "map_roi_levels", "LegacyMultiScaleRoIAlign",
]

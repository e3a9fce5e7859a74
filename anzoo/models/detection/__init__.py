"""Detection building blocks that reproduce mmdetection v1's test-time conventions."""
from .anchors import LegacyAnchorGenerator, legacy_base_anchors
from .box_coder import LegacyBoxCoder
from .box_ops import legacy_batched_nms, legacy_box_area, legacy_box_iou, legacy_nms
from .postprocess import (
    legacy_mask_boxes,
    legacy_rescale_boxes,
    multiclass_nms,
    paste_masks_fast,
    paste_masks_legacy,
)
from .roi_align import LegacyMultiScaleRoIAlign, legacy_roi_align, legacy_roi_align_torch, map_roi_levels
from .rpn import LegacyRPN, RPNProposalConfig, select_proposals

__all__ = [
    "LegacyAnchorGenerator", "legacy_base_anchors",
    "LegacyBoxCoder",
    "legacy_box_area", "legacy_box_iou", "legacy_nms", "legacy_batched_nms",
    "multiclass_nms", "paste_masks_legacy", "paste_masks_fast", "legacy_mask_boxes", "legacy_rescale_boxes",
    "legacy_roi_align", "legacy_roi_align_torch", "map_roi_levels", "LegacyMultiScaleRoIAlign",
    "LegacyRPN", "RPNProposalConfig", "select_proposals",
]

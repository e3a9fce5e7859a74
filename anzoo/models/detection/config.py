"""The detectors' test and training settings: mmdetection v1's ``test_cfg`` and ``train_cfg``.

Every setting is a frozen dataclass; :class:`DetectorConfig` gathers them for one detector.
``build_detector`` makes the configs' values (:meth:`DetectorConfig.for_detector`) unless given
another, and hands each part to the module that uses it (the RPN, the RoI heads). To change a
setting, replace it::

    config = dataclasses.replace(model.config, rcnn_test=RCNNTestConfig(max_per_img=10))
    model.config = config  # or build_detector(..., config=config)

The values are those of every config in the reference fork's ``configs/attn_norm``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...schema import Detector

__all__ = [
    "CASCADE_STAGE_LOSS_WEIGHTS",
    "CASCADE_TRAIN_CFGS",
    "MASK_RCNN_TRAIN_CFG",
    "RCNN_TEST_CFG",
    "RPN_TARGET_CFG",
    "RPN_TEST_CFG",
    "RPN_TRAIN_CFG",
    "DetectorConfig",
    "RCNNTestConfig",
    "RCNNTrainConfig",
    "RPNProposalConfig",
    "RPNTargetConfig",
]


# ------------------------------------------------------------------------------------ RPN
@dataclass(frozen=True)
class RPNProposalConfig:
    """How the RPN selects proposals (``test_cfg.rpn`` / ``train_cfg.rpn_proposal``): per
    level the top ``nms_pre`` by score, NMS at ``nms_thr``, the first ``nms_post`` survivors;
    then the top ``max_num`` of all levels. Boxes smaller than ``min_bbox_size`` are dropped
    (0: none)."""

    nms_pre: int = 1000
    nms_post: int = 1000
    max_num: int = 1000
    nms_thr: float = 0.7
    min_bbox_size: float = 0
    nms_across_levels: bool = False


#: ``test_cfg.rpn`` of every config in ``configs/attn_norm``.
RPN_TEST_CFG = RPNProposalConfig(nms_pre=1000, nms_post=1000, max_num=1000, nms_thr=0.7)
#: ``train_cfg.rpn_proposal`` of the same configs.
RPN_TRAIN_CFG = RPNProposalConfig(nms_pre=2000, nms_post=2000, max_num=2000, nms_thr=0.7)


@dataclass(frozen=True)
class RPNTargetConfig:
    """mmdet v1's ``train_cfg.rpn``: anchor assignment, sampling and loss settings."""

    pos_iou_thr: float = 0.7
    neg_iou_thr: float = 0.3
    min_pos_iou: float = 0.3
    num_samples: int = 256
    pos_fraction: float = 0.5
    allowed_border: float = 0
    smooth_l1_beta: float = 1.0 / 9.0


#: ``train_cfg.rpn`` of every config in ``configs/attn_norm``.
RPN_TARGET_CFG = RPNTargetConfig()


# ---------------------------------------------------------------------------------- R-CNN
@dataclass(frozen=True)
class RCNNTestConfig:
    """``test_cfg.rcnn``: class scores above ``score_thr`` (strictly), per-class NMS at
    ``nms_iou``, at most ``max_per_img`` detections per image."""

    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100


#: ``test_cfg.rcnn`` of every config in ``configs/attn_norm``.
RCNN_TEST_CFG = RCNNTestConfig()


@dataclass(frozen=True)
class RCNNTrainConfig:
    """mmdet v1's ``train_cfg.rcnn`` of one box/mask stage."""

    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.5
    min_pos_iou: float = 0.5
    num_samples: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    mask_size: int = 28
    smooth_l1_beta: float = 1.0


#: Mask R-CNN rows' ``train_cfg.rcnn``.
MASK_RCNN_TRAIN_CFG = RCNNTrainConfig()
#: Cascade rows: IoU thresholds 0.5, 0.6, 0.7 for the three stages.
CASCADE_TRAIN_CFGS = (RCNNTrainConfig(), RCNNTrainConfig(0.6, 0.6, 0.6), RCNNTrainConfig(0.7, 0.7, 0.7))
#: Cascade rows' ``stage_loss_weights``.
CASCADE_STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)


# ------------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class DetectorConfig:
    """Test and training settings of a two-stage detector.

    Attributes:
        rpn_test: proposals at test time (1000 per image).
        rpn_train: proposals in training (2000 per image).
        rpn_targets: the RPN's anchor assignment, sampling and loss.
        rcnn_test: score threshold, NMS and detections per image of the RoI heads.
        rcnn_train: assignment, sampling and loss of each box/mask stage (one for Mask
            R-CNN, three for Cascade Mask R-CNN).
        stage_loss_weights: the weight of each stage's losses (Cascade: 1, 0.5, 0.25).
    """

    rpn_test: RPNProposalConfig = RPN_TEST_CFG
    rpn_train: RPNProposalConfig = RPN_TRAIN_CFG
    rpn_targets: RPNTargetConfig = RPN_TARGET_CFG
    rcnn_test: RCNNTestConfig = RCNN_TEST_CFG
    rcnn_train: tuple[RCNNTrainConfig, ...] = (MASK_RCNN_TRAIN_CFG,)
    stage_loss_weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        # tuples, so that the config stays hashable and immutable when given lists
        object.__setattr__(self, "rcnn_train", tuple(self.rcnn_train))
        object.__setattr__(self, "stage_loss_weights", tuple(float(w) for w in self.stage_loss_weights))
        if not self.rcnn_train or len(self.rcnn_train) != len(self.stage_loss_weights):
            raise ValueError(f"{len(self.rcnn_train)} R-CNN train configs but {len(self.stage_loss_weights)} "
                             "stage loss weights: give one of each per stage")

    @property
    def num_stages(self) -> int:
        return len(self.rcnn_train)

    @classmethod
    def for_detector(cls, detector: Detector | str) -> DetectorConfig:
        """The reference configs' settings of ``detector`` ('mask_rcnn' or 'cascade_mask_rcnn')."""
        if Detector(detector) is Detector.cascade_mask_rcnn:
            return cls(rcnn_train=CASCADE_TRAIN_CFGS, stage_loss_weights=CASCADE_STAGE_LOSS_WEIGHTS)
        return cls()

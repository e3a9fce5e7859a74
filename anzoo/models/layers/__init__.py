"""Normalization layers: Attentive Normalization (BN and GN forms), Switchable Normalization, and
the folding of eval-mode BatchNorms into convolutions for inference."""
from .attentive_norm import AttentionWeights, AttentiveBatchNorm2d, AttentiveGroupNorm, HardSigmoid
from .fold import fold_batch_norms
from .norm import GN_GROUPS, NORM_EPS, NORM_KINDS, build_norm
from .switchable_norm import SwitchNorm2d

__all__ = [
    "AttentionWeights", "AttentiveBatchNorm2d", "AttentiveGroupNorm", "HardSigmoid",
    "SwitchNorm2d", "build_norm", "fold_batch_norms", "NORM_KINDS", "GN_GROUPS", "NORM_EPS",
]

"""Normalization layers: Attentive Normalization (BN and GN forms), Switchable Normalization."""
from .attentive_norm import AttentionWeights, AttentiveBatchNorm2d, AttentiveGroupNorm, HardSigmoid
from .norm import GN_GROUPS, NORM_EPS, NORM_KINDS, build_norm
from .switchable_norm import SwitchNorm2d

__all__ = [
    "AttentionWeights", "AttentiveBatchNorm2d", "AttentiveGroupNorm", "HardSigmoid",
    "SwitchNorm2d", "build_norm", "NORM_KINDS", "GN_GROUPS", "NORM_EPS",
]

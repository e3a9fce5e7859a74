"""One builder for every normalization the zoo uses, named as in zoo.yaml."""
from __future__ import annotations

from torch import nn

from .attentive_norm import AttentiveBatchNorm2d, AttentiveGroupNorm
from .switchable_norm import SwitchNorm2d

__all__ = ["NORM_KINDS", "build_norm", "GN_GROUPS", "NORM_EPS"]

GN_GROUPS = 32
NORM_EPS = 1e-5

#: bn: BatchNorm; an: Attentive Normalization (w/ BN); gn: GroupNorm(32);
#: an_gn: Attentive Normalization (w/ GN); sn: Switchable Normalization.
NORM_KINDS = ("bn", "an", "gn", "an_gn", "sn")


def build_norm(kind: str, num_channels: int, *, k: int | None = None) -> nn.Module:
    """A normalization layer over ``num_channels`` channels; ``k`` is required for AN kinds."""
    if kind == "bn":
        return nn.BatchNorm2d(num_channels, eps=NORM_EPS)
    if kind == "gn":
        return nn.GroupNorm(GN_GROUPS, num_channels, eps=NORM_EPS)
    if kind == "sn":
        return SwitchNorm2d(num_channels, eps=NORM_EPS)
    if kind in ("an", "an_gn"):
        if not k or k < 1:
            raise ValueError(f"norm {kind!r} needs the number of mixture components k")
        if kind == "an":
            return AttentiveBatchNorm2d(num_channels, k, eps=NORM_EPS)
        return AttentiveGroupNorm(GN_GROUPS, num_channels, k, eps=NORM_EPS)
    raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")

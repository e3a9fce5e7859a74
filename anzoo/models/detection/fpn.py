"""Feature Pyramid Network as the mmdetection-v1 configs set it up.

torchvision's FeaturePyramidNetwork matches it: 1x1 lateral and 3x3 output convs without
activation, bias only when no norm follows, nearest x2 top-down upsampling (padded inputs
make every level exactly twice the next), and P6 = max_pool2d(P5, kernel 1, stride 2)
(``LastLevelMaxPool``).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..layers import build_norm

__all__ = ["FPN", "FPN_CHANNELS"]

FPN_CHANNELS = 256


class FPN(FeaturePyramidNetwork):
    """Four backbone levels (c2..c5) in, five 256-channel levels (P2..P6) out, as a list."""

    def __init__(self, in_channels: list[int], out_channels: int = FPN_CHANNELS, norm: str | None = None) -> None:
        norm_layer = partial(build_norm, norm) if norm else None
        super().__init__(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool(),
                         norm_layer=norm_layer)
        self.out_channels = out_channels
        # mmdetection initialises FPN convs with Xavier-uniform (torchvision: Kaiming).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        return list(super().forward(OrderedDict(features)).values())

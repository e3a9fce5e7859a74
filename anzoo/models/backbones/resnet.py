"""ResNet-50/101 as AOGNet-v2 builds them, with BN, AN, GN or SN.

The layout is torchvision's (``conv1``, ``bn1``, ``layer1..4``, blocks with ``conv1..3``,
``bn1..3``, ``downsample.{0,1}``, classifier ``fc``): pytorch style, stride in the 3x3 conv,
7x7 stem followed by a 3x3 max-pool. The variants differ only in their normalization layers:

* ``bn``: BatchNorm everywhere;
* ``an``: Attentive Normalization (BN form) in place of ``bn2`` of every bottleneck, with
  k = 10, 10, 20, 20 mixture components in the four stages; every other norm stays BatchNorm
  (the stem, ``bn1``, ``bn3`` and the shortcut's norm), as in the released models;
* ``gn``: GroupNorm(32) wherever ``bn`` has BatchNorm;
* ``sn``: Switchable Normalization wherever ``bn`` has BatchNorm.

Released checkpoints name the AN parts ``weight_``, ``bias_`` and
``attention_weights.attention.{0,1}``; :func:`checkpoint_filter_fn` renames them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...errors import CheckpointError
from ..layers import AttentiveBatchNorm2d, SwitchNorm2d, build_norm
from ..layers.convert import attentive_norm_key
from . import register_backbone
from .base import Backbone

__all__ = ["Bottleneck", "ResNet", "checkpoint_filter_fn", "RESNET_DEPTHS", "AN_K_PER_STAGE"]

#: blocks per stage
RESNET_DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
#: AN mixture components per stage (AOGNet-v2 configs, ``norm_k``)
AN_K_PER_STAGE: tuple[int, int, int, int] = (10, 10, 20, 20)
#: norm variant -> (kind of every plain norm, kind of each bottleneck's middle norm)
_NORM_KINDS: dict[str, tuple[str, str]] = {
    "bn": ("bn", "bn"),
    "an": ("bn", "an"),
    "gn": ("gn", "gn"),
    "sn": ("sn", "sn"),
}


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 x4 residual block."""

    expansion = 4
    #: (conv, the norm that follows it): BatchNorms that inference folds (anzoo.models.layers.fold)
    CONV_NORM_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, in_channels: int, width: int, stride: int = 1, *,
                 norm: str = "bn", mid_norm: str | None = None, k: int | None = None) -> None:
        super().__init__()
        out_channels = width * self.expansion
        mid_norm = mid_norm or norm
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = build_norm(norm, width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = build_norm(mid_norm, width, k=k)
        self.conv3 = _conv1x1(width, out_channels)
        self.bn3 = build_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride),
                                            build_norm(norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet with bottleneck blocks.

    Args:
        depths: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        norm: 'bn', 'an', 'gn' or 'sn' (see the module docstring).
        num_classes: None for a detection backbone (forward returns ``{'c2','c3','c4','c5'}``
            at strides 4, 8, 16, 32); otherwise an ImageNet-style classifier returning logits.
        an_k: AN mixture components per stage (only for ``norm='an'``).
        frozen_stages: -1 none, 0 the stem, n the stem and stages 1..n (no gradients, eval mode).
        norm_eval: keep every BatchNorm (AN's included) in eval mode while training.
        zero_init_residual: start each block's last norm at gamma = 0, as the AOGNet-v2 configs
            do (``norm_zero_gamma_init``); only matters when training from scratch.
    """

    #: (conv, the norm that follows it): BatchNorms that inference folds (anzoo.models.layers.fold)
    CONV_NORM_PAIRS = (("conv1", "bn1"),)

    def __init__(self, depths: Sequence[int], norm: str = "bn", num_classes: int | None = None, *,
                 an_k: Sequence[int] = AN_K_PER_STAGE, frozen_stages: int = -1,
                 norm_eval: bool = False, zero_init_residual: bool = True) -> None:
        super().__init__()
        if norm not in _NORM_KINDS:
            raise ValueError(f"unknown ResNet norm {norm!r}; expected one of {sorted(_NORM_KINDS)}")
        if len(depths) != 4 or len(an_k) != 4:
            raise ValueError("ResNet needs 4 stage depths and 4 AN k values")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        plain, mid = _NORM_KINDS[norm]
        self.norm_kind = norm
        self.num_classes = num_classes
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm(plain, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = 64
        self.out_channels: list[int] = []
        for i, (blocks, k) in enumerate(zip(depths, an_k)):
            width = 64 * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(in_channels, width, stride if b == 0 else 1,
                                         norm=plain, mid_norm=mid, k=k if mid == "an" else None))
                in_channels = width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            self.out_channels.append(in_channels)

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_channels, num_classes)

        self._init_weights(zero_init_residual)
        self.train()  # applies frozen_stages and norm_eval

    def _init_weights(self, zero_init_residual: bool) -> None:
        # As AOGNet-v2: He init (fan_out) for every conv, the attention's included; norms at
        # gamma 1, beta 0; AN mixtures keep their own N(1, 0.1) / N(0, 0.1) init; fc default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, SwitchNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    if isinstance(m.bn3, AttentiveBatchNorm2d):
                        nn.init.zeros_(m.bn3.mixture_weight)
                        nn.init.zeros_(m.bn3.mixture_bias)
                    else:
                        nn.init.zeros_(m.bn3.weight)

    def stage_modules(self) -> list[nn.Module]:
        # The stem is two modules; a throwaway container lets the mixin treat it as one.
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = {}
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            features[f"c{i + 2}"] = x
        return features



_AN_MARKER = ".weight_"


def _an_module_of(key: str, an_modules: set[str]) -> str | None:
    """The AN module path that ``key`` lies under, if any."""
    pos = key.find(".")
    while pos != -1:
        if key[:pos] in an_modules:
            return key[:pos]
        pos = key.find(".", pos + 1)
    return None


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AOGNet-v2 ImageNet key names (``module.`` removed) to anzoo's.

    A module is an original AN layer when the checkpoint has its ``<module>.weight_``; its
    sub-keys are renamed with :func:`attentive_norm_key`. Everything else keeps its name (the
    layouts coincide). A sub-key of an AN layer that anzoo does not know keeps its original
    name, so that loading reports it as unexpected instead of losing it. Keys already in
    anzoo's layout pass through unchanged.
    """
    an_modules = {k[: -len(_AN_MARKER)] for k in state_dict if k.endswith(_AN_MARKER)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        module = _an_module_of(key, an_modules) if an_modules else None
        if module is not None:
            try:
                new = f"{module}.{attentive_norm_key(key[len(module) + 1:])}"
            except KeyError:
                new = key
        if new in out:
            raise CheckpointError(f"two checkpoint keys map to {new!r} (the second is {key!r})")
        out[new] = value
    return out


def _register(depth: int, norm: str) -> None:
    name = f"r{depth}-{norm}"

    def build(num_classes: int | None = None, **kwargs) -> ResNet:
        return ResNet(RESNET_DEPTHS[depth], norm=norm, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = f"resnet{depth}_{norm}"
    build.__doc__ = f"ResNet-{depth} with {norm.upper()} (AOGNet-v2 layout)."
    register_backbone(name, checkpoint_filter_fn)(build)


for _depth in RESNET_DEPTHS:
    for _norm in _NORM_KINDS:
        _register(_depth, _norm)

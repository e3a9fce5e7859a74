"""Behaviour shared by the detection backbones: frozen early stages and frozen norm statistics.

mmdetection's recipe (``frozen_stages=1``, ``norm_eval=True``) keeps the stem and the first
stage fixed and runs every BatchNorm (including the BatchNorm inside AN) with its ImageNet
running statistics while the detector trains. ``train()`` re-applies both after every mode
change, since ``model.train()`` would otherwise switch them back.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import SwitchNorm2d

__all__ = ["FrozenStagesMixin", "Backbone", "freeze_module", "set_norm_eval"]


def freeze_module(module: nn.Module) -> None:
    """Eval mode and no gradients for every parameter of ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def set_norm_eval(module: nn.Module) -> None:
    """Put every batch-statistics norm (BatchNorm, SyncBatchNorm, SwitchNorm) in eval mode."""
    for m in module.modules():
        if isinstance(m, (_BatchNorm, SwitchNorm2d)):
            m.eval()


class FrozenStagesMixin:
    """For nn.Module backbones that define ``stage_modules()``: [stem, stage1, stage2, ...].

    ``frozen_stages = -1`` freezes nothing, 0 the stem, n the stem and the first n stages.
    """

    frozen_stages: int = -1
    norm_eval: bool = False

    def stage_modules(self) -> Sequence[nn.Module]:  # pragma: no cover - interface
        raise NotImplementedError

    def _apply_freezing(self) -> None:
        if self.frozen_stages >= 0:
            for m in list(self.stage_modules())[: self.frozen_stages + 1]:
                freeze_module(m)

    def train(self, mode: bool = True):  # type: ignore[override]
        nn.Module.train(self, mode)  # type: ignore[arg-type]
        if mode:
            self._apply_freezing()
            if self.norm_eval:
                set_norm_eval(self)  # type: ignore[arg-type]
        return self


class Backbone(FrozenStagesMixin, nn.Module):
    """A multi-scale backbone with an optional ImageNet classifier.

    Subclasses build their layers, set ``num_classes`` (None: detection backbone; otherwise
    ``avgpool`` and ``fc`` exist) and implement ``forward_features`` -> {'c2'..'c5'}.
    """

    num_classes: int | None = None

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.forward_features(x)
        if self.num_classes is None:
            return features
        return self.fc(torch.flatten(self.avgpool(features["c5"]), 1))

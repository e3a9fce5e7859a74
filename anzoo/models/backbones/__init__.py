"""Backbone registry: ResNet-50/101 and AOGNet-12m/40m with BN, AN, GN or SN.

Each registered name (e.g. ``r50-an``, ``aognet40m-bn``) maps to a builder
``fn(num_classes: int | None, **kwargs) -> nn.Module``. With ``num_classes`` the module is the
ImageNet classifier (returns logits); without, it is a detection backbone that returns a dict
``{'c2','c3','c4','c5'}`` of feature maps at strides 4, 8, 16, 32 and exposes
``out_channels`` (list of 4 ints). Detection backbones accept ``frozen_stages`` (-1 none,
0 stem, 1 stem + first stage, ...) and ``norm_eval`` (BatchNorm statistics frozen while
training).

Each builder also carries the family's ``checkpoint_filter_fn`` (original AOGNet-v2 key names
to anzoo's), used by the detector converters and by :func:`anzoo.create_backbone`, which
loads the released ImageNet weights: this package builds modules only, it knows neither the
weights cache nor checkpoint files.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import UnknownModelError

__all__ = ["BackboneSpec", "register_backbone", "build_backbone", "create_backbone", "list_backbones",
           "get_backbone_spec"]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: Callable[..., nn.Module]
    #: maps an AOGNet-v2 ImageNet state dict (``module.`` already stripped) to anzoo's keys.
    checkpoint_filter_fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, checkpoint_filter_fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]):
    """Decorator registering a builder under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = BackboneSpec(name, fn, checkpoint_filter_fn)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the family modules registers their builders.
    from . import resnet  # noqa: F401

    try:
        from . import aognet  # noqa: F401
    except ImportError:  # pragma: no cover - during development only
        pass


def list_backbones() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise UnknownModelError(f"unknown backbone {name!r}{hint}")
    return _REGISTRY[name]


def build_backbone(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A backbone with random weights: the ImageNet classifier with ``num_classes``, else the
    detection backbone (``frozen_stages``, ``norm_eval`` and the family's options in ``kwargs``).
    Weights: :func:`anzoo.create_backbone` (``pretrained=True`` or a checkpoint path)."""
    return get_backbone_spec(name).builder(num_classes=num_classes, **kwargs)


def create_backbone(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """:func:`build_backbone` under the name the detector builders use; weights are loaded one
    layer up, by :func:`anzoo.create_backbone`."""
    if kwargs.pop("pretrained", False):
        raise TypeError("anzoo.models.backbones builds backbones with random weights; "
                        "load weights with anzoo.create_backbone(name, pretrained=...)")
    return build_backbone(name, num_classes=num_classes, **kwargs)

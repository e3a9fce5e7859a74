"""AOGNet-12m and AOGNet-40m (BN and AN) backbones, registered as ``aognet12m-bn``,
``aognet12m-an``, ``aognet40m-bn`` and ``aognet40m-an``.

:mod:`.grammar` builds the And-Or graph of a block, :mod:`.network` the modules,
:mod:`.configs` holds the four released configurations and :mod:`.convert` maps the released
checkpoints' key names to anzoo's.
"""
from __future__ import annotations

from .. import register_backbone
from .configs import CONFIGS, AOGNetConfig
from .convert import checkpoint_filter_fn
from .grammar import AndOrGraph, Node, NodeType, build_aog
from .network import AOGBlock, AOGNet, NodeOp

__all__ = ["AOGNet", "AOGBlock", "NodeOp", "AOGNetConfig", "CONFIGS", "AndOrGraph", "Node",
           "NodeType", "build_aog", "checkpoint_filter_fn"]


def _register(name: str, config: AOGNetConfig) -> None:
    def build(num_classes: int | None = None, **kwargs) -> AOGNet:
        return AOGNet(config, num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name.replace("-", "_")
    build.__doc__ = f"{name}: AOGNet ({config.norm.upper()}) as released with AOGNet-v2."
    register_backbone(name, checkpoint_filter_fn)(build)


for _name, _config in CONFIGS.items():
    _register(_name, _config)

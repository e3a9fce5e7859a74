"""AOGNet-v2 checkpoint key names to anzoo's.

The original modules are named after their position in nested containers::

    stem.{i}.conv_norm.conv_norm.{0: conv, 1: norm}.*
    stage{s}.stage_{s}_block_0_transition.0.conv_norm.conv_norm.{0,1}.*
    stage{s}.stage_{s}_block_{b}.stage_{s}_block_{b}_node_{id}_op.<part>.{0,1}.*
        <part>: conv_norm_ac_1.conv_norm.conv_norm | conv_norm_ac_2.conv_norm.conv_norm
                | conv_norm_3.conv_norm | shortcut.conv_norm
    stage{s}.stage_{s}_block_{b}.extra_norm_ac.0.*
    fc.*

anzoo's are ``stem.{i}.{conv,norm}``, ``stages.{s}.transition.{conv,norm}``,
``stages.{s}.blocks.{b}.nodes.{id}.{conv1,norm1,conv2,norm2,conv3,norm3,shortcut.conv,
shortcut.norm}``, ``stages.{s}.blocks.{b}.out_norm`` and ``fc``. The detectors hold the same
backbone under ``backbone.`` (strip it first).
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from ....errors import CheckpointError
from ...layers.convert import attentive_norm_key

__all__ = ["checkpoint_filter_fn", "convert_key"]

_AN_MARKER = ".weight_"
_LAYER = {"0": "conv", "1": "norm"}
_NODE_PARTS = {
    "conv_norm_ac_1.conv_norm.conv_norm": ("conv1", "norm1"),
    "conv_norm_ac_2.conv_norm.conv_norm": ("conv2", "norm2"),
    "conv_norm_3.conv_norm": ("conv3", "norm3"),
    "shortcut.conv_norm": ("shortcut.conv", "shortcut.norm"),
}
_STEM = re.compile(r"stem\.(\d+)\.conv_norm\.conv_norm\.([01])\.(.+)")
_TRANSITION = re.compile(r"stage(\d)\.stage_\1_block_0_transition\.0\.conv_norm\.conv_norm\.([01])\.(.+)")
_NODE = re.compile(r"stage(\d)\.stage_\1_block_(\d+)\.stage_\1_block_\2_node_(\d+)_op\."
                   r"(" + "|".join(re.escape(p) for p in _NODE_PARTS) + r")\.([01])\.(.+)")
_BLOCK_NORM = re.compile(r"stage(\d)\.stage_\1_block_(\d+)\.extra_norm_ac\.0\.(.+)")
_FC = re.compile(r"fc\.(weight|bias)")


def _norm_rest(original_module: str, rest: str, an_modules: Collection[str]) -> str:
    """A norm's parameter name: AN layers (those with a ``weight_``) are renamed."""
    return attentive_norm_key(rest) if original_module in an_modules else rest


def convert_key(key: str, an_modules: Collection[str] = ()) -> str | None:
    """anzoo's name for an original key; None when the key is not an AOGNet-v2 name.

    ``an_modules``: original module paths of the AN layers (the checkpoint's ``*.weight_``).
    Raises KeyError for a sub-key of an AN layer that anzoo does not know.
    """
    if _FC.fullmatch(key):
        return key
    if m := _STEM.fullmatch(key):
        i, layer, rest = m.groups()
        module = key[: -len(rest) - 1]
        if layer == "1":
            rest = _norm_rest(module, rest, an_modules)
        return f"stem.{i}.{_LAYER[layer]}.{rest}"
    if m := _TRANSITION.fullmatch(key):
        s, layer, rest = m.groups()
        if layer == "1":
            rest = _norm_rest(key[: -len(rest) - 1], rest, an_modules)
        return f"stages.{s}.transition.{_LAYER[layer]}.{rest}"
    if m := _NODE.fullmatch(key):
        s, b, node, part, layer, rest = m.groups()
        if layer == "1":
            rest = _norm_rest(key[: -len(rest) - 1], rest, an_modules)
        return f"stages.{s}.blocks.{b}.nodes.{node}.{_NODE_PARTS[part][int(layer)]}.{rest}"
    if m := _BLOCK_NORM.fullmatch(key):
        s, b, rest = m.groups()
        rest = _norm_rest(key[: -len(rest) - 1], rest, an_modules)
        return f"stages.{s}.blocks.{b}.out_norm.{rest}"
    return None


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an AOGNet-v2 state dict (``module.`` removed) to anzoo's layout.

    A key that is not an AOGNet-v2 name (for instance one already in anzoo's layout) keeps its
    name, so strict loading either uses it or reports it as unexpected: nothing is dropped.
    """
    an_modules = {k[: -len(_AN_MARKER)] for k in state_dict if k.endswith(_AN_MARKER)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        try:
            new = convert_key(key, an_modules)
        except KeyError:
            new = None
        if new is None:
            new = key
        if new in out:
            raise CheckpointError(f"two checkpoint keys map to {new!r} (the second is {key!r})")
        out[new] = value
    return out

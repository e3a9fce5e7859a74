"""mmdetection-v1 checkpoint keys -> anzoo keys, for every row of the zoo.

Each rule maps one module of the original detector onto its anzoo counterpart; a key no
rule recognises is an error (never silently dropped), and the converted dict is loaded with
``load_state_dict_strict``, which reports anything missing or of the wrong shape.

=====================================  ==============================================
mmdetection v1                         anzoo
=====================================  ==============================================
backbone.<AOGNet-v2 ImageNet names>    backbone.<the backbone family's own names>
neck.lateral_convs.i.{conv,gn}         fpn.inner_blocks.i.{0,1}
neck.fpn_convs.i.{conv,gn}             fpn.layer_blocks.i.{0,1}
rpn_head.rpn_{conv,cls,reg}            rpn.head.{conv.0.0, cls_logits, bbox_pred}
bbox_head[.s].shared_convs.i.conv      roi_heads[.stages.s].box_head.convs.i.0
bbox_head[.s].shared_convs.i.{gn,agn}  roi_heads[.stages.s].box_head.convs.i.1
bbox_head[.s].shared_fcs.i             roi_heads[.stages.s].box_head.fcs.i
bbox_head[.s].fc_{cls,reg}             roi_heads[.stages.s].box_predictor.{cls_score,bbox_pred}
mask_head[.s].convs.i.{conv,gn}        roi_heads[.stages.s].mask_head.convs.i.{0,1}
mask_head[.s].upsample                 roi_heads[.stages.s].mask_head.predictor.conv5_mask
mask_head[.s].conv_logits              roi_heads[.stages.s].mask_head.predictor.mask_fcn_logits
=====================================  ==============================================
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

from ...errors import CheckpointError
from ..backbones import get_backbone_spec
from ..layers.convert import attentive_norm_key

__all__ = ["convert_mmdet_v1_state_dict", "mmdet_v1_key"]

_NORM_CHILD = {"conv": "0", "gn": "1", "agn": "1", "bn": "1", "sn": "1"}


def _conv_module(rest: str) -> str:
    """``<i>.conv.weight`` / ``<i>.gn.bias`` / ``<i>.agn.weight_`` -> anzoo's Sequential names."""
    m = re.fullmatch(r"(\d+)\.(conv|gn|agn|bn|sn)\.(.+)", rest)
    if not m:
        raise KeyError(rest)
    idx, kind, param = m.groups()
    if kind == "agn":
        param = attentive_norm_key(param)
    return f"{idx}.{_NORM_CHILD[kind]}.{param}"


def _heads_key(key: str, cascade: bool) -> str:
    stage = ""
    m = re.fullmatch(r"(bbox_head|mask_head)\.(\d+)\.(.+)", key) if cascade else None
    if m:
        head, s, rest = m.groups()
        stage = f"stages.{s}."
    else:
        head, _, rest = key.partition(".")
    prefix = f"roi_heads.{stage}"
    if head == "bbox_head":
        if rest.startswith("shared_convs."):
            return prefix + "box_head.convs." + _conv_module(rest[len("shared_convs."):])
        if rest.startswith("shared_fcs."):
            return prefix + "box_head.fcs." + rest[len("shared_fcs."):]
        if rest.startswith("fc_cls."):
            return prefix + "box_predictor.cls_score." + rest[len("fc_cls."):]
        if rest.startswith("fc_reg."):
            return prefix + "box_predictor.bbox_pred." + rest[len("fc_reg."):]
    else:
        if rest.startswith("convs."):
            return prefix + "mask_head.convs." + _conv_module(rest[len("convs."):])
        if rest.startswith("upsample."):
            return prefix + "mask_head.predictor.conv5_mask." + rest[len("upsample."):]
        if rest.startswith("conv_logits."):
            return prefix + "mask_head.predictor.mask_fcn_logits." + rest[len("conv_logits."):]
    raise KeyError(key)


_RPN = {"rpn_conv": "rpn.head.conv.0.0", "rpn_cls": "rpn.head.cls_logits", "rpn_reg": "rpn.head.bbox_pred"}


def mmdet_v1_key(key: str, cascade: bool) -> str:
    """anzoo's name of one non-backbone key of an mmdetection-v1 detector (KeyError if unknown)."""
    if key.startswith("neck.lateral_convs."):
        return "fpn.inner_blocks." + _conv_module(key[len("neck.lateral_convs."):])
    if key.startswith("neck.fpn_convs."):
        return "fpn.layer_blocks." + _conv_module(key[len("neck.fpn_convs."):])
    if key.startswith("rpn_head."):
        module, _, param = key[len("rpn_head."):].partition(".")
        if module in _RPN:
            return f"{_RPN[module]}.{param}"
    if key.startswith(("bbox_head.", "mask_head.")):
        return _heads_key(key, cascade)
    raise KeyError(key)


def convert_mmdet_v1_state_dict(state_dict: dict[str, torch.Tensor], backbone: str,
                                cascade: bool) -> dict[str, torch.Tensor]:
    """Rename every key of a released checkpoint's ``state_dict`` to anzoo's layout.

    Raises CheckpointError listing the keys that no rule maps (e.g. a checkpoint of another
    architecture, or a corrupted file).
    """
    backbone_filter: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = \
        get_backbone_spec(backbone).checkpoint_filter_fn
    backbone_sd = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in backbone_filter(backbone_sd).items()}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        try:
            out[mmdet_v1_key(key, cascade)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" ... and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise CheckpointError(f"{len(unknown)} checkpoint keys do not belong to a "
                              f"{'Cascade ' if cascade else ''}Mask R-CNN with backbone {backbone}: {shown}")
    return out

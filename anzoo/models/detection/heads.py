"""Box and mask heads of Mask R-CNN / Cascade Mask R-CNN, as mmdetection v1 built them.

* ``ConvFCBoxHead``: ``num_convs`` 3x3 conv-norm-ReLU blocks, flatten, ``num_fcs`` fc-ReLU
  layers; the Mask R-CNN rows use 4 convs + 1 fc ("conv head"), Cascade's stages 0 convs +
  2 fcs. Each conv has its own norm, so AN (w/ GN) can use k = 10, 10, 20, 20.
* ``BoxPredictor``: class scores over background + classes (index 0 is background, softmax)
  and box deltas, class-specific or class-agnostic.
* ``MaskHead``: torchvision's ``MaskRCNNHeads`` (4 conv-norm-ReLU) and ``MaskRCNNPredictor``
  (2x2 deconv, ReLU, 1x1 logits over background + classes), which match mmdetection's FCN
  mask head layer for layer.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.misc import Conv2dNormActivation

from ..layers import build_norm

__all__ = ["ConvFCBoxHead", "BoxPredictor", "MaskHead", "box_head_norms"]


def box_head_norms(head_norm: str, num_convs: int) -> list[tuple[str | None, int | None]]:
    """(norm kind, k) of each box-head conv for a zoo head norm ('none', 'gn', 'an_gn', 'sn')."""
    if head_norm == "none":
        return [(None, None)] * num_convs
    if head_norm == "an_gn":
        ks = [10, 10, 20, 20]
        if num_convs != len(ks):
            raise ValueError("AN (w/ GN) heads are defined for 4 convs")
        return [("an_gn", k) for k in ks]
    return [(head_norm, None)] * num_convs


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str | None, k: int | None) -> nn.Module:
    norm_layer = partial(build_norm, norm, k=k) if norm else None
    return Conv2dNormActivation(in_channels, out_channels, kernel_size=3, norm_layer=norm_layer,
                                activation_layer=nn.ReLU)


class ConvFCBoxHead(nn.Module):
    def __init__(self, in_channels: int = 256, roi_size: int = 7, num_convs: int = 4,
                 conv_channels: int = 256, num_fcs: int = 1, fc_channels: int = 1024,
                 norms: list[tuple[str | None, int | None]] | None = None) -> None:
        super().__init__()
        norms = norms if norms is not None else [(None, None)] * num_convs
        if len(norms) != num_convs:
            raise ValueError(f"{len(norms)} norms given for {num_convs} convs")
        channels = in_channels
        convs = []
        for norm, k in norms:
            convs.append(_conv_norm_relu(channels, conv_channels, norm, k))
            channels = conv_channels
        self.convs = nn.Sequential(*convs)
        dim = channels * roi_size * roi_size
        self.fcs = nn.ModuleList()
        for _ in range(num_fcs):
            self.fcs.append(nn.Linear(dim, fc_channels))
            dim = fc_channels
        self.out_channels = dim
        # mmdetection's ConvModule init (the box head convs always start from scratch)
        for block in self.convs:
            conv = block[0]
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for fc in self.fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        for fc in self.fcs:
            x = torch.relu(fc(x))
        return x


class BoxPredictor(nn.Module):
    """``cls_score`` over 1 + num_classes (0 = background) and ``bbox_pred`` deltas."""

    def __init__(self, in_channels: int, num_classes: int, class_agnostic: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 if class_agnostic else 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, 0, 0.01)
        nn.init.normal_(self.bbox_pred.weight, 0, 0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """FCN mask head: 14x14 RoI features in, (K, 1 + num_classes, 28, 28) logits out."""

    def __init__(self, num_classes: int, in_channels: int = 256, num_convs: int = 4,
                 conv_channels: int = 256, norm: str | None = None) -> None:
        super().__init__()
        norm_layer = partial(build_norm, norm) if norm else None
        self.convs = MaskRCNNHeads(in_channels, [conv_channels] * num_convs, 1, norm_layer=norm_layer)
        self.predictor = MaskRCNNPredictor(conv_channels, conv_channels, num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.convs(x))

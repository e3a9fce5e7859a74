"""Anchors as mmdetection v1 lays them out (``core/anchor/anchor_generator.py``).

Differences from torchvision's ``AnchorGenerator``:

* base anchors are centred on ``((stride - 1) / 2, (stride - 1) / 2)``, their corners are
  ``centre -/+ 0.5 * (size - 1)`` (inclusive-pixel convention) and are rounded to integers
  (``torch.round``, half to even); torchvision centres on 0 and rounds ``-/+ size / 2``;
* ratio r gives ``h = base * scale * sqrt(r)``, ``w = base * scale / sqrt(r)`` in the order of
  ``ratios`` (0.5, 1, 2), each ratio with all scales (``scale_major``);
* the grid shifts are ``stride * index`` without a half-stride offset, and the anchors are
  flattened as (y, x, anchor) - which is also the layout of the RPN's outputs after
  ``permute(0, 2, 3, 1)``.

Everything is computed in float32 the way the reference does so the rounded values agree.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["LegacyAnchorGenerator", "legacy_base_anchors"]


def legacy_base_anchors(base_size: int, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The ``(len(ratios) * len(scales), 4)`` anchors of one location at offset (0, 0)."""
    scales_t = torch.tensor(list(scales), dtype=torch.float32)
    ratios_t = torch.tensor(list(ratios), dtype=torch.float32)
    centre = 0.5 * (base_size - 1)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    widths = (base_size * w_ratios[:, None] * scales_t[None, :]).reshape(-1)
    heights = (base_size * h_ratios[:, None] * scales_t[None, :]).reshape(-1)
    corners = torch.stack(
        [centre - 0.5 * (widths - 1), centre - 0.5 * (heights - 1), centre + 0.5 * (widths - 1), centre + 0.5 * (heights - 1)],
        dim=-1,
    )
    return corners.round()


class LegacyAnchorGenerator:
    """Per-level anchors of mmdet v1's ``AnchorHead`` (base size = stride for every level).

    Args:
        strides: one stride per feature level (the FPN's 4, 8, 16, 32, 64).
        scales: anchor scales in units of the stride (the configs use 8).
        ratios: height / width ratios, in output order.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self.base_anchors: list[Tensor] = [legacy_base_anchors(s, self.scales, self.ratios) for s in self.strides]
        # grids of recently seen feature sizes (images of one padded size share them)
        self._grid_cache: OrderedDict[tuple[int, int, int, str], Tensor] = OrderedDict()
        self.cache_size = 32

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location (same on every level)."""
        return len(self.scales) * len(self.ratios)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def _check_levels(self, featmap_sizes: Sequence[tuple[int, int]]) -> None:
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature map sizes, got {len(featmap_sizes)}")

    def grid_anchors_single(self, level: int, featmap_size: tuple[int, int], device: torch.device | str) -> Tensor:
        """``(H * W * A, 4)`` float32 anchors of one level, flattened (y, x, anchor).

        The result is cached per (level, size, device) and shared: do not modify it in place.
        """
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        key = (level, feat_h, feat_w, str(torch.device(device)))
        cached = self._grid_cache.get(key)
        if cached is not None:
            self._grid_cache.move_to_end(key)
            return cached
        stride = self.strides[level]
        base = self.base_anchors[level].to(device)
        shift_x = torch.arange(feat_w, device=device) * stride
        shift_y = torch.arange(feat_h, device=device) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).to(base.dtype)
        anchors = (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)
        self._grid_cache[key] = anchors
        while len(self._grid_cache) > self.cache_size:
            self._grid_cache.popitem(last=False)
        return anchors

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Anchors of every level: a list of ``(H_l * W_l * A, 4)`` float32 tensors."""
        self._check_levels(featmap_sizes)
        return [self.grid_anchors_single(level, size, device) for level, size in enumerate(featmap_sizes)]

    def valid_flags(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        valid_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """Boolean ``(H_l * W_l * A,)`` flags: True for locations inside ``valid_sizes[l]``.

        As mmdet's ``AnchorGenerator.valid_flags``: a location (y, x) is valid when
        ``y < valid_h`` and ``x < valid_w``; all anchors of a location share its flag.
        """
        self._check_levels(featmap_sizes)
        flags = []
        for (feat_h, feat_w), (valid_h, valid_w) in zip(featmap_sizes, valid_sizes):
            if valid_h > feat_h or valid_w > feat_w:
                raise ValueError(f"valid size {(valid_h, valid_w)} exceeds feature map size {(feat_h, feat_w)}")
            valid_y = torch.arange(feat_h, device=device) < valid_h
            valid_x = torch.arange(feat_w, device=device) < valid_w
            valid = (valid_y[:, None] & valid_x[None, :]).reshape(-1)
            flags.append(valid[:, None].expand(-1, self.num_anchors).reshape(-1))
        return flags

    def valid_sizes_for_image(
        self, featmap_sizes: Sequence[tuple[int, int]], pad_shape: tuple[int, int]
    ) -> list[tuple[int, int]]:
        """mmdet's valid feature size per level for an image padded to ``pad_shape`` (h, w):
        ``min(ceil(h / stride), feat_h)`` (same for w)."""
        pad_h, pad_w = pad_shape
        return [
            (min(math.ceil(pad_h / s), int(fh)), min(math.ceil(pad_w / s), int(fw)))
            for s, (fh, fw) in zip(self.strides, featmap_sizes)
        ]

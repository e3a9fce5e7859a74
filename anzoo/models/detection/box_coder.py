"""Box regression deltas as mmdetection v1 encodes and decodes them
(``core/bbox/transforms.py``: ``bbox2delta`` / ``delta2bbox``).

Differences from torchvision's ``BoxCoder``:

* widths and heights carry the +1 of the inclusive-pixel convention (``x2 - x1 + 1``);
* the decoded corners are ``cx -/+ w / 2`` shifted inwards by 0.5 (``x1 = cx - w/2 + 0.5``,
  ``x2 = cx + w/2 - 0.5``) - torchvision has no shift and subtracts no 1;
* deltas are normalised by ``(delta - means) / stds`` (torchvision multiplies by weights,
  i.e. weights = 1 / stds, and has no means);
* dw, dh are clamped to ``|log(wh_ratio_clip)|`` = |log(16 / 1000)| ~= 4.1352 (torchvision:
  log(1000 / 16), the same number);
* decoded boxes are clipped to ``[0, W - 1] x [0, H - 1]`` when ``max_shape`` is given
  (torchvision's ``clip_boxes_to_image`` clips to ``[0, W] x [0, H]``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["LegacyBoxCoder"]


class LegacyBoxCoder:
    """``encode``/``decode`` with mmdet v1's ``target_means`` / ``target_stds``.

    The RPN uses stds (1, 1, 1, 1), the Mask R-CNN box head (0.1, 0.1, 0.2, 0.2), the three
    Cascade stages (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067).
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
    ) -> None:
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.wh_ratio_clip = float(wh_ratio_clip)
        self.max_ratio = abs(math.log(self.wh_ratio_clip))

    def decode(self, rois: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """Apply ``(N, 4k)`` deltas to ``(N, 4)`` boxes; returns ``(N, 4k)`` boxes.

        ``max_shape`` is ``(h, w)`` of the image the boxes live in (for the reference: the
        resized image before padding, ``img_shape``); boxes are clipped to ``[0, w - 1]`` and
        ``[0, h - 1]``. With ``k > 1`` (class-specific regression) every group of 4 columns
        is decoded against the same roi.
        """
        if deltas.shape[-1] % 4 != 0:
            raise ValueError(f"deltas must have 4k columns, got {tuple(deltas.shape)}")
        reps = deltas.shape[-1] // 4
        means = deltas.new_tensor(self.means).repeat(reps)
        stds = deltas.new_tensor(self.stds).repeat(reps)
        denorm = deltas * stds + means
        dx = denorm[:, 0::4]
        dy = denorm[:, 1::4]
        dw = denorm[:, 2::4].clamp(min=-self.max_ratio, max=self.max_ratio)
        dh = denorm[:, 3::4].clamp(min=-self.max_ratio, max=self.max_ratio)
        rois = rois.to(deltas.dtype)
        px = ((rois[:, 0] + rois[:, 2]) * 0.5)[:, None]
        py = ((rois[:, 1] + rois[:, 3]) * 0.5)[:, None]
        pw = (rois[:, 2] - rois[:, 0] + 1.0)[:, None]
        ph = (rois[:, 3] - rois[:, 1] + 1.0)[:, None]
        # exp evaluated in float64 and rounded once: float32 exp differs by an ulp between
        # SIMD and scalar code paths, which would make boxes depend on how rows are batched
        gw = pw * dw.double().exp().to(pw.dtype)
        gh = ph * dh.double().exp().to(ph.dtype)
        # addcmul as the reference (on CUDA it may fuse into one rounding)
        gx = torch.addcmul(px, pw, dx)
        gy = torch.addcmul(py, ph, dy)
        x1 = gx - gw * 0.5 + 0.5
        y1 = gy - gh * 0.5 + 0.5
        x2 = gx + gw * 0.5 - 0.5
        y2 = gy + gh * 0.5 - 0.5
        if max_shape is not None:
            max_x, max_y = max_shape[1] - 1, max_shape[0] - 1
            x1 = x1.clamp(min=0, max=max_x)
            y1 = y1.clamp(min=0, max=max_y)
            x2 = x2.clamp(min=0, max=max_x)
            y2 = y2.clamp(min=0, max=max_y)
        return torch.stack([x1, y1, x2, y2], dim=-1).reshape(deltas.shape)

    def encode(self, proposals: Tensor, gt: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` that take ``proposals`` to ``gt`` (both ``(..., 4)``), normalised
        by means and stds (mmdet v1's ``bbox2delta``, float32)."""
        if proposals.shape != gt.shape:
            raise ValueError(f"proposals {tuple(proposals.shape)} and gt {tuple(gt.shape)} differ in shape")
        proposals = proposals.float()
        gt = gt.float()
        px = (proposals[..., 0] + proposals[..., 2]) * 0.5
        py = (proposals[..., 1] + proposals[..., 3]) * 0.5
        pw = proposals[..., 2] - proposals[..., 0] + 1.0
        ph = proposals[..., 3] - proposals[..., 1] + 1.0
        gx = (gt[..., 0] + gt[..., 2]) * 0.5
        gy = (gt[..., 1] + gt[..., 3]) * 0.5
        gw = gt[..., 2] - gt[..., 0] + 1.0
        gh = gt[..., 3] - gt[..., 1] + 1.0
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

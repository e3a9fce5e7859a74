"""RoIAlign and RoI-to-FPN-level mapping as in mmdetection v1.

The reference kernel (``ops/roi_align/src/roi_align_kernel.cu``, forward pass) for a RoI
``[b, x1, y1, x2, y2]`` in image pixels, output ``oh x ow``, ``spatial_scale`` s and
``sample_num`` n computes::

    start_w = x1 * s;  end_w = (x2 + 1) * s;  roi_w = max(end_w - start_w, 0)   (same for h)
    bin_w = roi_w / ow
    x(pw, ix) = start_w + pw * bin_w + (ix + 0.5) * bin_w / n       (ix = 0..n-1, same for y)
    out[ph, pw] = mean over the n x n samples of bilinear(feature[b], y, x)

with the bilinear rule: 0 if y < -1 or y > H or x < -1 or x > W; else coordinates <= 0 are
moved to 0, and a coordinate whose integer part is >= size - 1 is moved to size - 1 (both
neighbours are the last row/column).

torchvision's ``roi_align(aligned=False, sampling_ratio=n)`` has the same sampling and
bilinear rules, and ends the RoI at ``x2 * s``: given ``x2 + 1`` it starts and ends where the
reference does. The one difference: torchvision clamps the RoI size to at least 1 feature
cell (``max(end - start, 1)``), the reference only to 0. Small RoIs (under 4 px wide at
stride 4, under 32 px at stride 32: tens per image) therefore need the reference arithmetic,
which :func:`legacy_roi_align_torch` implements in plain PyTorch. :func:`legacy_roi_align`
routes each RoI to the right implementation. ``aligned=True`` (half-pixel shift) would be
wrong for these checkpoints.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align as _tv_roi_align

__all__ = [
    "legacy_roi_align",
    "legacy_roi_align_torch",
    "legacy_roi_sizes",
    "map_roi_levels",
    "LegacyMultiScaleRoIAlign",
]

# Upper bound on elements of one gather in the pure-PyTorch path (RoIs are processed in chunks).
_GATHER_BUDGET = 1 << 24


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def legacy_roi_sizes(rois: Tensor, spatial_scale: float) -> tuple[Tensor, Tensor]:
    """RoI width and height in feature cells, ``(x2 + 1) * s - x1 * s`` before any clamping,
    computed in the rois' dtype exactly as the kernel does."""
    width = (rois[:, 3] + 1) * spatial_scale - rois[:, 1] * spatial_scale
    height = (rois[:, 4] + 1) * spatial_scale - rois[:, 2] * spatial_scale
    return width, height


def _axis_samples(
    start: Tensor, bin_size: Tensor, pooled: int, sampling_ratio: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Sample positions along one axis and their bilinear neighbours and weights.

    Returns ``low, high`` (long) and ``w_low, w_high`` (float) of shape ``(K, pooled * n)``
    plus ``inside`` (bool), False where the kernel returns 0 for the sample.
    """
    device, dtype = start.device, start.dtype
    bin_index = torch.arange(pooled, device=device, dtype=dtype)
    sub = torch.arange(sampling_ratio, device=device, dtype=dtype) + 0.5
    # start + p * bin + (i + .5) * bin / n, evaluated left to right like the kernel
    coord = (start[:, None, None] + bin_index[None, :, None] * bin_size[:, None, None]) + (
        sub[None, None, :] * bin_size[:, None, None]
    ) / sampling_ratio
    coord = coord.reshape(start.shape[0], pooled * sampling_ratio)
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)  # size is a traced tensor in an ONNX export
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(dtype), coord)
    w_high = coord - low.to(dtype)
    w_low = 1.0 - w_high
    return low, high, w_low, w_high, inside


def _roi_align_chunk(features: Tensor, rois: Tensor, out_h: int, out_w: int, spatial_scale: float, n: int) -> Tensor:
    _, channels, height, width = features.shape
    num = rois.shape[0]
    batch = rois[:, 0].to(torch.int64)
    start_w = rois[:, 1] * spatial_scale
    start_h = rois[:, 2] * spatial_scale
    end_w = (rois[:, 3] + 1) * spatial_scale
    end_h = (rois[:, 4] + 1) * spatial_scale
    bin_w = (end_w - start_w).clamp(min=0) / out_w
    bin_h = (end_h - start_h).clamp(min=0) / out_h
    y_lo, y_hi, wy_lo, wy_hi, y_in = _axis_samples(start_h, bin_h, out_h, n, height)
    x_lo, x_hi, wx_lo, wx_hi, x_in = _axis_samples(start_w, bin_w, out_w, n, width)

    b = batch[:, None, None]

    def corner(yi: Tensor, xi: Tensor) -> Tensor:
        # (K, Sy, Sx, C): advanced indices separated by a slice move to the front.
        return features[b, :, yi[:, :, None], xi[:, None, :]]

    w1 = wy_lo[:, :, None] * wx_lo[:, None, :]
    w2 = wy_lo[:, :, None] * wx_hi[:, None, :]
    w3 = wy_hi[:, :, None] * wx_lo[:, None, :]
    w4 = wy_hi[:, :, None] * wx_hi[:, None, :]
    val = (
        w1[..., None] * corner(y_lo, x_lo)
        + w2[..., None] * corner(y_lo, x_hi)
        + w3[..., None] * corner(y_hi, x_lo)
        + w4[..., None] * corner(y_hi, x_hi)
    )
    inside = (y_in[:, :, None] & x_in[:, None, :])[..., None]
    val = torch.where(inside, val, torch.zeros((), dtype=val.dtype, device=val.device))
    # (K, oh, n, ow, n, C); accumulate the samples in the kernel's loop order (iy outer, ix inner)
    val = val.reshape(num, out_h, n, out_w, n, channels)
    total = torch.zeros((num, out_h, out_w, channels), dtype=val.dtype, device=val.device)
    for iy in range(n):
        for ix in range(n):
            total = total + val[:, :, iy, :, ix, :]
    total = total / (n * n)
    return total.permute(0, 3, 1, 2).contiguous()


def legacy_roi_align_torch(
    features: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """mmdet v1's RoIAlign forward in plain PyTorch, for any RoI (including sub-cell ones).

    ``features`` ``(N, C, H, W)``, ``rois`` ``(K, 5)`` ``[batch_idx, x1, y1, x2, y2]`` in image
    pixels; returns ``(K, C, oh, ow)``. Vectorised over RoIs (chunked to bound memory).
    Half-precision inputs are computed in float32 (the reference's ``force_fp32``) and the
    result is cast back. Only a fixed ``sampling_ratio > 0`` is supported (the configs use 2);
    the adaptive grid (``0``) varies per RoI.
    """
    if sampling_ratio <= 0:
        raise ValueError("legacy_roi_align_torch supports only a fixed sampling_ratio > 0")
    out_h, out_w = _pair(output_size)
    in_dtype = features.dtype
    work = torch.promote_types(in_dtype, torch.float32)
    feats = features.to(work)
    rois = rois.to(work)
    num = rois.shape[0]
    channels = features.shape[1]
    if torch.jit.is_tracing():  # one branch-free chunk in an exported graph (RoIs are few)
        return _roi_align_chunk(feats, rois, out_h, out_w, spatial_scale, sampling_ratio).to(in_dtype)
    if num == 0:
        return features.new_zeros((0, channels, out_h, out_w))
    per_roi = out_h * out_w * sampling_ratio * sampling_ratio * channels
    chunk = max(1, _GATHER_BUDGET // max(per_roi, 1))
    outs = [
        _roi_align_chunk(feats, rois[i : i + chunk], out_h, out_w, spatial_scale, sampling_ratio)
        for i in range(0, num, chunk)
    ]
    return torch.cat(outs).to(in_dtype)


def legacy_roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """mmdet v1 RoIAlign: ``(K, 5)`` rois in image pixels -> ``(K, C, oh, ow)``.

    RoIs at least one feature cell wide and high go through torchvision's kernel on
    ``x2 + 1, y2 + 1`` (identical sampling); narrower ones through
    :func:`legacy_roi_align_torch`, which keeps the reference's sub-cell RoI size where
    torchvision would stretch it to one cell. One host sync (whether any RoI is narrow).
    Traced for an ONNX export, the same without branches (torchvision's kernel becomes ONNX
    ``RoiAlign``, the narrow RoIs' arithmetic primitive operators).
    """
    out_h, out_w = _pair(output_size)
    tracing = torch.jit.is_tracing()
    if not tracing and rois.shape[0] == 0:
        return features.new_zeros((0, features.shape[1], out_h, out_w))
    in_dtype = features.dtype
    work = torch.promote_types(in_dtype, torch.float32)
    feats = features.to(work)
    rois = rois.to(work)
    out = _tv_roi_align(
        feats, to_inclusive_end(rois), (out_h, out_w), spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio, aligned=False,
    )
    width, height = legacy_roi_sizes(rois, spatial_scale)
    is_narrow = (width < 1) | (height < 1)
    narrow = torch.nonzero(is_narrow).squeeze(1)
    if tracing:
        fixed = legacy_roi_align_torch(feats, rois[narrow], (out_h, out_w), spatial_scale, sampling_ratio)
        return _merge(out, fixed, is_narrow).to(in_dtype)
    if narrow.numel():
        out[narrow] = legacy_roi_align_torch(feats, rois[narrow], (out_h, out_w), spatial_scale, sampling_ratio)
    return out.to(in_dtype)


def _merge(out: Tensor, fixed: Tensor, replaced: Tensor) -> Tensor:
    """``out`` with its ``replaced`` rows taken from ``fixed`` (in order), by one gather: an
    exported graph's in-place index assignment (ScatterND) breaks on counts seen as 0 or 1
    when traced."""
    rank = torch.cumsum(replaced.to(torch.int64), 0) - 1
    rows = torch.arange(out.shape[0], device=out.device)
    return torch.cat([out, fixed])[torch.where(replaced, out.shape[0] + rank, rows)]


def to_inclusive_end(rois: Tensor) -> Tensor:
    """``(K, 5)`` rois with ``x2 + 1, y2 + 1``: the continuous end torchvision expects."""
    shifted = rois.clone()
    shifted[:, 3:5] += 1
    return shifted


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """FPN level (0-based, int64) of ``(K, 5)`` rois, as mmdet v1's ``SingleRoIExtractor``:

    ``floor(log2(sqrt((x2 - x1 + 1) * (y2 - y1 + 1)) / finest_scale + 1e-6))`` clamped to
    ``[0, num_levels - 1]``: scale < 112 -> 0, [112, 224) -> 1, [224, 448) -> 2, >= 448 -> 3.
    torchvision's ``LevelMapper`` uses ``floor(4 + log2(sqrt(w * h) / 224) + 1e-6)`` without
    the +1 and with eps added after the log; mmdet adds 1e-6 to the ratio before the log.
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1] + 1) * (rois[:, 4] - rois[:, 2] + 1))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).to(torch.int64)


class LegacyMultiScaleRoIAlign(nn.Module):
    """mmdet v1 ``SingleRoIExtractor`` with ``RoIAlign(out_size, sample_num=2)``.

    Each RoI is pooled from one FPN level chosen by :func:`map_roi_levels`; levels have
    spatial scale ``1 / stride``. ``forward(features, rois)`` takes the first
    ``len(featmap_strides)`` FPN maps (P2-P5) and ``(K, 5)`` rois ``[batch_idx, x1, y1, x2, y2]``
    in input-image pixels and returns ``(K, C, s, s)`` in the rois' order. Half-precision
    features are pooled in float32 and the result cast back (the reference's
    ``force_fp32(out_fp16=True)``).
    """

    def __init__(
        self,
        output_size: int,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        sampling_ratio: int = 2,
        finest_scale: float = 56,
    ) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.featmap_strides = tuple(int(s) for s in featmap_strides)
        self.sampling_ratio = int(sampling_ratio)
        self.finest_scale = float(finest_scale)

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def map_roi_levels(self, rois: Tensor, num_levels: int | None = None) -> Tensor:
        return map_roi_levels(rois, self.num_levels if num_levels is None else num_levels, self.finest_scale)

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        features = list(features)[: self.num_levels]
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        size = self.output_size
        if len(features) == 1:
            return legacy_roi_align(features[0], rois, size, 1.0 / self.featmap_strides[0], self.sampling_ratio)
        levels = self.map_roi_levels(rois)
        if torch.jit.is_tracing():
            return self._traced_forward(features, rois, levels)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for level, (feat, stride) in enumerate(zip(features, self.featmap_strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel() == 0:
                continue
            out[idx] = legacy_roi_align(feat, rois[idx], size, 1.0 / stride, self.sampling_ratio).to(out.dtype)
        return out

    def _traced_forward(self, features: Sequence[Tensor], rois: Tensor, levels: Tensor) -> Tensor:
        """:meth:`forward` for an exported graph: every level pools its RoIs (maybe none), and
        the results are put back in the RoIs' order by a gather instead of index assignments."""
        parts, order = [], []
        for level, (feat, stride) in enumerate(zip(features, self.featmap_strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            parts.append(legacy_roi_align(feat, rois[idx], self.output_size, 1.0 / stride, self.sampling_ratio))
            order.append(idx)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, featmap_strides={self.featmap_strides}, "
            f"sampling_ratio={self.sampling_ratio}, finest_scale={self.finest_scale}"
        )

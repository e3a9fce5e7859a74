"""Bootstrap the reference mmdetection-v1 fork on CPU (set-up: tools/parity/README.md).

* the fork's ``mmdet`` package from ``$PARITY_ROOT/refsrc`` (default /tmp/parity);
* mmcv 0.2.16 pure python from ``$PARITY_ROOT/site`` (its flow-warp extension stubbed);
* albumentations / imagecorruptions / matplotlib stubbed (training/vis only);
* every compiled op module stubbed; NMS and RoIAlign replaced by CPU transcriptions of the
  CUDA kernels (nms_kernel.cu, roi_align_kernel.cu), float32 arithmetic in kernel order.
"""
import os
import sys
import types

ROOT = os.environ.get('PARITY_ROOT', '/tmp/parity')
sys.path[:0] = [os.path.join(ROOT, 'refsrc'), os.path.join(ROOT, 'site'),
                os.path.join(os.path.dirname(os.path.abspath(__file__)), 'stubs')]

import collections
import collections.abc

import numpy as np
import torch

for _n in ('Sequence', 'Mapping', 'Iterable', 'Callable'):
    setattr(collections, _n, getattr(collections.abc, _n))

f32 = np.float32


# ----------------------------------------------------------------------------- NMS
def kernel_nms_inds(dets: torch.Tensor, thr: float) -> torch.Tensor:
    """nms_cuda.nms: sort by score (descending; stable here, CUDA's sort order among exact
    ties is unspecified), greedy suppression with float32 devIoU > thr, kept indices
    returned sorted ascending."""
    d = dets.detach().cpu().float().numpy()
    n = d.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(torch.from_numpy(d[:, 4].copy()), descending=True, stable=True).indices.numpy()
    b = d[order]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    one = f32(1)
    left = np.maximum(x1[:, None], x1[None, :])
    right = np.minimum(x2[:, None], x2[None, :])
    top = np.maximum(y1[:, None], y1[None, :])
    bottom = np.minimum(y2[:, None], y2[None, :])
    w = np.maximum(right - left + one, f32(0))
    h = np.maximum(bottom - top + one, f32(0))
    inter = w * h
    area = (x2 - x1 + one) * (y2 - y1 + one)
    iou = inter / ((area[:, None] + area[None, :]) - inter)
    sup = iou > f32(thr)
    removed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        row = sup[i].copy()
        row[: i + 1] = False
        removed |= row
    inds = np.sort(order[np.asarray(keep, dtype=np.int64)])
    return torch.from_numpy(inds).to(dets.device)


def _nms_module(name):
    m = types.ModuleType(name)
    m.nms = kernel_nms_inds
    return m


# ----------------------------------------------------------------------------- RoIAlign
def _axis(start, bin_size, pooled, n, size):
    """Per RoI and per sample along one axis: coordinate after the kernel's clamps,
    low/high indices, weights (l, h = 1 - l) and the in-range flag. float32 throughout."""
    K = start.shape[0]
    p = torch.arange(pooled, dtype=torch.float32)
    sub = (torch.arange(n, dtype=torch.float32) + 0.5)
    # start + p * bin  (float32), then + ((i + .5) * bin) / n
    a = start[:, None] + p[None, :] * bin_size[:, None]                 # (K, P)
    b = (sub[None, :] * bin_size[:, None]) / float(n)                  # (K, n)
    c = (a[:, :, None] + b[:, None, :]).reshape(K, pooled * n)           # (K, P*n)
    valid = (c >= -1.0) & (c <= float(size))
    c = torch.where(c <= 0, torch.zeros_like(c), c)
    low = c.to(torch.int64)  # trunc (c >= 0)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    c = torch.where(edge, low.to(torch.float32), c)
    l = c - low.to(torch.float32)
    h = 1.0 - l
    return low, high, l, h, valid


def kernel_roi_align(features, rois, out_size, spatial_scale, sample_num):
    """ROIAlignForward of roi_align_kernel.cu, vectorised in float32 (same per-sample
    arithmetic and the same accumulation order: iy outer, ix inner, then / (n*n))."""
    from torch.nn.modules.utils import _pair
    out_h, out_w = _pair(out_size)
    assert sample_num > 0
    feats = features.float()
    rois = rois.float()
    N, C, H, W = feats.shape
    K = rois.shape[0]
    out = feats.new_zeros((K, C, out_h, out_w))
    if K == 0:
        return out
    s = torch.tensor(spatial_scale, dtype=torch.float32)
    n = sample_num
    chunk = max(1, (1 << 23) // (C * out_h * out_w * n * n))
    for k0 in range(0, K, chunk):
        r = rois[k0:k0 + chunk]
        k = r.shape[0]
        bidx = r[:, 0].to(torch.int64)
        sw, sh = r[:, 1] * s, r[:, 2] * s
        ew, eh = (r[:, 3] + 1) * s, (r[:, 4] + 1) * s
        rw = torch.clamp(ew - sw, min=0.0)
        rh = torch.clamp(eh - sh, min=0.0)
        bh, bw = rh / float(out_h), rw / float(out_w)
        ylo, yhi, ly, hy, yv = _axis(sh, bh, out_h, n, H)
        xlo, xhi, lx, hx, xv = _axis(sw, bw, out_w, n, W)
        # weights (k, Sy, Sx)
        w1 = hy[:, :, None] * hx[:, None, :]
        w2 = hy[:, :, None] * lx[:, None, :]
        w3 = ly[:, :, None] * hx[:, None, :]
        w4 = ly[:, :, None] * lx[:, None, :]
        fb = feats[bidx]  # (k, C, H, W)
        flat = fb.reshape(k, C, H * W)

        def gather(yi, xi):
            idx = (yi[:, :, None] * W + xi[:, None, :]).reshape(k, 1, -1).expand(k, C, -1)
            return flat.gather(2, idx).reshape(k, C, yi.shape[1], xi.shape[1])

        val = w1[:, None] * gather(ylo, xlo)
        val = val + w2[:, None] * gather(ylo, xhi)
        val = val + w3[:, None] * gather(yhi, xlo)
        val = val + w4[:, None] * gather(yhi, xhi)
        ok = (yv[:, :, None] & xv[:, None, :])[:, None]
        val = torch.where(ok, val, torch.zeros((), dtype=val.dtype))
        val = val.reshape(k, C, out_h, n, out_w, n)
        acc = torch.zeros((k, C, out_h, out_w), dtype=torch.float32)
        for iy in range(n):
            for ix in range(n):
                acc = acc + val[:, :, :, iy, :, ix]
        out[k0:k0 + k] = acc / float(n * n)
    return out.to(features.dtype)


def _raising_module(name):
    m = types.ModuleType(name)

    def __getattr__(attr):
        if attr.startswith('__'):
            raise AttributeError(attr)

        def f(*a, **k):
            raise NotImplementedError(f'{name}.{attr} is a compiled op not available on CPU')
        return f
    m.__getattr__ = __getattr__
    return m


for _name in ['mmdet.ops.roi_pool.roi_pool_cuda', 'mmdet.ops.dcn.deform_pool_cuda',
              'mmdet.ops.dcn.deform_conv_cuda', 'mmdet.ops.masked_conv.masked_conv2d_cuda',
              'mmdet.ops.roi_align.roi_align_cuda', 'mmdet.ops.sigmoid_focal_loss.sigmoid_focal_loss_cuda',
              'mmdet.ops.nms.soft_nms_cpu']:
    sys.modules[_name] = _raising_module(_name)
sys.modules['mmdet.ops.nms.nms_cpu'] = _nms_module('mmdet.ops.nms.nms_cpu')
sys.modules['mmdet.ops.nms.nms_cuda'] = _nms_module('mmdet.ops.nms.nms_cuda')

import mmdet.ops.roi_align  # noqa: E402,F401

_ra = sys.modules['mmdet.ops.roi_align.roi_align']

_ra.roi_align = kernel_roi_align

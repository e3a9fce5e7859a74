"""Plain-Python transcriptions of mmdetection v1's CUDA kernels, used as test oracles.

Written from the kernel arithmetic (float32 scalars, the same loop order) so that the
tests compare anzoo's vectorised implementations against the reference semantics without
needing the reference code.
"""
from __future__ import annotations

import numpy as np

f32 = np.float32


def kernel_iou(a, b) -> float:
    """devIoU of nms_kernel.cu in float32."""
    left, right = max(f32(a[0]), f32(b[0])), min(f32(a[2]), f32(b[2]))
    top, bottom = max(f32(a[1]), f32(b[1])), min(f32(a[3]), f32(b[3]))
    width, height = max(right - left + f32(1), f32(0)), max(bottom - top + f32(1), f32(0))
    inter = width * height
    sa = (f32(a[2]) - f32(a[0]) + f32(1)) * (f32(a[3]) - f32(a[1]) + f32(1))
    sb = (f32(b[2]) - f32(b[0]) + f32(1)) * (f32(b[3]) - f32(b[1]) + f32(1))
    return inter / (sa + sb - inter)


def kernel_nms(boxes, scores, thr) -> list[int]:
    """Greedy NMS of the reference kernel; kept indices in decreasing score order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    removed = [False] * len(scores)
    keep = []
    for pos, i in enumerate(order):
        if removed[i]:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if kernel_iou(boxes[i], boxes[j]) > f32(thr):
                removed[j] = True
    return keep


def kernel_bilinear(data: np.ndarray, height: int, width: int, y, x):
    """bilinear_interpolate of roi_align_kernel.cu, float32."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return f32(0)
    if y <= 0:
        y = f32(0)
    if x <= 0:
        x = f32(0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = f32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = f32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = f32(y - y_low), f32(x - x_low)
    hy, hx = f32(1) - ly, f32(1) - lx
    w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
    return (
        w1 * data[y_low, x_low] + w2 * data[y_low, x_high] + w3 * data[y_high, x_low] + w4 * data[y_high, x_high]
    )


def kernel_roi_align(features: np.ndarray, rois: np.ndarray, pooled: int, scale: float, sample_num: int) -> np.ndarray:
    """ROIAlignForward of roi_align_kernel.cu in plain loops (float32 scalars)."""
    _, channels, height, width = features.shape
    out = np.zeros((len(rois), channels, pooled, pooled), dtype=np.float32)
    s = f32(scale)
    for n, roi in enumerate(rois):
        b = int(roi[0])
        start_w, start_h = f32(roi[1]) * s, f32(roi[2]) * s
        end_w, end_h = (f32(roi[3]) + f32(1)) * s, (f32(roi[4]) + f32(1)) * s
        roi_w, roi_h = max(end_w - start_w, f32(0)), max(end_h - start_h, f32(0))
        bin_h, bin_w = roi_h / f32(pooled), roi_w / f32(pooled)
        for c in range(channels):
            data = features[b, c]
            for ph in range(pooled):
                for pw in range(pooled):
                    acc = f32(0)
                    for iy in range(sample_num):
                        y = start_h + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(sample_num)
                        for ix in range(sample_num):
                            x = start_w + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(sample_num)
                            acc += kernel_bilinear(data, height, width, y, x)
                    out[n, c, ph, pw] = acc / f32(sample_num * sample_num)
    return out


def kernel_multiclass_nms(bboxes: np.ndarray, scores: np.ndarray, score_thr: float, iou_thr: float, max_num: int):
    """bbox_nms.py's multiclass_nms loop with the kernel NMS (kept indices in index order)."""
    out_boxes, out_scores, out_labels = [], [], []
    for c in range(1, scores.shape[1]):
        rows = [i for i in range(scores.shape[0]) if scores[i, c] > f32(score_thr)]
        if not rows:
            continue
        boxes = [bboxes[i, :4] if bboxes.shape[1] == 4 else bboxes[i, 4 * c : 4 * c + 4] for i in rows]
        cls_scores = [scores[i, c] for i in rows]
        for k in sorted(kernel_nms(boxes, cls_scores, iou_thr)):
            out_boxes.append(boxes[k])
            out_scores.append(cls_scores[k])
            out_labels.append(c - 1)
    if len(out_scores) > max_num:
        order = sorted(range(len(out_scores)), key=lambda i: -out_scores[i])[:max_num]  # stable
        out_boxes = [out_boxes[i] for i in order]
        out_scores = [out_scores[i] for i in order]
        out_labels = [out_labels[i] for i in order]
    return np.array(out_boxes, dtype=np.float32).reshape(-1, 4), np.array(out_scores, dtype=np.float32), out_labels

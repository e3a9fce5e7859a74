"""Detection post-processing of mmdetection v1: per-class NMS and mask pasting.

* :func:`multiclass_nms` - ``core/post_processing/bbox_nms.py``;
* :func:`paste_masks_legacy` - ``FCNMaskHead.get_seg_masks`` (OpenCV resize per box);
* :func:`paste_masks_fast` - the same masks from one batched PyTorch computation;
* :func:`paste_mask_crops` - the same masks one at a time, each only as its window of the
  image (:class:`anzoo.structures.MaskCrop`), so that no (N, H, W) array is ever built;
* :func:`legacy_rescale_boxes` - resized-image boxes to original-image pixels as the
  reference's CUDA division did;
* :func:`legacy_mask_boxes` - the float round trip the reference puts the boxes through
  before ``get_seg_masks`` truncates them to integers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import cv2
import numpy as np
import torch
from torch import Tensor

from ...structures import MaskCrop
from .box_ops import legacy_batched_nms

__all__ = [
    "multiclass_nms",
    "paste_masks_legacy",
    "paste_masks_fast",
    "legacy_mask_boxes",
    "legacy_rescale_boxes",
    "legacy_paste_windows",
    "clipped_paste_windows",
    "paste_mask_crops",
    "MaskCrops",
]


def multiclass_nms(
    multi_bboxes: Tensor,
    multi_scores: Tensor,
    score_thr: float = 0.05,
    iou_threshold: float = 0.5,
    max_per_img: int | None = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet v1's ``multiclass_nms``: per-class thresholding and +1-IoU NMS.

    Args:
        multi_bboxes: ``(N, 4 * num_classes)`` class-specific boxes (columns ``4c:4c+4`` for
            class c, class 0 = background, ignored) or ``(N, 4)`` shared boxes (class-agnostic
            regression, e.g. Cascade).
        multi_scores: ``(N, num_classes)`` scores, column 0 the background.
        score_thr: a (box, class) pair is a candidate when its score is ``> score_thr``
            (strict).
        iou_threshold: NMS within each class, suppress when the +1 IoU is ``> iou_threshold``.
        max_per_img: at most this many detections. ``None``: no limit.

    Returns:
        ``boxes (M, 4)``, ``scores (M,)``, ``labels (M,)`` int64 in ``0 .. num_classes - 2``
        (the reference's ``label - 1``: class 1 -> label 0).

    Order of the output, as in the reference: classes in increasing order, within a class
    the surviving boxes in increasing row order (mmdet's NMS kernel returns kept indices
    sorted by index, not by score). Only when more than ``max_per_img`` survive are they
    sorted by decreasing score and cut; the reference uses ``torch.sort`` (not stable on
    CUDA), this uses a stable sort, so among exactly equal scores the class/row order wins.
    torchvision's ``RoIHeads.postprocess_detections`` differs: continuous IoU, boxes under
    0.01 px removed, and the output always sorted by score. (The reference's own default
    ``max_num=-1`` would drop the lowest-scoring detection through ``inds[:-1]``; the configs
    set 100, and a negative value is refused here.)
    """
    if max_per_img is not None and max_per_img < 0:
        raise ValueError("max_per_img must be >= 0 or None")
    num_rows, num_classes = multi_scores.shape
    device = multi_scores.device
    if num_classes < 2:
        raise ValueError("multi_scores needs a background column and at least one class")
    class_agnostic = multi_bboxes.shape[1] == 4
    if not class_agnostic and multi_bboxes.shape[1] != 4 * num_classes:
        raise ValueError(
            f"multi_bboxes must have 4 or 4 * {num_classes} columns, got {multi_bboxes.shape[1]}"
        )
    # Candidates in class-major order: (class, row) ascending, like the reference's loop.
    candidate = multi_scores[:, 1:].t() > score_thr
    cls_idx, row_idx = torch.nonzero(candidate, as_tuple=True)
    labels_all = cls_idx + 1
    scores = multi_scores[row_idx, labels_all]
    if class_agnostic:
        boxes = multi_bboxes[row_idx]
    else:
        boxes = multi_bboxes.reshape(num_rows, num_classes, 4)[row_idx, labels_all]
    keep = legacy_batched_nms(boxes, scores, cls_idx, iou_threshold)
    # Back to the reference's order: class-major, rows ascending within a class.
    keep = keep.sort().values
    boxes, scores, labels = boxes[keep], scores[keep], cls_idx[keep]
    if max_per_img is not None and boxes.shape[0] > max_per_img:
        order = torch.sort(scores, descending=True, stable=True).indices[:max_per_img]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
    return boxes, scores, labels.to(torch.int64).to(device)


def _float32(value: float) -> float:
    return float(np.float32(value))


def legacy_rescale_boxes(boxes: Tensor, scale_factor: float) -> Tensor:
    """``boxes / scale_factor`` the way the reference computed it (``bbox_head.get_det_bboxes``,
    ``rescale=True``): on CUDA, PyTorch divides a float32 tensor by a Python scalar as a
    multiplication by the float32 reciprocal ``1.0f / float(s)``, which differs from a true
    division in the last bit for about a third of the values (e.g. 100 / 2.0828125 ->
    48.012005 instead of 48.012). Returns float32 ``boxes * (1 / s)`` with the reciprocal
    rounded to float32 first, on any device.
    """
    inverse = _float32(np.float32(1.0) / np.float32(scale_factor))
    return boxes.float() * inverse


def legacy_mask_boxes(det_boxes: Tensor, scale_factor: float) -> tuple[Tensor, Tensor]:
    """The two boxes the reference derives from final detections for the mask branch.

    mmdet v1 (``simple_test_mask``) takes the final boxes in original-image pixels, multiplies
    them by the scale factor to get the mask RoIs (float32), and hands those scaled boxes to
    ``get_seg_masks``, which divides them by the scale factor again (numpy float32) before
    truncating to int. In float32 that round trip can move e.g. 153.0 to 152.99998, which
    truncates to 152. Returns ``(mask_rois_boxes, paste_boxes)``: ``det * s`` and
    ``(det * s) / s`` in float32 with a true division (a division by a Python scalar on CUDA
    would multiply by the reciprocal instead).
    """
    s = _float32(scale_factor)
    scaled = det_boxes.float() * s
    back = scaled / torch.full((), s, dtype=torch.float32, device=scaled.device)
    return scaled, back


def legacy_paste_windows(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer paste window ``x1, y1, w, h`` (int64) of each box as ``get_seg_masks`` forms it:
    the float box truncated toward zero (``astype(np.int32)``), ``w = max(x2 - x1 + 1, 1)``,
    ``h = max(y2 - y1 + 1, 1)``."""
    ibox = boxes.to(torch.int32).to(torch.int64)
    x1, y1 = ibox[:, 0], ibox[:, 1]
    w = (ibox[:, 2] - x1 + 1).clamp(min=1)
    h = (ibox[:, 3] - y1 + 1).clamp(min=1)
    return x1, y1, w, h


def paste_masks_legacy(
    mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """mmdet v1's ``get_seg_masks``, one box at a time with OpenCV.

    For each box: ``x1, y1, w, h`` from :func:`legacy_paste_windows`; the float32 probability
    map is resized to ``(w, h)`` with ``cv2.resize(INTER_LINEAR)`` (mmcv's ``imresize``),
    thresholded with ``> threshold`` and written into an all-zero ``image_size`` (h, w) mask at
    rows ``y1 .. y1 + h - 1``, columns ``x1 .. x1 + w - 1``. torchvision's
    ``paste_masks_in_image`` instead pads the map by one cell, expands the box and resizes
    with its own rounding; the masks differ along every edge.

    Boxes crossing the image border: in the reference pipeline boxes are clipped to the
    resized image, so the window never leaves the original image. If it did, the reference's
    numpy slice assignment would raise (window clipped, resized map not), and a negative x1
    or y1 would wrap around. Here the resized map is cropped to the part of the window
    inside the image, which is what clipping the window means geometrically.

    ``mask_probs`` ``(N, Hm, Wm)`` are probabilities (sigmoid already applied, channel of
    the box's class chosen). Returns ``(N, h, w)`` bool on ``mask_probs``' device.
    """
    img_h, img_w = int(image_size[0]), int(image_size[1])
    num = mask_probs.shape[0]
    out = np.zeros((num, img_h, img_w), dtype=bool)
    crops = paste_mask_crops(mask_probs, boxes, image_size, mode="legacy", threshold=threshold)
    for i in range(num):
        crop = crops[i]
        h, w = crop.mask.shape
        out[i, crop.y0:crop.y0 + h, crop.x0:crop.x0 + w] = crop.mask
    return torch.from_numpy(out).to(mask_probs.device)


def _legacy_crop(prob: np.ndarray, x1: int, y1: int, w: int, h: int, img_h: int, img_w: int,
                 threshold: float) -> tuple[int, int, np.ndarray]:
    """One box of :func:`paste_masks_legacy`: (x, y, mask) of its window inside the image."""
    cx1, cy1 = min(max(x1, 0), img_w), min(max(y1, 0), img_h)
    cx2, cy2 = max(min(x1 + w, img_w), cx1), max(min(y1 + h, img_h), cy1)
    if cx1 >= cx2 or cy1 >= cy2:  # the window is outside the image: an empty mask
        return cx1, cy1, np.zeros((0, 0), dtype=bool)
    resized = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) > threshold
    resized = resized.reshape(h, w)  # cv2 drops singleton dims
    return cx1, cy1, resized[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]


def clipped_paste_windows(boxes: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The part of each :func:`legacy_paste_windows` window inside the image: ``x, y, w, h``
    (int64; ``w`` or ``h`` is 0 for a window outside the image). ``w * h`` is what pasting the
    box costs, known before any pasting."""
    img_h, img_w = int(image_size[0]), int(image_size[1])
    x1, y1, w, h = legacy_paste_windows(boxes.float())
    cx1, cy1 = x1.clamp(0, img_w), y1.clamp(0, img_h)
    win_w = ((x1 + w).clamp(0, img_w) - cx1).clamp(min=0)
    win_h = ((y1 + h).clamp(0, img_h) - cy1).clamp(min=0)
    return cx1, cy1, win_w, win_h


class MaskCrops(Sequence[MaskCrop]):
    """The pasted masks of N detections, pasted one at a time when indexed (nothing is kept).

    ``crops[i]`` is box i's mask as a :class:`~anzoo.structures.MaskCrop` (its window clipped
    to the image), equal to that window of :func:`paste_masks_legacy` ('legacy') or
    :func:`paste_masks_fast` ('fast', computed on the probabilities' device) of all boxes.
    ``areas`` are the windows' sizes in pixels, known without pasting.
    """

    def __init__(self, mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                 mode: str = "legacy", threshold: float = 0.5) -> None:
        if mode not in ("legacy", "fast"):
            raise ValueError(f"mode must be 'legacy' or 'fast', got {mode!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mode = mode
        self.threshold = threshold
        self._probs = mask_probs.detach()
        self._boxes = boxes.detach().float()
        if mode == "legacy":
            self._probs_np = self._probs.float().cpu().numpy()
            self._windows = [t.cpu().tolist() for t in legacy_paste_windows(self._boxes.cpu())]
        clipped = clipped_paste_windows(self._boxes, self.image_size)
        self._clipped = [t.cpu().tolist() for t in clipped]
        self.areas: list[int] = [w * h for w, h in zip(self._clipped[2], self._clipped[3])]

    def __len__(self) -> int:
        return int(self._probs.shape[0])

    @overload
    def __getitem__(self, index: int) -> MaskCrop: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[MaskCrop]: ...

    def __getitem__(self, index: int | slice) -> MaskCrop | Sequence[MaskCrop]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]
        img_h, img_w = self.image_size
        if self.mode == "legacy":
            x1, y1, w, h = (self._windows[k][i] for k in range(4))
            x, y, mask = _legacy_crop(self._probs_np[i], x1, y1, w, h, img_h, img_w, self.threshold)
            return MaskCrop(x, y, mask, self.image_size)
        x, y, w, h = (self._clipped[k][i] for k in range(4))
        if w == 0 or h == 0:
            return MaskCrop(x, y, np.zeros((0, 0), dtype=bool), self.image_size)
        # The same paste into an image that is just the window: every coordinate shifts by an
        # integer, which float32 keeps exact below 2**24, so the taps and windows are the same.
        shift = torch.tensor([x, y, x, y], dtype=torch.float32, device=self._boxes.device)
        mask = paste_masks_fast(self._probs[i:i + 1], self._boxes[i:i + 1] - shift, (h, w), self.threshold)
        return MaskCrop(x, y, mask[0].cpu().numpy(), self.image_size)


def paste_mask_crops(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], mode: str = "legacy",
                     threshold: float = 0.5) -> MaskCrops:
    """The masks of :func:`paste_masks_legacy` (or ``_fast``) as lazily pasted crops, see :class:`MaskCrops`."""
    return MaskCrops(mask_probs, boxes, image_size, mode, threshold)


def _linear_taps(
    window_start: Tensor, box_start: Tensor, box_size: Tensor, length: int, src: int, horizontal: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """OpenCV INTER_LINEAR taps of one axis for ``length`` output pixels per box.

    Output pixel ``window_start + t`` of a box starting at ``box_start`` with ``box_size``
    pixels reads the source map at ``f = (d + 0.5) * src / box_size - 0.5`` (d = pixel -
    box_start), evaluated in float64 and rounded to float32 as OpenCV does, ``lo = floor(f)``,
    weights ``1 - frac, frac``. Past the edges OpenCV treats the axes differently (which only
    changes the last bit): horizontally ``f < 0`` becomes (cell 0, weight 1) and
    ``lo >= src - 1`` (last cell, weight 1); vertically the two row indices are clipped to
    ``[0, src - 1]`` and the weights kept. This is the mapping of
    ``F.interpolate(bilinear, align_corners=False)`` too, which computes ``f`` in float32
    (hence its ~3e-6 differences from OpenCV on 28 -> 400 px resizes).

    Returns ``low, high`` (int64) and weights ``w_low, w_high`` (float32), each ``(N, length)``.
    """
    device = box_start.device
    t = torch.arange(length, device=device, dtype=torch.float64)
    d = (window_start - box_start).to(torch.float64)[:, None] + t[None, :]
    scale = src / box_size.to(torch.float64)
    pos = ((d + 0.5) * scale[:, None] - 0.5).to(torch.float32)
    low_f = torch.floor(pos)
    frac = pos - low_f
    low = low_f.to(torch.int64)
    if horizontal:
        outside = (low < 0) | (low >= src - 1)
        frac = torch.where(outside, torch.zeros_like(frac), frac)
    high = (low + 1).clamp(0, src - 1)
    low = low.clamp(0, src - 1)
    return low, high, 1.0 - frac, frac


def _plan_chunks(win_h: list[int], win_w: list[int], max_elements: int) -> list[list[int]]:
    """Group boxes of similar window size (largest first) so that a chunk's padded windows
    hold at most ``max_elements`` values (a single oversized window forms its own chunk)."""
    order = sorted(range(len(win_h)), key=lambda i: -(win_h[i] * win_w[i]))
    chunks: list[list[int]] = []
    current: list[int] = []
    cur_h = cur_w = 0
    for i in order:
        if win_h[i] == 0 or win_w[i] == 0:
            continue  # window outside the image: the mask stays empty
        new_h, new_w = max(cur_h, win_h[i]), max(cur_w, win_w[i])
        if current and (len(current) + 1) * new_h * new_w > max_elements:
            chunks.append(current)
            current, new_h, new_w = [], win_h[i], win_w[i]
        current.append(i)
        cur_h, cur_w = new_h, new_w
    if current:
        chunks.append(current)
    return chunks


def paste_masks_fast(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
    max_elements: int = 1 << 22,
) -> Tensor:
    """Batched, device-agnostic version of :func:`paste_masks_legacy`.

    The same integer windows; inside each window (clipped to the image) the map is resized
    with OpenCV's INTER_LINEAR arithmetic (half-pixel mapping, edges clamped, horizontal
    pass ``M[r, lo] * a0 + M[r, hi] * a1`` first, then the vertical one; see
    :func:`_linear_taps`) by gathers, then ``> threshold``, and scattered into the output.
    Boxes are processed in a few chunks of similar window size (each chunk padded to its
    largest window, at most ``max_elements`` values): no per-box Python loop, one host sync
    (the window sizes), no matmul (so TF32 settings do not matter). Agrees with the OpenCV
    path except where the resized value lies within float rounding of the threshold:
    OpenCV's float32 resize is reproduced bit for bit without Intel IPP and to ~2e-6 with it
    (opencv-python wheels enable IPP, whose float bilinear resize rounds differently). One
    more OpenCV detail: a resize to exactly half the size in both axes (a 14 x 14 window from
    a 28 x 28 map) runs INTER_AREA, the same 2 x 2 average summed in another order
    (last-bit differences).

    Returns ``(N, h, w)`` bool on ``mask_probs``' device.
    """
    img_h, img_w = int(image_size[0]), int(image_size[1])
    num, src_h, src_w = mask_probs.shape
    device = mask_probs.device
    plane = img_h * img_w
    # One extra slot at the end takes the writes of padded (outside-window) positions.
    flat = torch.zeros(num * plane + 1, dtype=torch.bool, device=device)
    if num == 0 or plane == 0:
        return flat[:-1].view(num, img_h, img_w)
    probs = mask_probs.float()
    x1, y1, w, h = legacy_paste_windows(boxes.float())
    cx1, cy1, win_w, win_h = clipped_paste_windows(boxes, image_size)
    sizes = torch.stack([win_h, win_w]).tolist()
    for members in _plan_chunks(sizes[0], sizes[1], max_elements):
        max_h = max(sizes[0][i] for i in members)
        max_w = max(sizes[1][i] for i in members)
        sel = torch.tensor(members, device=device)
        m = probs[sel]
        n = m.shape[0]
        x_lo, x_hi, ax0, ax1 = _linear_taps(cx1[sel], x1[sel], w[sel], max_w, src_w, horizontal=True)
        y_lo, y_hi, by0, by1 = _linear_taps(cy1[sel], y1[sel], h[sel], max_h, src_h, horizontal=False)
        # horizontal pass over every source row: (n * src_h, max_w)
        horiz = (
            m.gather(2, x_lo[:, None, :].expand(n, src_h, max_w)) * ax0[:, None, :]
            + m.gather(2, x_hi[:, None, :].expand(n, src_h, max_w)) * ax1[:, None, :]
        ).reshape(n * src_h, max_w)
        # vertical pass, whole rows at a time: (n, max_h, max_w)
        row_base = (torch.arange(n, device=device) * src_h)[:, None]
        upper = horiz.index_select(0, (row_base + y_lo).reshape(-1)).view(n, max_h, max_w)
        lower = horiz.index_select(0, (row_base + y_hi).reshape(-1)).view(n, max_h, max_w)
        values = upper.mul_(by0[:, :, None]).add_(lower.mul_(by1[:, :, None]))
        rows = torch.arange(max_h, device=device)
        cols = torch.arange(max_w, device=device)
        outside = (rows[None, :, None] >= win_h[sel, None, None]) | (cols[None, None, :] >= win_w[sel, None, None])
        base = sel * plane + cy1[sel] * img_w + cx1[sel]
        index = (base[:, None] + rows[None, :] * img_w)[:, :, None] + cols[None, None, :]
        index.masked_fill_(outside, num * plane)
        flat.scatter_(0, index.view(-1), (values > threshold).view(-1))
    return flat[:-1].view(num, img_h, img_w)

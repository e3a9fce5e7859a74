"""Detections before pasting: indexing (the one way to filter them) and the predictor's ranking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anzoo.cli.base import as_flags
from anzoo.inference import Predictor, rank_indices
from anzoo.models.detection.detections import Detections


def _detections(with_masks: bool = True) -> Detections:
    boxes = torch.tensor([[0, 0, 9, 9], [10, 10, 29, 29], [5, 5, 7, 7], [0, 0, 99, 79]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.3, 0.9])
    labels = torch.tensor([0, 2, 16, 2])
    probs = torch.arange(4 * 28 * 28, dtype=torch.float32).reshape(4, 28, 28) if with_masks else None
    return Detections((80, 100), boxes, scores, labels, probs, boxes + 0.25 if with_masks else None)


@pytest.mark.parametrize("index, expected", [
    (torch.tensor([3, 1]), [3, 1]),
    (torch.tensor([True, False, True, False]), [0, 2]),
    (slice(1, 3), [1, 2]),
    ([2, 0, 2], [2, 0, 2]),
    (np.array([1, 3]), [1, 3]),
    (1, [1]),
    (-1, [3]),
    ([], []),
])
def test_indexing_takes_every_field_in_index_order(index, expected) -> None:
    det = _detections()
    sub = det[index]
    assert isinstance(sub, Detections) and len(sub) == len(expected) and sub.image_size == det.image_size
    for name in ("boxes", "scores", "labels", "mask_probs", "mask_boxes"):
        torch.testing.assert_close(getattr(sub, name), getattr(det, name)[expected])


def test_indexing_box_only_detections_and_out_of_range() -> None:
    det = _detections(with_masks=False)
    sub = det[det.scores >= 0.5]
    assert sub.labels.tolist() == [0, 2, 2] and sub.mask_probs is None and sub.mask_boxes is None
    with pytest.raises(IndexError, match="out of range"):
        det[4]


def test_rank_is_highest_first_and_paste_keeps_the_detector_order() -> None:
    det = _detections()
    keep, dropped = rank_indices(det, score_thr=0.4)
    assert keep.tolist() == [1, 3, 0] and dropped == 0  # equal scores keep their order (stable)
    assert rank_indices(det, 0.0, max_instances=2)[0].tolist() == [1, 3]
    # the pasted-area cap: the first two windows are 20x20 and 100x80 pixels
    keep, dropped = rank_indices(det, 0.0, max_mask_pixels=20 * 20 + 100 * 80 - 1)
    assert keep.tolist() == [1] and dropped == 3
    ranked, dropped = Predictor.rank(det, 0.0, 3)
    assert ranked.scores.tolist() == pytest.approx([0.9, 0.9, 0.5]) and dropped == 0


def test_library_errors_name_the_flags_on_the_command_line() -> None:
    assert as_flags("`limit` must be at least 1, got 0") == "--limit must be at least 1, got 0"
    assert as_flags("`device='cuda'` was asked for but no CUDA GPU is available (use `device='cpu'`)") == \
        "--device cuda was asked for but no CUDA GPU is available (use --device cpu)"
    assert as_flags("`batch_size` too large; the limit of 5 stays") == "--batch-size too large; the limit of 5 stays"

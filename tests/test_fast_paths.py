"""The fast inference paths give the reference paths' detections, on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anzoo.inference import Predictor
from anzoo.testing import SMALL_SCALE, confident_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return confident_model("r50-an-gn", proposals=40)


def _images():
    rng = np.random.default_rng(7)
    out = []
    for h, w in [(150, 210), (150, 210), (211, 149), (90, 300)]:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[h // 5: h // 2, w // 4: w // 2] = (20, 200, 40)
        out.append(img)
    return out


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def test_fast_paste_equals_legacy_paste(model):
    images = _images()
    legacy = Predictor(model, scale=SMALL_SCALE, mask_paste="legacy").predict_instances(images)
    fast = Predictor(model, scale=SMALL_SCALE, mask_paste="fast").predict_instances(images)
    for a, b in zip(legacy, fast):
        assert len(a) == len(b) > 0
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
        assert _mask_iou(a.masks, b.masks).min() >= 0.99


def test_channels_last_and_batching_keep_detections(model):
    images = _images()
    ref = Predictor(model, scale=SMALL_SCALE).predict_instances(images)
    fast = Predictor(model, scale=SMALL_SCALE, batch_size=4, channels_last=True).predict_instances(images)
    model.to(memory_format=torch.contiguous_format)
    for a, b in zip(ref, fast):
        assert len(a) == len(b) and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.boxes, b.boxes, atol=0.05, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
        assert _mask_iou(a.masks, b.masks).min() >= 0.98


def test_bf16_autocast_on_cpu_stays_close(model):
    images = _images()[:1]
    scale = (192, 128)  # bfloat16 convolutions are slow on CPUs without native support
    ref = Predictor(model, scale=scale).predict_instances(images)[0]
    low = Predictor(model, scale=scale, fp16=True).predict_instances(images)[0]
    # bfloat16 keeps 8 bits of mantissa: the top detections survive, boxes move by a few px at most
    assert len(ref) >= 5
    top = ref.scores.argsort(descending=True)[:5]
    for i in top:
        same = (low.labels == ref.labels[i])
        assert same.any()
        dist = (low.boxes[same] - ref.boxes[i]).abs().max(dim=1).values.min()
        assert dist <= 8.0

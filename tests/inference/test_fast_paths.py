"""The fast inference paths give the reference paths' detections, on the CPU."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anzoo.errors import AnzooError
from anzoo.inference import Predictor
from anzoo.models.layers.fold import FoldedNorm
from anzoo.testing import SMALL_SCALE, confident_model


# Slow tier (`-m "not slow"` leaves it out): full-scale images through three inference paths.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


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
        torch.testing.assert_close(a.boxes, b.boxes, atol=0.05, rtol=0)  # measured: <= 4.6e-5 px, every kernel choice
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)  # measured: <= 7.2e-7
        assert _mask_iou(a.masks, b.masks).min() >= 0.98


#: the bfloat16 test's scale: bfloat16 convolutions are slow on CPUs without native support
BF16_SCALE = (192, 128)
#: the float32 detections that must be found again, one to one, under bfloat16
TOP = 5


def match_one_to_one(ref, low, top: int) -> list[tuple[int, int, float, float]]:
    """Pairs ``(i, j, box distance, score difference)``: each of ``ref``'s ``top`` best
    detections, best first, with the nearest unused ``low`` detection of its label (distance:
    the largest coordinate difference in pixels). A detection with no partner left is missing."""
    pairs, used = [], set()
    for i in ref.scores.argsort(descending=True)[:top].tolist():
        dist = (low.boxes - ref.boxes[i]).abs().max(dim=1).values
        candidates = [j for j in range(len(low)) if j not in used and low.labels[j] == ref.labels[i]]
        if not candidates:
            continue
        j = min(candidates, key=lambda c: float(dist[c]))
        used.add(j)
        pairs.append((i, j, float(dist[j]), float((low.scores[j] - ref.scores[i]).abs())))
    return pairs


#: bfloat16 against float32, top detections matched one to one. Measured with
#: tools/tolerances/bf16_spread.py on an AMD EPYC with AVX2 (no native bfloat16): boxes moved by
#: at most 0.113 px (default kernels, 1 or 2 threads; ATEN_CPU_CAPABILITY=avx2;
#: ONEDNN_MAX_CPU_ISA=AVX2) and 0.077 px (ATEN_CPU_CAPABILITY=default), scores by at most
#: 4.2e-3 in every variant. The tolerances leave a margin of about 4x.
BOX_PX_TOL = 0.5
SCORE_TOL = 0.02


def test_bf16_autocast_on_cpu_stays_close(model):
    images = _images()[:1]
    ref = Predictor(model, scale=BF16_SCALE).predict_instances(images)[0]
    low = Predictor(model, scale=BF16_SCALE, precision="bf16").predict_instances(images)[0]
    assert len(ref) >= TOP
    pairs = match_one_to_one(ref, low, TOP)
    assert len(pairs) == TOP  # every top detection is found again, each by its own partner
    # bfloat16 keeps 8 bits of mantissa: boxes move by a tenth of a pixel (see BOX_PX_TOL)
    assert max(d for _, _, d, _ in pairs) <= BOX_PX_TOL
    assert max(s for _, _, _, s in pairs) <= SCORE_TOL


def test_precision_is_checked_and_fp16_is_its_deprecated_alias(model):
    for bad in ("fp64", "bfloat16", ""):
        with pytest.raises(AnzooError, match="not one of fp32, bf16, fp16"):
            Predictor(model, precision=bad, device="cpu")
    with pytest.raises(AnzooError, match="CUDA GPUs only"):  # float16 autocast has no fast CPU kernels
        Predictor(model, precision="fp16", device="cpu")
    with pytest.warns(FutureWarning, match="`fp16` is deprecated"):
        alias = Predictor(model, fp16=True, device="cpu")
    assert alias.precision == "bf16" and alias.fp16  # on the CPU fp16=True always meant bfloat16
    with pytest.warns(FutureWarning):
        assert Predictor(model, fp16=False, device="cpu").precision == "fp32"
    assert Predictor(model, device="cpu").precision == "fp32"


@pytest.mark.parametrize("precision,dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_precision_sets_the_autocast_of_the_forward(model, monkeypatch, precision, dtype):
    seen = []

    def detect(images, metas, with_masks=True):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return []

    predictor = Predictor(model, precision=precision, scale=SMALL_SCALE)
    monkeypatch.setattr(predictor.model, "detect", detect)
    predictor.detect(_images()[:1])
    assert seen == [dtype]


#: folded against unfolded norms (same float32 model, eval-mode BatchNorms and AN's
#: normalisation folded into the convolutions). Measured with tools/tolerances/fold_spread.py on
#: an AMD EPYC (AVX2): boxes moved by at most 6.1e-5 px and scores by at most 1.1e-6 (1 or 2
#: threads, ATEN_CPU_CAPABILITY=default|avx2, ONEDNN_MAX_CPU_ISA=AVX2). Margins of 80x and 45x:
#: on other CPUs the kernels' own spread (the parity tests': up to 2.5e-3 px) may add to it.
FOLD_BOX_TOL = 5e-3
FOLD_SCORE_TOL = 5e-5


def folded_and_unfolded(model):
    """Detections of ``model`` with BatchNorm statistics away from the identity, with and without folding."""
    from helpers.norms import randomize_batch_norms

    varied = randomize_batch_norms(copy.deepcopy(model))
    images = _images()
    plain = Predictor(varied, scale=SMALL_SCALE, fold_norms=False)
    folded = Predictor(varied, scale=SMALL_SCALE)
    return plain, folded, plain.predict_instances(images), folded.predict_instances(images)


def test_folded_norms_keep_detections(model):
    plain, folded, ref, out = folded_and_unfolded(model)
    assert (plain.folded_norms, folded.folded_norms) == (0, 53)  # r50-an: 37 BatchNorms, 16 AN
    assert plain.model is not folded.model and not any(isinstance(m, FoldedNorm) for m in plain.model.modules())
    for a, b in zip(ref, out):
        assert len(a) == len(b) > 0 and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.boxes, b.boxes, atol=FOLD_BOX_TOL, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=FOLD_SCORE_TOL, rtol=0)
        assert _mask_iou(a.masks, b.masks).min() >= 0.98

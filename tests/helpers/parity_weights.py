"""Deterministic, well-scaled weights for the released mmdetection-v1 layouts (parity tests).

``parity_state_dict(model_id)`` fills every key of ``tests/fixtures/manifests/detector-<id>``
with a tensor that depends only on the key's name, its shape and the rule below, so that the
same checkpoint comes out bit for bit on any machine, in any key order, with any numpy/torch
version:

* each tensor is drawn from ``numpy.random.RandomState(zlib.crc32(key) ^ SEED)`` with
  ``random_sample`` (53-bit integers times 2**-53: no transcendental function, exact in
  float64) as ``u = 2 * U - 1`` in [-1, 1), scaled in float64 and rounded once to float32;
* the scale comes from the key's role (``_rule``), a closed form with no data:

  ======================================  ===============================================
  key                                     value
  ======================================  ===============================================
  ``*.num_batches_tracked``               0
  ``*.running_mean``                      0.1 u
  ``*.running_var``                       1 + 0.25 u
  norm ``weight`` (1-D)                   1 + 0.2 u; x 0.25 for the norm closing a
                                          residual branch (ResNet ``bn3``, AOGNet
                                          ``conv_norm_3``) so depth does not blow up sums
  norm / conv / fc ``bias`` (1-D)         0.1 u
  AN mixture ``weight_`` (k, C)           (2 / k) (1 + 0.4 u): the k gates sum to ~k / 2
  AN mixture ``bias_`` (k, C)             0.05 u
  conv / fc weight                        g sqrt(3 / fan_in) u (variance g^2 / fan_in):
                                          g = sqrt(2) before a ReLU, 1 otherwise, and the
                                          output layers' gains in ``_OUTPUT_GAINS``
  ``bbox_head[.s].fc_cls.bias``           0.5 u, the background entry (class 0)
                                          ``BACKGROUND_LOGIT``
  ======================================  ===============================================

AOGNet blocks sum many node outputs; the block output norm (``extra_norm_ac``) divides by
``EXTRA_NORM_VAR`` more to bring them back to about unit scale. The constants were chosen
once (by looking at activation statistics on the scikit-image photos) so that features stay
O(1) in every backbone, RPN scores spread, a few dozen detections pass mmdetection's
score > 0.05 with varied classes, and mask logits cross 0 inside the boxes.
"""
from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import torch

SEED = 20240611
BACKGROUND_LOGIT = 8.0
EXTRA_NORM_VAR = 4.0
MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"

#: gain g of the output layers (weight variance g^2 / fan_in)
_OUTPUT_GAINS = {
    "rpn_cls": 3.0,
    "rpn_reg": 0.5,
    "fc_cls": 2.0,
    "fc_reg": 1.0,
    "conv_logits": 4.0,
}
# convs whose output is not followed by a ReLU (gain 1)
_LINEAR_OUT = re.compile(r"(downsample\.0|shortcut\.conv_norm\.0|conv_norm_3\.conv_norm\.0|conv3|"
                         r"lateral_convs|fpn_convs|attention\.0|upsample)")
# norms closing a residual branch
_BRANCH_END = re.compile(r"(\.bn3\.|conv_norm_3\.conv_norm\.1\.)")


def load_manifest_keys(model_id: str) -> dict[str, list[int]]:
    with gzip.open(MANIFESTS / f"detector-{model_id}.manifest.json.gz", "rt") as fh:
        return json.load(fh)["keys"]


def _uniform(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """u in [-1, 1), float64, from the key name only."""
    rng = np.random.RandomState((zlib.crc32(key.encode()) ^ SEED) & 0xFFFFFFFF)
    return 2.0 * rng.random_sample(shape) - 1.0


def _fan_in(key: str, shape: tuple[int, ...]) -> int:
    if "upsample" in key:  # ConvTranspose2d (in, out, 2, 2), stride 2: one tap per output
        return shape[0]
    return int(np.prod(shape[1:]))


def _rule(key: str, shape: tuple[int, ...], u: np.ndarray, background_logit: float) -> np.ndarray:
    name = key.rsplit(".", 1)[1]
    module = key.rsplit(".", 1)[0]
    if name == "running_mean":
        return 0.1 * u
    if name == "running_var":
        var = 1.0 + 0.25 * u
        if "extra_norm_ac" in key:
            var = var * EXTRA_NORM_VAR
        return var
    if name == "weight_":
        return (2.0 / shape[0]) * (1.0 + 0.4 * u)
    if name == "bias_":
        return 0.05 * u
    if name == "bias":
        out = 0.1 * u
        if module.endswith("fc_cls"):
            out = 0.5 * u
            out[0] = background_logit
        return out
    if name == "weight" and len(shape) == 1:
        gamma = 1.0 + 0.2 * u
        if _BRANCH_END.search(key):
            gamma = 0.25 * gamma
        return gamma
    if name == "weight":
        last = module.rsplit(".", 1)[-1]
        gain = _OUTPUT_GAINS.get(last)
        if gain is None:
            gain = 1.0 if _LINEAR_OUT.search(module) else math.sqrt(2.0)
        w = gain * math.sqrt(3.0 / _fan_in(key, shape)) * u
        if last in _OUTPUT_GAINS:
            # zero-sum rows: the output ignores the common mode of its (post-ReLU, positive)
            # input, so logits vary with the content instead of one class winning everywhere
            w = w - w.reshape(shape[0], -1).mean(axis=1).reshape((shape[0],) + (1,) * (len(shape) - 1))
        return w
    raise ValueError(f"no parity rule for {key}")


def parity_state_dict(model_id: str, background_logit: float | None = None) -> dict[str, torch.Tensor]:
    """The parity checkpoint's state dict (mmdetection-v1 keys) for a released row.

    ``background_logit`` (default ``BACKGROUND_LOGIT``) sets how many detections pass the
    score threshold: the rows' random features differ in scale, so each fixture picks its own.
    """
    bg = BACKGROUND_LOGIT if background_logit is None else float(background_logit)
    out: dict[str, torch.Tensor] = {}
    for key, shape in load_manifest_keys(model_id).items():
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        value = _rule(key, shape, _uniform(key, shape), bg)
        out[key] = torch.from_numpy(np.asarray(value, dtype=np.float64).astype(np.float32))
    return out


def save_parity_checkpoint(model_id: str, path: str | Path, background_logit: float | None = None) -> Path:
    """The checkpoint in the original layout: ``{'meta', 'state_dict', 'optimizer'}``."""
    path = Path(path)
    torch.save({"meta": {"mmdet_version": "1.0rc0+7ae8ac2", "epoch": 24, "iter": 0, "parity_seed": SEED},
                "state_dict": parity_state_dict(model_id, background_logit), "optimizer": {}}, path)
    return path

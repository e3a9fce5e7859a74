"""Checkpoints in the released layouts, built from the manifests in tests/fixtures/manifests.

The manifests list every key and shape of the authors' files (the 16 mmdetection-v1
detectors, the 8 AOGNet-v2 ImageNet backbones); filling them with random tensors gives files
that exercise exactly the conversion a real download goes through.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "manifests"


def load_manifest(name: str) -> dict:
    """``name`` like 'detector-r50-bn' or 'imagenet-aognet12m-an'."""
    plain = MANIFESTS / f"{name}.manifest.json"
    if plain.exists():
        return json.loads(plain.read_text())
    with gzip.open(MANIFESTS / f"{name}.manifest.json.gz", "rt") as fh:
        return json.load(fh)


def random_state_dict(keys: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.05
    return out


def mmdet_checkpoint(model_id: str, path: Path, seed: int = 0) -> Path:
    """An mmdetection-v1 checkpoint file ({'meta', 'state_dict', 'optimizer'}) for a zoo row."""
    sd = random_state_dict(load_manifest(f"detector-{model_id}")["keys"], seed)
    torch.save({"meta": {"mmdet_version": "1.0rc0+7ae8ac2", "epoch": 24, "iter": 0},
                "state_dict": sd, "optimizer": {}}, path)
    return path

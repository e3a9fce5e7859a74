"""Files the weights cache is fed in tests: small checkpoints in the AOGNet-v2 layout, the
release's zip archives, and the page Google Drive answers with when its quota is exceeded."""
from __future__ import annotations

import io
import zipfile

import torch

__all__ = ["HTML_QUOTA_PAGE", "archive_bytes", "checkpoint_bytes"]

HTML_QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>"
                   b"<body><p>Too many users have viewed or downloaded this file recently.</p></body></html>")


def checkpoint_bytes(seed: int = 0, n: int = 20_000, legacy: bool = False) -> bytes:
    """A small torch.save file in the AOGNet-v2 layout (zip-based unless ``legacy``)."""
    g = torch.Generator().manual_seed(seed)
    obj = {"epoch": 3, "state_dict": {"module.conv.weight": torch.randn(n, generator=g)}}
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def archive_bytes(checkpoint: bytes, folder: str = "resnet-50-imagenet") -> bytes:
    """A zip as the AOGNet-v2 release ships it: model_best.pth.tar + config.yaml."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{folder}/model_best.pth.tar", checkpoint)
        zf.writestr(f"{folder}/config.yaml", "model:\n  arch: resnet\n")
    return buf.getvalue()

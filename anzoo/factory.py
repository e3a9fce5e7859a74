"""``create_model``: a zoo id in, a ready detector out (timm's ``create_model`` for anzoo)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (ANZOO_FORMAT, checkpoint_format, extract_state_dict, load_state_dict_strict,
                         read_checkpoint, save_checkpoint)
from .errors import CheckpointError
from .models.detection.build import build_detector
from .models.detection.convert import convert_mmdet_v1_state_dict
from .models.detection.detector import TwoStageDetector
from .zoo import ZooEntry, get_entry

__all__ = ["create_model", "load_detector_weights", "save_model", "resolve_device", "check_checkpoint_fits",
           "check_backbone_checkpoint_fits"]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; a clear error for CUDA on a machine without it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import AnzooError

        raise AnzooError("--device cuda was asked for but no CUDA GPU is available (use --device cpu)")
    return dev


def _arch(entry: ZooEntry) -> dict[str, Any]:
    return {"detector": entry.detector, "backbone": entry.backbone_id, "head_norm": entry.head_norm,
            "num_classes": entry.num_classes}


def _state_dict_for(model: TwoStageDetector, entry: ZooEntry, ckpt: Any, source: str) -> dict[str, torch.Tensor]:
    fmt = checkpoint_format(ckpt)
    if fmt == "mmdet_v1":
        return convert_mmdet_v1_state_dict(extract_state_dict(ckpt), entry.backbone_id,
                                           cascade=entry.detector == "cascade_mask_rcnn")
    if fmt == "aognet_v2":
        raise CheckpointError(f"{source} is an ImageNet backbone checkpoint, not a detector; "
                              f"use it with `anzoo train --backbone-weights` or anzoo.create_backbone")
    return extract_state_dict(ckpt)


def load_detector_weights(model: TwoStageDetector, entry: ZooEntry, path: str | os.PathLike[str]) -> None:
    """Load a released mmdetection-v1 checkpoint, an anzoo checkpoint or a state dict."""
    source = os.fspath(path)
    ckpt = read_checkpoint(path)
    sd = _state_dict_for(model, entry, ckpt, source)
    load_state_dict_strict(model, sd, what=f"checkpoint {source} (for {entry.id})")


def check_checkpoint_fits(model_id: str, path: str | os.PathLike[str]) -> None:
    """Raise CheckpointError unless the file is a checkpoint of the zoo entry's architecture
    (used by ``anzoo import`` before a hand-downloaded file enters the cache)."""
    entry = get_entry(model_id)
    model = _build(entry, _checkpoint_arch(read_checkpoint(path)))
    load_detector_weights(model, entry, path)


def check_backbone_checkpoint_fits(backbone_id: str, path: str | os.PathLike[str]) -> None:
    """Raise CheckpointError unless the file is an ImageNet checkpoint of that backbone."""
    from .models.backbones import create_backbone

    create_backbone(backbone_id, num_classes=1000, pretrained=path)


def _checkpoint_arch(ckpt: Any) -> dict[str, Any] | None:
    if isinstance(ckpt, dict) and ckpt.get("format") == ANZOO_FORMAT:
        return ckpt.get("arch")
    return None


def _build(entry: ZooEntry, arch: dict[str, Any] | None = None, class_names: list[str] | None = None
           ) -> TwoStageDetector:
    a = dict(_arch(entry))
    if arch:
        # A saved model may carry its own classes (fine-tuning), never another architecture.
        differs = [f"{k} {arch[k]!r} (expected {a[k]!r})" for k in ("detector", "backbone", "head_norm")
                   if k in arch and arch[k] != a[k]]
        if differs:
            raise CheckpointError(f"checkpoint does not fit {entry.id}: it holds a model with "
                                  + ", ".join(differs))
        a["num_classes"] = arch.get("num_classes", a["num_classes"])
    names = class_names if class_names is not None else entry.class_names
    model = build_detector(a["detector"], a["backbone"], a["head_norm"], num_classes=int(a["num_classes"]),
                           class_names=names)
    model.model_id = entry.id
    model.zoo_entry = entry
    return model


def create_model(model_id: str, pretrained: bool | str | os.PathLike[str] = False,
                 device: str | torch.device | None = "cpu", **kwargs: Any) -> TwoStageDetector:
    """Build a zoo model, in eval mode.

    Args:
        model_id: a zoo id (``anzoo.list_models()``), e.g. 'aognet40m-an-gn'.
        pretrained: False (random weights), True (the released weights, downloaded and cached
            through the registry), or the path of a checkpoint: the released mmdetection-v1
            file (also inside a zip), an anzoo checkpoint, or a state dict.
        device: 'cpu', 'cuda', 'auto' or a torch.device.
    """
    entry = get_entry(model_id)
    path: Path | None = None
    ckpt: Any = None
    if pretrained is True:
        from . import hub

        path = hub.fetch_weights(model_id)
    elif pretrained:
        path = Path(pretrained)
    arch, names = None, None
    if path is not None:
        ckpt = read_checkpoint(path)
        arch = _checkpoint_arch(ckpt)
        if arch is not None:
            names = ckpt.get("class_names")
    model = _build(entry, arch, names)
    if arch is not None and ckpt.get("category_ids"):  # a model fine-tuned on another dataset
        model.category_ids = [int(c) for c in ckpt["category_ids"]]
    if ckpt is not None:
        sd = _state_dict_for(model, entry, ckpt, os.fspath(path))
        load_state_dict_strict(model, sd, what=f"checkpoint {path} (for {entry.id})")
        log.info("loaded %s weights from %s", entry.id, path)
    return model.to(resolve_device(device)).eval()


def save_model(model: TwoStageDetector, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Save in anzoo's format: loads back with ``create_model(id, pretrained=path)``."""
    entry: ZooEntry | None = model.zoo_entry
    if entry is None:
        raise ValueError("model was not created from a zoo entry; pass through anzoo.create_model")
    arch = _arch(entry)
    arch["num_classes"] = model.num_classes
    obj = {"format": ANZOO_FORMAT, "model_id": entry.id, "arch": arch,
           "class_names": model.class_names, "category_ids": getattr(model, "category_ids", None),
           "state_dict": model.state_dict(), **extra}
    from . import __version__

    obj["anzoo_version"] = __version__
    return save_checkpoint(obj, path)



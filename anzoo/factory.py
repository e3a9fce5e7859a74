"""``create_model`` and ``create_backbone``: a zoo id in, a ready module out (timm's
``create_model`` for anzoo).

The layer that joins the zoo, the weights cache and the checkpoints to the builders of
:mod:`anzoo.models`, which know none of them: :func:`build_model` is the one place where a
model gets its zoo metadata (``model_id``, ``zoo_entry``, ``category_ids``), and the
weights of a backbone are resolved here, not in ``anzoo.models.backbones``.
"""
from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (ANZOO_FORMAT, checkpoint_format, extract_state_dict, load_state_dict_strict,
                         read_checkpoint, save_checkpoint)
from .errors import CheckpointError
from .models.backbones import build_backbone, get_backbone_spec
from .models.detection.build import build_detector
from .models.detection.convert import convert_mmdet_v1_state_dict
from .models.detection.detector import TwoStageDetector
from .runtime import resolve_device
from .schema import Detector
from .version import __version__
from .zoo import ZooEntry, get_entry

# resolve_device lives in anzoo.runtime; it stays importable from here for older callers.
__all__ = ["create_model", "build_model", "create_backbone", "load_detector_weights", "save_model",
           "resolve_device", "check_checkpoint_fits", "check_backbone_checkpoint_fits"]

log = logging.getLogger(__name__)

#: the arguments of ``build_detector`` that a zoo entry fixes (the others are create_model's kwargs)
_ENTRY_ARGS = ("detector", "backbone", "head_norm")


def _arch(entry: ZooEntry) -> dict[str, Any]:
    # plain strings: this goes into checkpoints, which torch.load(weights_only=True) reads back
    return {"detector": entry.detector.value, "backbone": entry.backbone_id, "head_norm": entry.head_norm.value,
            "num_classes": entry.num_classes}


def _state_dict_for(model: TwoStageDetector, entry: ZooEntry, ckpt: Any, source: str) -> dict[str, torch.Tensor]:
    fmt = checkpoint_format(ckpt)
    if fmt == "mmdet_v1":
        return convert_mmdet_v1_state_dict(extract_state_dict(ckpt), entry.backbone_id,
                                           cascade=entry.detector == Detector.cascade_mask_rcnn)
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
    model = build_model(entry, **_saved_arch(entry, read_checkpoint(path)))
    load_detector_weights(model, entry, path)


def check_backbone_checkpoint_fits(backbone_id: str, path: str | os.PathLike[str]) -> None:
    """Raise CheckpointError unless the file is an ImageNet checkpoint of that backbone."""
    create_backbone(backbone_id, num_classes=1000, pretrained=path)


def create_backbone(name: str, num_classes: int | None = None, pretrained: bool | str | os.PathLike[str] = False,
                    **kwargs: Any) -> nn.Module:
    """Build a backbone (``anzoo.models.backbones.build_backbone``) and load its weights.

    Args:
        name: a backbone registry name, e.g. 'r50-an' or 'aognet40m-bn'.
        num_classes: the ImageNet classifier with this many classes; None: the detection
            backbone (feature maps at strides 4 to 32), the checkpoint's classifier left out.
        pretrained: False (random weights), True (the released ImageNet weights through the
            zoo's ``backbones:`` entry of that name, downloaded and cached) or the path of an
            AOGNet-v2 ImageNet checkpoint (zip, file with ``state_dict`` and ``module.``
            prefixes, or a plain state dict).
        kwargs: the builder's options (``frozen_stages``, ``norm_eval``, ...).
    """
    model = build_backbone(name, num_classes=num_classes, **kwargs)
    if pretrained:
        if pretrained is True:
            from . import hub

            path: str | os.PathLike[str] = hub.fetch_backbone_weights(name)
        else:
            path = pretrained
        sd = get_backbone_spec(name).checkpoint_filter_fn(extract_state_dict(read_checkpoint(path)))
        if num_classes is None:  # detection backbone: the classifier is not part of it
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        load_state_dict_strict(model, sd, what=f"checkpoint {os.fspath(path)!s}")
    return model


def _builder_options() -> tuple[str, ...]:
    """The keyword arguments a zoo model passes on to ``build_detector``."""
    return tuple(p for p in inspect.signature(build_detector).parameters if p not in _ENTRY_ARGS)


def _reject_unknown(kwargs: dict[str, Any]) -> None:
    unknown = [k for k in kwargs if k not in _builder_options()]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}: a zoo model's builder takes "
                        f"{', '.join(_builder_options())}")


def _classes(entry: ZooEntry, num_classes: int | None, class_names: Sequence[str] | None
             ) -> tuple[int, list[str] | None]:
    """The number of classes and their names: the entry's unless given; names are required
    for another number of classes (the predictions are labelled with them)."""
    if class_names is not None:
        class_names = list(class_names)
        num_classes = len(class_names) if num_classes is None else int(num_classes)
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        return num_classes, class_names
    num_classes = entry.num_classes if num_classes is None else int(num_classes)
    if num_classes != entry.num_classes:
        raise ValueError(f"num_classes={num_classes} differs from {entry.id}'s {entry.num_classes}: "
                         "give class_names too (the predictions are labelled with them)")
    return num_classes, None if entry.class_names is None else list(entry.class_names)


def build_model(entry: ZooEntry | str, *, category_ids: Sequence[int] | None = None,
                **kwargs: Any) -> TwoStageDetector:
    """A zoo entry's detector with random weights and its zoo metadata: ``model_id``,
    ``zoo_entry`` and ``category_ids`` are set here and nowhere else.

    Args:
        entry: a zoo entry or its id.
        category_ids: the dataset's category id of each contiguous label (None: COCO's).
        kwargs: ``build_detector``'s options: ``num_classes`` and ``class_names`` (the
            entry's by default; another number of classes needs its names),
            ``frozen_stages``, ``norm_eval``, ...

    Raises:
        TypeError: a keyword ``build_detector`` does not take.
        ValueError: ``num_classes`` and ``class_names`` that disagree.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    _reject_unknown(kwargs)
    num_classes, class_names = _classes(entry, kwargs.pop("num_classes", None), kwargs.pop("class_names", None))
    model = build_detector(entry.detector.value, entry.backbone_id, entry.head_norm.value, num_classes=num_classes,
                           class_names=class_names, **kwargs)
    model.model_id = entry.id
    model.zoo_entry = entry
    model.category_ids = [int(c) for c in category_ids] if category_ids else None
    return model


def _saved_arch(entry: ZooEntry, ckpt: Any) -> dict[str, Any]:
    """The classes an anzoo checkpoint carries (a fine-tuned model), after checking that it
    holds the entry's architecture; nothing for the other layouts."""
    if not (isinstance(ckpt, dict) and ckpt.get("format") == ANZOO_FORMAT and ckpt.get("arch")):
        return {}
    arch, expected = ckpt["arch"], _arch(entry)
    differs = [f"{k} {arch[k]!r} (expected {expected[k]!r})" for k in ("detector", "backbone", "head_norm")
               if k in arch and arch[k] != expected[k]]
    if differs:
        raise CheckpointError(f"checkpoint does not fit {entry.id}: it holds a model with " + ", ".join(differs))
    saved: dict[str, Any] = {"num_classes": arch.get("num_classes", entry.num_classes)}
    if ckpt.get("class_names") is not None:
        saved["class_names"] = ckpt["class_names"]
    elif saved["num_classes"] != entry.num_classes:
        raise CheckpointError(f"checkpoint records {saved['num_classes']} classes for {entry.id} but not their names")
    if ckpt.get("category_ids"):
        saved["category_ids"] = ckpt["category_ids"]
    return saved


def create_model(model_id: str, pretrained: bool | str | os.PathLike[str] = False,
                 device: str | torch.device | None = "cpu", **kwargs: Any) -> TwoStageDetector:
    """Build a zoo model, in eval mode.

    Args:
        model_id: a zoo id (``anzoo.list_models()``), e.g. 'aognet40m-an-gn'.
        pretrained: False (random weights), True (the released weights, downloaded and cached
            through the registry), or the path of a checkpoint: the released mmdetection-v1
            file (also inside a zip), an anzoo checkpoint, or a state dict. (A file from
            ``anzoo export`` is run by ``anzoo.export.OnnxDetector`` instead.)
        device: 'cpu', 'cuda', 'auto' or a torch.device.
        kwargs: passed on to the builder, as timm does: ``num_classes`` with ``class_names``
            (another set of classes: the weights must then fit them), ``frozen_stages``,
            ``norm_eval``, ...; they override the classes an anzoo checkpoint records.

    Raises:
        TypeError: a keyword argument the builder does not take.
        ValueError: ``num_classes`` and ``class_names`` that disagree.
    """
    entry = get_entry(model_id)
    _reject_unknown(kwargs)  # before any download
    path: Path | None = None
    ckpt: Any = None
    if pretrained is True:
        from . import hub

        path = hub.fetch_weights(model_id)
    elif pretrained:
        path = Path(pretrained)
        if path.suffix.lower() == ".onnx":  # anzoo.export sits above this layer: point at it
            raise CheckpointError(f"{path} is an ONNX file (`anzoo export`), not a checkpoint: run it with "
                                  f"anzoo.Predictor(anzoo.export.OnnxDetector({os.fspath(path)!r}))")
    saved: dict[str, Any] = {}
    if path is not None:
        ckpt = read_checkpoint(path)
        saved = _saved_arch(entry, ckpt)
    if "num_classes" in kwargs or "class_names" in kwargs:  # the caller's classes replace the checkpoint's
        saved = {k: v for k, v in saved.items() if k not in ("num_classes", "class_names")}
    model = build_model(entry, **{**saved, **kwargs})
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
    obj["anzoo_version"] = __version__
    return save_checkpoint(obj, path)

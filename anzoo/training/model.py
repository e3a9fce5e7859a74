"""The detector a run trains: the zoo row's architecture, its training settings and where its
weights start (a zoo model's or a checkpoint's with ``--from``, else an ImageNet backbone, else
nothing: training from scratch)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import factory, hub, zoo
from ..distributed import DistContext
from ..errors import AnzooError, CheckpointError, DownloadError
from ..models.detection import DetectorConfig, TwoStageDetector
from .config import TrainConfig

__all__ = ["CLASS_SPECIFIC_KEYS", "build_training_model", "detector_config", "maybe_sync_batchnorm",
           "transfer_detector_weights"]

log = logging.getLogger(__name__)

#: Parameter name fragments of the layers whose shape depends on the number of classes.
CLASS_SPECIFIC_KEYS = ("box_predictor.cls_score.", "box_predictor.bbox_pred.", "predictor.mask_fcn_logits.")


def _starts_pretrained(config: TrainConfig) -> bool:
    return bool(config.from_model or config.backbone_weights or config.pretrained_backbone)


def transfer_detector_weights(source: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Load ``source`` into ``model``, leaving the class-specific layers initialised where their
    shapes differ (another number of classes). Returns the keys left initialised.

    Raises:
        CheckpointError: any other key missing, unexpected or of another shape (the
            architectures differ).
    """
    target = model.state_dict()
    loadable, reinit, problems = {}, [], []
    for key, value in target.items():
        if key not in source:
            problems.append(f"missing {key}")
        elif tuple(source[key].shape) != tuple(value.shape):
            if any(part in key for part in CLASS_SPECIFIC_KEYS):
                reinit.append(key)
            else:
                problems.append(f"{key}: {tuple(source[key].shape)} vs {tuple(value.shape)}")
        else:
            loadable[key] = source[key]
    problems += [f"unexpected {k}" for k in source if k not in target]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
        raise CheckpointError(f"the --from weights do not fit the model's architecture: {shown}")
    model.load_state_dict(loadable, strict=False)
    return reinit


def _from_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The state dict ``--from`` names: a zoo id's released weights or a checkpoint file."""
    src = str(config.from_model)
    if Path(src).is_file():
        return factory.create_model(config.model_id, pretrained=src).state_dict()
    try:
        zoo.get_entry(src)
    except AnzooError:
        raise AnzooError(f"--from {src!r} is neither a checkpoint file nor a zoo id") from None
    return factory.create_model(src, pretrained=True).state_dict()


def _backbone_weights_path(config: TrainConfig, entry: Any) -> Path | None:
    if config.backbone_weights is not None:
        path = Path(config.backbone_weights)
        if not path.is_file():
            raise CheckpointError(f"backbone weights file {path} does not exist")
        return path
    if not config.pretrained_backbone:
        return None
    if entry.pretrained_backbone is None:
        raise AnzooError(
            f"{entry.id} has no released ImageNet backbone to start from; give one with "
            "--backbone-weights PATH, or train from scratch with --no-pretrained-backbone")
    try:
        return hub.fetch_backbone_weights(entry.pretrained_backbone)
    except DownloadError as exc:  # offline, or Google Drive refusing: name the ways around it too
        raise type(exc)(f"{str(exc).rstrip('.')}. Or start without it: give an ImageNet checkpoint with "
                        "--backbone-weights PATH, or train from scratch with --no-pretrained-backbone") from None


def build_training_model(config: TrainConfig, class_names: Sequence[str], category_ids: Sequence[int],
                         load_weights: bool = True) -> TwoStageDetector:
    """The zoo row's detector for ``class_names`` with the run's starting weights (unless
    ``load_weights`` is False: a resumed run loads its checkpoint instead)."""
    entry = zoo.get_entry(config.model_id)
    frozen = config.frozen_stages if config.frozen_stages is not None else (1 if _starts_pretrained(config) else -1)
    norm_eval = config.norm_eval if config.norm_eval is not None else _starts_pretrained(config)
    model = factory.build_model(entry, category_ids=category_ids, num_classes=len(class_names),
                                class_names=list(class_names), frozen_stages=frozen, norm_eval=norm_eval,
                                config=detector_config(config, entry.detector))
    if not load_weights:
        return model
    if config.from_model:
        reinit = transfer_detector_weights(_from_weights(config), model)
        if reinit:
            log.info("fine-tuning from %s: %d class-specific tensors start afresh for %d classes",
                     config.from_model, len(reinit), len(class_names))
        else:
            log.info("starting from the weights of %s", config.from_model)
        return model
    path = _backbone_weights_path(config, entry)
    if path is None:
        log.warning("training %s from scratch (no pretrained backbone; frozen stages %d, backbone norm "
                    "statistics %s): expect far lower accuracy than the recipe", entry.id, frozen,
                    "fixed" if norm_eval else "from each batch")
        return model
    backbone = factory.create_backbone(entry.backbone_id, pretrained=path)  # the models layer only builds
    model.backbone.load_state_dict(backbone.state_dict())
    log.info("backbone %s initialised from %s", entry.backbone_id, path)
    return model


def detector_config(config: TrainConfig, detector: str) -> DetectorConfig:
    """The reference configs' settings of ``detector`` with the run's ``--rpn-proposals`` (kept
    per level before and after the NMS, and in all) and ``--rcnn-samples`` (every stage)."""
    settings = DetectorConfig.for_detector(detector)
    if config.rpn_proposals is not None:
        n = int(config.rpn_proposals)
        settings = replace(settings, rpn_train=replace(settings.rpn_train, nms_pre=n, nms_post=n, max_num=n))
    if config.rcnn_samples is not None:
        n = int(config.rcnn_samples)
        settings = replace(settings, rcnn_train=tuple(replace(c, num_samples=n) for c in settings.rcnn_train))
    return settings


def maybe_sync_batchnorm(model: nn.Module, info: DistContext) -> nn.Module:
    """Batch-statistics BatchNorm layers (training from scratch) synchronised across GPUs."""
    from torch.nn.modules.batchnorm import _BatchNorm

    if info.world_size < 2 or info.device.type != "cuda":
        return model
    model.train()
    if not any(isinstance(m, _BatchNorm) and m.training for m in model.modules()):
        return model  # the recipe's backbone norms are frozen: nothing to synchronise
    log.info("converting trainable BatchNorm layers to SyncBatchNorm")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)

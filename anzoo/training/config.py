"""What a training run depends on (:class:`TrainConfig`) and the checks made on it before the
run starts: where its data is, what a resumed run keeps of the interrupted one."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..data.defaults import TRAIN_SCALE
from ..errors import CheckpointError, DatasetError
from .state import LATEST

__all__ = ["TrainConfig", "merge_resumed_config", "resolve_dataset_paths"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "the recipe's value".

    Attributes:
        model_id: the zoo row to train (its architecture and schedule).
        work_dir: where logs and checkpoints go.
        coco_dir: folder with ``annotations/instances_{train,val}2017.json`` and
            ``train2017/`` (``val2017/`` for periodic evaluation).
        train_ann, train_images: another layout (override ``coco_dir``'s training pair).
        val_ann, val_images: evaluation pair (default: ``coco_dir``'s val2017 when present).
        epochs: total epochs (default: the entry's schedule, 24 or 20); the LR steps scale
            with it.
        batch_size: images per process (2).
        lr: base learning rate (default 0.02 x total batch / 16).
        amp: mixed precision (float16 + loss scaling on CUDA, bfloat16 on CPU).
        resume: continue from ``work_dir/latest.pth``.
        max_iters: stop after this many iterations in all (a checkpoint is written).
        img_scale: (long, short) edge limits of the training resize (1333, 800).
        eval_every: evaluate every N epochs when an evaluation set exists (0: never).
        seed: seeds the initialisation, the data order and flips, the RoI sampling.
        device: 'auto', 'cpu' or 'cuda'.
        backbone_weights: an ImageNet checkpoint of the backbone (AOGNet-v2 format).
        pretrained_backbone: start from the registry's ImageNet backbone (when no other
            source is given).
        from_model: fine-tune from a zoo id (released weights) or a detector checkpoint path.
        num_workers: DataLoader worker processes per training process.
        keep_checkpoints: keep only the N newest ``epoch_N.pth`` (0: all of them).
        rpn_proposals: proposals per image kept in training (recipe: 2000; smaller for
            quick experiments).
        rcnn_samples: RoIs sampled per image per R-CNN stage (recipe: 512).
        frozen_stages, norm_eval: backbone freezing (default: the recipe's 1 / True when
            starting from pretrained weights, -1 / False from scratch).
        log_every: iterations between metrics records.
        progress: show a progress bar (main process).
        tensorboard: True / False / None (when installed).
        strict_data: stop at an image that cannot be used (after writing ``latest.pth`` at that
            batch) instead of training on the next one of its group and counting it.
    """

    model_id: str
    work_dir: Path
    coco_dir: Path | None = None
    train_ann: Path | None = None
    train_images: Path | None = None
    val_ann: Path | None = None
    val_images: Path | None = None
    epochs: int | None = None
    batch_size: int = 2
    lr: float | None = None
    amp: bool = False
    resume: bool = False
    max_iters: int | None = None
    img_scale: tuple[int, int] = TRAIN_SCALE
    eval_every: int = 1
    seed: int = 0
    device: str = "auto"
    backbone_weights: Path | None = None
    pretrained_backbone: bool = True
    from_model: str | None = None
    num_workers: int = 2
    keep_checkpoints: int = 0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    grad_clip: float | None = 35.0
    flip_ratio: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    rpn_proposals: int | None = None
    rcnn_samples: int | None = None
    frozen_stages: int | None = None
    norm_eval: bool | None = None
    log_every: int = 20
    progress: bool = True
    tensorboard: bool | None = None
    strict_data: bool = False

    #: fields that define the run; a resumed run takes them from its checkpoint.
    RECIPE_FIELDS = ("model_id", "coco_dir", "train_ann", "train_images", "epochs", "batch_size", "lr",
                     "amp", "img_scale", "seed", "backbone_weights", "pretrained_backbone", "from_model",
                     "warmup_iters", "warmup_ratio", "grad_clip", "flip_ratio", "momentum", "weight_decay",
                     "rpn_proposals", "rcnn_samples", "frozen_stages", "norm_eval")

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("work_dir", "coco_dir", "train_ann", "train_images", "val_ann", "val_images",
                    "backbone_weights"):
            if kwargs.get(key) is not None:
                kwargs[key] = Path(kwargs[key])
        if kwargs.get("img_scale") is not None:
            kwargs["img_scale"] = tuple(int(v) for v in kwargs["img_scale"])
        return cls(**kwargs)


def resolve_dataset_paths(config: TrainConfig) -> tuple[Path, Path, Path | None, Path | None]:
    """(train annotations, train images, val annotations, val images) of a config."""
    root = Path(config.coco_dir) if config.coco_dir else None
    if config.train_ann is not None or config.train_images is not None:
        if config.train_ann is None or config.train_images is None:
            raise DatasetError("--train-ann and --train-images go together")
        train_ann, train_images = Path(config.train_ann), Path(config.train_images)
    elif root is not None:
        train_ann, train_images = root / "annotations" / "instances_train2017.json", root / "train2017"
    else:
        raise DatasetError("no training data: give --coco DIR or --train-ann FILE --train-images DIR")
    if root is not None and not root.is_dir():
        raise DatasetError(f"COCO folder {root} does not exist")
    if not train_ann.is_file():
        raise DatasetError(f"training annotation file {train_ann} does not exist")
    val_ann, val_images = config.val_ann, config.val_images
    if val_ann is None and root is not None:
        cand_ann, cand_img = root / "annotations" / "instances_val2017.json", root / "val2017"
        if cand_ann.is_file() and cand_img.is_dir():
            val_ann, val_images = cand_ann, cand_img
    if (val_ann is None) != (val_images is None):
        raise DatasetError("the evaluation annotation file and image folder go together")
    return train_ann, train_images, (Path(val_ann) if val_ann else None), (Path(val_images) if val_images else None)


def merge_resumed_config(config: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
    """The resumed run's recipe comes from its checkpoint; say where the new config differs."""
    old = TrainConfig.from_json({**saved, "work_dir": str(config.work_dir)})
    if old.model_id != config.model_id:
        raise CheckpointError(f"{Path(config.work_dir) / LATEST} is a run of {old.model_id}, not {config.model_id}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    updates = {}
    for name in TrainConfig.RECIPE_FIELDS:
        new, before = getattr(config, name), getattr(old, name)
        # a value left at its default was not asked for (the CLI passes every default)
        asked = new is not None and new != defaults.get(name)
        if asked and new != before and name != "model_id":
            log.warning("resuming: keeping %s=%s of the interrupted run (ignoring %s)", name, before, new)
        updates[name] = before
    return replace(config, **updates)

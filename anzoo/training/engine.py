"""The training loop behind ``anzoo train``: one process, or many under ``torchrun`` (DDP).

The recipe is the reference configs' (``configs/attn_norm/*.py`` of the mmdetection-v1 fork):
SGD (momentum 0.9, weight decay 1e-4) at lr 0.02 per 16 images, scaled linearly to the actual
total batch; linear warm-up over 500 iterations from 1/3; steps by 10 at epochs 16 and 22 of
24 ("2x") or 16 and 19 of 20 ("20e"), from the zoo entry's schedule; gradients clipped to an
L2 norm of 35; 2 images per process, resized to 1333x800 and flipped with probability 0.5;
the backbone's stem and first stage frozen and its BN / AN statistics fixed (the backbones'
``frozen_stages=1, norm_eval=True``). The losses, assigners and samplers are the detector's
(:meth:`TwoStageDetector.compute_losses`).

Where the weights start:

* ``--resume``: the ``latest.pth`` of the work dir (model, optimizer, schedule, AMP scaler,
  counters and random states: the run continues exactly as if never stopped);
* ``--from SRC``: a zoo detector (its released weights, through the registry) or a
  checkpoint file; the class-specific layers (box classifier, class-specific box regressor,
  mask logits) are re-initialised when the dataset has another number of classes;
* otherwise the ImageNet backbone of the zoo entry (downloaded through the registry, or the
  file given with ``--backbone-weights``). Rows without a released ImageNet backbone (the GN
  and SN rows) need ``--backbone-weights PATH`` or an explicit ``--no-pretrained-backbone``;
  training from scratch then also unfreezes the stem and first stage and lets the backbone's
  BatchNorm layers use batch statistics (frozen random layers would be useless).

One process (rank 0) writes the logs and checkpoints: ``metrics.jsonl``, ``config.json``,
``epoch_N.pth`` after every epoch, ``latest.pth`` (also when a run stops early: ``--max-iters``,
Ctrl-C, or a data error in a single process) and ``model_final.pth`` (anzoo's model format:
``create_model(ID, pretrained=PATH)``, ``anzoo predict --weights``, ``anzoo eval --weights``).

Both annotation files are checked before the first step. An image that cannot be used when its
turn comes (deleted, damaged, not its annotated size) is replaced by the next one of its
aspect group, with a warning and a ``"type": "skipped"`` record in ``metrics.jsonl``;
``--strict-data`` stops instead, after writing ``latest.pth`` at the batch that failed.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.coco import load_coco_annotations, raise_worker_errors_plainly
from ..errors import AnzooError, CheckpointError, DatasetError
from ..fileio import atomic_path, atomic_write_json
from ..models.detection.detector import TwoStageDetector
from ..distributed import DistContext, init_distributed
from .state import (
    LATEST,
    capture_rng_state,
    epoch_checkpoint_name,
    load_training_state,
    restore_rng_state,
    save_training_checkpoint,
)
from .batches import CocoTrainDataset, GroupedBatchSampler, build_train_loader
from .logger import MetricsWriter, peak_memory_mib
from .schedule import LRSchedule, scaled_lr, schedule_epochs

__all__ = [
    "CLASS_SPECIFIC_KEYS",
    "FINAL_MODEL",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "build_training_model",
    "resolve_dataset_paths",
    "train",
    "transfer_detector_weights",
]

log = logging.getLogger(__name__)

#: process-group timeout of a training run (the default 30 minutes could expire while rank 0
#: alone runs COCOeval on a large evaluation set and the others wait)
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=4)
#: where the processes put their shares of a periodic evaluation (removed afterwards)
EVAL_DIR = ".eval"

FINAL_MODEL = "model_final.pth"
#: Parameter name fragments of the layers whose shape depends on the number of classes.
CLASS_SPECIFIC_KEYS = ("box_predictor.cls_score.", "box_predictor.bbox_pred.", "predictor.mask_fcn_logits.")


class TrainingDiverged(AnzooError):
    """The loss or the gradients became NaN or infinite."""


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
    img_scale: tuple[int, int] = (1333, 800)
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


@dataclass
class TrainResult:
    work_dir: Path
    final_model: Path | None
    latest_checkpoint: Path | None
    iterations: int
    epochs_completed: int
    total_epochs: int
    stopped_early: bool
    #: the metrics records of this process's run (main process only), as in metrics.jsonl.
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    #: images passed over in this run (main process; all processes' images), as in metrics.jsonl.
    skipped_images: list[dict[str, Any]] = field(default_factory=list)
    #: the trained detector (not DDP-wrapped), in training mode.
    model: TwoStageDetector | None = None


# ------------------------------------------------------------------------------ data
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


# ------------------------------------------------------------------------------ model
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
    from .. import zoo
    from ..factory import create_model

    src = str(config.from_model)
    if Path(src).is_file():
        return create_model(config.model_id, pretrained=src).state_dict()
    try:
        zoo.get_entry(src)
    except AnzooError:
        raise AnzooError(f"--from {src!r} is neither a checkpoint file nor a zoo id") from None
    return create_model(src, pretrained=True).state_dict()


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
    from .. import hub

    return hub.fetch_backbone_weights(entry.pretrained_backbone)


def build_training_model(config: TrainConfig, class_names: Sequence[str], category_ids: Sequence[int],
                         load_weights: bool = True) -> TwoStageDetector:
    """The zoo row's detector for ``class_names`` with the run's starting weights (unless
    ``load_weights`` is False: a resumed run loads its checkpoint instead)."""
    from .. import zoo
    from ..models.backbones import create_backbone
    from ..models.detection.build import build_detector

    entry = zoo.get_entry(config.model_id)
    frozen = config.frozen_stages if config.frozen_stages is not None else (1 if _starts_pretrained(config) else -1)
    norm_eval = config.norm_eval if config.norm_eval is not None else _starts_pretrained(config)
    model = build_detector(entry.detector, entry.backbone_id, entry.head_norm, num_classes=len(class_names),
                           class_names=list(class_names), frozen_stages=frozen, norm_eval=norm_eval)
    model.model_id = entry.id
    model.zoo_entry = entry
    model.category_ids = [int(c) for c in category_ids]
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
    backbone = create_backbone(entry.backbone_id, pretrained=path)
    model.backbone.load_state_dict(backbone.state_dict())
    log.info("backbone %s initialised from %s", entry.backbone_id, path)
    return model


def _apply_proposal_overrides(model: TwoStageDetector, config: TrainConfig) -> None:
    from ..models.detection.targets import CASCADE_TRAIN_CFGS, MASK_RCNN_TRAIN_CFG

    if config.rpn_proposals is not None:
        n = int(config.rpn_proposals)
        model.rpn.train_cfg = replace(model.rpn.train_cfg, nms_pre=n, nms_post=n, max_num=n)
    if config.rcnn_samples is not None:
        n = int(config.rcnn_samples)
        heads: Any = model.roi_heads
        if hasattr(heads, "stages"):
            heads.train_cfgs = [replace(c, num_samples=n) for c in CASCADE_TRAIN_CFGS]
        else:
            heads.train_cfg = replace(MASK_RCNN_TRAIN_CFG, num_samples=n)


def _maybe_sync_batchnorm(model: nn.Module, info: DistContext) -> nn.Module:
    """Batch-statistics BatchNorm layers (training from scratch) synchronised across GPUs."""
    from torch.nn.modules.batchnorm import _BatchNorm

    if info.world_size < 2 or info.device.type != "cuda":
        return model
    model.train()
    if not any(isinstance(m, _BatchNorm) and m.training for m in model.modules()):
        return model  # the recipe's backbone norms are frozen: nothing to synchronise
    log.info("converting trainable BatchNorm layers to SyncBatchNorm")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# ------------------------------------------------------------------------------ loop
def _merge_resumed_config(config: TrainConfig, saved: dict[str, Any]) -> TrainConfig:
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


#: skipped images warned about one by one (all are in metrics.jsonl)
SKIP_WARNINGS = 20


def _report_skips(skips: list[dict[str, Any]], metrics: MetricsWriter, reported: list[dict[str, Any]]) -> None:
    """Main process: a metrics record and (the first few) a warning per image passed over."""
    for skip in skips:
        record = {"type": "skipped", **skip}
        metrics.write(record, scalars=False)
        reported.append(record)
        if len(reported) <= SKIP_WARNINGS:
            log.warning("skipped a training image: %s; image %s took its place", skip["problem"], skip["replaced_by"])
        elif len(reported) == SKIP_WARNINGS + 1:
            log.warning("more training images were skipped: see the \"skipped\" records of metrics.jsonl")


def _strict_data_message(skipped: list[dict[str, Any]], latest: Path, iteration: int) -> str:
    what = skipped[0]["problem"] if skipped else "another process met an image that cannot be used (see its log)"
    return (f"{what}. --strict-data: stopped before iteration {iteration} and saved {latest}; replace or "
            f"remove the image (or leave out --strict-data to train on the next image instead), then "
            f"continue with --resume")


def _sum_losses(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v for k, v in losses.items() if "loss" in k), torch.zeros((), device=next(iter(losses.values())).device))


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from ..log import stderr_console

        self._bar = Progress(TextColumn("[bold]train[/bold] {task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                             TextColumn("{task.fields[info]}"), console=stderr_console(), transient=False)
        self._task = self._bar.add_task("", total=total, completed=done, info="")
        self._bar.start()

    def update(self, done: int, description: str, info: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=description, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _link_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link where the file system allows (no second
    copy on disk; checkpoints are replaced, never written in place), else a copy."""
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; see the module docstring."""
    from ..factory import resolve_device, save_model

    work_dir = Path(config.work_dir)
    info = init_distributed(resolve_device(config.device), timeout=PROCESS_GROUP_TIMEOUT)
    # every rank runs the same code: only the main process's warnings reach the user
    package_log = logging.getLogger("anzoo")
    level = package_log.level
    if not info.is_main:
        package_log.setLevel(logging.ERROR)
    try:
        return _train(config, work_dir, info, save_model)
    finally:
        package_log.setLevel(level)
        info.close()


def _train(config: TrainConfig, work_dir: Path, info: DistContext, save_model: Any) -> TrainResult:
    from .. import zoo

    device = info.device
    resume_state: dict[str, Any] | None = None
    resume_weights: dict[str, torch.Tensor] | None = None
    if config.resume:
        latest = work_dir / LATEST
        if not latest.is_file():
            raise CheckpointError(f"nothing to resume: {latest} does not exist")
        resume_weights, resume_state = load_training_state(latest)
        config = _merge_resumed_config(config, resume_state["config"])
    if config.batch_size < 1:
        raise AnzooError(f"--batch-size must be at least 1, got {config.batch_size}")
    entry = zoo.get_entry(config.model_id)
    train_ann, train_images, val_ann, val_images = resolve_dataset_paths(config)
    dataset = CocoTrainDataset(train_ann, train_images, scale=config.img_scale)
    val_coco = None
    if config.eval_every and val_ann is not None and val_images is not None:
        # checked now rather than after the first epoch
        if not Path(val_images).is_dir():
            raise DatasetError(f"evaluation image folder {val_images} does not exist")
        val_coco = load_coco_annotations(val_ann)

    total_epochs, steps = schedule_epochs(entry.schedule, config.epochs)
    total_batch = config.batch_size * info.world_size
    base_lr = float(config.lr) if config.lr is not None else scaled_lr(total_batch)
    schedule = LRSchedule(base_lr, steps, warmup_iters=config.warmup_iters, warmup_ratio=config.warmup_ratio)

    _seed_everything(config.seed)  # the same initial weights on every rank
    model = build_training_model(config, dataset.class_names, dataset.category_ids,
                                 load_weights=resume_weights is None)
    if resume_weights is not None:
        model.load_state_dict(resume_weights)
    _apply_proposal_overrides(model, config)
    model.to(device)
    model = _maybe_sync_batchnorm(model, info)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    use_scaler = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    sampler = GroupedBatchSampler(dataset.flags, config.batch_size, rank=info.rank, world_size=info.world_size,
                                  seed=config.seed, flip_ratio=config.flip_ratio)
    iters_per_epoch = sampler.batches_per_rank
    loader = build_train_loader(dataset, sampler, num_workers=config.num_workers,
                                pin_memory=device.type == "cuda")
    # the loader's own generator: creating an iterator must not draw from the global RNG,
    # or a resumed run would see other random numbers than an uninterrupted one
    loader.generator = torch.Generator()

    epoch, batch_in_epoch, iteration = 0, 0, 0
    skipped_total = 0  # images passed over so far, all processes, resumed runs included
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        if resume_state.get("scaler") and use_scaler:
            scaler.load_state_dict(resume_state["scaler"])
        epoch, batch_in_epoch, iteration = (int(resume_state["epoch"]), int(resume_state["batch"]),
                                            int(resume_state["iteration"]))
        skipped_total = int(resume_state.get("skipped_images", 0))
        if int(resume_state.get("world_size", 1)) != info.world_size:
            log.warning("resuming a run of %s processes with %s: the data order differs from an "
                        "uninterrupted run", resume_state.get("world_size"), info.world_size)
        rng_states = resume_state["rng"]
        restore_rng_state(rng_states[info.rank] if info.rank < len(rng_states) else rng_states[0])
        log.info("resuming %s at epoch %d, iteration %d", config.model_id, epoch + 1, iteration)
    else:
        _seed_everything(config.seed + info.rank)  # RoI sampling differs between ranks

    ddp_model: nn.Module = model
    if info.world_size > 1:
        # device_ids=None: DDP leaves the inputs where they are (the images are moved here, the
        # ground-truth masks stay on the CPU where their targets are cut)
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=None)

    total_iters = total_epochs * iters_per_epoch
    end_iter = min(total_iters, config.max_iters) if config.max_iters is not None else total_iters
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        summary = {"config": config.to_json(), "world_size": info.world_size, "total_batch": total_batch,
                   "base_lr": base_lr, "total_epochs": total_epochs, "lr_steps": list(steps),
                   "iters_per_epoch": iters_per_epoch, "num_classes": len(dataset.class_names),
                   "class_names": dataset.class_names, "category_ids": dataset.category_ids,
                   "dataset": dataclasses.asdict(dataset.stats), "device": str(device)}
        atomic_write_json(work_dir / "config.json", summary)
        log.info("training %s on %d images (%d classes): %d epochs x %d iterations, %d images per "
                 "iteration (%d process(es)), lr %.4g, steps at epochs %s, on %s",
                 config.model_id, len(dataset), len(dataset.class_names), total_epochs, iters_per_epoch,
                 total_batch, info.world_size, base_lr, list(steps), device)
    metrics = MetricsWriter(work_dir, enabled=info.is_main, tensorboard=config.tensorboard,
                            resume_from_iteration=iteration if resume_state is not None else None)
    progress = _Progress(config.progress and info.is_main, end_iter, iteration)
    result = TrainResult(work_dir=work_dir, final_model=None, latest_checkpoint=None, iterations=iteration,
                         epochs_completed=epoch, total_epochs=total_epochs, stopped_early=False, model=model)

    def checkpoint(epoch_: int, batch_: int, name: str | None = None) -> None:
        """Everything to resume at (epoch_, batch_); written by the main process."""
        rng_all = info.all_gather(capture_rng_state())
        if not info.is_main:
            return
        state = {"version": 1, "epoch": epoch_, "batch": batch_, "iteration": iteration,
                 "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                 "scaler": scaler.state_dict() if use_scaler else None, "rng": rng_all,
                 "config": config.to_json(), "world_size": info.world_size, "total_epochs": total_epochs,
                 "skipped_images": skipped_total}
        latest = work_dir / LATEST
        if name:
            path = save_training_checkpoint(work_dir / name, model, state)
            _link_atomic(path, latest)
            if config.keep_checkpoints:
                for old_epoch in range(1, epoch_ - config.keep_checkpoints + 1):
                    (work_dir / epoch_checkpoint_name(old_epoch)).unlink(missing_ok=True)
        else:
            save_training_checkpoint(latest, model, state)
        result.latest_checkpoint = latest

    window_start, window_iters, data_time = time.perf_counter(), 0, 0.0
    in_step = False
    saved_for_data_error = False
    pending_skips: list[dict[str, Any]] = []  # this process's, until the next log step
    try:
        while epoch < total_epochs and iteration < end_iter:
            sampler.set_epoch(epoch, batch_in_epoch)
            fetch_start = time.perf_counter()
            for images, metas, targets, _, skipped in raise_worker_errors_plainly(iter(loader)):
                data_time += time.perf_counter() - fetch_start
                # every process learns whether any met an unusable image, so that all stop together
                if config.strict_data and info.all_reduce_mean({"skipped": float(len(skipped))})["skipped"] > 0:
                    checkpoint(epoch, batch_in_epoch)
                    saved_for_data_error = True
                    raise DatasetError(_strict_data_message(skipped, work_dir / LATEST, iteration + 1))
                pending_skips += [dict(s, iter=iteration + 1, epoch=epoch + 1) for s in skipped]
                lr = schedule.apply(optimizer, iteration, epoch)
                images = images.to(device, non_blocking=True)
                autocast = torch.autocast(device.type, dtype=amp_dtype) if config.amp else nullcontext()
                with autocast:
                    losses = ddp_model(images, metas, targets)
                loss = _sum_losses(losses)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if config.grad_clip:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
                else:
                    grad_norm = float(torch.linalg.vector_norm(torch.stack(
                        [p.grad.detach().norm() for p in params if p.grad is not None])))
                if not use_scaler and not math.isfinite(grad_norm):
                    # every rank sees the same all-reduced gradients, so all stop together
                    raise TrainingDiverged(
                        f"training diverged at iteration {iteration + 1}: the gradients are not finite "
                        f"(loss {float(loss):.4g}); try a lower --lr or a longer warm-up")
                in_step = True
                scaler.step(optimizer)
                scaler.update()
                in_step = False
                iteration += 1
                batch_in_epoch += 1
                window_iters += 1
                is_last = iteration >= end_iter or batch_in_epoch >= iters_per_epoch
                if iteration % max(1, config.log_every) == 0 or is_last:
                    values = {k: float(v.detach()) for k, v in losses.items()}
                    values["loss"] = float(loss.detach())
                    values = info.all_reduce_mean(values)
                    new_skips = [s for part in info.all_gather(pending_skips) for s in part]
                    pending_skips = []
                    skipped_total += len(new_skips)
                    elapsed = time.perf_counter() - window_start
                    record = {"type": "train", "iter": iteration, "epoch": epoch + 1, "lr": lr, **values,
                              "grad_norm": grad_norm, "time_per_iter": elapsed / window_iters,
                              "data_time": data_time / window_iters, "memory_mib": peak_memory_mib(device),
                              "skipped_images": skipped_total}
                    if info.is_main:
                        _report_skips(new_skips, metrics, result.skipped_images)
                        metrics.write(record)
                        result.history.append(record)
                    window_start, window_iters, data_time = time.perf_counter(), 0, 0.0
                progress.update(iteration, f"epoch {epoch + 1}/{total_epochs}",
                                f"loss {float(loss.detach()):.3f} lr {lr:.2e}")
                result.iterations = iteration
                if iteration >= end_iter and batch_in_epoch < iters_per_epoch:
                    break
                fetch_start = time.perf_counter()
            if batch_in_epoch < iters_per_epoch:  # stopped inside the epoch (--max-iters)
                result.stopped_early = True
                checkpoint(epoch, batch_in_epoch)
                break
            epoch += 1
            batch_in_epoch = 0
            result.epochs_completed = epoch
            checkpoint(epoch, 0, epoch_checkpoint_name(epoch))
            if (config.eval_every and epoch % config.eval_every == 0 and val_ann is not None
                    and val_images is not None):
                from .periodic_eval import run_periodic_evaluation

                # every process evaluates its share of the images; the results meet in the work dir
                eval_dir = work_dir / EVAL_DIR
                scores = run_periodic_evaluation(model, val_ann, val_images, scale=config.img_scale,
                                                 device=device, workers=config.num_workers, out_dir=eval_dir,
                                                 distributed=info.world_size > 1, coco=val_coco)
                model.train()
                if info.is_main:
                    record = {"type": "eval", "iter": iteration, "epoch": epoch, **scores}
                    metrics.write(record)
                    result.evaluations.append(record)
                    log.info("epoch %d evaluation: %s", epoch,
                             ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
                info.barrier()
                if info.is_main:
                    shutil.rmtree(eval_dir, ignore_errors=True)
        if epoch < total_epochs and not result.stopped_early:
            result.stopped_early = True  # stopped exactly at an epoch boundary by --max-iters
    except KeyboardInterrupt:
        if not in_step and info.world_size == 1:
            log.warning("interrupted: saving %s to resume from", work_dir / LATEST)
            checkpoint(epoch, batch_in_epoch)
        raise
    except DatasetError:
        # images that cannot be used, MAX_TRIES in a row: keep the epoch's work (one process
        # only: under torchrun the others are not there to join the checkpoint's exchange)
        if not saved_for_data_error and batch_in_epoch > 0 and info.world_size == 1:
            log.warning("saving %s to resume from", work_dir / LATEST)
            checkpoint(epoch, batch_in_epoch)
        raise
    finally:
        progress.close()
        metrics.close()

    if info.is_main:  # the weights the run ended with (also after --max-iters)
        result.final_model = save_model(model, work_dir / FINAL_MODEL)
        log.info("final model: %s", result.final_model)
    info.barrier()
    return result

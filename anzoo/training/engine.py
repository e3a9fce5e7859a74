"""The training loop behind ``anzoo train``: one process, or many under ``torchrun`` (DDP).

The recipe is the reference configs' (``configs/attn_norm/*.py`` of the mmdetection-v1 fork):
SGD (momentum 0.9, weight decay 1e-4) at lr 0.02 per 16 images, scaled linearly to the actual
total batch; linear warm-up over 500 iterations from 1/3; steps by 10 at epochs 16 and 22 of
24 ("2x") or 16 and 19 of 20 ("20e"), from the zoo entry's schedule; gradients clipped to an
L2 norm of 35; 2 images per process, resized to 1333x800 and flipped with probability 0.5;
the backbone's stem and first stage frozen and its BN / AN statistics fixed (the backbones'
``frozen_stages=1, norm_eval=True``). The losses, assigners and samplers are the detector's
(:meth:`TwoStageDetector.compute_losses`); ``--rpn-proposals`` and ``--rcnn-samples`` replace
fields of its :class:`~anzoo.models.detection.DetectorConfig` (:mod:`anzoo.training.model`).

:func:`train` sets the run up (data, model, optimizer, what a resumed run restores) and hands
it to a :class:`~anzoo.training.trainer.Trainer` with the hooks of :mod:`anzoo.training.hooks`.

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
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import nn

from .. import zoo
from ..data.coco import load_coco_annotations
from ..distributed import DistContext, init_distributed
from ..errors import AnzooError, CheckpointError, DatasetError
from ..factory import save_model
from ..fileio import atomic_write_json
from ..models.detection import TwoStageDetector
from ..runtime import resolve_device
from .batches import CocoTrainDataset, GroupedBatchSampler, build_train_loader
from .config import TrainConfig, merge_resumed_config, resolve_dataset_paths
from .hooks import CheckpointHook, LRScheduleHook, MetricsHook, PeriodicEvalHook, ProgressHook, StrictDataHook
from .logger import MetricsWriter
from .model import build_training_model, maybe_sync_batchnorm
from .schedule import LRSchedule, scaled_lr, schedule_epochs
from .state import LATEST, load_training_state, restore_rng_state
from .trainer import HookBase, Trainer

__all__ = ["FINAL_MODEL", "TrainResult", "train"]

log = logging.getLogger(__name__)

#: process-group timeout of a training run (the default 30 minutes could expire while rank 0
#: alone runs COCOeval on a large evaluation set and the others wait)
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=4)

FINAL_MODEL = "model_final.pth"


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
    #: --resume of a run that had already finished: nothing was trained or written.
    already_finished: bool = False


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; see the module docstring."""
    info = init_distributed(resolve_device(config.device), timeout=PROCESS_GROUP_TIMEOUT)
    # every rank runs the same code: only the main process's warnings reach the user
    package_log = logging.getLogger("anzoo")
    level = package_log.level
    if not info.is_main:
        package_log.setLevel(logging.ERROR)
    try:
        return _train(config, Path(config.work_dir), info)
    finally:
        package_log.setLevel(level)
        info.close()


@dataclass
class _Data:
    """The run's training set and, when evaluated periodically, its evaluation pair."""

    train: CocoTrainDataset
    val_ann: Path | None
    val_images: Path | None
    val_coco: COCO | None


def _load_data(config: TrainConfig) -> _Data:
    """Both annotation files read and checked before anything is trained or written."""
    train_ann, train_images, val_ann, val_images = resolve_dataset_paths(config)
    dataset = CocoTrainDataset(train_ann, train_images, scale=config.img_scale)
    if not (config.eval_every and val_ann is not None and val_images is not None):
        return _Data(dataset, None, None, None)
    if not Path(val_images).is_dir():
        raise DatasetError(f"evaluation image folder {val_images} does not exist")
    return _Data(dataset, val_ann, val_images, load_coco_annotations(val_ann))


def _train(config: TrainConfig, work_dir: Path, info: DistContext) -> TrainResult:
    resume_weights: dict[str, torch.Tensor] | None = None
    resume_state: dict[str, Any] | None = None
    if config.resume:
        latest = work_dir / LATEST
        if not latest.is_file():
            raise CheckpointError(f"nothing to resume: {latest} does not exist")
        resume_weights, resume_state = load_training_state(latest)
        config = merge_resumed_config(config, resume_state["config"])
    if config.batch_size < 1:
        raise AnzooError(f"--batch-size must be at least 1, got {config.batch_size}")
    entry = zoo.get_entry(config.model_id)
    total_epochs, steps = schedule_epochs(entry.schedule, config.epochs)
    if resume_state is not None and _finished(resume_state, total_epochs, config.max_iters, work_dir):
        log.info("the run in %s is already finished (%d/%d epochs, %d iterations): nothing to do",
                 work_dir, int(resume_state["epoch"]), total_epochs, int(resume_state["iteration"]))
        return TrainResult(work_dir=work_dir, final_model=work_dir / FINAL_MODEL, latest_checkpoint=work_dir / LATEST,
                           iterations=int(resume_state["iteration"]), epochs_completed=int(resume_state["epoch"]),
                           total_epochs=total_epochs, stopped_early=False, already_finished=True)
    data = _load_data(config)
    total_batch = config.batch_size * info.world_size
    base_lr = float(config.lr) if config.lr is not None else scaled_lr(total_batch)
    schedule = LRSchedule(base_lr, steps, warmup_iters=config.warmup_iters, warmup_ratio=config.warmup_ratio)

    trainer = _build_trainer(config, info, data.train, base_lr, total_epochs, resume_weights, resume_state)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        summary = {"config": config.to_json(), "world_size": info.world_size, "total_batch": total_batch,
                   "base_lr": base_lr, "total_epochs": total_epochs, "lr_steps": list(steps),
                   "iters_per_epoch": trainer.iters_per_epoch, "num_classes": len(data.train.class_names),
                   "class_names": data.train.class_names, "category_ids": data.train.category_ids,
                   "dataset": dataclasses.asdict(data.train.stats), "device": str(info.device)}
        atomic_write_json(work_dir / "config.json", summary)
        log.info("training %s on %d images (%d classes): %d epochs x %d iterations, %d images per "
                 "iteration (%d process(es)), lr %.4g, steps at epochs %s, on %s",
                 config.model_id, len(data.train), len(data.train.class_names), total_epochs,
                 trainer.iters_per_epoch, total_batch, info.world_size, base_lr, list(steps), info.device)
    writer = MetricsWriter(work_dir, enabled=info.is_main, tensorboard=config.tensorboard,
                           resume_from_iteration=trainer.iteration if resume_state is not None else None)
    metrics, checkpoints = MetricsHook(writer, config.log_every), CheckpointHook(
        work_dir, config, schedule, keep=config.keep_checkpoints)
    hooks: list[HookBase] = [StrictDataHook(work_dir / LATEST)] if config.strict_data else []
    hooks += [LRScheduleHook(schedule), metrics, ProgressHook(config.progress and info.is_main), checkpoints]
    evaluation = None
    if data.val_ann is not None and data.val_images is not None:
        evaluation = PeriodicEvalHook(config.eval_every, data.val_ann, data.val_images, scale=config.img_scale,
                                      workers=config.num_workers, work_dir=work_dir, writer=writer,
                                      coco=data.val_coco)
        hooks.append(evaluation)
    trainer.register_hooks(hooks)
    trainer.train()

    final_model = None
    if info.is_main:  # the weights the run ended with (also after --max-iters)
        final_model = save_model(trainer.model, work_dir / FINAL_MODEL)
        log.info("final model: %s", final_model)
    info.barrier()
    return TrainResult(work_dir=work_dir, final_model=final_model, latest_checkpoint=checkpoints.latest,
                       iterations=trainer.iteration, epochs_completed=trainer.epoch, total_epochs=total_epochs,
                       stopped_early=trainer.stopped_early, history=metrics.history,
                       evaluations=evaluation.evaluations if evaluation is not None else [],
                       skipped_images=metrics.skipped, model=trainer.model)


def _build_trainer(config: TrainConfig, info: DistContext, dataset: CocoTrainDataset, base_lr: float,
                   total_epochs: int, resume_weights: dict[str, torch.Tensor] | None,
                   resume_state: dict[str, Any] | None) -> Trainer:
    """The model, optimizer, scaler and batches of the run, at its starting point (restored from
    ``resume_state``). The order of the steps is that of the random numbers they draw."""
    device = info.device
    _seed_everything(config.seed)  # the same initial weights on every rank
    model = build_training_model(config, dataset.class_names, dataset.category_ids,
                                 load_weights=resume_weights is None)
    if resume_weights is not None:
        model.load_state_dict(resume_weights)
    model.to(device)
    model = maybe_sync_batchnorm(model, info)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")

    sampler = GroupedBatchSampler(dataset.flags, config.batch_size, rank=info.rank, world_size=info.world_size,
                                  seed=config.seed, flip_ratio=config.flip_ratio)
    loader = build_train_loader(dataset, sampler, num_workers=config.num_workers,
                                pin_memory=device.type == "cuda")
    # the loader's own generator: creating an iterator must not draw from the global RNG,
    # or a resumed run would see other random numbers than an uninterrupted one
    loader.generator = torch.Generator()

    start, skipped_images = (0, 0, 0), 0
    if resume_state is not None:
        start, skipped_images = _restore(resume_state, optimizer, scaler, info), int(
            resume_state.get("skipped_images", 0))
        log.info("resuming %s at epoch %d, iteration %d", config.model_id, start[0] + 1, start[2])
    else:
        _seed_everything(config.seed + info.rank)  # RoI sampling differs between ranks

    wrapped: nn.Module = model
    if info.world_size > 1:
        # device_ids=None: DDP leaves the inputs where they are (the images are moved here, the
        # ground-truth masks stay on the CPU where their targets are cut)
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=None)
    iters_per_epoch = sampler.batches_per_rank
    total_iters = total_epochs * iters_per_epoch
    end_iter = min(total_iters, config.max_iters) if config.max_iters is not None else total_iters
    trainer = Trainer(model, optimizer, scaler, loader, sampler, info, iters_per_epoch=iters_per_epoch,
                      total_epochs=total_epochs, end_iter=end_iter, amp=config.amp, grad_clip=config.grad_clip,
                      start=start, wrapped=wrapped)
    trainer.skipped_images = skipped_images
    return trainer


def _finished(state: dict[str, Any], total_epochs: int, max_iters: int | None, work_dir: Path) -> bool:
    """Whether a resumed run has nothing left to do: its epochs (or --max-iters) are done and
    its final model is written (a run stopped between the two finishes that step)."""
    done = int(state["epoch"]) >= total_epochs or (max_iters is not None and int(state["iteration"]) >= max_iters)
    return done and (work_dir / FINAL_MODEL).is_file()


def _restore(state: dict[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             info: DistContext) -> tuple[int, int, int]:
    """Optimizer, scaler and random states of a resumed run; its (epoch, batch, iteration)."""
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    if int(state.get("world_size", 1)) != info.world_size:
        log.warning("resuming a run of %s processes with %s: the data order differs from an "
                    "uninterrupted run", state.get("world_size"), info.world_size)
    rng_states = state["rng"]
    restore_rng_state(rng_states[info.rank] if info.rank < len(rng_states) else rng_states[0])
    return int(state["epoch"]), int(state["batch"]), int(state["iteration"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)

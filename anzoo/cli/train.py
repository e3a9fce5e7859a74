"""``anzoo train``: training on a COCO-format dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.defaults import TRAIN_SCALE
from .base import (TRAIN_SCALE_MIN, DeviceOpt, ModelIdArg, Scale, command, console, default_workers,
                   scale_option)


# The options, one per line in the command below.
WorkDirOpt = Annotated[Path, typer.Option("--work-dir", "-w", help="Folder for checkpoints and logs.",
                                           show_default=False)]
CocoOpt = Annotated[Optional[Path], typer.Option(
        "--coco", help="COCO folder: annotations/instances_train2017.json and train2017/ (val2017 pair "
                       "for periodic evaluation).", show_default=False)]
EpochsOpt = Annotated[Optional[int], typer.Option(
        "--epochs", min=1, help="Epochs in all (default: the model's schedule, 24 or 20; LR steps scale "
                                "with it).", show_default=False)]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per GPU / process.")]
LrOpt = Annotated[Optional[float], typer.Option(
        "--lr", min=0.0, help="Base learning rate (default 0.02 x total batch / 16).", show_default=False)]
AmpOpt = Annotated[bool, typer.Option("--amp", help="Mixed precision (float16 + loss scaling on CUDA).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --work-dir exactly where it "
                                                          "stopped.")]
MaxItersOpt = Annotated[Optional[int], typer.Option(
        "--max-iters", min=1, help="Stop after this many iterations in all (a checkpoint is written).",
        show_default=False)]
ImgScaleOpt = Annotated[Scale, scale_option("--img-scale", "Training resize", TRAIN_SCALE, TRAIN_SCALE_MIN)]
EvalEveryOpt = Annotated[int, typer.Option(
        "--eval-every", min=0, help="Evaluate on the val2017 pair every K epochs (0: never).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of initialisation, data order and sampling.")]
BackboneWeightsOpt = Annotated[Optional[Path], typer.Option(
        "--backbone-weights", help="ImageNet checkpoint of the backbone (AOGNet-v2 format) instead of the "
                                   "registry's.", show_default=False)]
NoPretrainedBackboneOpt = Annotated[bool, typer.Option(
        "--no-pretrained-backbone", help="Train from scratch (nothing frozen, BatchNorm in training mode).")
    ]
TrainAnnOpt = Annotated[Optional[Path], typer.Option(
        "--train-ann", help="Training annotation file (with --train-images; instead of --coco's).",
        show_default=False)]
TrainImagesOpt = Annotated[Optional[Path], typer.Option(
        "--train-images", help="Training image folder.", show_default=False)]
ValAnnOpt = Annotated[Optional[Path], typer.Option(
        "--val-ann", help="Evaluation annotation file (with --val-images).", show_default=False)]
ValImagesOpt = Annotated[Optional[Path], typer.Option(
        "--val-images", help="Evaluation image folder.", show_default=False)]
FromOpt = Annotated[Optional[str], typer.Option(
        "--from", help="Fine-tune from a zoo model's released weights (its id) or a checkpoint file; "
                       "class-specific layers start afresh when the classes differ.", show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option(
        "--workers", min=0, help="Data-loading processes per GPU (default: 2, at most the CPUs per process).",
        show_default=False)]
KeepCheckpointsOpt = Annotated[int, typer.Option(
        "--keep-checkpoints", min=0, help="Keep only the N newest epoch checkpoints (0: all).")]
WarmupItersOpt = Annotated[int, typer.Option("--warmup-iters", min=0, help="Linear warm-up iterations.")]
RpnProposalsOpt = Annotated[Optional[int], typer.Option(
        "--rpn-proposals", min=1, help="Training proposals per image (recipe: 2000).", show_default=False)]
RcnnSamplesOpt = Annotated[Optional[int], typer.Option(
        "--rcnn-samples", min=4, help="RoIs sampled per image and stage (recipe: 512).", show_default=False)
    ]
LogEveryOpt = Annotated[int, typer.Option("--log-every", min=1, help="Iterations between metrics records.")]
TensorboardOpt = Annotated[Optional[bool], typer.Option(
        "--tensorboard/--no-tensorboard", help="TensorBoard events (default: when installed).",
        show_default=False)]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
StrictDataOpt = Annotated[bool, typer.Option(
        "--strict-data", help="Stop at a training image that cannot be used (saving latest.pth there) instead "
                              "of training on the next one and counting it.")]


@command("train")
def train_cmd(
    model_id: ModelIdArg,
    work_dir: WorkDirOpt,
    coco: CocoOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = 2,
    lr: LrOpt = None,
    amp: AmpOpt = False,
    resume: ResumeOpt = False,
    max_iters: MaxItersOpt = None,
    img_scale: ImgScaleOpt = TRAIN_SCALE,
    eval_every: EvalEveryOpt = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    backbone_weights: BackboneWeightsOpt = None,
    no_pretrained_backbone: NoPretrainedBackboneOpt = False,
    train_ann: TrainAnnOpt = None,
    train_images: TrainImagesOpt = None,
    val_ann: ValAnnOpt = None,
    val_images: ValImagesOpt = None,
    from_: FromOpt = None,
    workers: WorkersOpt = None,
    keep_checkpoints: KeepCheckpointsOpt = 0,
    warmup_iters: WarmupItersOpt = 500,
    rpn_proposals: RpnProposalsOpt = None,
    rcnn_samples: RcnnSamplesOpt = None,
    log_every: LogEveryOpt = 20,
    tensorboard: TensorboardOpt = None,
    progress: ProgressOpt = True,
    strict_data: StrictDataOpt = False,
) -> None:
    """Train a zoo model on a COCO-format dataset (one GPU, or many with `torchrun -m anzoo train`)."""
    if backbone_weights is not None and no_pretrained_backbone:
        raise typer.BadParameter("give --backbone-weights or --no-pretrained-backbone, not both")
    if (train_ann is None) != (train_images is None):
        raise typer.BadParameter("--train-ann and --train-images go together")
    if coco is None and train_ann is None and not resume:  # a resumed run knows its data
        raise typer.BadParameter("give --coco DIR, or --train-ann FILE --train-images DIR")
    from ..training import TrainConfig, train
    from ..zoo import get_entry

    model_id = get_entry(model_id).id  # as the zoo spells it: --resume compares it with the run's

    config = TrainConfig(
        model_id=model_id, work_dir=work_dir, coco_dir=coco, train_ann=train_ann, train_images=train_images,
        val_ann=val_ann, val_images=val_images, epochs=epochs, batch_size=batch_size, lr=lr, amp=amp,
        resume=resume, max_iters=max_iters, img_scale=(max(img_scale), min(img_scale)), eval_every=eval_every,
        seed=seed, device=device, backbone_weights=backbone_weights,
        pretrained_backbone=not no_pretrained_backbone, from_model=from_,
        num_workers=default_workers(2) if workers is None else workers,
        keep_checkpoints=keep_checkpoints,
        warmup_iters=warmup_iters, rpn_proposals=rpn_proposals, rcnn_samples=rcnn_samples,
        log_every=log_every, progress=progress, tensorboard=tensorboard, strict_data=strict_data)
    result = train(config)
    if result.already_finished:
        console.print(f"{model_id}: already finished after {result.iterations} iterations ({result.epochs_completed}/"
                      f"{result.total_epochs} epochs) in {work_dir}; nothing to do; model: {result.final_model}",
                      highlight=False)
    elif result.final_model is not None:
        state = "stopped early" if result.stopped_early else "done"
        console.print(f"{model_id}: {state} after {result.iterations} iterations "
                      f"({result.epochs_completed}/{result.total_epochs} epochs); model: {result.final_model}",
                      highlight=False)
        console.print(f"  use it: anzoo predict IMAGE -m {model_id} --weights {result.final_model}",
                      highlight=False)

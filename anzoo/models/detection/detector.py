"""Two-stage detectors: backbone -> FPN -> RPN -> RoI heads (Mask R-CNN or Cascade Mask R-CNN).

Modelled on torchvision's ``GeneralizedRCNN`` but without its built-in transform: images
arrive preprocessed exactly as mmdetection v1 did it (``anzoo.data.transforms`` makes them),
with one meta per image (original size, resized size, padded size, scale factor), because the
released weights were trained and evaluated on that preprocessing.

Training and inference take one route: ``rpn(features, image_shapes, targets) -> (proposals,
losses)``, then ``roi_heads(features, proposals, ..., targets) -> (detections, losses)``; with
targets (training) the losses are returned, without them the detections.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ...schema import ZooEntry
from .config import DetectorConfig
from .detections import Detections
from .fpn import FPN
from .roi_heads import RoIHeads
from .rpn import LegacyRPN

__all__ = ["ImageMetaLike", "TwoStageDetector"]


class ImageMetaLike(Protocol):
    orig_size: tuple[int, int]  # (h, w) of the original image
    img_shape: tuple[int, int]  # (h, w) after resizing, before padding
    pad_shape: tuple[int, int]  # (h, w) of the image padded alone to the size divisor (training)
    scale_factor: float


class TwoStageDetector(nn.Module):
    """Backbone, FPN, RPN and RoI heads; test and training settings in :attr:`config`."""

    def __init__(self, backbone: nn.Module, fpn: FPN, rpn: LegacyRPN, roi_heads: RoIHeads,
                 num_classes: int, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        #: the dataset's category id of each contiguous label (None: COCO's ids); set for
        #: models fine-tuned on another dataset and saved with them by anzoo.save_model.
        self.category_ids: list[int] | None = None
        #: set by anzoo.create_model: the zoo id and entry the model was built from.
        self.model_id: str | None = None
        self.zoo_entry: ZooEntry | None = None

    @property
    def config(self) -> DetectorConfig:
        """The test and training settings the RPN and the RoI heads hold."""
        return DetectorConfig(rpn_test=self.rpn.test_cfg, rpn_train=self.rpn.train_cfg,
                              rpn_targets=self.rpn.target_cfg, rcnn_test=self.roi_heads.test_cfg,
                              rcnn_train=self.roi_heads.train_cfgs,
                              stage_loss_weights=self.roi_heads.stage_loss_weights)

    @config.setter
    def config(self, config: DetectorConfig) -> None:
        """Hand each part of ``config`` to the module that uses it (``dataclasses.replace`` the
        current one to change a setting)."""
        self.roi_heads.configure(config.rcnn_test, config.rcnn_train, config.stage_loss_weights)
        self.rpn.test_cfg, self.rpn.train_cfg, self.rpn.target_cfg = \
            config.rpn_test, config.rpn_train, config.rpn_targets

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five FPN levels P2..P6 (strides 4..64)."""
        return self.fpn(self.backbone(images))

    def forward(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
                targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        """The loss terms in training mode with ``targets`` (:meth:`compute_losses`), the
        detections otherwise (:meth:`detect`)."""
        if self.training and targets is not None:
            return self.compute_losses(images, metas, targets)
        return self.detect(images, metas)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
               with_masks: bool = True) -> list[Detections]:
        """Test-time forward on a padded batch; boxes come back in original-image pixels."""
        detections, _ = self._run(images, metas, None, with_masks)
        return detections

    def compute_losses(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
                       targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """mmdetection v1's ``forward_train``: the loss terms of a padded training batch.

        Args:
            images: ``(B, 3, H, W)`` normalized, padded batch.
            metas: per image its ``img_shape`` and ``pad_shape`` (the image padded alone to a
                multiple of 32: anchors beyond it take no part).
            targets: per image ``boxes`` ``(K, 4)`` float (x1, y1, x2, y2, inclusive pixels of
                the resized image), ``labels`` ``(K,)`` contiguous labels ``0..C-1`` and
                ``masks`` ``(K, h, w)`` uint8 on the CPU; crowd regions left out.

        Returns:
            ``loss_*`` tensors to be summed (RPN, box, mask; Cascade's ``s{i}.loss_*`` already
            weighted per stage) and logged-only accuracies (``acc``).
        """
        if len(metas) != len(targets):
            raise ValueError(f"{len(metas)} metas but {len(targets)} targets")
        _, losses = self._run(images, metas, targets)
        return losses

    def _run(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
             targets: Sequence[dict[str, torch.Tensor]] | None, with_masks: bool = True
             ) -> tuple[list[Detections], dict[str, torch.Tensor]]:
        """The one route through the detector: ``(detections, {})`` without targets,
        ``([], losses)`` with them."""
        if images.shape[0] != len(metas):
            raise ValueError(f"{images.shape[0]} images but {len(metas)} metas")
        features = self.extract_features(images)
        image_shapes = [(int(m.img_shape[0]), int(m.img_shape[1])) for m in metas]
        pad_shapes = None
        if targets is not None:
            pad_shapes = [(int(m.pad_shape[0]), int(m.pad_shape[1])) for m in metas]
            targets = [{"boxes": t["boxes"].to(device=images.device, dtype=torch.float32),
                        "labels": t["labels"].to(device=images.device, dtype=torch.long),
                        "masks": t["masks"]} for t in targets]
        proposals, rpn_losses = self.rpn(features, image_shapes, targets, pad_shapes=pad_shapes)
        detections, head_losses = self.roi_heads(
            features[:4], proposals, image_shapes, [float(m.scale_factor) for m in metas],
            [tuple(m.orig_size) for m in metas], targets, with_masks=with_masks)
        return detections, {**rpn_losses, **head_losses}

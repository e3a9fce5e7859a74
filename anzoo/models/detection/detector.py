"""Two-stage detectors: backbone -> FPN -> RPN -> RoI heads (Mask R-CNN or Cascade Mask R-CNN).

Modelled on torchvision's ``GeneralizedRCNN`` but without its built-in transform: images
arrive preprocessed exactly as mmdetection v1 did it (``anzoo.data.transforms``), with one
meta per image (original size, resized size, scale factor), because the released weights
were trained and evaluated on that preprocessing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .detections import Detections
from .fpn import FPN
from .rpn import LegacyRPN

__all__ = ["ImageMetaLike", "TwoStageDetector"]


class ImageMetaLike(Protocol):
    orig_size: tuple[int, int]  # (h, w) of the original image
    img_shape: tuple[int, int]  # (h, w) after resizing, before padding
    scale_factor: float


class TwoStageDetector(nn.Module):
    def __init__(self, backbone: nn.Module, fpn: FPN, rpn: LegacyRPN, roi_heads: nn.Module,
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
        self.zoo_entry: Any = None

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five FPN levels P2..P6 (strides 4..64)."""
        return self.fpn(self.backbone(images))

    @torch.no_grad()
    def detect(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
               with_masks: bool = True) -> list[Detections]:
        """Test-time forward on a padded batch; boxes come back in original-image pixels."""
        if images.shape[0] != len(metas):
            raise ValueError(f"{images.shape[0]} images but {len(metas)} metas")
        features = self.extract_features(images)
        img_shapes = [tuple(m.img_shape) for m in metas]
        proposals = self.rpn(features, img_shapes)
        if isinstance(proposals, tuple):  # (boxes, scores) per image
            proposals = proposals[0]
        return self.roi_heads.predict(features[:4], list(proposals), img_shapes,
                                      [float(m.scale_factor) for m in metas],
                                      [tuple(m.orig_size) for m in metas], with_masks=with_masks)

    def forward(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
                targets: Sequence[dict[str, torch.Tensor]] | None = None) -> Any:
        if self.training and targets is not None:
            return self.compute_losses(images, metas, targets)
        return self.detect(images, metas)

    def compute_losses(self, images: torch.Tensor, metas: Sequence[ImageMetaLike],
                       targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """mmdetection v1's ``forward_train``: the loss terms of a padded training batch.

        Args:
            images: ``(B, 3, H, W)`` normalized, padded batch.
            metas: per image its ``img_shape`` (and ``pad_shape``: the image padded alone to
                a multiple of 32, computed from ``img_shape`` when absent).
            targets: per image ``boxes`` ``(K, 4)`` float (x1, y1, x2, y2, inclusive pixels of
                the resized image), ``labels`` ``(K,)`` contiguous labels ``0..C-1`` and
                ``masks`` ``(K, h, w)`` uint8 on the CPU; crowd regions left out.

        Returns:
            ``loss_*`` tensors to be summed (RPN, box, mask; Cascade's ``s{i}.loss_*`` already
            weighted per stage) and logged-only accuracies (``acc``).
        """
        from ...data.transforms import padded_shape
        from .rpn import select_proposals

        if images.shape[0] != len(metas) or len(metas) != len(targets):
            raise ValueError(f"{images.shape[0]} images, {len(metas)} metas, {len(targets)} targets")
        device = images.device
        features = self.extract_features(images)
        objectness, deltas = self.rpn.head_outputs(features)
        anchors = self.rpn.anchors(features)
        img_shapes = [(int(m.img_shape[0]), int(m.img_shape[1])) for m in metas]
        pad_shapes = [tuple(getattr(m, "pad_shape", None) or padded_shape(*shape))
                      for m, shape in zip(metas, img_shapes)]
        gt_boxes = [t["boxes"].to(device=device, dtype=torch.float32) for t in targets]
        losses = self.rpn.losses(objectness, deltas, anchors, gt_boxes, img_shapes, pad_shapes)
        with torch.no_grad():
            proposals, _ = select_proposals([o.detach() for o in objectness], [d.detach() for d in deltas],
                                            anchors, img_shapes, self.rpn.box_coder, self.rpn.train_cfg)
        gt_classes = [t["labels"].to(device=device, dtype=torch.long) + 1 for t in targets]
        losses.update(self.roi_heads.forward_train(features[:4], list(proposals), gt_boxes, gt_classes,
                                                   [t["masks"] for t in targets], img_shapes))
        return losses

    def predict(self, images: Any, score_thr: float = 0.3, **kwargs: Any) -> list[list[dict]]:
        """Instance segmentation of PIL images, numpy arrays or paths (one or a list).

        Returns, per image, a list of instances ``{category_id, category_name, bbox [x, y, w, h],
        score, segmentation (COCO RLE)}``, the same records ``anzoo predict`` writes.
        """
        from ...inference import Predictor  # the predictor owns pre/post-processing

        return Predictor(self, **kwargs).predict_records(images, score_thr=score_thr)

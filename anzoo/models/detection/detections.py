"""What the detectors return before masks are pasted into full images.

Pasting 28x28 mask probabilities into image-sized masks is the most memory-hungry step of
inference and is done either exactly as mmdetection v1 did (OpenCV, per box, on the CPU)
or batched on the device; keeping it out of ``forward`` lets the predictor choose and lets
an evaluation pipeline run it in worker threads.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

__all__ = ["Detections", "DetectionIndex"]

#: what selects detections: an int, a slice, a list of ints, an int64 index tensor or a bool mask
DetectionIndex = Union[int, slice, Sequence[int], torch.Tensor]


@dataclass
class Detections:
    """Detections of one image, in original-image pixels (mmdetection v1 inclusive corners).

    ``mask_boxes`` are the boxes the masks are pasted into: mmdetection v1 multiplies the
    final boxes by the scale factor for the mask RoIs and divides again before pasting, in
    float32, and the int32 truncation of the paste sees that rounding.
    """

    image_size: tuple[int, int]  # (h, w) of the original image
    boxes: torch.Tensor  # (N, 4) float32
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,) int64, 0..num_classes-1
    mask_probs: torch.Tensor | None = None  # (N, 28, 28) sigmoid probabilities of each label
    mask_boxes: torch.Tensor | None = None  # (N, 4) float32

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: DetectionIndex) -> "Detections":
        """The detections at ``index``, in its order, as a new ``Detections`` (an int gives one
        detection, not a scalar), as detectron2's ``Instances`` and :class:`anzoo.structures.Instances`."""
        if isinstance(index, int) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"detection {index} out of range: there are {n}")
            index = slice(index % n, index % n + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.boxes.device)
            if index.dtype != torch.bool:
                index = index.to(torch.int64)
            index = index.reshape(-1)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return Detections(self.image_size, self.boxes[index], self.scores[index], self.labels[index],
                          take(self.mask_probs), take(self.mask_boxes))

    def to(self, device: torch.device | str) -> "Detections":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Detections(self.image_size, move(self.boxes), move(self.scores), move(self.labels),
                          move(self.mask_probs), move(self.mask_boxes))

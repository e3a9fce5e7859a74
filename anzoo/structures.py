"""Detection outputs of one image: :class:`Instances`, and one mask kept as its window: :class:`MaskCrop`."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch

__all__ = ["Instances", "MaskCrop"]

IndexLike = Union[int, slice, Sequence[int], np.ndarray, torch.Tensor]


@dataclasses.dataclass
class Instances:
    """The instances detected in one image, in that image's original pixel coordinates.

    Attributes:
        image_size: (height, width) of the original image (after EXIF orientation).
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` in mmdetection v1's **inclusive** convention:
            the box covers pixel columns x1..x2 and rows y1..y2, so its width is
            ``x2 - x1 + 1`` (see :func:`anzoo.data.results.boxes_to_xywh`).
        scores: (N,) float32 confidence.
        labels: (N,) int64 contiguous class index ``0 .. num_classes - 1`` (background is not
            a class here); map to dataset category ids with the model's class list.
        masks: (N, H, W) bool at ``image_size``, or None for box-only outputs.

    Arrays given as numpy are converted to tensors (with the dtypes above); all fields live
    on one device. Indexing (:meth:`select`, ``inst[idx]``) accepts an int, a slice, a list,
    an index or boolean array/tensor, and always returns an :class:`Instances`.
    """

    image_size: tuple[int, int]
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.boxes = _as_tensor(self.boxes, torch.float32).reshape(-1, 4)
        device = self.boxes.device
        self.scores = _as_tensor(self.scores, torch.float32, device).reshape(-1)
        self.labels = _as_tensor(self.labels, torch.int64, device).reshape(-1)
        n = self.boxes.shape[0]
        if self.scores.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError(
                f"Instances fields disagree on N: boxes {n}, scores {self.scores.shape[0]}, "
                f"labels {self.labels.shape[0]}"
            )
        if self.masks is not None:
            self.masks = _as_tensor(self.masks, torch.bool, device)
            if self.masks.dim() != 3 or self.masks.shape[0] != n:
                raise ValueError(f"masks must be (N={n}, H, W), got {tuple(self.masks.shape)}")
            if tuple(self.masks.shape[1:]) != self.image_size:
                raise ValueError(
                    f"masks are {tuple(self.masks.shape[1:])}, image_size is {self.image_size}"
                )

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True,
              device: torch.device | str = "cpu") -> "Instances":
        """No instances (an image where nothing was detected)."""
        h, w = int(image_size[0]), int(image_size[1])
        return cls(
            image_size=(h, w),
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            labels=torch.zeros((0,), dtype=torch.int64, device=device),
            masks=torch.zeros((0, h, w), dtype=torch.bool, device=device) if with_masks else None,
        )

    @classmethod
    def cat(cls, items: Sequence["Instances"]) -> "Instances":
        """Concatenate instances of the same image."""
        if not items:
            raise ValueError("Instances.cat needs at least one Instances")
        size = items[0].image_size
        if any(it.image_size != size for it in items):
            raise ValueError("Instances.cat: image sizes differ")
        has_masks = [it.masks is not None for it in items]
        if any(has_masks) and not all(has_masks):
            raise ValueError("Instances.cat: some items have masks and some do not")
        return cls(
            image_size=size,
            boxes=torch.cat([it.boxes for it in items]),
            scores=torch.cat([it.scores for it in items]),
            labels=torch.cat([it.labels for it in items]),
            masks=torch.cat([it.masks for it in items]) if all(has_masks) else None,
        )

    # ---------------------------------------------------------------- container protocol
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def select(self, index: IndexLike) -> "Instances":
        """The instances at ``index`` (see the class docstring for accepted index forms)."""
        if isinstance(index, (int, np.integer)):
            idx: Any = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        elif isinstance(index, slice):
            idx = index
        else:
            idx = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index)
            if idx.dtype != torch.bool:
                idx = idx.to(torch.int64)
            idx = idx.to(self.device).reshape(-1)
        return Instances(
            image_size=self.image_size,
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            labels=self.labels[idx],
            masks=self.masks[idx] if self.masks is not None else None,
        )

    __getitem__ = select

    def sorted_by_score(self) -> "Instances":
        """Highest score first (stable for equal scores)."""
        order = torch.sort(self.scores, descending=True, stable=True).indices
        return self.select(order)

    def above(self, score_thr: float) -> "Instances":
        """Instances with ``score >= score_thr``."""
        return self.select(self.scores >= score_thr)

    # ---------------------------------------------------------------- devices and numpy
    def to(self, device: torch.device | str) -> "Instances":
        return Instances(
            image_size=self.image_size,
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            labels=self.labels.to(device),
            masks=self.masks.to(device) if self.masks is not None else None,
        )

    def cpu(self) -> "Instances":
        return self.to("cpu")

    def numpy(self) -> dict[str, Any]:
        """Fields as numpy arrays: boxes float32 (N, 4), scores float32, labels int64,
        masks bool (N, H, W) or None, and image_size."""
        return {
            "image_size": self.image_size,
            "boxes": self.boxes.detach().cpu().numpy(),
            "scores": self.scores.detach().cpu().numpy(),
            "labels": self.labels.detach().cpu().numpy(),
            "masks": self.masks.detach().cpu().numpy() if self.masks is not None else None,
        }

    def __repr__(self) -> str:
        return (
            f"Instances(num={len(self)}, image_size={self.image_size}, "
            f"masks={'yes' if self.masks is not None else 'no'}, device={self.device})"
        )


@dataclasses.dataclass(frozen=True)
class MaskCrop:
    """One instance mask stored as the window of the image it can cover, not as a full image.

    The mask is ``mask`` on rows ``y0 .. y0 + h - 1`` and columns ``x0 .. x0 + w - 1`` of an
    image of ``image_size`` (height, width), and False everywhere else. Pasting a 28x28 mask
    into its box only ever sets pixels inside the box, so a crop holds the same information as
    an (H, W) mask in a fraction of the memory (the service and ``anzoo predict`` never build
    full-size masks; see :meth:`anzoo.inference.Predictor.mask_crops`).
    """

    x0: int
    y0: int
    mask: np.ndarray  # (h, w) bool, inside the image
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        h, w = self.mask.shape
        height, width = self.image_size
        if self.x0 < 0 or self.y0 < 0 or self.x0 + w > width or self.y0 + h > height:
            raise ValueError(f"a {h}x{w} crop at x={self.x0}, y={self.y0} leaves the {height}x{width} image")

    @classmethod
    def from_full(cls, mask: Any) -> "MaskCrop":
        """The whole (H, W) mask as a crop at (0, 0)."""
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        array = array.astype(bool, copy=False)
        return cls(0, 0, array, (int(array.shape[0]), int(array.shape[1])))

    @property
    def area(self) -> int:
        """Pixels of the window (not of the mask)."""
        return int(self.mask.shape[0] * self.mask.shape[1])

    def full(self) -> np.ndarray:
        """The (H, W) bool mask (allocates a full image: for tests and small images)."""
        out = np.zeros(self.image_size, dtype=bool)
        h, w = self.mask.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.mask
        return out


def _as_tensor(value: Any, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value
    else:
        array = np.ascontiguousarray(value)  # torch refuses negative strides (np.flip, rot90)
        if array.dtype == np.float64 and dtype == torch.float32:
            array = array.astype(np.float32)
        tensor = torch.as_tensor(array)
    if device is not None and tensor.device != device:
        tensor = tensor.to(device)
    return tensor.to(dtype) if tensor.dtype != dtype else tensor

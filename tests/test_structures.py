"""anzoo.structures.Instances: conversion, validation, indexing, devices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anzoo.structures import Instances


def _three() -> Instances:
    masks = np.zeros((3, 8, 10), bool)
    for k in range(3):
        masks[k, k, k] = True
    return Instances(
        image_size=(8, 10),
        boxes=np.array([[0, 0, 1, 1], [1, 1, 4, 4], [2, 2, 9, 7]], np.float64),
        scores=[0.5, 0.9, 0.7],
        labels=np.array([3, 1, 2], np.int32),
        masks=masks,
    )


def test_numpy_inputs_become_typed_tensors() -> None:
    inst = _three()
    assert len(inst) == 3 and inst.has_masks
    assert inst.boxes.dtype == torch.float32 and inst.boxes.shape == (3, 4)
    assert inst.scores.dtype == torch.float32 and inst.labels.dtype == torch.int64
    assert inst.masks.dtype == torch.bool and inst.masks.shape == (3, 8, 10)
    flipped = Instances((8, 10), np.zeros((1, 4)), [1.0], [0], np.zeros((1, 8, 10), bool)[:, :, ::-1])
    assert flipped.masks.shape == (1, 8, 10)


def test_validation() -> None:
    with pytest.raises(ValueError, match="disagree"):
        Instances((8, 10), np.zeros((2, 4)), [0.1], [0, 1])
    with pytest.raises(ValueError, match="image_size"):
        Instances((8, 10), np.zeros((1, 4)), [0.1], [0], np.zeros((1, 8, 11), bool))
    with pytest.raises(ValueError, match="masks must be"):
        Instances((8, 10), np.zeros((1, 4)), [0.1], [0], np.zeros((2, 8, 10), bool))


def test_select_forms() -> None:
    inst = _three()
    assert inst.select(1).labels.tolist() == [1]
    assert inst[-1].labels.tolist() == [2]
    assert inst[1:].labels.tolist() == [1, 2]
    assert inst[[2, 0]].labels.tolist() == [2, 3]
    assert inst[np.array([True, False, True])].labels.tolist() == [3, 2]
    assert inst[torch.tensor([False, True, False])].masks[0, 1, 1].item() is True
    assert inst.sorted_by_score().scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert inst.above(0.7).labels.tolist() == [1, 2]
    assert len(inst[[]]) == 0


def test_cat_empty_devices_numpy() -> None:
    inst = _three()
    both = Instances.cat([inst, inst[:1]])
    assert len(both) == 4 and both.masks.shape == (4, 8, 10)
    empty = Instances.empty((8, 10))
    assert len(empty) == 0 and empty.masks.shape == (0, 8, 10)
    assert Instances.empty((8, 10), with_masks=False).masks is None
    moved = inst.to("cpu")
    assert moved.device.type == "cpu" and inst.cpu().boxes.data_ptr() == inst.boxes.data_ptr()
    arrays = inst.numpy()
    assert arrays["boxes"].dtype == np.float32 and arrays["labels"].dtype == np.int64
    assert arrays["masks"].dtype == bool and arrays["image_size"] == (8, 10)
    assert "num=3" in repr(inst)

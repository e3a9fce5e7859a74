"""Training building blocks: assignment, sampling, targets, losses, transforms, schedule, data.

Expected numbers are worked out by hand in the comments (mmdetection v1's definitions: +1
pixel widths, ``MaxIoUAssigner`` with ``gt_max_assign_all``, ``RandomSampler``'s sorted
indices, ``bbox_target``'s normalisation by all sampled RoIs).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anzoo.data.synthetic import make_synthetic_coco
from anzoo.data.transforms import flip_boxes, rescale_boxes, train_transform
from anzoo.errors import AnzooError, DatasetError
from anzoo.models.detection.box_coder import LegacyBoxCoder
from anzoo.models.detection.losses import (
    box_head_loss,
    mask_loss,
    rpn_loss,
    smooth_l1_loss,
)
from anzoo.models.detection.targets import (
    AssignResult,
    MaxIoUAssigner,
    RandomSampler,
    mask_target_single,
    rcnn_targets,
    rpn_targets,
)
from anzoo.training.batches import CocoTrainDataset, GroupedBatchSampler, train_collate
from anzoo.training.schedule import LRSchedule, scaled_lr, schedule_epochs


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ assigner
def test_max_iou_assigner_follows_mmdet_rules():
    gts = torch.tensor([[0.0, 0, 9, 9], [50, 50, 59, 59]])
    boxes = torch.tensor([
        [0.0, 0, 9, 9],      # IoU 1 with gt 0 -> positive
        [0, 0, 9, 4],        # 50 / 100 = 0.5: between the thresholds -> ignored
        [20, 20, 29, 29],    # no overlap -> negative
        [0, 0, 4, 4],        # 25 / 100 = 0.25 < 0.3 -> negative
        [52, 50, 61, 59],    # 80 / 120 = 0.667 < 0.7, but gt 1's best box -> positive
        [52, 50, 61, 59],    # the same IoU: claimed as well (gt_max_assign_all)
    ])
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(boxes, gts, torch.tensor([3, 5]))
    assert res.gt_inds.tolist() == [1, -1, 0, 0, 2, 2]
    assert res.labels.tolist() == [3, 0, 0, 0, 5, 5]
    assert torch.allclose(res.max_overlaps, torch.tensor([1, 0.5, 0, 0.25, 2 / 3, 2 / 3]))
    # R-CNN thresholds 0.5 / 0.5 / 0.5: box 1 (IoU exactly 0.5) becomes positive
    res = MaxIoUAssigner(0.5, 0.5, 0.5).assign(boxes, gts, torch.tensor([3, 5]))
    assert res.gt_inds.tolist() == [1, 1, 0, 0, 2, 2]


def test_assigner_min_pos_iou_and_later_gt_wins():
    # both gts have the same best box; the later one takes it
    gts = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 9]])
    boxes = torch.tensor([[0.0, 0, 9, 19], [100, 100, 110, 110]])  # IoU 0.5 with both
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(boxes, gts)
    assert res.gt_inds.tolist() == [2, 0]
    # a gt whose best IoU is below min_pos_iou claims nothing
    res = MaxIoUAssigner(0.7, 0.3, 0.6).assign(boxes, gts)
    assert res.gt_inds.tolist() == [-1, 0]


def test_assigner_without_ground_truth_makes_negatives():
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(torch.tensor([[0.0, 0, 5, 5]]), torch.zeros((0, 4)),
                                                 torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [0] and res.labels.tolist() == [0]


# ------------------------------------------------------------------------------ sampler
def test_random_sampler_fraction_sorted_and_gt_flags():
    torch.manual_seed(0)
    num_gts = 2
    gt_inds = torch.cat([torch.ones(10, dtype=torch.long), torch.zeros(100, dtype=torch.long),
                         torch.full((5,), -1, dtype=torch.long)])
    gt_inds[:5] = 2
    boxes = torch.arange(115, dtype=torch.float32)[:, None].repeat(1, 4)
    gt_boxes = torch.tensor([[1000.0] * 4, [2000.0] * 4])
    assign = AssignResult(num_gts, gt_inds.clone(), torch.zeros(115), torch.where(gt_inds > 0, gt_inds + 10, 0))
    res = RandomSampler(16, 0.25, add_gt_as_proposals=False).sample(assign, boxes, gt_boxes)
    assert res.num_pos == 4 and res.neg_inds.numel() == 12
    assert res.pos_inds.tolist() == sorted(res.pos_inds.tolist())
    assert res.neg_inds.tolist() == sorted(res.neg_inds.tolist())
    assert all(i < 10 for i in res.pos_inds.tolist()) and all(10 <= i < 110 for i in res.neg_inds.tolist())
    assert torch.equal(res.pos_gt_boxes, gt_boxes[gt_inds[res.pos_inds] - 1])
    assert not res.pos_is_gt.any()

    # with the ground truths added: they come first and are positives of themselves
    assign = AssignResult(num_gts, gt_inds.clone(), torch.zeros(115), torch.where(gt_inds > 0, gt_inds + 10, 0))
    res = RandomSampler(1000, 0.25).sample(assign, boxes, gt_boxes, torch.tensor([7, 8]))
    assert res.num_pos == 12 and res.pos_inds[:2].tolist() == [0, 1]
    assert res.pos_is_gt.tolist() == [True, True] + [False] * 10
    assert res.pos_gt_labels[:2].tolist() == [7, 8]
    assert torch.equal(res.pos_boxes[:2], gt_boxes)
    assert res.neg_inds.numel() == 100  # all negatives fit into the 1000


# ------------------------------------------------------------------------------ targets
def test_rpn_targets_inside_flags_and_normaliser():
    anchors = torch.tensor([
        [0.0, 0, 15, 15],    # equals the gt -> positive, zero deltas
        [-4, 0, 11, 15],     # crosses the left border -> not used (allowed_border 0)
        [16, 16, 31, 31],    # no overlap -> negative
        [0, 0, 31, 31],      # IoU 256 / 1024 = 0.25 -> negative
    ])
    gt = torch.tensor([[0.0, 0, 15, 15]])
    valid = torch.ones(4, dtype=torch.bool)
    t = rpn_targets(anchors, [valid], [gt], [(32, 32)], LegacyBoxCoder(), MaxIoUAssigner(0.7, 0.3, 0.3),
                    RandomSampler(256, 0.5, add_gt_as_proposals=False))
    assert t.labels.tolist() == [[1, 0, 0, 0]]
    assert t.label_weights.tolist() == [[1, 0, 1, 1]]
    assert t.bbox_weights[0, :, 0].tolist() == [1, 0, 0, 0]
    assert torch.equal(t.bbox_targets, torch.zeros(1, 4, 4))
    assert t.num_total_samples == 3  # max(1, pos) + max(1, neg)
    # anchors beyond the image's own padded size (valid flags) are not used either
    t = rpn_targets(anchors, [torch.tensor([True, True, False, True])], [gt], [(32, 32)], LegacyBoxCoder(),
                    MaxIoUAssigner(0.7, 0.3, 0.3), RandomSampler(256, 0.5, add_gt_as_proposals=False))
    assert t.label_weights.tolist() == [[1, 0, 0, 1]] and t.num_total_samples == 2


def test_rcnn_targets_labels_and_encoded_deltas():
    torch.manual_seed(0)
    props = torch.tensor([[0.0, 0, 19, 9], [100, 100, 120, 120]])
    gt = torch.tensor([[0.0, 0, 9, 9]])
    assign = MaxIoUAssigner(0.5, 0.5, 0.5).assign(props, gt, torch.tensor([4]))
    res = RandomSampler(512, 0.25).sample(assign, props, gt, torch.tensor([4]))
    coder = LegacyBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    labels, deltas = rcnn_targets([res], coder)
    # positives: the gt itself and proposal 0 (IoU 100 / 200 = 0.5); negative: proposal 1
    assert labels.tolist() == [4, 4, 0]
    assert torch.allclose(deltas[0], torch.zeros(4))
    # proposal 0 -> gt: centre x 9.5 -> 4.5 over width 20: -0.25 / 0.1; log(10 / 20) / 0.2
    assert torch.allclose(deltas[1], torch.tensor([-2.5, 0.0, math.log(0.5) / 0.2, 0.0]), atol=1e-6)
    assert torch.equal(deltas[2], torch.zeros(4))


def test_mask_target_crops_integer_box_and_resizes():
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 5:15, 2:12] = 1  # rows 5..14, columns 2..11
    exact = mask_target_single(np.array([[2.0, 5, 11, 14]]), np.array([0]), mask)
    assert exact.shape == (1, 28, 28) and exact.min() == 1
    # fractional corners are truncated to the same integer box
    assert np.array_equal(mask_target_single(np.array([[2.7, 5.9, 11.2, 14.99]]), np.array([0]), mask), exact)
    # a box reaching past the mask is clipped to it: columns 2..19, the left part is the object
    wide = mask_target_single(np.array([[2.0, 5, 30, 14]]), np.array([0]), mask)[0]
    assert wide[:, 0].min() == 1 and wide[:, -1].max() == 0
    assert abs(wide.mean() - 10 / 18) < 0.05


# ------------------------------------------------------------------------------ losses
def test_smooth_l1_values():
    out = smooth_l1_loss(torch.tensor([0.05, 1.0, -2.0]), torch.zeros(3), beta=1 / 9)
    assert torch.allclose(out, torch.tensor([0.5 * 0.0025 * 9, 1 - 1 / 18, 2 - 1 / 18]))


def test_box_head_loss_normalised_by_all_samples():
    labels = torch.tensor([2, 0, 0, 1])
    logits = torch.zeros(4, 3)
    deltas = torch.zeros(4, 12)
    targets = torch.zeros(4, 4)
    targets[0] = torch.tensor([1.0, 0, 0, 0])   # smooth L1 (beta 1) of 1: 0.5
    targets[3] = torch.tensor([0.0, 0, 0, 0.5])  # 0.5 * 0.25 = 0.125
    deltas[1] = 100.0  # negatives' deltas do not count
    loss_cls, loss_bbox = box_head_loss(logits, deltas, labels, targets, class_agnostic=False)
    # approx (relative 1e-6): float32 losses vs exact values, measured <= 2e-8 on every kernel choice
    assert loss_cls.item() == pytest.approx(math.log(3))
    assert loss_bbox.item() == pytest.approx(0.625 / 4)
    # the class-specific slice of the label is used: a wrong slice would see 100
    deltas[0, 4:8] = 100.0
    assert box_head_loss(logits, deltas, labels, targets, False)[1].item() == pytest.approx(0.625 / 4)
    deltas[0, 8:12] = torch.tensor([1.0, 0, 0, 0])  # the label-2 slice now matches its target
    assert box_head_loss(logits, deltas, labels, targets, False)[1].item() == pytest.approx(0.125 / 4)


def test_mask_loss_uses_the_label_channel_and_rpn_loss_normaliser():
    logits = torch.full((2, 3, 2, 2), 100.0)
    logits[0, 2] = 0.0
    logits[1, 1] = 0.0
    loss = mask_loss(logits, torch.zeros(2, 2, 2), torch.tensor([2, 1]))
    assert loss.item() == pytest.approx(math.log(2))
    cls, reg = rpn_loss(torch.zeros(1, 3), torch.zeros(1, 3, 4), torch.tensor([[1.0, 0, 0]]),
                        torch.tensor([[1.0, 1, 0]]), torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), 4)
    assert cls.item() == pytest.approx(2 * math.log(2) / 4) and reg.item() == 0.0


# ------------------------------------------------------------------------------ transforms
def test_rescale_and_flip_boxes():
    boxes = np.array([[10.0, 5, 19, 14], [50, 30, 70, 45]], np.float32)
    out = rescale_boxes(boxes, 1.5, (60, 90))
    assert out.tolist() == [[15.0, 7.5, 28.5, 21.0], [75.0, 45.0, 89.0, 59.0]]  # clipped to w-1, h-1
    assert flip_boxes(out[:1], 90).tolist() == [[60.5, 7.5, 74.0, 21.0]]  # x1' = w - x2 - 1


def test_train_transform_keeps_masks_and_boxes_together():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((1, 40, 60), np.uint8)
    mask[0, 5:15, 10:20] = 1
    box = np.array([[10.0, 5, 19, 14]], np.float32)
    tensor, meta, boxes, masks = train_transform(image, box, mask, scale=(90, 60), flip=False)
    assert tuple(tensor.shape) == (3, 60, 90) and meta.scale_factor == 1.5 and not meta.flipped
    assert meta.pad_shape == (64, 96) and masks.shape == (1, 60, 90)
    assert boxes.tolist() == [[15.0, 7.5, 28.5, 21.0]]
    t2, meta2, boxes2, masks2 = train_transform(image, box, mask, scale=(90, 60), flip=True)
    assert meta2.flipped and boxes2.tolist() == [[60.5, 7.5, 74.0, 21.0]]
    assert np.array_equal(masks2[0], masks[0][:, ::-1])
    assert torch.equal(t2, tensor.flip(-1))
    # nearest-neighbour mask: its tight box matches the scaled box to a pixel
    ys, xs = np.nonzero(masks[0])
    assert abs(xs.min() - 15) <= 1 and abs(xs.max() - 28.5) <= 1.5 and abs(ys.min() - 7.5) <= 1


# ------------------------------------------------------------------------------ schedule
def test_schedules_and_lr_policy():
    assert schedule_epochs("2x") == (24, (16, 22))
    assert schedule_epochs("20e") == (20, (16, 19))
    assert schedule_epochs("1x") == (12, (8, 11))
    assert schedule_epochs("2x", epochs=12) == (12, (8, 11))
    assert schedule_epochs(None) == (24, (16, 22))
    with pytest.raises(AnzooError):
        schedule_epochs("fast")
    assert scaled_lr(16) == pytest.approx(0.02) and scaled_lr(2) == pytest.approx(0.0025)
    s = LRSchedule(0.02, (16, 22), warmup_iters=500, warmup_ratio=1 / 3)
    assert s.lr_at(0, 0) == pytest.approx(0.02 / 3)
    assert s.lr_at(250, 0) == pytest.approx(0.02 * (1 - 0.5 * 2 / 3))
    assert s.lr_at(500, 0) == pytest.approx(0.02)
    assert s.lr_at(10_000, 15) == pytest.approx(0.02)
    assert s.lr_at(10_000, 16) == pytest.approx(0.002)
    assert s.lr_at(10_000, 22) == pytest.approx(0.0002)


# ------------------------------------------------------------------------------ sampler
def test_grouped_batch_sampler_groups_shards_and_repeats():
    flags = [0, 0, 0, 1, 1]
    per_rank = []
    for rank in range(2):
        s = GroupedBatchSampler(flags, 2, rank=rank, world_size=2, seed=3)
        s.set_epoch(4)
        batches = list(s)
        assert len(batches) == len(s) == 2
        for b in batches:
            assert len({flags[i] for i, _ in b}) == 1  # one aspect group per batch
        per_rank.append(batches)
    seen = [i for batches in per_rank for b in batches for i, _ in b]
    assert sorted(set(seen)) == [0, 1, 2, 3, 4] and len(seen) == 8  # padded to 4 per group
    again = GroupedBatchSampler(flags, 2, rank=0, world_size=2, seed=3)
    assert again.epoch_batches(4) == per_rank[0]
    assert any(again.epoch_batches(e) != per_rank[0] for e in range(5))
    again.set_epoch(4, start_batch=1)
    assert list(again) == per_rank[0][1:] and len(again) == 1
    flips = [f for e in range(20) for b in again.epoch_batches(e) for _, f in b]
    assert 0.2 < np.mean(flips) < 0.8


# ------------------------------------------------------------------------------ dataset
def _edit_annotations(ann_file: Path, edit) -> None:
    data = json.loads(ann_file.read_text())
    edit(data)
    ann_file.write_text(json.dumps(data))


def test_dataset_skips_bad_annotations_with_counts(tmp_path):
    ann_file = make_synthetic_coco(tmp_path, num_images=3, image_size=(64, 80), split="train2017", seed=2)

    def edit(data):
        first, second = data["images"][0]["id"], data["images"][1]["id"]
        base = {"category_id": data["categories"][0]["id"], "iscrowd": 0}
        extra = [
            {"image_id": first, "bbox": [5, 5, 0, 10], "area": 10, "segmentation": [[5, 5, 6, 5, 6, 15]]},
            {"image_id": first, "bbox": [5, 5, 10, 10], "area": 50, "segmentation": []},
            {"image_id": first, "bbox": [5, 5, 10, 10], "area": 50, "segmentation": [[1, 2, 3, 4]]},
            {"image_id": first, "bbox": [5, 5, 10, 10], "area": 50, "segmentation": [[5, 5, 15, 5, 15, 15]],
             "iscrowd": 1},
        ]
        # the second image keeps only a degenerate annotation: it is left out
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != second]
        extra.append({"image_id": second, "bbox": [1, 1, 5, 5], "area": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]})
        for i, ann in enumerate(extra):
            data["annotations"].append({**base, **ann, "id": 1000 + i})

    _edit_annotations(ann_file, edit)
    ds = CocoTrainDataset(ann_file, tmp_path / "train2017", scale=(80, 64))
    st = ds.stats
    assert (st.degenerate_boxes, st.empty_polygons, st.crowd_regions) == (2, 2, 1)
    assert st.images_without_annotations == 1 and len(ds) == 2 and st.images_used == 2
    item = ds[0]
    k = len(item["labels"])
    assert item["boxes"].shape == (k, 4) and item["masks"].shape == (k, 64, 80)
    assert item["masks"].dtype == torch.uint8 and item["labels"].max() < len(ds.class_names)
    images, metas, _, ids, skipped = train_collate([ds[0], ds[(1, True)]])
    assert images.shape == (2, 3, 64, 96) and metas[1].flipped and ids == ds.image_ids[:2] and skipped == []


def test_dataset_boxes_and_masks_agree_after_flip(tmp_path):
    ann_file = make_synthetic_coco(tmp_path, num_images=1, image_size=(64, 80), split="train2017", seed=5,
                                   image_format="png")
    ds = CocoTrainDataset(ann_file, tmp_path / "train2017", scale=(80, 64))  # scale factor 1
    for flip in (False, True):
        item = ds[(0, flip)]
        for box, mask in zip(item["boxes"], item["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]  # tight, inclusive


def test_dataset_without_masks_is_refused(tmp_path):
    ann_file = make_synthetic_coco(tmp_path, num_images=2, image_size=(64, 80), split="train2017")

    def strip(data):
        for ann in data["annotations"]:
            del ann["segmentation"]

    _edit_annotations(ann_file, strip)
    with pytest.raises(DatasetError, match="no instance masks"):
        CocoTrainDataset(ann_file, tmp_path / "train2017")


def test_dataset_with_nothing_usable_is_refused(tmp_path):
    ann_file = make_synthetic_coco(tmp_path, num_images=2, image_size=(64, 80), split="train2017")

    def degenerate(data):
        for ann in data["annotations"]:
            ann["bbox"][2] = 0.5

    _edit_annotations(ann_file, degenerate)
    with pytest.raises(DatasetError, match="no usable training image.*degenerate box"):
        CocoTrainDataset(ann_file, tmp_path / "train2017")


def test_an_image_that_cannot_be_used_is_replaced_and_reported(tmp_path):
    """Deleted, damaged or resized after the run started: the next image of its aspect group
    takes its place, and the item says which image was passed over and why."""
    from PIL import Image

    ann_file = make_synthetic_coco(tmp_path, num_images=4, image_size=(64, 80), split="train2017", seed=2,
                                   image_format="png")
    ds = CocoTrainDataset(ann_file, tmp_path / "train2017", scale=(80, 64))
    ids = ds.image_ids
    assert len(ds) == 4 and set(ds.flags.tolist()) == {1}  # one aspect group
    assert ds[(1, False)]["skipped"] == []
    ds.image_path(1).unlink()
    item = ds[(1, True)]
    assert item["image_id"] == ids[2] and item["meta"].flipped
    assert [(s["image_id"], s["replaced_by"]) for s in item["skipped"]] == [(ids[1], ids[2])]
    assert "no such file" in item["skipped"][0]["problem"] and item["skipped"][0]["file"] == str(ds.image_path(1))
    ds.image_path(2).write_bytes(b"garbage")
    Image.open(ds.image_path(3)).crop((0, 0, 80, 48)).save(ds.image_path(3))
    item = ds[1]
    assert item["image_id"] == ids[0]  # the group is taken cyclically
    problems = [s["problem"] for s in item["skipped"]]
    assert [s["image_id"] for s in item["skipped"]] == ids[1:]
    assert f"image {ids[2]}" in problems[1] and "not an image" in problems[1]
    assert f"image {ids[3]}" in problems[2] and "decodes to 48x80 (h x w) but the annotation file says 64x80" in problems[2]
    assert train_collate([item, ds[0]]).skipped == item["skipped"]
    ds.image_path(0).unlink()
    with pytest.raises(DatasetError, match=f"4 training images in a row cannot be used, the first: image {ids[1]}"):
        ds[1]

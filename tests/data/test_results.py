"""anzoo.data.results: RLE, polygons, box conventions, COCO result files that pycocotools scores."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.cocoeval import COCOeval

from anzoo.data.coco import category_ids_of, class_names_of, load_coco_annotations
from anzoo.data.results import (
    boxes_to_xywh,
    crop_to_polygons,
    decode_mask_rle,
    encode_crop_rle,
    encode_mask_rle,
    encode_masks_rle,
    instances_to_coco,
    instances_to_records,
    mask_to_polygons,
)
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.structures import Instances, MaskCrop

# ------------------------------------------------------------------------------- RLE


def test_rle_is_column_major_with_str_counts() -> None:
    mask = np.zeros((2, 3), bool)
    mask[0, 1] = True  # column-major position 1 * 2 + 0 = 2
    rle = encode_mask_rle(mask)
    assert rle["size"] == [2, 3]
    assert isinstance(rle["counts"], str)
    # The same mask from an uncompressed RLE: 2 zeros, 1 one, 3 zeros (Fortran order).
    uncompressed = {"size": [2, 3], "counts": [2, 1, 3]}
    assert np.array_equal(decode_mask_rle(uncompressed), mask)
    frozen = mask_utils.frPyObjects(uncompressed, 2, 3)
    assert rle["counts"] == frozen["counts"].decode()


def test_rle_round_trip_random_masks() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (37, 19), (64, 64)]:
        mask = rng.random(shape) > 0.6
        rle = encode_mask_rle(mask)
        json.dumps(rle)  # JSON-serialisable as is
        back = decode_mask_rle(rle)
        assert back.dtype == bool and np.array_equal(back, mask)
        # bytes counts are accepted too
        assert np.array_equal(decode_mask_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
        assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == mask.sum()


def _random_crops(rng: np.random.Generator, count: int) -> list[MaskCrop]:
    """Windows anywhere in small images: at the borders, as tall or wide as the image, empty
    (0 x 0, or no pixel set), full, and random at several densities."""
    crops = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(1, 14, 2))
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        density = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
        crops.append(MaskCrop(x0, y0, rng.random((h, w)) < density, (height, width)))
    return crops


EDGE_CROPS = [
    MaskCrop(0, 0, np.ones((5, 4), bool), (5, 4)),  # the whole image, full: one run of ones
    MaskCrop(0, 0, np.zeros((5, 4), bool), (5, 4)),  # the whole image, empty
    MaskCrop(3, 0, np.ones((6, 2), bool), (6, 5)),  # full-height window: runs continue across columns
    MaskCrop(4, 5, np.ones((1, 1), bool), (6, 5)),  # the last pixel: the RLE ends with ones
    MaskCrop(0, 0, np.ones((1, 1), bool), (6, 5)),  # the first pixel: the RLE starts with 0 zeros
    MaskCrop(2, 3, np.zeros((0, 0), bool), (6, 5)),  # a window outside the image (clipped away)
    MaskCrop(1, 0, np.array([[0, 1], [1, 1], [1, 0]], bool), (3, 4)),  # a run that wraps a column
]


def test_rle_from_a_crop_equals_the_full_mask_rle() -> None:
    """encode_crop_rle never builds the full mask, and gives pycocotools' string for it."""
    crops = EDGE_CROPS + _random_crops(np.random.default_rng(3), 2000)
    for crop in crops:
        assert encode_crop_rle(crop) == encode_mask_rle(crop.full()), crop
    # and at a real size, with a big window clipped at the right and bottom borders
    rng = np.random.default_rng(4)
    big = MaskCrop(300, 200, rng.random((280, 340)) > 0.3, (480, 640))
    assert encode_crop_rle(big) == encode_mask_rle(big.full())


def test_polygons_from_a_crop_equal_the_full_mask_polygons() -> None:
    crops = EDGE_CROPS + _random_crops(np.random.default_rng(5), 500)
    for crop in crops:
        assert crop_to_polygons(crop) == mask_to_polygons(crop.full()), crop


def test_encode_many_masks_matches_single() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((4, 20, 30)) > 0.5
    many = encode_masks_rle(masks)
    assert many == [encode_mask_rle(m) for m in masks]
    assert encode_masks_rle(np.zeros((0, 20, 30), bool)) == []


# ------------------------------------------------------------------------------- polygons


def test_mask_to_polygons() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:15, 10:30] = True  # one 10x20 rectangle
    mask[25:35, 35:45] = True  # a second component
    mask[38, 2] = True  # a single pixel: dropped
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    rect = min(polygons, key=lambda p: min(p[1::2]))
    # Vertices at boundary pixel centres (+0.5): x 10.5..29.5, y 5.5..14.5
    assert min(rect[0::2]) == 10.5 and max(rect[0::2]) == 29.5
    assert min(rect[1::2]) == 5.5 and max(rect[1::2]) == 14.5
    # Rasterised by pycocotools, the polygons cover the mask closely.
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, 40, 50))
    raster = mask_utils.decode(rle).astype(bool)
    reference = mask.copy()
    reference[38, 2] = False
    iou = (raster & reference).sum() / (raster | reference).sum()
    assert iou > 0.8
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


# ------------------------------------------------------------------------------- boxes


def test_boxes_to_xywh_conventions() -> None:
    boxes = np.array([[10, 20, 29, 59], [0.5, 1.25, 3.5, 2.25]], np.float32)
    legacy = boxes_to_xywh(boxes, legacy_box=True)
    assert legacy.tolist() == [[10, 20, 20, 40], [0.5, 1.25, 4.0, 2.0]]
    modern = boxes_to_xywh(boxes, legacy_box=False)
    assert modern.tolist() == [[10, 20, 19, 39], [0.5, 1.25, 3.0, 1.0]]


def test_box_arithmetic_in_float64_like_mmdet() -> None:
    # mmdetection v1: bbox.tolist() (float32 -> Python float) then x2 - x1 + 1 in double.
    box = np.array([[0.1, 0.2, 123.7, 45.3]], np.float32)
    x1, y1, x2, y2 = box[0].tolist()
    assert boxes_to_xywh(box)[0].tolist() == [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


def _instances(n_masks: bool = True) -> Instances:
    masks = np.zeros((3, 30, 40), bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:20, 10:20] = True
    masks[2, 25:28, 30:39] = True
    return Instances(
        image_size=(30, 40),
        boxes=np.array([[3, 2, 8, 5], [10, 10, 19, 19], [30, 25, 38, 27]], np.float32),
        scores=np.array([0.2, 0.9, 0.6], np.float32),
        labels=np.array([0, 2, 1]),
        masks=masks if n_masks else None,
    )


def test_instances_to_coco_records() -> None:
    category_ids = [1, 18, 44]
    records = instances_to_coco(_instances(), image_id=139, category_ids=category_ids)
    assert [r["category_id"] for r in records] == [1, 44, 18]
    assert records[0]["bbox"] == [3.0, 2.0, 6.0, 4.0]
    assert records[0]["image_id"] == 139 and isinstance(records[0]["image_id"], int)
    assert records[1]["score"] == float(np.float32(0.9)) and isinstance(records[1]["score"], float)
    assert np.array_equal(decode_mask_rle(records[1]["segmentation"]), _instances().masks[1].numpy())
    json.dumps(records)
    no_masks = instances_to_coco(_instances(), 139, category_ids, with_masks=False)
    assert all("segmentation" not in r for r in no_masks)
    assert instances_to_coco(_instances(False), 139, category_ids)[0].keys() == {
        "image_id", "category_id", "bbox", "score"}
    with pytest.raises(ValueError, match="labels"):
        instances_to_coco(_instances(), 139, [1, 18])


def test_instances_to_records_for_predict_and_serve() -> None:
    names, ids = ["person", "dog", "bottle"], [1, 18, 44]
    records = instances_to_records(_instances(), names, ids, score_thr=0.5)
    assert [(r["category_name"], r["category_id"]) for r in records] == [("bottle", 44), ("dog", 18)]
    assert [r["score"] for r in records] == sorted((r["score"] for r in records), reverse=True)
    assert records[0]["bbox"] == [10.0, 10.0, 10.0, 10.0]  # the same +1 convention
    assert set(records[0]["segmentation"]) == {"size", "counts"}
    poly = instances_to_records(_instances(), names, ids, mask_format="polygon")
    assert isinstance(poly[0]["segmentation"], list) and len(poly[0]["segmentation"][0]) >= 6
    none = instances_to_records(_instances(), names, ids, mask_format=None)
    assert all("segmentation" not in r for r in none) and len(none) == 3
    assert len(instances_to_records(_instances(), names, ids, max_instances=1)) == 1
    assert instances_to_records(_instances(), names, ids, score_thr=0.95) == []
    json.dumps(poly)
    with pytest.raises(ValueError):
        instances_to_records(_instances(), names, ids, mask_format="png")


# ------------------------------------------------------------------------------- AP 1.0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    return make_synthetic_coco(
        root, num_images=6, image_size=[(96, 128), (120, 90)], max_objects=4, seed=3,
        with_crowd=True, with_empty_image=True,
    )


def _gt_as_instances(coco, image_id: int, category_ids: list[int], exclusive: bool) -> Instances:
    info = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    end = 0.0 if exclusive else 1.0  # inclusive boxes end on the last pixel
    boxes = [[x, y, x + w - end, y + h - end] for x, y, w, h in (a["bbox"] for a in anns)]
    masks = [decode_mask_rle(a["segmentation"]) for a in anns]
    return Instances(
        image_size=(info["height"], info["width"]),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.linspace(1.0, 0.5, len(anns)),
        labels=[category_ids.index(a["category_id"]) for a in anns],
        masks=np.stack(masks) if masks else np.zeros((0, info["height"], info["width"]), bool),
    )


def _evaluate(coco, records: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes(records)
        evaluator = COCOeval(coco, detections, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_ground_truth_through_results_writer_scores_ap_1(synthetic: Path) -> None:
    coco = load_coco_annotations(synthetic)
    category_ids = category_ids_of(coco)
    assert category_ids == [1, 3, 18, 44, 62, 85]
    assert class_names_of(coco)[2] == "dog"
    assert any(a["iscrowd"] for a in coco.anns.values())
    assert any(not coco.imgToAnns[i] for i in coco.imgs)  # an image without annotations

    # Inclusive boxes (anzoo / mmdetection v1) written with the legacy +1 widths.
    records = []
    for image_id in coco.getImgIds():
        inst = _gt_as_instances(coco, image_id, category_ids, exclusive=False)
        records += instances_to_coco(inst, image_id, category_ids, legacy_box=True)
    box_stats = _evaluate(coco, records, "bbox")
    segm_stats = _evaluate(coco, json.loads(json.dumps(records)), "segm")
    assert box_stats[0] == pytest.approx(1.0) and box_stats[2] == pytest.approx(1.0)  # AP, AP75
    assert segm_stats[0] == pytest.approx(1.0)

    # Exclusive boxes (x2 one past the last pixel) written without +1: also exact.
    records = []
    for image_id in coco.getImgIds():
        inst = _gt_as_instances(coco, image_id, category_ids, exclusive=True)
        records += instances_to_coco(inst, image_id, category_ids, legacy_box=False, with_masks=False)
    assert _evaluate(coco, records, "bbox")[0] == pytest.approx(1.0)

    # Inclusive boxes written without +1 are one pixel short on each side: at IoU 0.95 the
    # small synthetic objects no longer match, so AP drops below 1. This is why legacy_box
    # must follow the convention of the boxes (and why the released models need +1).
    records = []
    for image_id in coco.getImgIds():
        inst = _gt_as_instances(coco, image_id, category_ids, exclusive=False)
        records += instances_to_coco(inst, image_id, category_ids, legacy_box=False, with_masks=False)
    short = _evaluate(coco, records, "bbox")
    assert short[0] < 0.99
    assert short[1] == pytest.approx(1.0)  # AP50 is unaffected

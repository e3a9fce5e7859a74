"""Evaluation against an independent oracle: a stand-in model answers with the ground truth (or
with hand-made perturbations of it), so the AP that ``evaluate()`` and ``anzoo eval`` report is
known before they run: 1.000 for the ground truth, and values worked out by hand below.

This catches what comparisons of pycocotools with itself cannot: a results file written in
another box convention (mmdetection v1's inclusive ``w = x2 - x1 + 1``), masks pasted or encoded
wrongly, detections dropped or given to the wrong image or category.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from typer.testing import CliRunner

import anzoo.factory
from anzoo.cli import app
from anzoo.data.coco import load_coco_annotations
from anzoo.data.results import decode_mask_rle
from anzoo.evaluation import METRIC_NAMES, evaluate

from helpers.oracle import OracleDetection, ground_truth, inclusive_box, make_oracle_dataset, oracle_for

SCALE = (128, 96)  # the oracle ignores the pixels: the smallest resize is the fastest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oracle-coco")
    make_oracle_dataset(root)
    return root


def ann_file(root: Path) -> Path:
    return root / "annotations" / "instances_val2017.json"


def run(model, root: Path, out: Path, **kwargs):
    options = {"scale": SCALE, "workers": 0, "progress": False, "device": "cpu", **kwargs}
    return evaluate(model, ann_file(root), root / "val2017", out, **options)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the ground truth
def test_evaluate_scores_the_ground_truth_ap_1(dataset: Path, tmp_path: Path) -> None:
    coco = load_coco_annotations(ann_file(dataset))
    assert any(a["iscrowd"] for a in coco.dataset["annotations"])  # ignored, not missed
    oracle = oracle_for(ann_file(dataset))
    result = run(oracle, dataset, tmp_path)
    for iou_type in ("bbox", "segm"):
        metrics = result.metrics[iou_type]
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100"):  # AR1: one per image
            if metrics[name] != -1:  # -1: no object of that size in the dataset
                assert metrics[name] == pytest.approx(1.0, abs=1e-12), (iou_type, name, metrics)
        assert metrics["AP"] == pytest.approx(1.0, abs=1e-12)
    # the files hold exactly the annotations: mmdetection v1's widths, the masks to the pixel
    truth = {(a["image_id"], a["category_id"], tuple(a["bbox"])): a for a in coco.dataset["annotations"]
             if not a["iscrowd"]}
    segm = read_json(tmp_path / "results.segm.json")
    assert len(segm) == len(truth) == result.num_detections
    for record in segm:
        ann = truth[(record["image_id"], record["category_id"], tuple(record["bbox"]))]
        assert np.array_equal(decode_mask_rle(record["segmentation"]), decode_mask_rle(ann["segmentation"]))
    assert {(r["image_id"], r["category_id"], tuple(r["bbox"])) for r in read_json(tmp_path / "results.bbox.json")} \
        == set(truth)


def test_cli_eval_scores_the_ground_truth_ap_1(dataset: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = oracle_for(ann_file(dataset))
    monkeypatch.setattr(anzoo.factory, "create_model", lambda *args, **kwargs: oracle)
    weights = tmp_path / "oracle.pth"
    weights.write_bytes(b"stands for the oracle")  # --weights must name a file; the oracle ignores it
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "r50-bn", "--coco", str(dataset), "--weights", str(weights),
                                      "--out", str(out), "--workers", "0", "--device", "cpu",
                                      "--scale", "x".join(map(str, SCALE)), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    metrics = read_json(out / "metrics.json")
    for iou_type in ("bbox", "segm"):
        assert metrics["metrics"][iou_type]["AP"] == pytest.approx(1.0, abs=1e-12), iou_type
        assert printed["metrics"][iou_type] == metrics["metrics"][iou_type]
    assert metrics["num_images"] == 6 and not metrics["partial"]


def test_a_partial_run_scores_only_the_images_it_saw(dataset: Path, tmp_path: Path) -> None:
    """--limit 3: the objects of the other images are not counted as missed."""
    result = run(oracle_for(ann_file(dataset)), dataset, tmp_path, limit=3)
    assert result.partial and result.num_images == 3
    for iou_type in ("bbox", "segm"):
        assert result.metrics[iou_type]["AP"] == pytest.approx(1.0, abs=1e-12), iou_type
        assert result.metrics[iou_type]["AR100"] == pytest.approx(1.0, abs=1e-12), iou_type


# --------------------------------------------------------------------------- known perturbations
def _cut_box(box: list[float]) -> tuple[list[float], float]:
    """The box shortened along its longer side so that its IoU with the original is in
    (0.705, 0.745): between COCO's thresholds 0.70 and 0.75, away from both."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1 + 1, y2 - y1 + 1
    if w >= h:
        keep = next(k for k in range(int(w), 0, -1) if k / w < 0.745)
        return [x1, y1, x1 + keep - 1, y2], keep / w
    keep = next(k for k in range(int(h), 0, -1) if k / h < 0.745)
    return [x1, y1, x2, y1 + keep - 1], keep / h


def _cut_mask(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The mask's first columns (or rows) holding a share of its pixels in (0.705, 0.745)."""
    total = mask.sum()
    for axis in (0, 1):
        cumulative = np.cumsum(mask.sum(axis=axis)) / total
        inside = np.flatnonzero((cumulative > 0.705) & (cumulative < 0.745))
        if inside.size:
            cut = np.zeros_like(mask)
            if axis == 0:
                cut[:, : inside[0] + 1] = mask[:, : inside[0] + 1]
            else:
                cut[: inside[0] + 1] = mask[: inside[0] + 1]
            return cut, float(cumulative[inside[0]])
    raise AssertionError("no column or row cut of this mask keeps 70.5-74.5 % of it")


def _iou_between_thresholds(coco: COCO, image_id: int) -> list[OracleDetection]:
    out = []
    for det in ground_truth(coco, image_id):
        box, box_iou = _cut_box(det.box)
        mask, mask_iou = _cut_mask(det.mask)
        assert 0.705 < box_iou < 0.745 and 0.705 < mask_iou < 0.745
        out.append(OracleDetection(box, det.score, det.category_id, mask))
    return out


def test_overlaps_between_0_70_and_0_75_score_ap_one_half(dataset: Path, tmp_path: Path) -> None:
    """Every object found once with IoU in (0.70, 0.75): a true positive at the IoU thresholds
    0.50 ... 0.70 (AP 1 each) and a false positive at 0.75 ... 0.95 (AP 0 each), so
    AP = 5 / 10, AP50 = 1, AP75 = 0, whatever the counts per category."""
    result = run(oracle_for(ann_file(dataset), _iou_between_thresholds), dataset, tmp_path)
    for iou_type in ("bbox", "segm"):
        metrics = result.metrics[iou_type]
        assert metrics["AP"] == pytest.approx(0.5, abs=1e-12), (iou_type, metrics)
        assert metrics["AP50"] == pytest.approx(1.0, abs=1e-12)
        assert metrics["AP75"] == 0.0
        assert metrics["AR100"] == pytest.approx(0.5, abs=1e-12)  # recall 1 at 5 thresholds of 10


def test_a_false_positive_above_every_true_one_costs_n_over_n_plus_1(dataset: Path, tmp_path: Path) -> None:
    """Per category c with n_c objects: the ground truth plus one detection in the image
    without objects, scored above all of them. Precision at recall k / n_c is k / (k + 1);
    interpolated (the best precision at any higher recall) it is n_c / (n_c + 1) at every
    recall level, at every IoU threshold. So AP = mean over c of n_c / (n_c + 1)."""
    coco = load_coco_annotations(ann_file(dataset))
    empty_image = next(i for i in coco.getImgIds() if not coco.imgToAnns[i])
    counts: dict[int, int] = {}
    for a in coco.dataset["annotations"]:
        if not a["iscrowd"]:
            counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    size = (coco.imgs[empty_image]["height"], coco.imgs[empty_image]["width"])

    def answer(coco: COCO, image_id: int) -> list[OracleDetection]:
        if image_id != empty_image:
            return ground_truth(coco, image_id)
        dets = []
        for k, category_id in enumerate(sorted(counts)):
            mask = np.zeros(size, dtype=bool)
            mask[10:30, 10 + 30 * k: 30 + 30 * k] = True
            dets.append(OracleDetection(inclusive_box([10 + 30 * k, 10, 20, 20]), 0.99, category_id, mask))
        return dets

    result = run(oracle_for(ann_file(dataset), answer), dataset, tmp_path)
    expected = float(np.mean([n / (n + 1) for n in counts.values()]))
    assert len(counts) >= 3 and 0.5 < expected < 0.9  # several categories, a value far from 0 and 1
    for iou_type in ("bbox", "segm"):
        metrics = result.metrics[iou_type]
        assert metrics["AP"] == pytest.approx(expected, abs=1e-9), (iou_type, counts, metrics)
        assert metrics["AP50"] == pytest.approx(expected, abs=1e-9)
        assert metrics["AP75"] == pytest.approx(expected, abs=1e-9)
        assert metrics["AR100"] == pytest.approx(1.0, abs=1e-12)  # every object is found
    assert set(result.metrics["bbox"]) == set(METRIC_NAMES)

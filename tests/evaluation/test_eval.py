"""`anzoo eval`: COCO evaluation on a generated dataset (CPU, tiny scale, one torch thread)."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from anzoo import hub
from anzoo.cli import app
from anzoo.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, coco_from_dict, load_coco_annotations
from anzoo.data.results import decode_mask_rle, encode_masks_rle, encode_masks_rle_torch, instances_to_coco
from anzoo.data.synthetic import make_synthetic_coco
from anzoo.errors import AnzooError, DatasetError
from anzoo.evaluation import (
    METRIC_NAMES,
    EvalResult,
    ResultStore,
    coco_evaluate,
    compare,
    evaluate,
    label_category_ids,
    resolve_coco_files,
    result_line,
    verdict,
)
from anzoo.evaluation.metrics import overall_verdict
from anzoo.factory import save_model
from anzoo.structures import Instances
from anzoo.testing import confident_model

#: far below the table's 1333x800: the synthetic images are 160x224.
TINY_SCALE = (128, 96)
NUM_IMAGES = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 images, COCO category ids 1, 3, 18, 44, 62, 85, a crowd region and an image without objects."""
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(root, num_images=NUM_IMAGES, with_crowd=True, with_empty_image=True, seed=3)
    return root


def ann_file(root: Path) -> Path:
    return root / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """Random weights, biased towards person and car (two of the dataset's categories), 10 proposals."""
    return confident_model("r50-bn", proposals=10, classes=(0, 2))


def run(model: torch.nn.Module, root: Path, out: Path, **kwargs) -> EvalResult:
    options = {"scale": TINY_SCALE, "workers": 0, "progress": False, "device": "cpu", **kwargs}
    return evaluate(model, ann_file(root), root / "val2017", out, **options)


@pytest.fixture(scope="module")
def reference(model: torch.nn.Module, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> EvalResult:
    """One uninterrupted single-process run over all images."""
    return run(model, dataset, tmp_path_factory.mktemp("reference"))


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- results writer
def ground_truth_instances(coco, image_id: int, label_of: dict[int, int]) -> Instances:
    """The image's non-crowd annotations as detections (inclusive x1, y1, x2, y2 boxes)."""
    info = coco.imgs[image_id]
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2] - 1, a["bbox"][1] + a["bbox"][3] - 1]
             for a in anns]
    masks = [decode_mask_rle(a["segmentation"]) for a in anns]
    return Instances(
        image_size=(info["height"], info["width"]),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.linspace(0.9, 0.5, len(anns), dtype=np.float32),
        labels=np.asarray([label_of[a["category_id"]] for a in anns], dtype=np.int64),
        masks=np.stack(masks) if masks else np.zeros((0, info["height"], info["width"]), dtype=bool),
    )


@pytest.mark.parametrize("class_names", [None, "dataset-reversed"], ids=["coco-80-classes", "custom-classes"])
def test_ground_truth_through_the_results_writer_scores_ap_1(dataset: Path, tmp_path: Path,
                                                             class_names: str | None) -> None:
    coco = load_coco_annotations(ann_file(dataset))
    assert any(a["iscrowd"] for a in coco.dataset["annotations"])
    assert any(not coco.imgToAnns[i] for i in coco.getImgIds())  # an image without objects
    if class_names is None:  # a COCO model: 80 contiguous labels
        names = None
        label_of = {cid: COCO_CATEGORY_IDS.index(cid) for cid in coco.getCatIds()}
    else:  # a fine-tuned model whose classes are the dataset's, in another order
        names = [c["name"] for c in sorted(coco.dataset["categories"], key=lambda c: -c["id"])]
        label_of = {c["id"]: names.index(c["name"]) for c in coco.dataset["categories"]}
    category_ids = label_category_ids(names, coco)
    for cid, label in label_of.items():
        assert category_ids[label] == cid

    store = ResultStore(tmp_path)
    store.prepare({"test": 1}, resume=False)
    writer = store.writer("gt", 0)
    image_ids = coco.getImgIds()
    for image_id in image_ids:
        inst = ground_truth_instances(coco, image_id, label_of)
        cat_ids = [c if c is not None else -1 for c in category_ids]
        writer.write([result_line(image_id, instances_to_coco(inst, image_id, cat_ids))])
    writer.close()
    count = store.write_results(image_ids)
    assert count == sum(1 for a in coco.dataset["annotations"] if not a["iscrowd"])

    segm = read_json(store.segm_file)
    assert all("bbox" in r and "segmentation" in r for r in segm)  # the bbox decides the segm area
    assert all("segmentation" not in r for r in read_json(store.bbox_file))
    for iou_type, path in (("bbox", store.bbox_file), ("segm", store.segm_file)):
        metrics, _ = coco_evaluate(coco, path, iou_type)
        assert metrics["AP"] == pytest.approx(1.0), iou_type
        assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
        assert metrics["AR100"] == pytest.approx(1.0)


def test_boxes_without_the_legacy_plus_one_lose_ap(dataset: Path) -> None:
    """The +1 widths are what makes the ground truth match exactly (what the writer checks)."""
    coco = load_coco_annotations(ann_file(dataset))
    label_of = {cid: COCO_CATEGORY_IDS.index(cid) for cid in coco.getCatIds()}
    records = []
    for image_id in coco.getImgIds():
        inst = ground_truth_instances(coco, image_id, label_of)
        records += instances_to_coco(inst, image_id, COCO_CATEGORY_IDS, legacy_box=False, with_masks=False)
    metrics, _ = coco_evaluate(coco, records, "bbox")
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP"] < 0.99


def test_no_detections_at_all_score_zero(dataset: Path) -> None:
    coco = load_coco_annotations(ann_file(dataset))
    metrics, summary = coco_evaluate(coco, [], "segm")  # pycocotools' loadRes fails on []
    assert list(metrics) == list(METRIC_NAMES)
    assert metrics["AP"] == metrics["AR100"] == 0.0
    assert metrics["APl"] == -1.0  # no large object in the dataset: nothing to average
    assert "Average Precision" in summary


def test_gpu_rle_encoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 23)) > 0.6
    masks[0] = False
    masks[1] = True
    masks[2, :, :5] = True
    masks[2, :, 5:] = False
    assert encode_masks_rle_torch(torch.from_numpy(masks)) == encode_masks_rle(masks)
    assert encode_masks_rle_torch(torch.zeros((0, 4, 4), dtype=torch.bool)) == []


# --------------------------------------------------------------------------- categories
def test_category_mapping(dataset: Path) -> None:
    coco = load_coco_annotations(ann_file(dataset))
    mapped = label_category_ids(None, coco)  # COCO model, dataset with 6 of COCO's categories
    assert len(mapped) == 80
    assert {c for c in mapped if c is not None} == {1, 3, 18, 44, 62, 85}
    assert mapped[COCO_CLASSES.index("dog")] == 18 and mapped[COCO_CLASSES.index("cat")] is None
    # mmdetection v1's underscores and other cases still match
    assert label_category_ids(["Traffic_Light", "person"], coco) == [None, 1]
    # on COCO itself: exactly COCO's ids
    full = coco_from_dict({"images": [], "annotations": [],
                           "categories": [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]})
    assert label_category_ids(None, full) == list(COCO_CATEGORY_IDS)
    # no common name: by order when the counts agree, an error otherwise
    assert label_category_ids([f"class{i}" for i in range(6)], coco) == [1, 3, 18, 44, 62, 85]
    assert label_category_ids(None, coco, num_classes=6) == [1, 3, 18, 44, 62, 85]  # unnamed, not COCO's 80
    with pytest.raises(DatasetError, match="share no name"):
        label_category_ids(["a", "b"], coco)


# --------------------------------------------------------------------------- verdict
def test_verdict() -> None:
    assert verdict(0.392, 39.2) == "reproduced"
    assert verdict(0.395, 39.2) == "reproduced"  # +0.3 is within the tolerance
    assert verdict(0.389, 39.2) == "reproduced"
    assert verdict(0.3951, 39.2) == "not reproduced"
    assert verdict(0.3889, 39.2) == "not reproduced"
    assert verdict(0.392, 39.2, partial=True) == "partial"
    assert verdict(0.392, None) == "no reference"
    assert verdict(-1.0, 39.2) == "not reproduced"
    comps = compare({"bbox": {"AP": 0.392}, "segm": {"AP": 0.348}}, {"bbox": 39.2, "segm": 35.2}, partial=False)
    assert comps["bbox"].verdict == "reproduced" and comps["segm"].verdict == "not reproduced"
    assert comps["segm"].difference == pytest.approx(-0.4)
    assert overall_verdict(comps) == "not reproduced"
    good = compare({"bbox": {"AP": 0.392}, "segm": {"AP": 0.353}}, {"bbox": 39.2, "segm": 35.2}, partial=False)
    assert overall_verdict(good) == "reproduced"
    part = compare({"bbox": {"AP": 0.392}}, {"bbox": 39.2}, partial=True)
    assert overall_verdict(part) == "partial"


# --------------------------------------------------------------------------- end to end
def test_evaluation_writes_results_and_exact_pycocotools_metrics(reference: EvalResult, dataset: Path) -> None:
    out = Path(reference.out_dir)
    assert reference.num_images == reference.images_this_run == NUM_IMAGES
    assert not reference.partial and reference.verdict == "no reference"  # not COCO val2017
    assert reference.num_detections > 0
    assert not (out / "partial").exists()
    metrics = read_json(out / "metrics.json")
    assert metrics["model_id"] == "r50-bn" and metrics["num_images"] == NUM_IMAGES
    for key in ("wall_time_s", "images_per_s", "device", "weights_sha256", "expected"):
        assert key in metrics
    assert metrics["images_per_s"] > 0
    segm, bbox = read_json(out / "results.segm.json"), read_json(out / "results.bbox.json")
    assert len(segm) == len(bbox) == reference.num_detections
    assert {r["category_id"] for r in segm} <= {1, 3}  # person and car only: other classes are not the dataset's
    assert [{k: v for k, v in r.items() if k != "segmentation"} for r in segm] == bbox
    # the numbers are exactly those of pycocotools run by hand on the files
    coco = load_coco_annotations(ann_file(dataset))
    for iou_type, records in (("bbox", bbox), ("segm", segm)):
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, coco.loadRes(records), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert [metrics["metrics"][iou_type][n] for n in METRIC_NAMES] == [float(v) for v in ev.stats]
        assert reference.metrics[iou_type] == metrics["metrics"][iou_type]
    assert metrics["metrics"]["bbox"]["AP50"] > 0  # some detection of a dataset class matched an object


def test_expected_values_give_a_verdict(model, dataset: Path, reference: EvalResult, tmp_path: Path) -> None:
    box = 100 * reference.metrics["bbox"]["AP"]
    mask = 100 * reference.metrics["segm"]["AP"]
    # --limit: partial, no verdict even with expected values
    result = run(model, dataset, tmp_path / "limited", limit=2, expected={"bbox": box, "segm": mask})
    assert result.partial and result.num_images == 2 and result.verdict == "partial"
    assert read_json(tmp_path / "limited" / "metrics.json")["partial"] is True
    comps = compare(reference.metrics, {"bbox": box + 0.25, "segm": mask - 0.5}, partial=False)
    assert comps["bbox"].verdict == "reproduced" and comps["segm"].verdict == "not reproduced"


@pytest.mark.slow
def test_batches_and_dataloader_workers_give_the_same_results(model, dataset: Path, reference: EvalResult,
                                                             tmp_path: Path) -> None:
    result = run(model, dataset, tmp_path, batch_size=2, workers=1, post_threads=2)
    assert result.metrics == reference.metrics
    assert read_json(tmp_path / "results.segm.json") == read_json(Path(reference.out_dir) / "results.segm.json")


class Interrupt:
    """Make the model's forward raise KeyboardInterrupt from its ``after + 1``-th call on."""

    def __init__(self, model, after: int) -> None:
        self.model, self.after, self.calls = model, after, 0

    def __enter__(self):
        # on the class: the predictor runs a copy of the model (its BatchNorms folded), and an
        # instance attribute would be copied as it is, calling the unfolded original
        self.cls, self.real = type(self.model), type(self.model).detect
        real = self.real

        def detect(model, *args, **kwargs):
            self.calls += 1
            if self.calls > self.after:
                raise KeyboardInterrupt
            return real(model, *args, **kwargs)

        self.cls.detect = detect
        return self

    def __exit__(self, *exc) -> None:
        self.cls.detect = self.real


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_same_metrics(model, dataset: Path, reference: EvalResult,
                                                             tmp_path: Path) -> None:
    with Interrupt(model, after=2), pytest.raises(KeyboardInterrupt):
        run(model, dataset, tmp_path)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "results.segm.json").exists()
    done = ResultStore(tmp_path).index()
    assert len(done) == 2  # the two detected batches were pasted and saved before stopping
    # a torn line from a crash mid-write is ignored
    with open(next((tmp_path / "partial").glob("*.jsonl")), "ab") as fh:
        fh.write(b'{"image_id":999,"records":[{"image_id"')

    result = run(model, dataset, tmp_path, resume=True)
    assert result.images_this_run == NUM_IMAGES - 2
    assert result.num_images == NUM_IMAGES
    assert result.metrics == reference.metrics
    segm = read_json(tmp_path / "results.segm.json")
    assert segm == read_json(Path(reference.out_dir) / "results.segm.json")  # no image counted twice
    assert not (tmp_path / "partial").exists()


def test_resume_refuses_results_of_other_settings(model, dataset: Path, tmp_path: Path) -> None:
    with Interrupt(model, after=1), pytest.raises(KeyboardInterrupt):
        run(model, dataset, tmp_path)
    with pytest.raises(AnzooError, match="scale differ"):
        run(model, dataset, tmp_path, resume=True, scale=(160, 128))
    assert len(ResultStore(tmp_path).index()) == 1  # nothing was removed
    # without --resume an earlier run's partial results are dropped
    result = run(model, dataset, tmp_path, limit=1)
    assert result.images_this_run == 1


def test_resume_refuses_results_of_another_device_or_mask_paste(model, dataset: Path, tmp_path: Path) -> None:
    with Interrupt(model, after=1), pytest.raises(KeyboardInterrupt):
        run(model, dataset, tmp_path)  # on the CPU 'auto' pastes masks the legacy way
    run_file = tmp_path / "partial" / "run.json"
    made_with = read_json(run_file)
    assert (made_with["device"], made_with["mask_paste"], made_with["channels_last"]) == ("cpu", "legacy", False)
    with pytest.raises(AnzooError, match=r"other settings \(mask_paste differ\)"):
        run(model, dataset, tmp_path, resume=True, mask_paste="fast")
    run_file.write_text(json.dumps({**made_with, "device": "cuda (NVIDIA H200)"}))  # as a GPU run writes it
    with pytest.raises(AnzooError, match=r"other settings \(device differ\)"):
        run(model, dataset, tmp_path, resume=True)
    assert len(ResultStore(tmp_path).index()) == 1  # nothing was removed


@pytest.mark.slow
def test_batching_never_changes_results_when_a_file_is_not_its_annotated_size(model, tmp_path: Path) -> None:
    """The sampler batches by annotated sizes; a file of another size is detected at its own
    padded shape all the same, and is reported."""
    from PIL import Image

    root = tmp_path / "coco"
    make_synthetic_coco(root, num_images=4, image_size=(160, 224), seed=3, image_format="png")
    path = root / "val2017" / "000000000103.png"  # cropped to 100x224: another padded shape at TINY_SCALE
    Image.open(path).crop((0, 0, 224, 100)).save(path)
    one = run(model, root, tmp_path / "one", batch_size=1)
    two = run(model, root, tmp_path / "two", batch_size=2)  # 103 shares a batch with 100 by its annotation
    segm = read_json(tmp_path / "one" / "results.segm.json")
    assert any(r["image_id"] == 103 for r in segm)
    assert segm == read_json(tmp_path / "two" / "results.segm.json")
    assert one.metrics == two.metrics
    assert one.size_mismatches == two.size_mismatches == [103]
    assert read_json(tmp_path / "two" / "metrics.json")["size_mismatches"] == [103]


def test_bad_annotations_stop_the_evaluation_before_any_inference(model, dataset: Path, tmp_path: Path) -> None:
    data = read_json(ann_file(dataset))
    data["annotations"][1]["id"] = data["annotations"][0]["id"]  # pycocotools would keep only the second
    bad = tmp_path / "instances.json"
    bad.write_text(json.dumps(data))
    def detect(*args, **kwargs):
        raise AssertionError("inference ran before the annotation file was checked")

    model.detect = detect
    try:
        with pytest.raises(DatasetError, match=r"instances.json .*appears 2 times"):
            evaluate(model, bad, dataset / "val2017", tmp_path / "out", scale=TINY_SCALE, workers=0,
                     progress=False, device="cpu")
    finally:
        del model.detect
    assert not (tmp_path / "out" / "partial").exists()


def test_dataset_errors_name_what_is_missing(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(DatasetError, match=r"COCO folder .*nowhere does not exist"):
        resolve_coco_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"annotation file .*instances_val2017.json does not exist.*--ann"):
        resolve_coco_files(tmp_path / "empty")
    (tmp_path / "empty" / "annotations").mkdir()
    (tmp_path / "empty" / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"image folder .*val2017 does not exist.*--images"):
        resolve_coco_files(tmp_path / "empty")
    with pytest.raises(DatasetError, match="or both --ann FILE and --images DIR"):
        resolve_coco_files(None, ann_file=ann_file(dataset))
    files = resolve_coco_files(None, ann_file(dataset), dataset / "val2017")
    assert files.ann_file == ann_file(dataset).resolve()


# --------------------------------------------------------------------------- command line
def limit_proposals(monkeypatch: pytest.MonkeyPatch, proposals: int = 10) -> None:
    """Models created by the CLI keep 10 RPN proposals (1000 in the release: too slow for a test)."""
    import anzoo.factory

    real = anzoo.factory.create_model

    def create_model(*args, **kwargs):
        model = real(*args, **kwargs)
        cfg = model.rpn.test_cfg
        model.rpn.test_cfg = replace(cfg, nms_pre=4 * proposals, nms_post=proposals, max_num=proposals)
        return model

    monkeypatch.setattr(anzoo.factory, "create_model", create_model)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("weights") / "confident-r50-bn.pth")


def test_cli_eval_end_to_end(dataset: Path, checkpoint: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    limit_proposals(monkeypatch)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "r50-bn", "--coco", str(dataset), "--weights", str(checkpoint),
                                      "--out", str(out), "--limit", "2", "--scale", "96x128",
                                      "--workers", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "partial run (2 of 6 images): no verdict" in result.output
    assert "mask AP" in result.output and "AP75" in result.output
    metrics = read_json(out / "metrics.json")
    assert metrics["num_images"] == 2 and metrics["partial"] is True
    assert metrics["weights_sha256"] == hub.sha256_file(checkpoint)
    assert metrics["scale"] == [128, 96]  # LONG SHORT in either order
    assert metrics["expected"] == {"bbox": None, "segm": None}  # the table is for COCO val2017 only
    assert set(metrics["metrics"]["segm"]) == set(METRIC_NAMES)
    assert (out / "results.bbox.json").is_file() and (out / "results.segm.json").is_file()


@pytest.mark.parametrize("case", ["no-folder", "no-ann", "bad-ann", "bad-record", "no-images", "no-data-option",
                                  "no-weights", "unknown-model"])
def test_cli_eval_errors(case: str, dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    args = ["eval", "r50-bn", "--coco", str(root), "--device", "cpu"]
    if case == "no-folder":
        args[3] = str(tmp_path / "missing")
        expected = "COCO folder"
    elif case == "no-ann":
        expected = "instances_val2017.json does not exist"
    elif case == "bad-ann":
        (root / "annotations" / "instances_val2017.json").write_text('{"images": []}')
        expected = "not in COCO format: missing the 'categories' list"
    elif case == "bad-record":
        data = read_json(ann_file(dataset))
        data["images"][2]["height"] = 0
        (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
        expected = "images[2] (id 106): 'height' and 'width' must be positive integers, got 0 and 224"
    elif case == "no-images":
        args = ["eval", "r50-bn", "--ann", str(ann_file(dataset)), "--images", str(tmp_path / "imgs")]
        expected = "image folder"
    elif case == "no-data-option":
        args = ["eval", "r50-bn"]
        expected = "give the COCO folder"
    elif case == "no-weights":
        args = ["eval", "r50-bn", "--coco", str(dataset), "--weights", str(tmp_path / "w.pth")]
        expected = "w.pth does not exist"
    else:
        args[1] = "r50-nope"
        expected = "r50-nope"
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output


def test_cli_gpus_runs_torchrun(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    calls = []

    class Done:
        returncode = 3

    monkeypatch.setattr(subprocess, "run", lambda cmd, check=False: calls.append(cmd) or Done())
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(app, ["eval", "r50-bn", "--coco", str(dataset), "--gpus", "2", "--device", "cpu",
                                      "--limit", "4", "--scale", "128x96", "--resume"])
    assert result.exit_code == 3  # the workers' exit code
    (cmd,) = calls
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    rest = cmd[6:]
    assert rest[:3] == ["anzoo", "eval", "r50-bn"]
    assert "--gpus" not in rest and "--resume" in rest
    assert rest[rest.index("--scale") + 1] == "128x96"
    assert rest[rest.index("--limit") + 1] == "4" and rest[rest.index("--device") + 1] == "cpu"
    # asking for GPUs a machine does not have is a clear error
    if torch.cuda.device_count() < 2:
        result = CliRunner().invoke(app, ["eval", "r50-bn", "--coco", str(dataset), "--gpus", "2"])
        assert result.exit_code == 1 and "needs 2 CUDA GPUs" in result.output


def test_cli_eval_all_writes_the_report(dataset: Path, checkpoint: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from anzoo import zoo
    from anzoo.errors import DownloadError

    limit_proposals(monkeypatch)
    entries = [zoo.get_entry("r50-bn"), zoo.get_entry("r50-gn"), zoo.get_entry("r50-an")]
    monkeypatch.setattr(zoo, "list_entries", lambda *a, **k: entries)

    def fetch(model_id: str, **kwargs) -> Path:
        if model_id == "r50-bn":
            return checkpoint
        raise DownloadError(f"{model_id}: Google Drive refused")

    monkeypatch.setattr(hub, "fetch_weights", fetch)
    out = tmp_path / "all"
    result = CliRunner().invoke(app, ["eval", "--all", "--coco", str(dataset), "--out", str(out), "--limit", "1",
                                      "--scale", "128x96", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 1, result.output  # one model could not be evaluated
    assert "r50-an: r50-an: Google Drive refused" in result.output
    report = (out / "report.md").read_text()
    assert "| box AP | box AP (measured) | Δ | mask AP | mask AP (measured) |" in report
    rows = {line.split("`")[1]: line for line in report.splitlines() if line.startswith("| ") and "`" in line}
    assert set(rows) == {"r50-bn", "r50-gn", "r50-an"}
    assert "partial (1 images)" in rows["r50-bn"] and "| 39.2 |" in rows["r50-bn"]
    assert "no weights" in rows["r50-gn"]
    assert "error: r50-an: Google Drive refused" in rows["r50-an"]
    assert (out / "r50-bn" / "metrics.json").is_file()
    summary = read_json(out / "report.json")
    assert [r["id"] for r in summary] == ["r50-bn", "r50-gn", "r50-an"]
    assert summary[0]["result"]["num_images"] == 1


@pytest.mark.slow
def test_evaluate_model_for_training(model, dataset: Path, reference: EvalResult) -> None:
    from anzoo.evaluation import evaluate_model

    metrics = evaluate_model(model, ann_file(dataset), dataset / "val2017", scale=TINY_SCALE, workers=0)
    assert metrics["images"] == NUM_IMAGES
    assert metrics["bbox_ap"] == reference.metrics["bbox"]["AP"]
    assert metrics["segm_ap50"] == reference.metrics["segm"]["AP50"]
    assert len(metrics) == 1 + 2 * len(METRIC_NAMES)

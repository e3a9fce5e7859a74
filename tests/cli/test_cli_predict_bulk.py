"""`anzoo predict` over many inputs: nested folders, videos, the jsonl and coco formats,
failed.txt, DataLoader workers, and --resume after a crash ending as an uninterrupted run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from typer.testing import CliRunner

import anzoo.cli as cli
from anzoo.bulk.runner import shard_windows
from anzoo.data.results import decode_mask_rle
from anzoo.inference import Predictor
from anzoo.testing import confident_model
from helpers.videos import write_video

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return confident_model("r50-bn", proposals=10, max_per_img=5, classes=(0, 2))


@pytest.fixture
def inputs(tmp_path: Path, model, use_model) -> Path:
    """in/a/x.png, in/b/x.png (the same name), in/b/c/y.jpg, in/b/c/z.png (another size),
    in/v.avi (5 frames) and in/bad.jpg (not an image)."""
    use_model(model)
    root = tmp_path / "in"
    for i, (name, h, w) in enumerate([("a/x.png", 60, 80), ("b/x.png", 60, 80), ("b/c/y.jpg", 60, 80),
                                      ("b/c/z.png", 80, 60)]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    write_video(root / "v.avi", frames=5, size=(60, 80))
    (root / "bad.jpg").write_bytes(b"no image")
    return root


def _predict(*args: str) -> object:
    return runner.invoke(cli.app, ["predict", *args, "--scale", "128x96", "--score-thr", "0.05"])


KEYS = ["a/x.png", "b/c/y.jpg", "b/c/z.png", "b/x.png", "v.avi", "v.avi"]  # sorted by path


def test_jsonl_nested_folders_videos_and_failed_txt(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _predict(str(inputs), "-r", "--every", "3", "--format", "jsonl", "--no-render", "--workers", "0",
                      "--out", str(out))
    assert result.exit_code == 1  # bad.jpg
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == KEYS  # input order
    assert [line.get("frame") for line in lines] == [None, None, None, None, 0, 3]
    assert [(line["height"], line["width"]) for line in lines] == [(60, 80)] * 2 + [(80, 60)] + [(60, 80)] * 3
    assert sum(len(line["instances"]) for line in lines) > 0
    for line in lines:
        for rec in line["instances"]:
            assert decode_mask_rle(rec["segmentation"]).shape == (line["height"], line["width"])
    assert not list(out.rglob("*.png")) and not (out / "partial").exists()
    failed = (out / "failed.txt").read_text().splitlines()
    assert failed[1] == str(inputs / "bad.jpg") and failed[0].startswith("# ") and len(failed) == 2
    assert "6 image(s)" in result.stdout and "1 failed" in result.stdout and "bad.jpg" in result.stderr


def test_files_format_keeps_folders_and_renders_frames(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _predict(str(inputs / "a"), str(inputs / "b"), str(inputs / "v.avi"), "--every", "3",
                      "--workers", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != ".")
    assert made == ["a/x.json", "a/x.png", "b/x.json", "b/x.png", "v.avi/000000.json", "v.avi/000000.png",
                    "v.avi/000003.json", "v.avi/000003.png"]
    assert Image.open(out / "v.avi" / "000003.png").size == (80, 60)
    assert "v.avi frame 3: " in result.stdout


def test_coco_format_loads_with_pycocotools_and_equals_jsonl(inputs: Path, tmp_path: Path) -> None:
    args = [str(inputs), "-r", "--every", "3", "--no-render", "--workers", "0"]
    assert _predict(*args, "--format", "coco", "--out", str(tmp_path / "coco")).exit_code == 1
    assert _predict(*args, "--format", "jsonl", "--out", str(tmp_path / "jsonl")).exit_code == 1
    gt = COCO(str(tmp_path / "coco" / "images.json"))
    dt = gt.loadRes(str(tmp_path / "coco" / "results.json"))
    images = gt.dataset["images"]
    assert [im["file_name"] for im in images] == KEYS and [im.get("frame") for im in images][-2:] == [0, 3]
    assert {c["id"] for c in gt.dataset["categories"]} >= {1, 3}  # COCO's ids of person and car
    lines = [json.loads(line) for line in (tmp_path / "jsonl" / "predictions.jsonl").read_text().splitlines()]
    for image, line in zip(images, lines):
        anns = dt.loadAnns(dt.getAnnIds(imgIds=[image["id"]]))
        assert [a["segmentation"] for a in anns] == [r["segmentation"] for r in line["instances"]]
        assert [a["score"] for a in anns] == [r["score"] for r in line["instances"]]
    assert len(dt.anns) == sum(len(line["instances"]) for line in lines) > 0


@pytest.mark.slow
def test_workers_give_the_same_results(inputs: Path, tmp_path: Path) -> None:
    for workers in ("0", "2"):
        result = _predict(str(inputs), "-r", "--format", "jsonl", "--no-render", "--batch-size", "2",
                          "--workers", workers, "--out", str(tmp_path / workers))
        assert result.exit_code == 1, result.output
    assert (tmp_path / "0" / "predictions.jsonl").read_bytes() == (tmp_path / "2" / "predictions.jsonl").read_bytes()


@pytest.mark.parametrize("fmt", ["jsonl", pytest.param("coco", marks=pytest.mark.slow)])
def test_resume_after_a_crash_equals_an_uninterrupted_run(inputs: Path, tmp_path: Path, fmt: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    args = [str(inputs), "-r", "--every", "2", "--format", fmt, "--workers", "0"]
    assert _predict(*args, "--out", str(tmp_path / "whole")).exit_code == 1
    calls = []
    crash_at = [3]
    detect = Predictor.detect_batch

    def crash_on_the_third(self, *a, **k):
        calls.append(1)
        if len(calls) == crash_at[0]:
            raise KeyboardInterrupt
        return detect(self, *a, **k)

    monkeypatch.setattr(Predictor, "detect_batch", crash_on_the_third)
    out = tmp_path / "crashed"
    result = _predict(*args, "--out", str(out))
    assert result.exit_code == 130 and "interrupted" in result.stderr
    [part] = list((out / "partial").glob("*.jsonl"))
    assert len(part.read_bytes().splitlines()) == 2  # the two images detected before the crash
    with open(part, "ab") as fh:  # a line torn by the crash
        fh.write(b'{"image_id":5,"file":"b/x.png","height":60,"wid')
    calls.clear()
    refused = _predict(*args, "--out", str(out), "--resume", "--no-render")
    assert refused.exit_code == 1 and "other settings (render differ)" in refused.stderr and not calls
    calls.clear()
    crash_at[0] = 0
    result = _predict(*args, "--out", str(out), "--resume")
    assert result.exit_code == 1, result.output
    assert len(calls) == 5  # 7 images (4 files, 3 frames) less the 2 done
    names = ["predictions.jsonl"] if fmt == "jsonl" else ["results.json", "images.json"]
    for name in names + ["failed.txt", "a/x.png", "v.avi/000004.png"]:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_shards_cover_every_image_once() -> None:
    todo = [0, 2, 3, 5, 6, 7, 8, 9, 11]
    assert shard_windows(todo, 4, 0, 2) == [[0, 2, 3, 5], [11]]
    assert shard_windows(todo, 4, 1, 2) == [[6, 7, 8, 9]]
    # fewer images than a window for each process: all still take part
    assert [shard_windows(todo, 16, r, 2) for r in (0, 1)] == [[[0, 2, 3, 5, 6]], [[7, 8, 9, 11]]]
    assert [shard_windows([4, 5], 16, r, 3) for r in (0, 1, 2)] == [[[4]], [[5]], []]
    assert shard_windows(todo, 16, 0, 1) == [todo]


@pytest.mark.slow
def test_many_small_windows_read_by_workers_equal_one_window(inputs: Path, tmp_path: Path, model) -> None:
    """The library under the command: windows of 2 images read by 2 DataLoader workers (a video
    split across them) write what one window read here writes."""
    from anzoo.bulk import predict_bulk
    from anzoo.data.sources import expand_inputs

    sources, failures = expand_inputs([str(inputs)], recursive=True, every=2)
    predictor = Predictor(model, scale=(128, 96), batch_size=2)
    for name, window, workers in (("one", 16, 0), ("many", 2, 2)):
        result = predict_bulk(predictor, sources, tmp_path / name, fmt="coco", render=False, score_thr=0.05,
                              workers=workers, window=window, progress=False)
        assert result.images == result.images_this_run == 7 and len(result.failed) == 1
    for name in ("results.json", "images.json", "failed.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()


def test_one_run_at_a_time_writes_to_a_folder(inputs: Path, tmp_path: Path) -> None:
    from filelock import FileLock

    (tmp_path / "out").mkdir()
    with FileLock(str(tmp_path / "out" / ".anzoo-predict.lock")):
        result = _predict(str(inputs), "--workers", "0", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "another prediction is writing to" in result.stderr
    assert not list((tmp_path / "out").glob("*.json"))


@pytest.mark.parametrize("cpus,expected", [({0}, 1), (set(range(16)), 2)])
def test_default_workers_stay_within_the_cpus(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              cpus: set[int], expected: int) -> None:
    import os

    import anzoo.bulk

    calls: list[dict] = []

    def fake(predictor, sources, out, **options):
        calls.append(options)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cpus, raising=False)
    monkeypatch.setattr(anzoo.bulk, "predict_bulk", fake)
    _predict(str(inputs / "a"), "--out", str(tmp_path / "out"))
    _predict(str(inputs / "a"), "--workers", "3", "--out", str(tmp_path / "out"))
    assert [c["workers"] for c in calls] == [expected, 3]

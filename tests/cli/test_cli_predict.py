"""`anzoo predict`: files written, their content, bad inputs and exit codes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import anzoo.cli as cli
from anzoo.data.results import decode_mask_rle
from anzoo.factory import save_model
from anzoo.inference import Predictor
from anzoo.models.detection.detections import Detections
from anzoo.testing import SMALL_SCALE, confident_model
from anzoo.visualize import instance_colour

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    """A few instances (5 at most) whose masks fill their boxes, so that the top one shows in
    the overlay (a random mask head paints a pixel or two, hidden under the others)."""
    m = confident_model("r50-bn", proposals=30, max_per_img=5)
    with torch.no_grad():
        logits = m.roi_heads.mask_head.predictor.mask_fcn_logits
        logits.weight.mul_(0.1)
        logits.bias.fill_(4.0)
    return m


@pytest.fixture
def fake_model(model, use_model):
    return use_model(model)


def _photo(path, h=120, w=160, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).convert(mode).save(path)
    return path


def _run(*args):
    return runner.invoke(cli.app, ["predict", *args, "--scale", f"{SMALL_SCALE[0]}x{SMALL_SCALE[1]}",
                                   *(() if "--workers" in args else ("--workers", "0"))])


def test_readme_main_job_demo_photo(tmp_path, fake_model):
    """The README's main job, `anzoo predict --demo astronaut --out predictions`, minus the download."""
    out = tmp_path / "predictions"
    result = _run("--demo", "astronaut", "--out", str(out), "--score-thr", "0.0")
    assert result.exit_code == 0, result.output
    assert fake_model["model_id"] == "aognet40m-an-gn" and fake_model["weights"] is None
    records = json.loads((out / "astronaut.json").read_text())
    assert records and all(r["segmentation"]["size"] == [512, 512] for r in records)
    assert Image.open(out / "astronaut.png").size == (512, 512)


def test_predict_writes_json_and_png(tmp_path, fake_model):
    img = _photo(tmp_path / "street.jpg")
    out = tmp_path / "out"
    result = _run(str(img), "--out", str(out), "--score-thr", "0.05")
    assert result.exit_code == 0, result.output
    assert fake_model["model_id"] == "aognet40m-an-gn"  # the default model
    records = json.loads((out / "street.json").read_text())
    assert records and "street.jpg: " in result.stdout and f"{len(records)} instance(s)" in result.stdout
    for rec in records:
        assert set(rec) == {"category_id", "category_name", "score", "bbox", "segmentation"}
        assert rec["score"] >= 0.05 and len(rec["bbox"]) == 4
        assert rec["segmentation"]["size"] == [120, 160] and isinstance(rec["segmentation"]["counts"], str)
    png = np.asarray(Image.open(out / "street.png").convert("RGB"))
    assert png.shape == (120, 160, 3)
    # the top instance's mask is painted with the first palette colour (blended at 50 %)
    mask = decode_mask_rle(records[0]["segmentation"]).astype(bool)
    others = np.zeros_like(mask)
    for rec in records[1:]:
        others |= decode_mask_rle(rec["segmentation"]).astype(bool)
    only_top = mask & ~others
    assert only_top.sum() > 100  # the fixture's top mask shows: its whole box, not covered by the others
    source = np.asarray(Image.open(img).convert("RGB")).astype(float)
    expected = source[only_top] * 0.5 + np.asarray(instance_colour(0), float) * 0.5
    assert np.median(np.abs(png[only_top].astype(float) - expected)) <= 2


@pytest.mark.slow
def test_folder_bad_files_and_exit_code(tmp_path, fake_model):
    folder = tmp_path / "in"
    folder.mkdir()
    _photo(folder / "a.png", seed=1)
    _photo(folder / "b.webp", seed=2)
    _photo(folder / "gray.tiff", seed=3, mode="L")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not listed: not an image extension")
    (tmp_path / "fake.png").write_text("hello")
    out = tmp_path / "out"
    result = _run(str(folder), str(tmp_path / "fake.png"), str(tmp_path / "missing.jpg"), "--out", str(out))
    assert result.exit_code == 1
    # outputs keep the inputs' folders, relative to the folder they share (tmp_path)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == [
        "in/a.json", "in/b.json", "in/gray.json"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "in/a.png", "in/b.png", "in/gray.png"]
    err = result.stderr
    assert "empty.jpg" in err and "fake.png" in err and "missing.jpg" in err
    assert "Traceback" not in result.output
    # failed.txt: each failure as a '# reason' line and its path, readable as @failed.txt
    failed = (out / "failed.txt").read_text().splitlines()
    assert [line for line in failed if not line.startswith("#")] == [
        str(tmp_path / "missing.jpg"), str(folder / "empty.jpg"), str(tmp_path / "fake.png")]
    assert "3 image(s)" in result.stdout and "2 failed" not in result.stdout and "3 failed" in result.stdout


def test_same_stem_does_not_overwrite(tmp_path, fake_model):
    _photo(tmp_path / "x.png", seed=1)
    _photo(tmp_path / "x.jpg", seed=2)
    result = _run(str(tmp_path / "x.png"), str(tmp_path / "x.jpg"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["x.jpg.json", "x.png.json"]


def test_no_input_and_unknown_model(tmp_path):
    result = runner.invoke(cli.app, ["predict"])
    assert result.exit_code == 1 and "no images given" in result.stderr
    img = _photo(tmp_path / "a.png")
    result = runner.invoke(cli.app, ["predict", str(img), "--model", "r50-xx"])
    assert result.exit_code == 2 and "unknown model" in result.stderr


def test_offline_without_cached_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANZOO_OFFLINE", "1")
    img = _photo(tmp_path / "a.png")
    result = runner.invoke(cli.app, ["predict", str(img), "--model", "r50-bn"])
    assert result.exit_code != 0 and "ANZOO_OFFLINE" in result.stderr and "Traceback" not in result.output


@pytest.mark.slow
def test_real_weights_file_end_to_end(tmp_path, model):
    weights = save_model(model, tmp_path / "r50.pth")
    img = _photo(tmp_path / "a.png")
    result = _run(str(img), "--model", "r50-bn", "--weights", str(weights), "--device", "cpu",
                  "--out", str(tmp_path / "out"), "--score-thr", "0.05")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "a.json").read_text())
    result = _run(str(img), "--model", "r50-an", "--weights", str(weights), "--out", str(tmp_path / "o2"))
    assert result.exit_code == 1 and "does not fit" in result.stderr
    result = _run(str(img), "--weights", str(tmp_path / "nope.pth"))
    assert result.exit_code == 1 and "weights file not found" in result.stderr


def _odd_detections(self, tensors, metas, with_masks=True):
    """Detections at the image border and beyond: sub-pixel, zero and negative extent, outside."""
    out = []
    for meta in metas:
        h, w = meta.orig_size
        boxes = torch.tensor([[w - 0.8, 10.0, w - 0.6, 16.8], [30.0, 30.0, 30.0, 30.0], [40.0, 40.0, 20.0, 20.0],
                              [-6.0, -6.0, 3.0, 4.0], [w + 10.0, 5.0, w + 30.0, 15.0]])
        n = len(boxes)
        probs = torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(0))
        out.append(Detections((h, w), boxes, torch.linspace(0.9, 0.5, n), torch.zeros(n, dtype=torch.int64),
                              probs, boxes.clone()))
    return out


def test_predict_draws_boxes_thinner_than_a_pixel(tmp_path, fake_model, monkeypatch):
    monkeypatch.setattr(Predictor, "detect_batch", _odd_detections)
    img = _photo(tmp_path / "edge.png")
    result = _run(str(img), "--out", str(tmp_path / "out"), "--score-thr", "0")
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "out" / "edge.json").read_text())
    assert len(records) == 5 and all(r["segmentation"]["size"] == [120, 160] for r in records)
    png = np.asarray(Image.open(tmp_path / "out" / "edge.png").convert("RGB"))
    assert (png[10, 159] == instance_colour(0)).all()  # the sub-pixel box at the right border, as a line


@pytest.mark.slow
def test_predict_never_pastes_full_size_masks(tmp_path, fake_model, monkeypatch):
    """`anzoo predict` pastes, encodes and draws one mask window at a time; its JSON equals the
    Python API's records of full masks."""
    import anzoo.inference

    img = _photo(tmp_path / "a.png")
    predictor = Predictor(fake_model["model"], scale=SMALL_SCALE)
    expected = predictor.records(predictor.predict_instances(str(img), score_thr=0.05)[0], score_thr=0.05)

    def full_paste(*args, **kwargs):
        raise AssertionError("masks pasted at full image size")

    monkeypatch.setattr(anzoo.inference, "paste_masks_legacy", full_paste)
    monkeypatch.setattr(anzoo.inference, "paste_masks_fast", full_paste)
    result = _run(str(img), "--out", str(tmp_path / "out"), "--score-thr", "0.05")
    assert result.exit_code == 0, result.output
    assert expected and json.loads((tmp_path / "out" / "a.json").read_text()) == expected
    assert predictor.predict_records(str(img), score_thr=0.05) == [expected]


def test_only_promised_formats_are_read(tmp_path, fake_model):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "anim.gif")
    eps = tmp_path / "drawing.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    result = _run(str(folder), str(eps), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert (tmp_path / "out" / "in" / "anim.json").exists()
    assert "drawing.eps: EPS images are not supported (accepted formats: JPEG, PNG, WebP, BMP, TIFF, GIF)" \
        in " ".join(result.stderr.split())


def test_max_pixels_refuses_larger_images_from_their_header(tmp_path, fake_model):
    small, large = _photo(tmp_path / "small.png", 8, 10), _photo(tmp_path / "large.png", 20, 30)
    result = _run(str(small), str(large), "--max-pixels", "100", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "large.png: image is 30x20 = 600 pixels, over the limit of 100 pixels" in result.stderr
    assert (tmp_path / "out" / "small.json").exists() and not (tmp_path / "out" / "large.json").exists()

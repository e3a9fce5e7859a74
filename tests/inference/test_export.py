"""`anzoo export`: the ONNX file gives PyTorch's detections in ONNX Runtime, verifies itself,
leaves nothing behind when it does not, and runs behind the Predictor (`predict --weights X.onnx`).

Checkpoints in the released layout (the parity weights), the RPN cut to 100 proposals and a
320x224 scale to keep the tests in seconds; the graph is traced once per module.
"""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("skimage")

import anzoo.export as export  # noqa: E402
from anzoo import create_model  # noqa: E402
from anzoo.cli import app  # noqa: E402
from anzoo.cli import base as cli_base  # noqa: E402
from anzoo.data.demo import demo_image  # noqa: E402
from anzoo.errors import AnzooError  # noqa: E402
from anzoo.hub import sha256_file  # noqa: E402
from anzoo.inference import Predictor  # noqa: E402
from anzoo.models.detection.config import RCNNTestConfig, RPNProposalConfig  # noqa: E402
from anzoo.models.detection.postprocess import multiclass_nms  # noqa: E402
from anzoo.models.detection.roi_align import LegacyMultiScaleRoIAlign, to_inclusive_end  # noqa: E402
from anzoo.models.detection.rpn import LegacyRPN  # noqa: E402
from anzoo.models.detection.traced import class_nms, traced_proposals  # noqa: E402
from helpers.parity_weights import save_parity_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SCALE = (320, 224)
#: ONNX Runtime against PyTorch on the parity weights (AVX2, 1 and 2 threads; boxes 6.1e-5 px,
#: scores 3.9e-7, mask IoU 1.0 measured): far inside the issue's limits, which are asserted.
LIMITS = export.TOLERANCES


def _parity_model(model_id: str, folder: Path, proposals: int = 100):
    ckpt = save_parity_checkpoint(model_id, folder / f"{model_id}.pth")
    model = create_model(model_id, pretrained=ckpt)
    config = model.config
    model.config = replace(config, rpn_test=replace(config.rpn_test, nms_pre=4 * proposals, nms_post=proposals,
                                                    max_num=proposals))
    return model, ckpt


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """The parity r50-bn, its traced graph and a written (unverified) file."""
    folder = tmp_path_factory.mktemp("r50")
    model, ckpt = _parity_model("r50-bn", folder)
    graph = export.trace_onnx(model, SCALE)
    path = folder / "r50-bn.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "trace_onnx", lambda *a, **k: graph)
        assert export.export_onnx(model, path, scale=SCALE, verify=False) == []
    return {"model": model, "ckpt": ckpt, "graph": graph, "path": path}


def _reuse_graph(monkeypatch, r50):
    monkeypatch.setattr(export, "trace_onnx", lambda *a, **k: r50["graph"])


@pytest.mark.slow
def test_export_verifies_on_two_photos(r50, tmp_path, monkeypatch):
    _reuse_graph(monkeypatch, r50)
    out = tmp_path / "m.onnx"
    checks = export.export_onnx(r50["model"], out, scale=SCALE, checkpoint_sha256="ab" * 32)
    assert [c.image for c in checks] == ["astronaut", "coffee"]  # 512x512 and 400x600: two padded sizes
    for c in checks:
        assert c.ok, c.problems
        assert c.detections == c.onnx_detections > 10 and c.ties <= 2  # measured 1 and 0
        assert c.max_box_px <= LIMITS["box_px"] and c.max_score <= LIMITS["score"]
        assert c.min_mask_iou >= LIMITS["mask_iou"]
    meta = export.read_metadata(out)
    assert meta["model_id"] == "r50-bn" and meta["test_scale"] == list(SCALE)
    assert len(meta["classes"]) == 80 and meta["classes"][0] == "person"
    assert meta["category_ids"][:3] == [1, 2, 3] and meta["category_ids"][-1] == 90
    assert meta["checkpoint_sha256"] == "ab" * 32 and meta["anzoo_version"]
    assert meta["normalization"]["mean"] == [123.675, 116.28, 103.53]


@pytest.mark.slow
def test_failed_verification_leaves_no_file(r50, tmp_path, monkeypatch):
    _reuse_graph(monkeypatch, r50)
    monkeypatch.setitem(export.TOLERANCES, "box_px", -1.0)  # no difference can pass
    out = tmp_path / "m.onnx"
    with pytest.raises(export.ExportError, match="boxes differ.*m.onnx was not written"):
        export.export_onnx(r50["model"], out, scale=SCALE, images={"gray": np.full((64, 96, 3), 128, np.uint8)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_image_without_detections(r50):
    gray = np.full((180, 260, 3), 128, dtype=np.uint8)
    expected = Predictor(r50["model"], scale=SCALE).detect(gray)[0]
    got = Predictor(export.OnnxDetector(r50["path"]), scale=SCALE).detect(gray)[0]
    assert len(expected) == len(got) == 0
    assert tuple(got.boxes.shape) == (0, 4) and tuple(got.mask_probs.shape) == (0, 28, 28)


@pytest.mark.slow
@pytest.mark.parametrize("option", [{"precision": "bf16"}, {"channels_last": True}, {"device": "cuda"}])
def test_an_exported_model_refuses_options_it_cannot_honour(r50, option):
    with pytest.raises(AnzooError, match="an exported model runs on onnxruntime on the CPU"):
        Predictor(export.OnnxDetector(r50["path"]), scale=SCALE, **option)


@pytest.mark.slow
def test_portrait_and_batched_images_match(r50):
    """A third size (portrait) and a batch of two same-size images: one graph call each."""
    rng = np.random.default_rng(3)
    photo = demo_image("astronaut")
    images = [photo[:, 100:400], photo[::-1, 100:400].copy(), rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)]
    torch_dets = Predictor(r50["model"], scale=SCALE, batch_size=2).detect(images)
    onnx_predictor = Predictor(export.OnnxDetector(r50["path"]), scale=SCALE, batch_size=2)
    for i, (a, b) in enumerate(zip(torch_dets, onnx_predictor.detect(images))):
        check = export.compare_detections(str(i), a, b, onnx_predictor)
        assert check.ok, check.problems


@pytest.mark.slow
def test_openvino_runs_the_same_file(r50):
    pytest.importorskip("openvino")
    photo = demo_image("coffee")
    torch_predictor = Predictor(r50["model"], scale=SCALE)
    expected = torch_predictor.detect(photo)[0]
    got = Predictor(export.OnnxDetector(r50["path"], backend="openvino"), scale=SCALE).detect(photo)[0]
    check = export.compare_detections("coffee", expected, got, torch_predictor)
    assert check.ok and len(expected) > 10, check.problems  # measured: boxes 2.3e-3 px, scores 1.8e-5


@pytest.mark.slow
def test_the_service_answers_from_an_exported_file(r50):
    import time

    from fastapi.testclient import TestClient

    from anzoo.server.app import create_app

    photo = io.BytesIO()
    Image.fromarray(demo_image("coffee")).save(photo, format="PNG")
    with TestClient(create_app({"r50-bn": export.OnnxDetector(r50["path"])}, scale=SCALE)) as client:
        for _ in range(300):  # the warm-up runs the file once
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.5)
        response = client.post("/segment?score_thr=0.05", files={"image": ("c.png", photo.getvalue(), "image/png")})
    assert response.status_code == 200
    expected = Predictor(r50["model"], scale=SCALE).predict_records(demo_image("coffee"), score_thr=0.05)[0]
    got = response.json()["instances"]
    assert len(got) == len(expected) > 10
    assert sorted(r["category_id"] for r in got) == sorted(r["category_id"] for r in expected)


@pytest.mark.slow
def test_server_replicas_of_an_exported_file_open_their_own_sessions(r50):
    """`serve --weights X.onnx --replicas 2`: an ONNX Runtime session's threads are fixed when it
    is made, so each replica opens the file with its share; an OpenVINO request serves one
    caller, so each replica gets its own request on the one compiled model."""
    from anzoo.server.replicas import build_replicas

    for backend in export.BACKENDS:
        original = Predictor(export.OnnxDetector(r50["path"], backend=backend, threads=2), scale=SCALE)
        replicas = build_replicas({"r50-bn": original}, per_device=2)
        models = [r.predictors["r50-bn"].model for r in replicas]
        assert len(models) == 2 and models[0] is not models[1] and original.model not in models
        share = max(1, torch.get_num_threads() // 2)
        assert [r.threads for r in replicas] == [share] * 2
        assert [m.threads for m in models] == ([share] * 2 if backend == "onnxruntime" else [2, 2])
        assert len({id(m._run) for m in models + [original.model]}) == 3  # a session or request each
        photo = demo_image("coffee")
        expected = original.detect(photo)[0]
        for replica in replicas:
            got = replica.predictors["r50-bn"].detect(photo)[0]
            assert torch.equal(got.labels, expected.labels)
            assert (got.boxes - expected.boxes).abs().max() <= LIMITS["box_px"]


def _predict_json(folder: Path, *args: str) -> list[dict]:
    result = runner.invoke(app, ["predict", *args, "--scale", "320x224", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return json.loads(next(folder.glob("*.json")).read_text())


@pytest.mark.slow
def test_cli_export_then_predict_with_the_file(r50, tmp_path, monkeypatch):
    _reuse_graph(monkeypatch, r50)
    real_load = cli_base.load_model
    monkeypatch.setattr(cli_base, "load_model", lambda model_id, weights, device: (
        real_load(model_id, weights, device) if weights.suffix == ".onnx" else r50["model"]))
    out = tmp_path / "r50.onnx"
    result = runner.invoke(app, ["export", "r50-bn", "--weights", str(r50["ckpt"]), "--out", str(out),
                                 "--scale", "320x224"])
    assert result.exit_code == 0, result.output
    assert "astronaut" in result.output and "coffee" in result.output and "verified" in result.output
    assert export.read_metadata(out)["checkpoint_sha256"] == sha256_file(r50["ckpt"])
    photo = tmp_path / "astronaut.png"
    Image.fromarray(demo_image("astronaut")).save(photo)
    from_torch = _predict_json(tmp_path / "torch", str(photo), "--model", "r50-bn", "--weights", str(r50["ckpt"]))
    from_onnx = _predict_json(tmp_path / "onnx", str(photo), "--model", "r50-bn", "--weights", str(out))
    assert len(from_onnx) == len(from_torch) > 0
    # the same instances, but for a near-tie the two runtimes may break the other way (test above)
    same = [a for a in from_torch if any(
        a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) <= LIMITS["score"]
        and np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= LIMITS["box_px"] for b in from_onnx)]
    assert len(same) >= len(from_torch) - 1
    assert (tmp_path / "onnx" / "astronaut.png").stat().st_size > 0


def test_comparison_counts_swaps_at_the_cut_as_ties_and_others_as_problems():
    """At the max_per_img cut two detections whose scores are a rounding apart may swap, of
    any classes: a near-tie, shown. A detection away from the cut without a counterpart, or a
    box moved too far, is a problem."""
    from anzoo.models.detection.detections import Detections

    class Paste:  # what compare_detections needs of a Predictor
        def paste_masks(self, det):
            return torch.ones(len(det), 8, 8, dtype=torch.bool)

    def dets(rows):  # (label, score, x1)
        boxes = torch.tensor([[x, 10.0, x + 40, 60.0] for _, _, x in rows])
        return Detections((100, 300), boxes, torch.tensor([s for _, s, _ in rows]),
                          torch.tensor([lab for lab, _, _ in rows]), torch.zeros(len(rows), 28, 28), boxes)

    torch_side = dets([(1, 0.9, 0), (2, 0.5, 100), (39, 0.1044867, 200)])
    swapped = dets([(1, 0.9, 0), (2, 0.5, 100), (36, 0.1045150, 250)])
    check = export.compare_detections("cut", torch_side, swapped, Paste())
    assert check.ok and check.ties == 1 and check.max_box_px == 0
    away = dets([(1, 0.9, 0), (7, 0.5, 100), (39, 0.1044867, 200)])  # class 2 -> 7, far above the cut
    check = export.compare_detections("away", torch_side, away, Paste())
    assert not check.ok and check.problems == ["2 detection(s) without a counterpart"]  # one per side
    moved = dets([(1, 0.9, 30), (2, 0.5, 100), (39, 0.1044867, 200)])  # IoU 0.15 with its place
    assert export.compare_detections("moved", torch_side, moved, Paste()).problems


def _tiny_anzoo_file(path: Path, model_id: str = "r50-bn") -> Path:
    """An ONNX file with anzoo's metadata around a one-node graph (for what reads only metadata)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    entry = proto.metadata_props.add()
    entry.key, entry.value = "anzoo", json.dumps({"model_id": model_id, "classes": ["a"], "category_ids": [1]})
    onnx.save(proto, str(path))
    return path


def test_cli_refuses_wrong_suffix_another_model_and_foreign_files(tmp_path):
    result = runner.invoke(app, ["export", "r50-bn", "--weights", str(tmp_path / "none.pth"),
                                 "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 1 and "--out must name an .onnx file" in result.output
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photo)

    def predict(weights: Path) -> str:
        result = runner.invoke(app, ["predict", str(photo), "--model", "r50-an-gn", "--weights", str(weights),
                                     "--out", str(tmp_path / "o")])
        assert result.exit_code == 1 and "Traceback" not in result.output
        return result.output

    assert "exported from r50-bn, not r50-an-gn" in predict(_tiny_anzoo_file(tmp_path / "r50.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert "is not a readable ONNX file" in predict(tmp_path / "junk.onnx")
    foreign = _tiny_anzoo_file(tmp_path / "foreign.onnx")
    import onnx

    proto = onnx.load(str(foreign))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    assert "was not exported by anzoo" in predict(foreign)


def test_create_model_points_an_exported_file_to_its_runtime(tmp_path):
    """create_model loads checkpoints; given a file from `anzoo export` it says what runs one,
    and that works."""
    from anzoo.errors import CheckpointError

    path = _tiny_anzoo_file(tmp_path / "r50.ONNX")
    with pytest.raises(CheckpointError, match=r"ONNX file \(`anzoo export`\).*OnnxDetector"):
        create_model("r50-bn", pretrained=path)
    assert export.OnnxDetector(path).model_id == "r50-bn"


def _run_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str],
              dynamic: bool = True, backend: str = "onnxruntime") -> list[np.ndarray]:
    """``module`` exported, then run by ONNX Runtime or (as ``OnnxDetector`` sets it up) OpenVINO."""
    buffer = io.BytesIO()
    torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=17, input_names=names,
                      dynamic_axes={n: {0: "n"} for n in names[1:]} if dynamic else None)
    feed = {n: t.numpy() for n, t in zip(names, inputs)}
    if backend == "openvino":
        ov = pytest.importorskip("openvino")
        core = ov.Core()
        graph = core.read_model(buffer.getvalue(), b"")
        export._stable_top_k(graph)
        compiled = core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(feed)
        return [np.asarray(result[out]) for out in compiled.outputs]
    import onnxruntime as ort

    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def test_exported_roi_align_keeps_the_legacy_sampling_of_sub_cell_rois():
    """ONNX RoiAlign enlarges RoIs to one feature cell as torchvision does; the graph recomputes
    those RoIs with primitive operators, so they keep mmdetection v1's values."""
    torch.manual_seed(0)
    features = [torch.randn(1, 8, 256 // s, 384 // s) for s in (4, 8, 16, 32)]
    # under 4 px (one cell at stride 4) wide or high: the first two; then RoIs of every level
    boxes = torch.tensor([[40.0, 48.0, 41.5, 120.0], [13.0, 17.0, 30.0, 18.5], [0.0, 0.0, 150.0, 100.0],
                          [20.0, 10.0, 300.0, 250.0], [50.0, 50.0, 52.0, 53.0], [100.0, 30.0, 383.0, 255.0]])
    rois = torch.cat([torch.zeros(6, 1), boxes], dim=1)
    pool = LegacyMultiScaleRoIAlign(7)

    class Pool(torch.nn.Module):
        def forward(self, f0, f1, f2, f3, r):
            return pool([f0, f1, f2, f3], r)

    (got,) = _run_onnx(Pool(), (*features, rois), ["f0", "f1", "f2", "f3", "rois"])
    expected = pool(features, rois).numpy()
    assert np.abs(got - expected).max() < 1e-5  # measured 4.8e-7
    # the RoIs under a cell (the first two, level 0) are where torchvision's rule would differ
    plain = torch.ops.torchvision.roi_align(features[0], to_inclusive_end(rois[:2]), 0.25, 7, 7, 2, False)
    assert np.abs(plain.numpy() - expected[:2]).max() > 1e-2


class _TiedObjectness(torch.nn.Module):
    """An RPN head whose objectness logits are fixed, drawn from a few values: 25, where
    float32's sigmoid is exactly 1.0 (a confident RPN saturates there), and -2 .. 2, whose
    sigmoids lie millions of float64 ulps from a float32 rounding boundary, so every runtime
    rounds them alike. Scores tie by the hundreds; the deltas still come from the features."""

    def __init__(self, head: torch.nn.Module, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.head = head
        gen = torch.Generator().manual_seed(0)
        values = torch.tensor([25.0, 25.0, 25.0, -2.0, -1.0, 0.0, 1.0, 2.0])
        for level, (h, w) in enumerate(sizes):
            pick = torch.randint(0, len(values), (1, head.cls_logits.out_channels, h, w), generator=gen)
            self.register_buffer(f"logits{level}", values[pick])

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        _, deltas = self.head(features)
        return [getattr(self, f"logits{level}") for level in range(len(features))], deltas


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_proposals_break_ties_as_the_eager_model(backend):
    """A confident RPN saturates the sigmoid, so every per-level top-k, NMS and the final cut
    choose among equal scores. The exported graph keeps the eager model's boxes in its order
    (box_ops' tie rule: the lower index first); with torch.topk's own tie order r101-bn and
    r101-an failed to export, and OpenVINO needs its TopK made stable."""
    torch.manual_seed(0)
    cfg = RPNProposalConfig(nms_pre=200, nms_post=80, max_num=150, nms_thr=0.7)
    rpn = LegacyRPN(in_channels=8, test_cfg=cfg).eval()
    features = [torch.randn(1, 8, 256 // s, 384 // s) for s in (4, 8, 16, 32, 64)]
    rpn.head = _TiedObjectness(rpn.head, [tuple(f.shape[-2:]) for f in features])
    image_shape = torch.tensor([250, 380])

    class Proposals(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rpn = rpn

        def forward(self, f0, f1, f2, f3, f4, shape):
            return traced_proposals(self.rpn, [f0, f1, f2, f3, f4], shape)

    with torch.no_grad():
        (eager,), _ = rpn(features, [(250, 380)])
        (got,) = _run_onnx(Proposals(), (*features, image_shape), ["f0", "f1", "f2", "f3", "f4", "shape"],
                           dynamic=False, backend=backend)
    assert (eager[:, 4] == 1.0).sum() > cfg.max_num / 2  # the cut falls among equal scores
    assert got.shape == eager[:, :4].shape
    np.testing.assert_allclose(got, eager[:, :4].numpy(), atol=1e-3)  # measured 0 (same float ops)


@pytest.mark.parametrize("max_per_img", [6, 100])
def test_exported_class_nms_uses_plus_one_areas_and_the_reference_order(max_per_img):
    """Near-duplicate boxes, and more (6) or fewer (100) survivors than max_per_img: the
    exported per-class NMS keeps and orders as multiclass_nms (class-major, rows ascending;
    by decreasing score after a cut)."""
    cfg = RCNNTestConfig(score_thr=0.05, nms_iou=0.5, max_per_img=max_per_img)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 200, (40, 2))
    boxes = np.concatenate([base, base + rng.uniform(1, 30, (40, 2))], 1)
    boxes[1] = boxes[0] + [2, 0, 2, 0]
    # IoU 70/130 with +1 areas (suppressed at 0.5), 54/108 = 0.5 without (kept)
    boxes[2], boxes[3] = [0, 0, 9, 9], [0, 3, 9, 12]
    # class-specific boxes of 3 classes (+ background), each shifted a little
    boxes = torch.tensor(np.concatenate([boxes + k for k in range(4)], 1), dtype=torch.float32)
    scores = torch.softmax(torch.tensor(rng.normal(0, 2, (40, 4)), dtype=torch.float32), 1)
    scores[2:4] = torch.tensor([[0.1, 0.5, 0.2, 0.2], [0.1, 0.4, 0.3, 0.2]])

    class NMS(torch.nn.Module):
        def forward(self, b, s):
            return class_nms(b, s, cfg)

    got = _run_onnx(NMS(), (boxes, scores), ["boxes", "scores"])
    expected = [t.numpy() for t in multiclass_nms(boxes, scores, cfg.score_thr, cfg.nms_iou, cfg.max_per_img)]
    survivors = len(multiclass_nms(boxes, scores, cfg.score_thr, cfg.nms_iou, None)[0])
    assert 6 < survivors < 100 and len(expected[0]) == min(survivors, max_per_img)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(NMS()(boxes, scores), expected):
        np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["cascade-r101-an", "r50-an-gn", "aognet12m-an", "r101-bn"])
def test_released_rows_export_and_verify(model_id, tmp_path):
    """Cascade, AN (w/ GN) heads, AOGNet, and r101-bn, whose saturated RPN ties hundreds of
    proposal scores (it failed its verification before the tie rule)."""
    model, ckpt = _parity_model(model_id, tmp_path)
    path = tmp_path / f"{model_id}.onnx"
    checks = export.export_onnx(model, path, scale=SCALE, checkpoint_sha256=sha256_file(ckpt))
    for c in checks:
        assert c.ok, c.problems
        assert c.detections > 0 and c.max_box_px <= LIMITS["box_px"]
    assert export.read_metadata(path)["model_id"] == model_id


@pytest.mark.slow
def test_group_norm_mask_head_without_detections(tmp_path):
    """No detections means a mask head over zero RoIs; a GroupNorm there exported as
    Reshape(0, groups, -1), which ONNX Runtime refused (aognet40m-an-gn on a photo without
    detections). The graph gives its mask head a spare RoI."""
    model, _ = _parity_model("r50-an-gn", tmp_path)
    config = model.config
    model.config = replace(config, rcnn_test=replace(config.rcnn_test, score_thr=1.0))  # no score is above 1
    path = tmp_path / "none.onnx"
    export.export_onnx(model, path, scale=SCALE, verify=False)
    got = Predictor(export.OnnxDetector(path), scale=SCALE).detect(demo_image("astronaut"))[0]
    assert len(got) == 0 and tuple(got.mask_probs.shape) == (0, 28, 28)

"""The service's API contract and every bad input, in-process (FastAPI TestClient), plus the
dynamic batcher on its own. A random-weights AN model at a tiny scale stands in for a release."""
from __future__ import annotations

import contextlib
import io
import re
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from anzoo.data.results import decode_mask_rle
from anzoo.inference import Predictor
from anzoo.models.detection.detections import Detections
from anzoo.server.app import ServeSettings, create_app
from anzoo.server.batching import DynamicBatcher, NotRunningError, QueueFullError
from anzoo.server.schemas import SegmentResponse
from anzoo.testing import confident_model
from anzoo.visualize import draw_instances
from helpers.metrics_text import metric

MODEL_ID = "r50-an"
SCALE = (128, 96)


# --------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread", "no_api_key")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    m = confident_model(MODEL_ID, proposals=8, max_per_img=4)  # few masks: fast on a CPU
    return m


@pytest.fixture(scope="module")
def predictor(model: torch.nn.Module) -> Predictor:
    return Predictor(model, scale=SCALE)


@pytest.fixture(scope="module")
def client(model: torch.nn.Module) -> Iterator[TestClient]:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", max_wait_ms=0, max_pixels=10_000_000)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def wait_ready(c: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the app did not become ready")


def noise_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height pixels, with almost no data (a 'bomb')."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


IMAGE = noise_rgb(120, 160)
PNG = png_bytes(IMAGE)


def expected_records(predictor: Predictor, rgb: np.ndarray, score_thr: float = 0.3,
                     mask_format: str = "rle", max_instances: int = 100) -> list[dict]:
    inst = predictor.predict_instances(rgb, score_thr=score_thr)[0]
    records = predictor.records(inst, score_thr=score_thr, mask_format=mask_format,
                                max_instances=max_instances)
    for rec in records:
        rec["mask"] = rec.pop("segmentation")
    return records


def assert_error(response, status: int, kind: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == kind and body["status"] == status, body
    for word in words:
        assert word in body["message"], body["message"]
    return body


# --------------------------------------------------------------------------- the contract
def test_segment_multipart_matches_the_predictor(client: TestClient, predictor: Predictor) -> None:
    response = client.post("/segment", files={"image": ("noise.png", PNG, "image/png")})
    assert response.status_code == 200, response.text
    body = SegmentResponse.model_validate(response.json())
    assert (body.model, body.width, body.height, body.mask_format) == (MODEL_ID, 160, 120, "rle")
    assert len(body.instances) > 0
    assert response.json()["instances"] == expected_records(predictor, IMAGE)
    scores = [inst.score for inst in body.instances]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
    mask = decode_mask_rle(response.json()["instances"][0]["mask"])
    assert mask.shape == (120, 160) and mask.any()
    t = body.timing
    assert t.batch_size == 1 and t.inference_ms > 0 and t.decode_ms > 0
    assert t.total_ms >= t.decode_ms + t.inference_ms


def test_segment_raw_body_with_options(client: TestClient, predictor: Predictor) -> None:
    jpeg = jpeg_bytes(IMAGE)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    response = client.post("/segment?score_thr=0.05&max_instances=2&mask_format=polygon",
                           content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mask_format"] == "polygon" and len(body["instances"]) == 2
    assert body["instances"] == expected_records(predictor, decoded, 0.05, "polygon", 2)
    polygons = body["instances"][0]["mask"]
    assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)


def test_options_as_multipart_fields(client: TestClient) -> None:
    response = client.post("/segment", files={"image": ("a.png", PNG, "image/png")},
                           data={"max_instances": "1", "mask_format": "polygon"})
    assert response.status_code == 200, response.text
    assert len(response.json()["instances"]) == 1 and response.json()["mask_format"] == "polygon"
    both = client.post("/segment?max_instances=2", files={"image": ("a.png", PNG, "image/png")},
                       data={"max_instances": "1"})
    assert_error(both, 400, "bad_option", "max_instances")


def test_render_returns_the_drawn_png(client: TestClient, predictor: Predictor) -> None:
    response = client.post("/segment/render?score_thr=0.3", content=PNG, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(response.content)))
    inst = predictor.predict_instances(IMAGE, score_thr=0.3)[0]
    expected = np.asarray(draw_instances(IMAGE, inst, predictor.class_names(), 0.3))
    assert drawn.shape == (120, 160, 3)
    assert np.array_equal(drawn, expected)
    assert (drawn != IMAGE).any()
    assert int(response.headers["x-instances"]) == len(inst)
    assert "inference;dur=" in response.headers["server-timing"]


def test_models_health_ready(client: TestClient) -> None:
    models = client.get("/models").json()["models"]
    assert [m["id"] for m in models] == [MODEL_ID]
    assert models[0]["default"] and models[0]["scale"] == list(SCALE) and models[0]["num_classes"] == 80
    assert models[0]["precision"] == "fp32" and models[0]["fp16"] is False
    assert models[0]["zoo"]["backbone_norm"] == "an" and models[0]["zoo"]["mask_ap"] > 0
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_web_page_and_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "static/app.js" in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "segment?" in js.text
    assert client.get("/static/style.css").status_code == 200


# --------------------------------------------------------------------------- bad inputs
BAD_INPUTS = [
    # (id, path, kwargs, status, kind, words in the message)
    ("not-an-image", "/segment", {"content": b"hello, this is text", "headers": {"Content-Type": "image/png"}},
     400, "invalid_image", ["not an image"]),
    ("truncated", "/segment", {"content": PNG[: len(PNG) // 2], "headers": {"Content-Type": "image/png"}},
     400, "invalid_image", ["truncated"]),
    ("empty-raw", "/segment", {"content": b"", "headers": {"Content-Type": "image/png"}},
     400, "empty_body", ["empty"]),
    ("empty-file", "/segment", {"files": {"image": ("a.png", b"", "image/png")}},
     400, "empty_body", ["empty"]),
    ("no-image-field", "/segment", {"files": {"picture": ("a.png", PNG, "image/png")}},
     400, "missing_image", ["'image'"]),
    ("image-not-a-file", "/segment", {"data": {"image": "abc"}, "files": {"x": ("x", b"1")}},
     400, "missing_image", ["file upload"]),
    ("no-boundary", "/segment", {"content": PNG, "headers": {"Content-Type": "multipart/form-data"}},
     400, "bad_multipart", ["multipart"]),
    ("two-files", "/segment", {"files": [("image", ("a.png", PNG, "image/png")),
                                         ("image", ("b.png", PNG, "image/png"))]},
     400, "bad_multipart", ["files"]),
    ("wrong-type", "/segment", {"content": PNG, "headers": {"Content-Type": "text/plain"}},
     415, "unsupported_media_type", ["image/*"]),
    ("pixel-bomb", "/segment", {"content": png_header_only(9_000, 9_000),
                                "headers": {"Content-Type": "image/png"}},
     413, "too_many_pixels", ["9000x9000", "over the limit of 10000000 pixels"]),
    ("pillow-bomb", "/segment", {"content": png_header_only(100_000, 100_000),
                                 "headers": {"Content-Type": "image/png"}},
     413, "too_many_pixels", ["too large"]),
    ("too-thin", "/segment", {"content": png_bytes(noise_rgb(1, 600)), "headers": {"Content-Type": "image/png"}},
     400, "invalid_image", ["600x1", "too thin"]),
    ("unknown-model", "/segment?model=nope", {"content": PNG, "headers": {"Content-Type": "image/png"}},
     400, "unknown_model", ["nope", MODEL_ID]),
    ("score-too-high", "/segment?score_thr=1.5", {"content": PNG}, 422, "bad_option", ["score_thr", "1.5"]),
    ("score-not-number", "/segment?score_thr=high", {"content": PNG}, 422, "bad_option", ["score_thr"]),
    ("score-nan", "/segment?score_thr=nan", {"content": PNG}, 422, "bad_option", ["score_thr"]),
    ("max-instances-zero", "/segment?max_instances=0", {"content": PNG}, 422, "bad_option", ["max_instances"]),
    ("max-instances-float", "/segment?max_instances=2.5", {"content": PNG}, 422, "bad_option", ["max_instances"]),
    ("mask-format", "/segment?mask_format=bitmap", {"content": PNG}, 422, "bad_option", ["mask_format"]),
    ("unknown-option", "/segment?scor_thr=0.5", {"content": PNG}, 422, "bad_option", ["unknown option 'scor_thr'"]),
    ("repeated-option", "/segment?score_thr=0.5&score_thr=0.6", {"content": PNG}, 400, "bad_option",
     ["more than once"]),
    ("render-not-an-image", "/segment/render", {"content": b"GIF89a broken", "headers": {"Content-Type": "image/gif"}},
     400, "invalid_image", []),
    ("wrong-method", "/segment", None, 405, "method_not_allowed", []),
    ("no-such-route", "/segmentation", None, 404, "not_found", []),
]


@pytest.mark.parametrize("path,kwargs,status,kind,words", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx(client: TestClient, path: str, kwargs: dict | None, status: int,
                                  kind: str, words: list[str]) -> None:
    if kwargs is None:
        response = client.get(path) if kind == "method_not_allowed" else client.post(path, content=PNG)
    else:
        response = client.post(path, **kwargs)
    assert_error(response, status, kind, *words)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_garbage_never_gives_a_500(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    jpeg = jpeg_bytes(IMAGE)
    bodies = [jpeg[:n] for n in (2, 20, 200, len(jpeg) // 3, len(jpeg) - 10)]
    bodies += [magic + rng.bytes(int(rng.integers(0, 3000)))
               for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF", b"")]
    bodies.append(PNG[:33] + rng.bytes(500) + PNG[-12:])  # valid header, corrupt pixels
    for i, body in enumerate(bodies):
        for content_type in ("image/jpeg", "application/octet-stream"):
            response = client.post("/segment", content=body, headers={"Content-Type": content_type})
            assert 400 <= response.status_code < 500, (i, response.status_code, response.text)
            assert response.json()["error"] in {"invalid_image", "empty_body", "too_many_pixels"}


def test_server_still_serves_after_bad_inputs_and_counts_them(client: TestClient) -> None:
    for _ in range(2):
        client.post("/segment", content=b"garbage", headers={"Content-Type": "image/jpeg"})
    ok = client.post("/segment", content=PNG, headers={"Content-Type": "image/png"})
    assert ok.status_code == 200
    text = client.get("/metrics").text
    assert metric(text, 'anzoo_errors_total{kind="invalid_image"}') >= 2
    assert metric(text, 'anzoo_requests_total{route="/segment",status="200"}') >= 1


def test_body_size_limit(model: torch.nn.Module) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_body_bytes=2000)
    big = png_bytes(noise_rgb(60, 60))
    assert len(big) > 2000
    with TestClient(app) as c:
        wait_ready(c)
        assert_error(c.post("/segment", content=big, headers={"Content-Type": "image/png"}),
                     413, "body_too_large", "2000")
        assert_error(c.post("/segment", files={"image": ("a.png", big, "image/png")}),
                     413, "body_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for start in range(0, len(big), 500):
                yield big[start:start + 500]

        assert_error(c.post("/segment", content=chunks(), headers={"Content-Type": "image/png"}),
                     413, "body_too_large")
        small = png_bytes(noise_rgb(8, 8))
        assert c.post("/segment", content=small, headers={"Content-Type": "image/png"}).status_code == 200


def test_pixel_limit_is_configurable(model: torch.nn.Module) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_pixels=100 * 100)
    with TestClient(app) as c:
        wait_ready(c)
        assert_error(c.post("/segment", content=PNG, headers={"Content-Type": "image/png"}),
                     413, "too_many_pixels", "160x120", "10000")
        assert c.post("/segment", content=png_bytes(noise_rgb(90, 100)),
                      headers={"Content-Type": "image/png"}).status_code == 200


# --------------------------------------------------------------------------- auth and CORS
def test_api_key_guards_segment_only(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANZOO_API_KEY", "s3cret")
    app = create_app({MODEL_ID: model}, scale=SCALE, warmup=False)
    with TestClient(app) as c:
        wait_ready(c)
        for path in ("/segment", "/segment/render"):
            missing = c.post(path, content=PNG, headers={"Content-Type": "image/png"})
            assert_error(missing, 401, "unauthorized", "Bearer")
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = c.post(path, content=PNG, headers={"Content-Type": "image/png", "Authorization": "Bearer nope"})
            assert_error(wrong, 401, "unauthorized", "invalid")
            basic = c.post(path, content=PNG, headers={"Content-Type": "image/png", "Authorization": "Basic s3cret"})
            assert_error(basic, 401, "unauthorized")
        ok = c.post("/segment", content=PNG, headers={"Content-Type": "image/png", "Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
        for path in ("/healthz", "/readyz", "/metrics", "/models", "/"):
            assert c.get(path).status_code == 200, path
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        assert schema["paths"]["/segment"]["post"]["security"] == [{"bearerAuth": []}]


def test_cors_is_off_unless_configured(model: torch.nn.Module) -> None:
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False)) as c:
        assert "access-control-allow-origin" not in c.get("/healthz", headers={"Origin": "http://app.example"}).headers
        assert "access-control-allow-origin" not in c.options("/segment", headers=preflight).headers
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, cors_origins=("http://app.example",))
    with TestClient(app) as c:
        response = c.options("/segment", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://app.example"
        other = c.options("/segment", headers={**preflight, "Origin": "http://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"


# --------------------------------------------------------------------------- readiness, timeout
class GatedPredictor(Predictor):
    """Blocks in detect_batch until ``gate`` is set; raises ``fail`` when given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fail: Exception | None = None

    def detect_batch(self, *args, **kwargs):
        assert self.gate.wait(30), "gate never opened"
        if self.fail is not None:
            raise self.fail
        return super().detect_batch(*args, **kwargs)


def test_not_ready_while_warming_up(model: torch.nn.Module) -> None:
    gated = GatedPredictor(model, scale=SCALE)
    with TestClient(create_app({MODEL_ID: gated}, api_key="")) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["detail"] == "loading"
        busy = c.post("/segment", content=PNG, headers={"Content-Type": "image/png"})
        assert_error(busy, 503, "not_ready", "loading")
        assert int(busy.headers["retry-after"]) >= 1
        assert c.get("/healthz").status_code == 200
        assert "anzoo_ready 0" in c.get("/metrics").text
        gated.gate.set()
        wait_ready(c)
        assert c.post("/segment", content=PNG, headers={"Content-Type": "image/png"}).status_code == 200
        assert "anzoo_ready 1" in c.get("/metrics").text


def test_failed_warmup_is_reported(model: torch.nn.Module) -> None:
    gated = GatedPredictor(model, scale=SCALE)
    gated.fail = RuntimeError("weights are broken")
    gated.gate.set()
    with TestClient(create_app({MODEL_ID: gated}, api_key="")) as c:
        deadline = time.monotonic() + 10
        while "failed" not in (c.get("/readyz").json()["detail"] or "") and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "weights are broken" in ready.json()["detail"]
        assert_error(c.post("/segment", content=PNG, headers={"Content-Type": "image/png"}),
                     503, "not_ready", "weights are broken")


def test_request_timeout_gives_504_and_the_server_recovers(model: torch.nn.Module) -> None:
    gated = GatedPredictor(model, scale=SCALE)
    app = create_app({MODEL_ID: gated}, api_key="", warmup=False, request_timeout_s=1.0, max_wait_ms=0)
    with TestClient(app) as c:
        wait_ready(c)
        slow = c.post("/segment", content=PNG, headers={"Content-Type": "image/png"})
        assert_error(slow, 504, "timeout", "timeout")
        gated.gate.set()
        deadline = time.monotonic() + 30
        while True:  # the timed-out job finishes first; then requests fit in 1 s again
            small = c.post("/segment", content=png_bytes(noise_rgb(8, 8)), headers={"Content-Type": "image/png"})
            if small.status_code == 200 or time.monotonic() > deadline:
                break
        assert small.status_code == 200, small.text
        assert metric(c.get("/metrics").text, 'anzoo_errors_total{kind="timeout"}') >= 1


# --------------------------------------------------------------------------- OpenAPI and metrics
def test_openapi_schema_is_valid(client: TestClient) -> None:
    openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
    schema = client.get("/openapi.json").json()
    openapi_spec_validator.validate(schema)
    post = schema["paths"]["/segment"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"model", "score_thr", "max_instances", "mask_format"}
    assert set(post["requestBody"]["content"]) >= {"multipart/form-data", "image/*"}
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/SegmentResponse")
    for code in ("400", "401", "413", "415", "422", "503"):
        assert post["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "image/png" in schema["paths"]["/segment/render"]["post"]["responses"]["200"]["content"]
    assert "security" not in post  # no API key configured


SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? '
                    r'(-?[0-9.e+]+|\+Inf|-Inf|NaN)$')


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.post("/segment", content=PNG, headers={"Content-Type": "image/png"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    for name, kind in [("anzoo_requests_total", "counter"), ("anzoo_request_duration_seconds", "histogram"),
                       ("anzoo_batch_size", "histogram"), ("anzoo_queue_depth", "gauge"),
                       ("anzoo_errors_total", "counter"), ("anzoo_inference_duration_seconds", "histogram")]:
        assert f"# TYPE {name} {kind}" in text
    count = metric(text, f'anzoo_batch_size_count{{model="{MODEL_ID}",replica="0"}}')
    assert count >= 1 and metric(text, f'anzoo_batch_size_bucket{{le="1.0",model="{MODEL_ID}",replica="0"}}') == count
    assert metric(text, 'anzoo_replica_up{device="cpu",replica="0"}') == 1
    assert "# TYPE process_cpu_seconds_total counter" in text  # prometheus_client's process collector
    assert metric(text, 'anzoo_request_duration_seconds_count{route="/segment"}') >= 1
    assert metric(text, "anzoo_queue_depth") == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        ServeSettings(request_timeout_s=0)


# --------------------------------------------------------------------------- the batcher alone
class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[tuple[object, list[int]]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, replica, key, payloads):
        time.sleep(self.delay)
        with self.lock:
            self.batches.append((key, list(payloads)))
        return [p * 10 for p in payloads]


def started(batcher: DynamicBatcher) -> DynamicBatcher:
    batcher.start()
    assert batcher.ready.wait(5)
    return batcher


def test_batcher_groups_by_key_and_respects_max_batch() -> None:
    gate = threading.Event()
    recorder = Recorder()

    def run(replica, key, payloads):
        gate.wait(5)
        return recorder(replica, key, payloads)

    batcher = started(DynamicBatcher(run, max_batch=3, max_wait_s=0.0, max_queue=100))
    try:
        first = batcher.submit("a", 0)  # occupies the worker while the rest queue up
        time.sleep(0.05)
        jobs = [batcher.submit(key, i) for i, key in enumerate("abab" "aabb" "c", start=1)]
        assert batcher.depth == 9
        gate.set()
        assert [job.future.result(5) for job in [first, *jobs]] == [i * 10 for i in range(10)]
    finally:
        batcher.stop()
    batches = recorder.batches
    assert batches[0] == ("a", [0])
    assert all(len(payloads) <= 3 for _, payloads in batches)
    keys = {p: k for k, ps in batches for p in ps}
    assert keys == {0: "a", 1: "a", 2: "b", 3: "a", 4: "b", 5: "a", 6: "a", 7: "b", 8: "b", 9: "c"}
    # oldest first: after the first job, 'a' (oldest) then 'b' then 'a' again, 'b', 'c'
    assert [k for k, _ in batches] == ["a", "a", "b", "a", "b", "c"]
    assert [ps for _, ps in batches][1:] == [[1, 3, 5], [2, 4, 7], [6], [8], [9]]


def test_batcher_waits_for_batch_mates_up_to_max_wait() -> None:
    recorder = Recorder()
    batcher = started(DynamicBatcher(recorder, max_batch=4, max_wait_s=0.3, max_queue=10))
    try:
        a = batcher.submit("k", 1)
        time.sleep(0.05)
        b = batcher.submit("k", 2)
        assert a.future.result(5) == 10 and b.future.result(5) == 20
        start = time.perf_counter()
        lone = batcher.submit("k", 3)
        assert lone.future.result(5) == 30
        waited = time.perf_counter() - start
    finally:
        batcher.stop()
    assert recorder.batches == [("k", [1, 2]), ("k", [3])]
    assert 0.25 <= waited < 2.0


def test_batcher_queue_bound_cancellation_and_errors() -> None:
    gate = threading.Event()
    calls: list[list[int]] = []

    def run(replica, key, payloads):
        gate.wait(5)
        calls.append(list(payloads))
        if key == "boom":
            raise RuntimeError("kaput")
        return [ValueError("odd") if p % 2 else p for p in payloads]

    batcher = started(DynamicBatcher(run, max_batch=1, max_wait_s=0.0, max_queue=2))
    try:
        running = batcher.submit("k", 0)
        time.sleep(0.05)
        queued = [batcher.submit("k", 1), batcher.submit("boom", 2)]
        with pytest.raises(QueueFullError):
            batcher.submit("k", 3)
        assert queued[0].future.cancel()  # a caller gave up: its slot is freed, its job skipped
        extra = batcher.submit("k", 4)
        gate.set()
        assert running.future.result(5) == 0
        with pytest.raises(RuntimeError, match="kaput"):
            queued[1].future.result(5)
        assert extra.future.result(5) == 4
        odd = batcher.submit("k", 5)
        with pytest.raises(ValueError, match="odd"):
            odd.future.result(5)
    finally:
        batcher.stop()
    assert [1] not in calls and calls == [[0], [2], [4], [5]]
    with pytest.raises(NotRunningError):
        batcher.submit("k", 6)


def test_batcher_startup_failure() -> None:
    def broken_startup(replica: int) -> None:
        raise OSError("no weights")

    batcher = DynamicBatcher(lambda r, k, p: p, startup=broken_startup)
    batcher.start()
    batcher._threads[0].join(5)
    assert isinstance(batcher.startup_error, OSError) and not batcher.ready.is_set()
    with pytest.raises(NotRunningError):
        batcher.submit("k", 1)


# --------------------------------------------------------------------------- the CLI
def test_cli_serve_builds_the_app_and_runs_uvicorn(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from anzoo import cli
    from anzoo.cli import base as cli_base

    calls: dict = {"loaded": []}
    def fake_load(model_id: str, weights, device: str) -> torch.nn.Module:
        calls["loaded"].append((model_id, weights, device))
        return model

    monkeypatch.setattr(cli_base, "load_model", fake_load)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    monkeypatch.setenv("ANZOO_PORT", "8123")
    # the id in another case: served (and listed) as the zoo spells it
    result = CliRunner().invoke(cli.app, ["serve", "--model", MODEL_ID.upper(), "--device", "cpu", "--max-batch", "4",
                                          "--max-wait-ms", "5", "--max-queue", "16", "--timeout", "9",
                                          "--max-body-mb", "1.5", "--max-pixels", "1000000",
                                          "--cors-origin", "http://app.example", "--scale", "96x128"])
    assert result.exit_code == 0, result.output
    assert calls["loaded"] == [(MODEL_ID, None, "cpu")]
    assert (calls["host"], calls["port"]) == ("127.0.0.1", 8123)
    service = calls["app"].state.service
    assert service.settings == ServeSettings(max_batch=4, max_wait_ms=5, max_queue=16, request_timeout_s=9,
                                             max_body_bytes=1_500_000, max_pixels=1_000_000, api_key="",
                                             cors_origins=("http://app.example",))
    assert service.predictors[MODEL_ID].scale == (128, 96)

    two = CliRunner().invoke(cli.app, ["serve", "-m", "r50-an", "-m", "r50-bn", "--weights", "w.pth"])
    assert two.exit_code != 0 and "--weights needs exactly one --model" in two.output
    bad = CliRunner().invoke(cli.app, ["serve", "--max-batch", "0"])
    assert bad.exit_code != 0 and "--max-batch" in bad.output


# --------------------------------------------------------------------------- formats, memory per request
def test_unsupported_image_formats_get_415_with_the_accepted_list(client: TestClient) -> None:
    import struct

    ico_header = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, 41, 22)
    ico = ico_header + png_header_only(12_000, 12_000)  # an ICO wrapping a 12000x12000 PNG
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    buf = io.BytesIO()
    Image.fromarray(IMAGE).save(buf, format="DDS")
    for name, data in (("EPS", eps), ("ICO", ico), ("DDS", buf.getvalue())):
        for path in ("/segment", "/segment/render"):
            response = client.post(path, content=data, headers={"Content-Type": "image/x-anything"})
            assert_error(response, 415, "unsupported_image_format", f"{name} images are not supported",
                         "JPEG, PNG, WebP, BMP, TIFF, GIF")
        multipart = client.post("/segment", files={"image": (f"a.{name.lower()}", data, "image/png")})
        assert_error(multipart, 415, "unsupported_image_format", name)
    gif = io.BytesIO()
    Image.fromarray(IMAGE).save(gif, format="GIF")
    assert client.post("/segment", content=gif.getvalue(), headers={"Content-Type": "image/gif"}).status_code == 200


class PasteCounter:
    """Counts the masks pasted (MaskCrops windows) and fails on any full-size (N, H, W) paste."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import anzoo.inference
        from anzoo.models.detection import postprocess

        self.windows = 0
        original = postprocess.MaskCrops.__getitem__

        def counted(crops, index):
            self.windows += 1
            return original(crops, index)

        def full_paste(*args, **kwargs):
            raise AssertionError("masks pasted at full image size for the service")

        monkeypatch.setattr(postprocess.MaskCrops, "__getitem__", counted)
        monkeypatch.setattr(anzoo.inference, "paste_masks_legacy", full_paste)
        monkeypatch.setattr(anzoo.inference, "paste_masks_fast", full_paste)


def test_instances_are_chosen_before_any_mask_is_pasted(client: TestClient, predictor: Predictor,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """score_thr=0&max_instances=1 used to paste every detection's mask at full size; now one
    window is pasted, and never an (N, H, W) array (the answers are those of the Python API)."""
    detected = len(predictor.detect(IMAGE)[0])
    expected = expected_records(predictor, IMAGE, score_thr=0.0, max_instances=1)
    expected_polygons = expected_records(predictor, IMAGE, 0.0, "polygon")
    counter = PasteCounter(monkeypatch)
    response = client.post("/segment?score_thr=0&max_instances=1", content=PNG,
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.json()["instances"] == expected and response.json()["truncated"] is False
    assert detected >= 3 and counter.windows == 1
    render = client.post("/segment/render?score_thr=0&max_instances=2", content=PNG,
                         headers={"Content-Type": "image/png"})
    assert render.status_code == 200 and render.headers["x-instances"] == "2" and counter.windows == 3
    polygons = client.post("/segment?score_thr=0&mask_format=polygon", content=PNG,
                           headers={"Content-Type": "image/png"})
    assert polygons.json()["instances"] == expected_polygons and counter.windows == 3 + detected


def test_pasted_area_per_request_is_capped(model: torch.nn.Module, predictor: Predictor) -> None:
    ranked, _ = predictor.rank(predictor.detect(IMAGE)[0], 0.0)
    areas = predictor.mask_crops(ranked).areas
    cap = areas[0] + areas[1] - 1  # room for the best instance's window, not for the second's
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_mask_pixels=cap)
    with TestClient(app) as c:
        wait_ready(c)
        body = c.post("/segment?score_thr=0", content=PNG, headers={"Content-Type": "image/png"}).json()
        render = c.post("/segment/render?score_thr=0", content=PNG, headers={"Content-Type": "image/png"})
    assert body["truncated"] is True
    assert body["instances"] == expected_records(predictor, IMAGE, score_thr=0.0, max_instances=1)
    assert render.headers["x-instances"] == "1"


class OddBoxPredictor(Predictor):
    """Detections at the image border and beyond: sub-pixel, zero, negative extent, outside."""

    def detect_batch(self, tensors, metas, with_masks: bool = True):
        out = []
        for meta in metas:
            h, w = meta.orig_size
            boxes = torch.tensor([[w - 0.8, 10.0, w - 0.6, 16.8], [30.0, 30.0, 30.0, 30.0],
                                  [40.0, 40.0, 20.0, 20.0], [-6.0, -6.0, 3.0, 4.0],
                                  [w + 10.0, 5.0, w + 30.0, 15.0], [5.0, 50.0, 60.0, 50.4]])
            n = len(boxes)
            probs = torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(0))
            out.append(Detections((h, w), boxes, torch.linspace(0.9, 0.4, n), torch.zeros(n, dtype=torch.int64),
                                  probs, boxes.clone()))
        return out


def test_boxes_thinner_than_a_pixel_or_outside_are_drawn_and_encoded(model: torch.nn.Module) -> None:
    odd = OddBoxPredictor(model, scale=SCALE)
    with TestClient(create_app({MODEL_ID: odd}, api_key="", warmup=False)) as c:
        wait_ready(c)
        render = c.post("/segment/render?score_thr=0", content=PNG, headers={"Content-Type": "image/png"})
        assert render.status_code == 200, render.text
        assert render.headers["x-instances"] == "6"
        assert Image.open(io.BytesIO(render.content)).size == (160, 120)
        body = c.post("/segment?score_thr=0", content=PNG, headers={"Content-Type": "image/png"}).json()
    assert len(body["instances"]) == 6
    for inst in body["instances"]:
        assert decode_mask_rle(inst["mask"]).shape == (120, 160)
    assert not decode_mask_rle(body["instances"][4]["mask"]).any()  # the box outside the image


def test_default_limits() -> None:
    from anzoo.data.images import DEFAULT_MAX_PIXELS

    settings = ServeSettings()
    assert DEFAULT_MAX_PIXELS == settings.max_pixels == 50_000_000
    assert settings.read_timeout_s == 10.0 and settings.read_min_rate == 50_000
    with pytest.raises(ValueError, match="read_timeout_s"):
        ServeSettings(read_timeout_s=0)


def test_cli_serve_defaults_are_the_settings_defaults(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from anzoo import cli
    from anzoo.cli import base as cli_base

    calls: dict = {}
    monkeypatch.setattr(cli_base, "load_model", lambda model_id, weights, device: model)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    with socket_on_free_port() as (_, port):
        pass  # a port that was free a moment ago
    result = CliRunner().invoke(cli.app, ["serve", "--model", MODEL_ID, "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert calls["app"].state.service.settings == ServeSettings(api_key="")
    result = CliRunner().invoke(cli.app, ["serve", "--model", MODEL_ID, "--port", str(port), "--read-timeout", "3",
                                          "--read-min-rate", "20", "--max-buffered-mb", "64",
                                          "--decode-memory-mb", "500", "--max-mask-mpx", "50"])
    assert result.exit_code == 0, result.output
    assert calls["app"].state.service.settings == ServeSettings(
        api_key="", read_timeout_s=3, read_min_rate=20_000, max_buffered_bytes=64_000_000,
        decode_memory_bytes=500_000_000, max_mask_pixels=50_000_000)


@contextlib.contextmanager
def socket_on_free_port() -> Iterator[tuple[socket.socket, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def test_cli_serve_on_a_busy_port_fails_before_loading_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from anzoo import cli
    from anzoo.cli import base as cli_base

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the port is busy")

    monkeypatch.setattr(cli_base, "load_model", must_not_load)
    monkeypatch.setattr(uvicorn, "run", must_not_load)
    with socket_on_free_port() as (held, port):
        held.listen(1)
        result = CliRunner().invoke(cli.app, ["serve", "--model", MODEL_ID, "--port", str(port)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: port {port} on 127.0.0.1 is in use (is another server running there?); "
                     "choose another with --port"], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("options,precision", [({"precision": "bf16"}, "bf16"), ({"fp16": True}, "bf16")])
def test_precision_reaches_the_predictors(model: torch.nn.Module, options: dict, precision: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, device="cpu", **options)
    assert [str(w.message) for w in caught if w.category is FutureWarning] == (
        ["`fp16` is deprecated: use `precision='fp16'` (CUDA) or `precision='bf16'`"] if "fp16" in options else [])
    assert app.state.service.predictors[MODEL_ID].precision == precision
    with TestClient(app) as c:
        assert c.get("/models").json()["models"][0]["precision"] == precision

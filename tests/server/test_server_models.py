"""The service with several models, and its two ways out of trouble: a batch that runs out of
GPU memory is rerun one image at a time, and requests still waiting when the model worker
stops get ``503 shutting_down``. Real uvicorn on 127.0.0.1 (``BackgroundServer``)."""
from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from anzoo.inference import Predictor
from anzoo.server.app import create_app
from anzoo.server.runner import BackgroundServer
from anzoo.testing import confident_model

from helpers.pictures import noise_png

SCALE = (96, 64)
PNG_HEADERS = {"Content-Type": "image/png"}
#: two models of different architectures that favour different classes: person and car
PERSON_MODEL, CAR_MODEL = "r50-bn", "r50-an"


pytestmark = pytest.mark.usefixtures("one_thread", "no_api_key")


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    # few masks (max_per_img=3): fast on a CPU
    return {PERSON_MODEL: confident_model(PERSON_MODEL, proposals=8, classes=(0,), seed=0, max_per_img=3),
            CAR_MODEL: confident_model(CAR_MODEL, proposals=8, classes=(2,), seed=1, max_per_img=3)}



IMAGE = noise_png(60, 80, seed=0)


def post_all(url: str, requests: Sequence[tuple[str, bytes]]) -> list[httpx.Response]:
    """POST every (path?query, body) at once."""
    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(trust_env=False, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(client.post(f"{url}{path}", content=body, headers=PNG_HEADERS)
                                          for path, body in requests))

    return asyncio.run(main())


class RecordingRunner:
    """Wraps the batcher's ``run_batch``: records each batch's key and payloads."""

    def __init__(self, run_batch: Callable[[int, Any, Sequence[Any]], Sequence[Any]]) -> None:
        self.run_batch = run_batch
        self.batches: list[tuple[Any, list[Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, replica: int, key: Any, payloads: Sequence[Any]) -> Sequence[Any]:
        with self.lock:
            self.batches.append((key, list(payloads)))
        return self.run_batch(replica, key, payloads)


# --------------------------------------------------------------------------- several models
@pytest.mark.slow
def test_each_model_answers_its_own_requests_and_batches_never_mix(models: dict[str, torch.nn.Module]) -> None:
    app = create_app(models, scale=SCALE, api_key="", max_batch=8, max_wait_ms=300, max_queue=32)
    service = app.state.service
    recorder = RecordingRunner(service.batcher.run_batch)
    service.batcher.run_batch = recorder
    # each model's requests carry their own score_thr, so a batch's payloads tell whose they are
    threshold = {PERSON_MODEL: 0.301, CAR_MODEL: 0.302}
    with BackgroundServer(app) as server, httpx.Client(trust_env=False, timeout=60) as client:
        listed = client.get(f"{server.url}/models").json()["models"]
        assert [(m["id"], m["default"]) for m in listed] == [(PERSON_MODEL, True), (CAR_MODEL, False)]
        assert [m["zoo"]["backbone_norm"] for m in listed] == ["bn", "an"]
        alone = {}
        for model_id in models:
            response = client.post(f"{server.url}/segment?model={model_id}&score_thr={threshold[model_id]}",
                                   content=IMAGE, headers=PNG_HEADERS)
            assert response.status_code == 200, response.text
            alone[model_id] = response.json()
        default = client.post(f"{server.url}/segment?score_thr={threshold[PERSON_MODEL]}", content=IMAGE,
                              headers=PNG_HEADERS).json()
        recorder.batches.clear()
        mixed = [(f"/segment?model={model_id}&score_thr={threshold[model_id]}", IMAGE)
                 for _ in range(4) for model_id in models]
        responses = post_all(server.url, mixed)

    # ?model= reaches the right model: its answer is that model's, and the two differ
    for model_id, body in alone.items():
        assert body["model"] == model_id and body["instances"]
        predictor = Predictor(models[model_id], scale=SCALE)
        rgb = np.asarray(Image.open(io.BytesIO(IMAGE)).convert("RGB"))
        expected = predictor.records(predictor.predict_instances(rgb)[0], score_thr=threshold[model_id])
        for record in expected:
            record["mask"] = record.pop("segmentation")
        assert body["instances"] == expected
    assert {i["category_name"] for i in alone[PERSON_MODEL]["instances"]} == {"person"}
    assert {i["category_name"] for i in alone[CAR_MODEL]["instances"]} == {"car"}
    assert default["model"] == PERSON_MODEL and default["instances"] == alone[PERSON_MODEL]["instances"]

    # concurrent requests for both: every answer is its model's, every batch holds one model's images
    assert [r.status_code for r in responses] == [200] * len(mixed)
    for (path, _), response in zip(mixed, responses):
        model_id = path.split("model=")[1].split("&")[0]
        assert response.json()["model"] == model_id
        assert response.json()["instances"] == alone[model_id]["instances"], path
    owner = {v: k for k, v in threshold.items()}
    for key, payloads in recorder.batches:
        assert {owner[p.score_thr] for p in payloads} == {key[0]}, (key, [p.score_thr for p in payloads])
    assert max(len(p) for _, p in recorder.batches) > 1  # requests were batched
    assert {key[0] for key, _ in recorder.batches} == set(models)


# --------------------------------------------------------------------------- out of GPU memory
class OutOfMemoryOnBatches(Predictor):
    """Raises CUDA's out-of-memory error for any batch of more than one image (on any device)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, str]] = []

    def detect_batch(self, tensors: Any, metas: Sequence[Any], with_masks: bool = True) -> Any:
        if len(metas) > 1:
            self.calls.append((len(metas), "out of memory"))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        self.calls.append((1, "ok"))
        return super().detect_batch(tensors, metas, with_masks)


@pytest.mark.slow
def test_a_batch_out_of_memory_is_rerun_one_image_at_a_time(models: dict[str, torch.nn.Module]) -> None:
    predictor = OutOfMemoryOnBatches(models[PERSON_MODEL], scale=SCALE)
    app = create_app({PERSON_MODEL: predictor}, api_key="", max_batch=4, max_wait_ms=500, warmup=False)
    with BackgroundServer(app) as server:
        alone = httpx.post(f"{server.url}/segment", content=IMAGE, headers=PNG_HEADERS, trust_env=False,
                           timeout=60)
        assert alone.status_code == 200 and alone.json()["instances"]
        predictor.calls.clear()
        responses = post_all(server.url, [("/segment", IMAGE)] * 3)
    assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
    for response in responses:
        assert response.json()["instances"] == alone.json()["instances"]
        assert response.json()["timing"]["batch_size"] == 1  # each image ran alone in the end
    failed = [n for n, outcome in predictor.calls if outcome == "out of memory"]
    assert failed and sum(failed) == 3  # the 3 images met in batches that ran out of memory...
    assert [c for c in predictor.calls if c[1] == "ok"] == [(1, "ok")] * 3  # ...and each then ran alone


# --------------------------------------------------------------------------- shutting down
class GatedPredictor(Predictor):
    """Blocks in detect_batch until ``gate`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def detect_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(30), "gate never opened"
        return super().detect_batch(*args, **kwargs)


def test_requests_waiting_when_the_worker_stops_get_503_shutting_down(models: dict[str, torch.nn.Module]) -> None:
    gated = GatedPredictor(models[PERSON_MODEL], scale=SCALE)
    app = create_app({PERSON_MODEL: gated}, api_key="", max_batch=1, max_wait_ms=0, warmup=False)
    batcher = app.state.service.batcher
    with BackgroundServer(app) as server:
        async def main() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
                running = asyncio.create_task(client.post(f"{server.url}/segment", content=IMAGE,
                                                          headers=PNG_HEADERS))
                assert await asyncio.to_thread(gated.entered.wait, 30)  # the first image is in the model
                waiting = asyncio.create_task(client.post(f"{server.url}/segment", content=IMAGE,
                                                          headers=PNG_HEADERS))
                deadline = time.monotonic() + 30
                while batcher.depth < 1 and time.monotonic() < deadline:  # the second one is queued
                    await asyncio.sleep(0.01)
                assert batcher.depth == 1
                stopping = asyncio.create_task(asyncio.to_thread(batcher.stop, 30))
                refused = await waiting
                gated.gate.set()
                done = await running
                await stopping
                return done, refused

        done, refused = asyncio.run(main())
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "shutting_down"
    assert done.status_code == 200  # the batch in progress still finishes

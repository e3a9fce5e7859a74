"""The service under a real uvicorn on 127.0.0.1: concurrent requests are batched (only images
of the same padded shape together) and each result equals the image sent alone; a flood past
the queue bound gets 503s and the server keeps answering."""
from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from anzoo.data.transforms import padded_shape, rescale_size
from anzoo.server.app import create_app
from anzoo.server.runner import BackgroundServer
from anzoo.testing import confident_model

MODEL_ID = "r50-an"
SCALE = (96, 64)
PNG_HEADERS = {"Content-Type": "image/png"}


pytestmark = pytest.mark.usefixtures("one_thread", "no_api_key")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    m = confident_model(MODEL_ID, proposals=8)
    m.roi_heads.test_cfg.max_per_img = 2  # the mask head costs ~0.5 GMAC per instance
    return m


def png(height: int, width: int, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def padded(height: int, width: int) -> tuple[int, int]:
    new_w, new_h, _ = rescale_size(width, height, SCALE)
    return padded_shape(new_h, new_w)


# (height, width): the first two share a padded shape with different resized shapes, the third
# (portrait) pads differently, the fourth repeats the first size with other pixels.
SIZES = [(120, 160), (100, 150), (160, 120), (120, 160)]


def post_all(url: str, bodies: list[bytes], extra: list[str] = ()) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies) + len(extra))
        async with httpx.AsyncClient(trust_env=False, timeout=120, limits=limits) as client:
            posts = [client.post(f"{url}/segment", content=b, headers=PNG_HEADERS) for b in bodies]
            gets = [client.get(f"{url}{path}") for path in extra]
            return await asyncio.gather(*posts, *gets)

    return asyncio.run(main())


def test_64_concurrent_requests_each_equal_to_alone(model: torch.nn.Module) -> None:
    assert padded(*SIZES[0]) == padded(*SIZES[1]) != padded(*SIZES[2])
    images = [png(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", max_batch=8, max_wait_ms=50, max_queue=64)
    with BackgroundServer(app) as server:
        with httpx.Client(trust_env=False, timeout=60) as client:
            alone = [client.post(f"{server.url}/segment", content=img, headers=PNG_HEADERS) for img in images]
        assert [r.status_code for r in alone] == [200] * 4
        assert all(r.json()["timing"]["batch_size"] == 1 for r in alone)
        assert all(r.json()["instances"] for r in alone)

        responses = post_all(server.url, [images[i % 4] for i in range(64)])
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * 64, [r.text for r in responses if r.status_code != 200][:3]
        for i, response in enumerate(responses):
            body = response.json()
            expected = alone[i % 4].json()
            assert (body["width"], body["height"]) == (expected["width"], expected["height"])
            assert body["instances"] == expected["instances"], f"request {i} differs from its image alone"
        batch_sizes = [r.json()["timing"]["batch_size"] for r in responses]
        assert max(batch_sizes) > 1 and max(batch_sizes) <= 8
        metrics = httpx.get(f"{server.url}/metrics", trust_env=False).text
    count = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("anzoo_batch_size_count"))
    assert count < 64 + 4 + 1  # fewer forward passes than images (+1: warm-up is not counted)


def test_flood_past_the_queue_gets_503_and_the_server_recovers(model: torch.nn.Module) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", max_batch=1, max_wait_ms=0, max_queue=2,
                     warmup=False)
    image = png(60, 80, seed=7)
    with BackgroundServer(app) as server:
        responses = post_all(server.url, [image] * 30, extra=["/healthz", "/metrics"])
        posts, (health, metrics) = responses[:30], responses[30:]
        statuses = sorted(r.status_code for r in posts)
        assert set(statuses) == {200, 503}, statuses
        assert 1 <= statuses.count(200) <= 12 and statuses.count(503) >= 18
        for r in posts:
            if r.status_code == 503:
                assert r.json()["error"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        assert health.status_code == 200 and metrics.status_code == 200
        with httpx.Client(trust_env=False, timeout=60) as client:
            after = client.post(f"{server.url}/segment", content=image, headers=PNG_HEADERS)
            assert after.status_code == 200 and after.json()["instances"]
            assert client.get(f"{server.url}/readyz").status_code == 200
            text = client.get(f"{server.url}/metrics").text
    rejected = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith('anzoo_errors_total{kind="queue_full"}'))
    assert rejected == statuses.count(503)
    assert "anzoo_queue_depth 0" in text


def test_oversized_uploads_get_413_on_a_real_server(model: torch.nn.Module) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_body_bytes=200_000)
    big = np.random.default_rng(0).bytes(1_000_000)
    with BackgroundServer(app) as server, httpx.Client(trust_env=False, timeout=30) as client:
        url = f"{server.url}/segment"
        chunks = iter([big[i:i + 65536] for i in range(0, len(big), 65536)])  # no Content-Length
        for response in (client.post(url, content=big, headers={"Content-Type": "image/jpeg"}),
                         client.post(url, files={"image": ("big.jpg", big, "image/jpeg")}),
                         client.post(url, content=chunks, headers={"Content-Type": "image/jpeg"})):
            assert response.status_code == 413, response.text
            assert response.json()["error"] == "body_too_large" and "200000" in response.json()["message"]
        assert client.post(url, content=png(60, 80, seed=1), headers=PNG_HEADERS).status_code == 200

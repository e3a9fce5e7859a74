"""The service under a real uvicorn on 127.0.0.1: concurrent requests are batched (only images
of the same padded shape together) and each result equals the image sent alone; a flood past
the queue bound gets 503s and the server keeps answering. And its limits, driven with raw
sockets where a client misbehaves: stalled uploads get a 408 and never hold the model's queue,
a client that vanishes mid-upload is logged as such (499), an overloaded queue answers 503 at
once instead of a late 504, and decodes wait for their share of the decode-memory pool."""
from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from anzoo.data.transforms import padded_shape, rescale_size
from anzoo.inference import Predictor
from anzoo.server.app import create_app
from anzoo.server.limits import ByteBudget
from anzoo.server.runner import BackgroundServer

MODEL_ID = "r50-an"  # the id of conftest.py's `model`
SCALE = (96, 64)
PNG_HEADERS = {"Content-Type": "image/png"}


pytestmark = pytest.mark.usefixtures("one_thread", "no_api_key")


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


@pytest.mark.slow
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


# =========================================================================== limits
def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------- raw sockets
def start_upload(server: BackgroundServer, announced: int, sent: bytes) -> socket.socket:
    """A POST /segment announcing ``announced`` body bytes, of which only ``sent`` are sent."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    head = (f"POST /segment HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {announced}\r\n\r\n").encode()
    sock.sendall(head + sent)
    return sock


@dataclass
class Answer:
    """What came back on a raw socket: status, when its first byte arrived, whether it closed."""

    status: int | None = None
    first_byte_at: float | None = None
    closed_at: float | None = None
    data: bytes = b""
    errors: list[str] = field(default_factory=list)


def read_answer(sock: socket.socket, answer: Answer, timeout: float) -> None:
    """Read until the server closes the connection (or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                answer.closed_at = time.monotonic()
                break
            if answer.first_byte_at is None:
                answer.first_byte_at = time.monotonic()
            answer.data += chunk
    except (socket.timeout, OSError) as exc:
        answer.errors.append(repr(exc))
    finally:
        sock.close()
    if answer.data.startswith(b"HTTP/1.1 "):
        answer.status = int(answer.data.split(b" ", 2)[1])


# --------------------------------------------------------------------------- stalled uploads
@pytest.mark.slow
def test_stalled_uploads_get_408_and_others_are_served_meanwhile(model: torch.nn.Module) -> None:
    """Two clients announce a 100 kB body and send 10 bytes of it. With a queue of one image
    and batches of one, they used to hold both places (everyone else got 503) for as long as
    they liked; now they get a 408 after --read-timeout and are never admitted to the queue."""
    read_timeout = 2.0
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", max_batch=1, max_queue=1, max_wait_ms=0,
                     read_timeout_s=read_timeout)
    image = png(60, 80, seed=0)
    with BackgroundServer(app) as server:
        started = time.monotonic()
        answers = [Answer(), Answer()]
        readers = [threading.Thread(target=read_answer, args=(start_upload(server, 100_000, image[:10]), a, 15))
                   for a in answers]
        for reader in readers:
            reader.start()
        served_at = []
        with httpx.Client(trust_env=False, timeout=30) as client:
            for _ in range(3):
                response = client.post(f"{server.url}/segment", content=image, headers=PNG_HEADERS)
                assert response.status_code == 200, response.text
                served_at.append(time.monotonic() - started)
        for reader in readers:
            reader.join(20)
        for answer in answers:
            assert answer.status == 408, (answer.data[:300], answer.errors)
            assert b'"error":"read_timeout"' in answer.data
            waited = answer.first_byte_at - started
            assert read_timeout - 0.1 <= waited <= read_timeout + 2.0, waited  # within its deadline
            assert answer.closed_at is not None and answer.closed_at - answer.first_byte_at < 2.0  # then closed
        assert served_at[0] < min(a.first_byte_at for a in answers) - started  # served during the stall
        text = httpx.get(f"{server.url}/metrics", trust_env=False).text
    assert metric(text, 'anzoo_errors_total{kind="read_timeout"}') == 2
    assert metric(text, 'anzoo_errors_total{kind="queue_full"}') == 0


def test_a_slow_trickle_is_cut_at_the_minimum_rate(model: torch.nn.Module) -> None:
    """A body that never pauses for long but arrives far below --read-min-rate gets its 408 at
    read_timeout + bytes / rate, not never."""
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, read_timeout_s=1.0,
                     read_min_rate=1000.0)
    with BackgroundServer(app) as server:
        sock = start_upload(server, 100_000, b"")
        answer = Answer()
        reader = threading.Thread(target=read_answer, args=(sock, answer, 15))
        reader.start()
        started = time.monotonic()
        sent = 0
        while answer.first_byte_at is None and time.monotonic() - started < 10:  # 100 bytes every 0.3 s
            try:
                sock.sendall(b"x" * 100)
            except OSError:
                break
            sent += 100
            time.sleep(0.3)
        reader.join(15)
    assert answer.status == 408, (answer.data[:300], answer.errors)
    waited = answer.first_byte_at - started
    # no pause ever reached 1 s, but 1 s + (bytes so far) / (1000 bytes/s) passed: about 1.5 s
    assert 1.0 <= waited <= 4.0 and sent < 2000, (waited, sent)


# --------------------------------------------------------------------------- vanished clients
def test_client_that_disconnects_mid_upload_is_logged_not_an_internal_error(
        model: torch.nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False)
    caplog.set_level(logging.INFO, logger="anzoo")
    with BackgroundServer(app) as server, httpx.Client(trust_env=False, timeout=30) as client:
        sock = start_upload(server, 100_000, png(60, 80, seed=0)[:10])
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = client.get(f"{server.url}/metrics").text
            if metric(text, 'anzoo_requests_total{route="/segment",status="499"}') >= 1:
                break
            time.sleep(0.05)
        assert client.post(f"{server.url}/segment", content=png(60, 80, seed=0), headers=PNG_HEADERS).status_code == 200
    assert metric(text, 'anzoo_requests_total{route="/segment",status="499"}') == 1
    assert metric(text, 'anzoo_errors_total{kind="client_disconnected"}') == 1
    assert metric(text, 'anzoo_errors_total{kind="internal"}') == 0
    assert 'status="500"' not in text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    gone = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and not gone[0].exc_info
    assert "10 bytes" in gone[0].getMessage()


# --------------------------------------------------------------------------- overload
class SlowPredictor(Predictor):
    """Every forward pass takes ``delay`` seconds longer."""

    delay = 0.8

    def detect_batch(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().detect_batch(*args, **kwargs)


@pytest.mark.slow
def test_overload_fails_fast_with_503_instead_of_a_late_504(model: torch.nn.Module) -> None:
    """About 1.65 s per image and a 5.8 s timeout: of 6 simultaneous requests, those with up to
    2 ahead (expected result after 4.95 s) are served, the others (6.6 s and more) get a 503 at
    once; before, they waited for their 504 for 5.8 s. The margins (0.85 s and 0.8 s) absorb a
    busy machine: with 0.85 s per image and 3 s, a load of 8 on 2 cores once turned a served
    request into a 504."""
    timeout = 5.8
    slow = SlowPredictor(model, scale=SCALE)
    slow.delay = 1.6
    app = create_app({MODEL_ID: slow}, api_key="", warmup=False, max_batch=1, max_wait_ms=0,
                     request_timeout_s=timeout)
    image = png(60, 80, seed=0)

    async def post_all(url: str, count: int) -> list[tuple[httpx.Response, float]]:
        async with httpx.AsyncClient(trust_env=False, timeout=30,
                                     limits=httpx.Limits(max_connections=count)) as client:
            async def one() -> tuple[httpx.Response, float]:
                start = time.monotonic()
                response = await client.post(f"{url}/segment", content=image, headers=PNG_HEADERS)
                return response, time.monotonic() - start

            return await asyncio.gather(*(one() for _ in range(count)))

    with BackgroundServer(app) as server:
        with httpx.Client(trust_env=False, timeout=30) as client:  # measures the time per image
            assert client.post(f"{server.url}/segment", content=image, headers=PNG_HEADERS).status_code == 200
        results = asyncio.run(post_all(server.url, 6))
    statuses = sorted(r.status_code for r, _ in results)
    assert 504 not in statuses and set(statuses) == {200, 503}, statuses
    for response, seconds in results:
        if response.status_code == 503:
            assert response.json()["error"] == "overloaded" and "expected wait" in response.json()["message"]
            assert int(response.headers["retry-after"]) >= 1
            assert seconds < timeout / 2, seconds  # at once, not after the timeout
    assert 1 <= statuses.count(200) <= 3 and statuses.count(503) >= 3, statuses  # 3 and 3 when idle


# --------------------------------------------------------------------------- decode memory
@pytest.mark.parametrize("budget_images, most_at_once", [(1.5, 1), (100, 3)])
def test_decodes_wait_for_their_share_of_the_decode_memory(model: torch.nn.Module, budget_images: float,
                                                           most_at_once: int) -> None:
    from anzoo.data.images import decoded_bytes, read_image_header

    image = png(60, 80, seed=0)
    per_image = decoded_bytes(read_image_header(image))
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False,
                     decode_memory_bytes=int(budget_images * per_image))
    service = app.state.service
    active, most = [0], [0]
    lock = threading.Lock()
    original = service.decode

    def watched(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.3)  # long enough for the three requests to overlap
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    service.decode = watched

    async def post_three(url: str) -> list[int]:
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            posts = [client.post(f"{url}/segment", content=image, headers=PNG_HEADERS) for _ in range(3)]
            return [r.status_code for r in await asyncio.gather(*posts)]

    with BackgroundServer(app) as server:
        assert asyncio.run(post_three(server.url)) == [200, 200, 200]
        assert service.decode_memory.used == 0  # all given back
    assert most[0] == most_at_once


def test_byte_budget_is_fifo_and_lets_an_oversized_request_run_alone() -> None:
    async def scenario() -> list[str]:
        budget = ByteBudget(100)
        order: list[str] = []
        assert budget.try_acquire(60)
        assert not budget.try_acquire(50)

        async def take(name: str, amount: int) -> None:
            await budget.acquire(amount, timeout=5)
            order.append(name)

        big = asyncio.create_task(take("big 300", 300))  # more than the capacity: waits for an empty pool
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small 10", 10))  # fits, but waits behind the big one
        await asyncio.sleep(0.01)
        assert order == [] and not budget.try_acquire(10)
        budget.release(60)
        await asyncio.wait_for(big, 1)
        assert order == ["big 300"] and budget.used == 300
        budget.release(300)
        await asyncio.wait_for(small, 1)
        with pytest.raises(asyncio.TimeoutError):
            await budget.acquire(95, timeout=0.05)
        assert budget.used == 10  # the timed-out request took nothing
        budget.release(10)
        return order

    assert asyncio.run(scenario()) == ["big 300", "small 10"]

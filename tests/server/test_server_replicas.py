"""Several model replicas behind one queue (``anzoo serve --replicas/--devices``), on the CPU: the
batcher hands each batch to the least-loaded replica, requests spread over both replicas (the
metrics show it) and answer as one replica does, a replica that raises is taken out of rotation
while the other serves (and reported by /readyz, /models and /metrics), and the metrics add up
over worker processes in prometheus_client's multiprocess mode."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from anzoo.errors import AnzooError
from anzoo.inference import Predictor
from anzoo.server.app import create_app
from anzoo.server.batching import DynamicBatcher
from anzoo.server.replicas import build_replicas, parse_devices
from anzoo.server.runner import BackgroundServer
from helpers.metrics_text import metric
from helpers.pictures import noise_png

MODEL_ID = "r50-an"  # the id of conftest.py's `model`
SCALE = (96, 64)
PNG_HEADERS = {"Content-Type": "image/png"}

pytestmark = pytest.mark.usefixtures("one_thread", "no_api_key")


IMAGES = [noise_png(60, 80, seed) for seed in range(3)]


def post_all(url: str, bodies: list[bytes]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(trust_env=False, timeout=60,
                                     limits=httpx.Limits(max_connections=len(bodies))) as client:
            return await asyncio.gather(*(client.post(f"{url}/segment", content=b, headers=PNG_HEADERS)
                                          for b in bodies))

    return asyncio.run(main())


# --------------------------------------------------------------------------- the batcher alone
def test_batches_go_to_the_least_loaded_replica() -> None:
    gate = threading.Event()
    ran: list[tuple[int, list[int]]] = []

    def run(replica: int, key: str, payloads: list[int]) -> list[int]:
        if key == "slow":
            assert gate.wait(5)
        ran.append((replica, list(payloads)))
        return payloads

    batcher = DynamicBatcher(run, replicas=2, max_batch=4, max_wait_s=0.0)
    batcher.start()
    assert batcher.ready.wait(5)
    try:
        for i in range(4):  # one at a time: both idle each time, the one that ran fewer jobs takes it
            assert batcher.submit("k", i).future.result(5) == i
        assert [r for r, _ in ran] == [0, 1, 0, 1]
        slow = batcher.submit("slow", 10)  # replica 0 (2 jobs run, lower index) is busy with it...
        deadline = time.monotonic() + 5
        while batcher.replicas[0].running == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [batcher.submit("k", i).future.result(5) for i in (11, 12)] == [11, 12]
        assert ran[-2:] == [(1, [11]), (1, [12])]  # ...so replica 1 takes every other job meanwhile
        gate.set()
        assert slow.future.result(5) == 10
    finally:
        gate.set()
        batcher.stop()
    assert [state.jobs_run for state in batcher.replicas] == [3, 4]


def test_replicas_share_a_device_and_split_the_cpu_threads(model: torch.nn.Module,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    reference = Predictor(model, scale=SCALE, mask_paste="fast")
    replicas = build_replicas({MODEL_ID: reference}, per_device=3)
    assert [r.index for r in replicas] == [0, 1, 2] and [r.threads for r in replicas] == [2, 2, 2]
    assert replicas[0].predictors[MODEL_ID] is reference
    copies = [r.predictors[MODEL_ID] for r in replicas[1:]]
    # the reference's model (folded for inference: a copy of `model`) is shared, not copied again
    assert all(p.model is reference.model and p.scale == SCALE and p.mask_paste == "fast" for p in copies)
    assert build_replicas({MODEL_ID: reference})[0].threads is None  # one replica: threads left alone


def test_devices_are_checked() -> None:
    assert parse_devices("cpu") == [torch.device("cpu")]
    with pytest.raises(AnzooError, match="named twice"):
        parse_devices("cpu, cpu")
    with pytest.raises(AnzooError, match="at least one device"):
        parse_devices(" , ")
    with pytest.raises(AnzooError, match="not a device"):
        parse_devices("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(AnzooError, match="no CUDA GPU"):
            parse_devices("all")
        with pytest.raises(AnzooError, match="CUDA"):
            parse_devices("cuda:0,cuda:1")
    else:
        assert parse_devices("all") == [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        with pytest.raises(AnzooError, match="does not exist"):
            parse_devices(f"cuda:{torch.cuda.device_count()}")


# --------------------------------------------------------------------------- the service
def test_two_replicas_share_the_requests_and_answer_as_one(model: torch.nn.Module) -> None:
    one = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_batch=1)
    with BackgroundServer(one) as server:
        alone = post_all(server.url, IMAGES)
    assert [r.status_code for r in alone] == [200] * 3 and all(r.json()["instances"] for r in alone)

    two = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_batch=2, max_wait_ms=20,
                     replicas=2)
    with BackgroundServer(two) as server, httpx.Client(trust_env=False, timeout=30) as client:
        responses = post_all(server.url, [IMAGES[i % 3] for i in range(6)])
        text = client.get(f"{server.url}/metrics").text
        ready = client.get(f"{server.url}/readyz").json()
        models = client.get(f"{server.url}/models").json()["models"]
    assert [r.status_code for r in responses] == [200] * 6
    for i, response in enumerate(responses):
        assert response.json()["instances"] == alone[i % 3].json()["instances"], f"request {i}"
    per_replica = [metric(text, f'anzoo_batch_size_sum{{model="{MODEL_ID}",replica="{r}"}}') for r in (0, 1)]
    assert sum(per_replica) == 6 and min(per_replica) >= 1, per_replica  # warm-up is not counted
    assert [metric(text, f'anzoo_replica_up{{device="cpu",replica="{r}"}}') for r in (0, 1)] == [1, 1]
    assert ready["ready"] and [(r["index"], r["device"], r["state"]) for r in ready["replicas"]] == \
        [(0, "cpu", "ready"), (1, "cpu", "ready")]
    assert [r["images"] for r in ready["replicas"]] == per_replica
    assert [r["state"] for r in models[0]["replicas"]] == ["ready", "ready"]


def test_a_replica_that_raises_is_taken_out_while_the_other_serves(model: torch.nn.Module) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_batch=1, max_wait_ms=0,
                     replicas=2)
    broken = app.state.service.replicas[1].predictors[MODEL_ID]
    calls = []

    def cuda_error(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    broken.detect_batch = cuda_error
    with BackgroundServer(app) as server, httpx.Client(trust_env=False, timeout=30) as client:
        answers = [client.post(f"{server.url}/segment", content=IMAGES[0], headers=PNG_HEADERS) for _ in range(4)]
        ready = client.get(f"{server.url}/readyz")
        models = client.get(f"{server.url}/models").json()["models"]
        text = client.get(f"{server.url}/metrics").text
    # the second request went to replica 1, which raised: it was run again on replica 0
    assert [r.status_code for r in answers] == [200] * 4 and len(calls) == 1
    assert all(r.json()["instances"] == answers[0].json()["instances"] for r in answers)
    assert ready.status_code == 200
    replicas = ready.json()["replicas"]
    assert [(r["state"], r["images"]) for r in replicas] == [("ready", 4), ("failed", 1)]
    assert "CUDA error: an illegal memory access" in replicas[1]["detail"]
    assert models[0]["replicas"][1]["state"] == "failed"
    assert metric(text, 'anzoo_replica_up{device="cpu",replica="1"}') == 0
    assert metric(text, 'anzoo_replica_failures_total{replica="1"}') == 1
    assert metric(text, f'anzoo_batch_size_count{{model="{MODEL_ID}",replica="0"}}') == 4


def test_a_request_that_fails_on_both_replicas_fails_and_takes_none_out(model: torch.nn.Module) -> None:
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_batch=1, max_wait_ms=0,
                     replicas=2)

    def poisoned(*args, **kwargs):
        raise ValueError("this image breaks the model")

    for replica in app.state.service.replicas:
        replica.predictors[MODEL_ID].detect_batch = poisoned
    with BackgroundServer(app) as server, httpx.Client(trust_env=False, timeout=30) as client:
        failed = client.post(f"{server.url}/segment", content=IMAGES[0], headers=PNG_HEADERS)
        ready = client.get(f"{server.url}/readyz")
    assert failed.status_code == 500 and failed.json()["error"] == "internal"
    assert ready.status_code == 200
    assert [(r["state"], r["images"]) for r in ready.json()["replicas"]] == [("ready", 1), ("ready", 1)]


# --------------------------------------------------------------------------- the command line
def test_cli_serve_replicas_and_devices(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from anzoo import cli
    from anzoo.cli import base as cli_base

    loaded = []
    monkeypatch.setattr(cli_base, "load_model", lambda model_id, weights, device: loaded.append(device) or model)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("ANZOO_PORT", str(sock.getsockname()[1]))
    result = CliRunner().invoke(cli.app, ["serve", "--devices", "cpu", "--replicas", "2", "--scale", "96x64"])
    assert result.exit_code == 0, result.output
    assert loaded == ["cpu"]
    assert [(r.index, str(r.device)) for r in apps[0].state.service.replicas] == [(0, "cpu"), (1, "cpu")]
    twice = CliRunner().invoke(cli.app, ["serve", "--devices", "cpu,cpu"])
    assert twice.exit_code == 1 and "named twice" in twice.output
    zero = CliRunner().invoke(cli.app, ["serve", "--replicas", "0"])
    assert zero.exit_code != 0 and "--replicas" in zero.output


# --------------------------------------------------------------------------- worker processes
COUNT_REQUESTS = """
import sys
from anzoo.server.prometheus import ServiceMetrics
metrics = ServiceMetrics()
metrics.requests.labels(route="/segment", status="200").inc(int(sys.argv[1]))
metrics.queue_depth.set(int(sys.argv[1]))
if sys.argv[2] == "render":
    sys.stdout.buffer.write(metrics.render()[0])
else:
    metrics.process_exited()  # as the app does at shutdown
"""


def test_metrics_add_up_over_worker_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", COUNT_REQUESTS, "3", "exit"], env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", COUNT_REQUESTS, "4", "render"], env=env, check=True,
                          timeout=60, capture_output=True, text=True).stdout
    assert metric(text, 'anzoo_requests_total{route="/segment",status="200"}') == 7
    assert metric(text, "anzoo_queue_depth") == 4  # live processes only: the first one has exited
    assert "process_cpu_seconds_total" not in text

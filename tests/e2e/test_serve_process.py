"""``anzoo serve`` as a real process on 127.0.0.1: ``--host``/``--port`` are where it listens,
the models are warmed up before ``/readyz`` says ready, ``/segment``, ``/models``, ``/docs``
and ``/openapi.json`` answer, and Ctrl-C (SIGINT) stops it cleanly.

The model is a random-weights r50-bn saved as a checkpoint and given with ``--weights`` (no
download; ``ANZOO_OFFLINE=1`` makes sure). Its RPN regressor is set to widen every anchor past
the image, so after clipping all proposals are the whole image and the NMS leaves one per
level: the released 1000-proposal settings then cost five RoIs, a fraction of a second.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

import anzoo
from anzoo.factory import save_model
from anzoo.testing import confident_model

from helpers.pictures import noise_png

# Slow tier (`-m "not slow"` leaves it out): end to end through processes.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_api_key")]

STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = confident_model("r50-bn", classes=(0, 2))
    with torch.no_grad():
        reg = model.rpn.head.bbox_pred
        reg.weight.zero_()
        reg.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 10.0]).repeat(reg.bias.numel() // 4))  # dw, dh: widest
    return save_model(model, tmp_path_factory.mktemp("weights") / "r50-bn-random.pth")


@pytest.fixture
def server(weights: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    port = free_port()
    root = Path(anzoo.__file__).resolve().parent.parent  # this checkout's anzoo, in the child too
    env = {**os.environ, "ANZOO_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ANZOO_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("ANZOO_API_KEY", None)
    env.pop("ANZOO_PORT", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "anzoo", "serve", "-m", "r50-bn", "--weights", str(weights), "--device", "cpu",
             "--host", "127.0.0.1", "--port", str(port), "--scale", "128x96", "--max-batch", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"anzoo serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                response = client.get(f"{url}/readyz")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"not ready after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")



def test_anzoo_serve_process(server: tuple[subprocess.Popen, str, Path]) -> None:
    proc, url, log = server
    assert wait_ready(proc, url, log) == {"ready": True, "models": ["r50-bn"], "detail": None, "replicas": [
        {"index": 0, "device": "cpu", "state": "ready", "detail": None, "images": 0}]}
    with httpx.Client(trust_env=False, timeout=60) as client:
        assert client.get(f"{url}/healthz").json() == {"status": "ok"}
        (model,) = client.get(f"{url}/models").json()["models"]
        assert (model["id"], model["device"], model["scale"]) == ("r50-bn", "cpu", [128, 96])
        response = client.post(f"{url}/segment?score_thr=0.05", content=noise_png(90, 120),
                               headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["width"], body["height"]) == ("r50-bn", 120, 90)
        assert body["instances"] and {i["category_name"] for i in body["instances"]} <= {"person", "car"}
        assert body["instances"][0]["mask"]["size"] == [90, 120]
        docs = client.get(f"{url}/docs")
        assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
        assert "swagger-ui" in docs.text and "/openapi.json" in docs.text
        schema = client.get(f"{url}/openapi.json").json()
        assert {"/segment", "/segment/render", "/models", "/readyz"} <= set(schema["paths"])
        assert client.get(f"{url}/metrics").text.count('anzoo_requests_total{route="/segment",status="200"} 1') == 1
    # Ctrl-C: a clean stop, exit code 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text
    assert f"serving r50-bn on {url}" in " ".join(text.split())

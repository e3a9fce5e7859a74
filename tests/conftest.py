"""Shared test fixtures: an isolated anzoo cache, a loopback HTTP server, extra zoo files.

Every test runs with ``ANZOO_HOME`` in its own tmp folder and without ``ANZOO_ZOO`` /
``ANZOO_OFFLINE`` from the caller's environment, so no test reads or writes a real cache.
Connections to anything but the loopback interface fail loudly.
"""
from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml


# --------------------------------------------------------------------------- isolation
@pytest.fixture(autouse=True)
def anzoo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty ``ANZOO_HOME`` for every test."""
    home = tmp_path / "anzoo-home"
    monkeypatch.setenv("ANZOO_HOME", str(home))
    monkeypatch.delenv("ANZOO_ZOO", raising=False)
    monkeypatch.delenv("ANZOO_OFFLINE", raising=False)
    return home


_real_connect = socket.socket.connect


def _loopback_only_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            raise ConnectionRefusedError(f"tests may only connect to 127.0.0.1, not {host}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only_connect)


# --------------------------------------------------------------------------- zoo files
@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for a module: on a shared 2-core machine OpenMP's second
    thread waits for CPU time at every parallel region (a 64x64 AOGNet forward goes from 0.1 s
    to 20 s), and server tests run model and HTTP threads side by side."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's API key comes from the test, never from the environment."""
    monkeypatch.delenv("ANZOO_API_KEY", raising=False)


@pytest.fixture
def extra_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``extra_zoo(models=[...], backbones=[...], papers={...})`` writes a zoo file and puts it
    into ``ANZOO_ZOO`` (each call adds one more file). Model entries only need the fields
    that differ from a small Mask R-CNN R-50 BN entry without weights."""
    files: list[str] = []

    def write(models: list[dict] | None = None, backbones: list[dict] | None = None,
              papers: dict | None = None, raw: str | None = None) -> Path:
        path = tmp_path / f"extra-zoo-{len(files)}.yaml"
        if raw is not None:
            path.write_text(raw, encoding="utf-8")
        else:
            data: dict[str, Any] = {}
            if papers:
                data["papers"] = papers
            if backbones:
                data["backbones"] = backbones
            if models:
                data["models"] = [{**MODEL_DEFAULTS, **m} for m in models]
            path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        files.append(str(path))
        monkeypatch.setenv("ANZOO_ZOO", os.pathsep.join(files))
        return path

    return write


MODEL_DEFAULTS: dict[str, Any] = {
    "detector": "mask_rcnn",
    "backbone": "resnet50",
    "backbone_norm": "bn",
    "head_norm": "none",
    "weights": None,
}


# --------------------------------------------------------------------------- HTTP server
@dataclass
class Route:
    body: bytes
    status: int = 200
    content_type: str = "application/octet-stream"
    #: close the connection after this many bytes (announcing the full Content-Length).
    drop_after: int | None = None
    #: seconds to sleep between chunks (to make two downloads overlap).
    chunk_delay: float = 0.0
    chunk_size: int = 64 * 1024
    headers: dict[str, str] = field(default_factory=dict)


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 serving the routes a test registers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []  # paths in the order they were asked for
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client never blocks the server thread for long

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append(path)
                route = server.routes.get(path)
                if route is None:
                    route = Route(b"not found", status=404, content_type="text/plain")
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(route.body)))
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                body = route.body if route.drop_after is None else route.body[: route.drop_after]
                try:
                    for start in range(0, len(body), route.chunk_size):
                        self.wfile.write(body[start:start + route.chunk_size])
                        self.wfile.flush()
                        if route.chunk_delay:
                            time.sleep(route.chunk_delay)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if route.drop_after is not None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def add(self, path: str, body: bytes, **kwargs: Any) -> str:
        """Serve ``body`` at ``path``; returns the full URL."""
        self.routes[path] = Route(body, **kwargs)
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.count(path)


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)

"""Running the app under uvicorn in a background thread (tests, benchmarks, notebooks), and
checking that an address can be listened on before anything slow starts (``anzoo serve``).

``anzoo serve`` runs uvicorn in the foreground; this is for code that needs the server and
something else in one process. Loopback only, a free port, bounded waits.
"""
from __future__ import annotations

import errno
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import uvicorn

from ..errors import AnzooError

__all__ = ["BackgroundServer", "check_listen_address", "wait_ready"]


def check_listen_address(host: str, port: int) -> None:
    """Raise AnzooError when ``host:port`` cannot be listened on (the port is in use, the host
    is not an address of this machine, no permission), binding as uvicorn will."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AnzooError(f"port {port} on {host} is in use (is another server running there?); "
                                 "choose another with --port") from exc
            raise AnzooError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc


def wait_ready(url: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``{url}/readyz`` until it answers 200 (raises TimeoutError after ``timeout`` s)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with opener.open(f"{url}/readyz", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:g} s ({last})")


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", log_level: str = "warning", **config: Any) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                                    timeout_keep_alive=5, **config))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]},
                                        name="anzoo-uvicorn", daemon=True)

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        """Start and wait until the models are warm (``/readyz`` 200)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start within {timeout:g} s")
            time.sleep(0.02)
        wait_ready(self.url, max(1.0, deadline - time.monotonic()))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

"""hf://OWNER/REPO/PATH[@REVISION] weights sources, through huggingface_hub's downloader, against
a loopback server standing in for the Hugging Face Hub (issue 14)."""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anzoo import hub
from anzoo.cli import app
from anzoo.errors import DownloadError, OfflineError
from helpers.cache_files import checkpoint_bytes

pytest.importorskip("huggingface_hub")
runner = CliRunner()


class FakeHub:
    """Answers HEAD and GET on /OWNER/REPO/resolve/REVISION/PATH as the Hub does (commit and
    etag headers); records each request's path and Authorization header."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                hub_.requests.append((self.command, self.path, self.headers.get("Authorization")))
                data = hub_.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Repo-Commit", "c" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    server = FakeHub()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow
def test_an_hf_mirror_serves_when_the_first_source_fails(fake_hub: FakeHub, extra_zoo, anzoo_home: Path) -> None:
    data = checkpoint_bytes()
    fake_hub.files["/owner/repo/resolve/v1.0/weights/t.pth"] = data
    extra_zoo(models=[{"id": "t-hf", "weights": {"url": "http://127.0.0.1:9/refused.pth",
                                                 "mirrors": ["hf://owner/repo/weights/t.pth@v1.0"]}}])
    path = hub.fetch_weights("t-hf", progress=False)
    assert path.read_bytes() == data and path == anzoo_home / "models" / "t-hf" / "t-hf.pth"
    assert ("GET", "/owner/repo/resolve/v1.0/weights/t.pth", "Bearer hf_test_token") in fake_hub.requests
    assert sorted(p.name for p in path.parent.iterdir()) == ["t-hf.pth", "t-hf.pth.sha256"]  # no .cache left


def test_download_url_hf_and_its_errors(fake_hub: FakeHub, extra_zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    data = checkpoint_bytes()
    fake_hub.files["/owner/repo/resolve/main/t.pth"] = data
    extra_zoo(models=[{"id": "t-url"}])
    result = runner.invoke(app, ["download", "t-url", "--url", "hf://owner/repo/t.pth"])
    assert result.exit_code == 0, result.output
    assert hub.cached_weights("t-url").read_bytes() == data

    extra_zoo(models=[{"id": "t-missing"}])
    with pytest.raises(DownloadError, match=r"hf://owner/repo/nothing.pth failed"):
        hub.fetch_weights("t-missing", url="hf://owner/repo/nothing.pth", progress=False)
    assert hub.cached_weights("t-missing") is None

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE is set") as offline:
        hub.fetch_weights("t-missing", url="hf://owner/repo/t.pth", progress=False)
    assert f"download {fake_hub.url}/owner/repo/resolve/main/t.pth in a browser" in str(offline.value)
    assert len(fake_hub.requests) == before  # no request made


def test_hf_urls_are_checked_in_zoo_files(extra_zoo) -> None:
    extra_zoo(models=[{"id": "t-bad", "weights": {"mirrors": ["hf://only-owner"]}}])
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 1
    assert "mirrors[0]" in result.stderr and "hf://OWNER/REPO/PATH[@REVISION]" in result.stderr

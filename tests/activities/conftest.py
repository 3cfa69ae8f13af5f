"""Fixtures for activity tests: contexts and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from itonami.activities import ActivityContext


@pytest.fixture
def make_ctx() -> Callable[..., ActivityContext]:
    """Build an ActivityContext with test defaults; keyword arguments override."""

    def build(**overrides: Any) -> ActivityContext:
        fields: dict[str, Any] = {
            "execution_id": "exec-1",
            "workflow_id": "wf",
            "step_path": "0/1",
            "activity": "act",
            "attempt": 1,
        }
        fields.update(overrides)
        return ActivityContext(**fields)

    return build


class _Handler(BaseHTTPRequestHandler):
    release: threading.Event  # set on teardown so slow handlers return at once

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = split.path.strip("/").split("/")
        if parts[0] == "status":
            status = int(parts[1])
            extra = {"Retry-After": "7"} if status == 429 else {}
            self._send(status, f"status {status} body".encode(), "text/plain", extra)
        elif parts[0] == "slow":
            self.release.wait(float(urllib.parse.parse_qs(split.query)["s"][0]))
            self._send(200, b'{"slow": true}', "application/json", {})
        elif parts[0] == "text":
            self._send(200, "plain text \u00e9".encode(), "text/plain; charset=utf-8", {})
        elif parts[0] == "empty":
            self.send_response(204)
            self.end_headers()
        elif parts[0] == "redirect":
            self._send(302, b"", "text/plain", {"Location": "http://169.254.169.254/"})
        else:
            echo = {
                "method": self.command,
                "raw_path": self.path,
                "path": urllib.parse.unquote(split.path),
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": json.loads(raw) if raw else None,
            }
            self._send(200, json.dumps(echo).encode(), "application/json", {"X-Multi": "a, b"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


@pytest.fixture
def http_server() -> Iterator[str]:
    """Base URL (``http://127.0.0.1:<port>``) of a real threaded HTTP server."""
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)

"""A real HTTP server on 127.0.0.1 for the hostile-input tests, and a context."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from itonami.activities import ActivityContext


@pytest.fixture
def make_ctx() -> Callable[..., ActivityContext]:
    def build(**overrides: Any) -> ActivityContext:
        fields: dict[str, Any] = {
            "execution_id": "exec-h",
            "workflow_id": "wf",
            "step_path": "0",
            "activity": "act",
        }
        fields.update(overrides)
        return ActivityContext(**fields)

    return build


@dataclass
class Server:
    """Where the server listens and what it saw."""

    url: str
    port: int
    hosts: list[str] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # bytes of body written per /big request
    big_done: threading.Event = field(default_factory=threading.Event)


def _handler(server: Server, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            split = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(split.query)
            server.hosts.append(self.headers.get("Host", ""))
            if split.path == "/big":
                self._big(int(query["n"][0]), "length" in query)
            elif split.path == "/slow":
                release.wait(float(query["s"][0]))
                self._reply(b'{"slow": true}')
            else:
                echo = {"headers": {k.lower(): v for k, v in self.headers.items()}}
                self._reply(json.dumps(echo).encode())

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _big(self, n: int, with_length: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if with_length:
                self.send_header("Content-Length", str(n))
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            chunk = b"x" * 65536
            written = 0
            try:
                while written < n:
                    self.wfile.write(chunk[: n - written])
                    written += min(len(chunk), n - written)
            except OSError:  # the client stopped reading and closed
                pass
            finally:
                server.sent.append(written)
                server.big_done.set()
            self.close_connection = True

    return Handler


@pytest.fixture
def http_server() -> Iterator[Server]:
    release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    info = Server(url=f"http://127.0.0.1:{port}", port=port)
    httpd.RequestHandlerClass = _handler(info, release)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield info
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

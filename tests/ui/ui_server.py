"""The UI served by uvicorn on a free 127.0.0.1 port, in a thread of this process."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from itonami.ui import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(storage: str, **options: Any) -> Iterator[str]:
    """Serve the UI of ``storage``; yields its base URL; stops on exit."""
    app = create_app(storage, poll_interval=0.1, **options)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        started = threading.Event()

        def watch() -> None:
            while not server.started and thread.is_alive():
                threading.Event().wait(0.01)
            started.set()

        threading.Thread(target=watch, daemon=True).start()
        if not started.wait(30) or not server.started:
            raise RuntimeError("the UI server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def chromium_path() -> str | None:
    """The local chromium Playwright drives: $ITONAMI_CHROMIUM, else one on PATH."""
    found = os.environ.get("ITONAMI_CHROMIUM")
    if found:
        return found
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None

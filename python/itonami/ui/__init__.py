"""The web UI: executions, their every version, Merkle verification, time travel.

Needs the ``ui`` extra (``pip install 'itonami[ui]'``); ``import itonami``
never imports it. ``itonami serve --storage URL`` runs it; in your own ASGI
application, mount :func:`create_app`'s result.

    from itonami.ui import create_app
    app = create_app("sqlite:///orders.db", token=os.environ["ITONAMI_UI_TOKEN"])
"""

from __future__ import annotations

from typing import Any

from itonami.storage import Storage
from itonami.ui.app import TOKEN_ENV, create_app, token_from_env

__all__ = ["TOKEN_ENV", "create_app", "serve"]


def serve(
    storage: str | Storage,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    read_only: bool | None = None,
    log_level: str = "info",
    metrics: bool | None = None,
    **uvicorn_options: Any,
) -> None:
    """Run the UI with uvicorn until interrupted (binds 127.0.0.1 by default).

    ``token`` (default ``$ITONAMI_UI_TOKEN``) enables signal and cancel for
    requests that present it; without one the server is read-only.
    ``metrics`` serves ``/metrics`` (default: when the metrics extra is installed).
    """
    import uvicorn

    if token is None:
        token = token_from_env()
    if metrics is None:
        import importlib.util

        metrics = importlib.util.find_spec("prometheus_client") is not None
    app = create_app(storage, token=token, read_only=read_only, metrics=metrics)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=3,
        **uvicorn_options,
    )

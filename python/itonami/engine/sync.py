"""A blocking facade over :class:`WorkflowEngine`, for scripts and REPLs.

The engine runs on its own event loop in a background thread; each method
submits the coroutine there and waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .engine import WorkflowEngine

__all__ = ["SyncWorkflowEngine"]

T = TypeVar("T")


class SyncWorkflowEngine:
    """Same methods as :class:`WorkflowEngine`, blocking instead of awaitable.

    Use as a context manager (or call :meth:`close`) so the engine's thread
    stops and storage is closed.
    """

    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="itonami-engine", daemon=True
        )
        self._thread.start()
        self._call(engine.start())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncWorkflowEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine (unfinished executions resume on the next start)."""
        if not self._loop.is_running():
            return
        self._call(self.engine.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.engine, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(attr(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = attr.__doc__
        return call

"""A blocking facade over :class:`WorkflowEngine`, for scripts and REPLs.

The engine runs on its own event loop in a background thread; each method
submits the coroutine there and waits for its result. The public coroutine
methods are written out with their types (so ``mypy --strict`` code gets
real types); anything else of the engine is reached through ``.engine``.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..dsl import WorkflowIR
from ..storage import ExecutionRecord
from .engine import Execution, WorkflowEngine

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

    # ------------------------------------------------------------ the engine's API

    def register_workflow(self, ir: WorkflowIR) -> None:
        """See :meth:`WorkflowEngine.register_workflow`."""
        self._call(self.engine.register_workflow(ir))

    def start_workflow(
        self,
        workflow: WorkflowIR | str,
        inputs: Mapping[str, Any] | None = None,
        execution_id: str | None = None,
        *,
        version: str | None = None,
    ) -> str:
        """See :meth:`WorkflowEngine.start_workflow`."""
        return self._call(
            self.engine.start_workflow(workflow, inputs, execution_id, version=version)
        )

    def wait_for_completion(
        self, execution_id: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """See :meth:`WorkflowEngine.wait_for_completion`."""
        return self._call(self.engine.wait_for_completion(execution_id, timeout))

    def get_execution(self, execution_id: str) -> Execution:
        """See :meth:`WorkflowEngine.get_execution`."""
        return self._call(self.engine.get_execution(execution_id))

    def query(self, execution_id: str) -> dict[str, Any]:
        """See :meth:`WorkflowEngine.query`."""
        return self._call(self.engine.query(execution_id))

    def list_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
        workflow_version: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        id_contains: str | None = None,
        newest_first: bool = False,
    ) -> list[ExecutionRecord]:
        """See :meth:`WorkflowEngine.list_executions`."""
        return self._call(
            self.engine.list_executions(
                status=status,
                workflow_id=workflow_id,
                limit=limit,
                offset=offset,
                workflow_version=workflow_version,
                created_after=created_after,
                created_before=created_before,
                id_contains=id_contains,
                newest_first=newest_first,
            )
        )

    def count_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        workflow_version: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        id_contains: str | None = None,
    ) -> dict[str, int]:
        """See :meth:`WorkflowEngine.count_executions`."""
        return self._call(
            self.engine.count_executions(
                status=status,
                workflow_id=workflow_id,
                workflow_version=workflow_version,
                created_after=created_after,
                created_before=created_before,
                id_contains=id_contains,
            )
        )

    def signal(self, execution_id: str, name: str, payload: Any = None) -> None:
        """See :meth:`WorkflowEngine.signal`."""
        self._call(self.engine.signal(execution_id, name, payload))

    def send_event(self, event_type: str, payload: Any = None) -> list[str]:
        """See :meth:`WorkflowEngine.send_event`."""
        return self._call(self.engine.send_event(event_type, payload))

    def cancel(self, execution_id: str, reason: str = "cancelled") -> bool:
        """See :meth:`WorkflowEngine.cancel`."""
        return self._call(self.engine.cancel(execution_id, reason))

    def get_event_history(self, execution_id: str) -> list[Any]:
        """See :meth:`WorkflowEngine.get_event_history`."""
        return self._call(self.engine.get_event_history(execution_id))

    def rebuild_execution_from_events(self, execution_id: str) -> Execution:
        """See :meth:`WorkflowEngine.rebuild_execution_from_events`."""
        return self._call(self.engine.rebuild_execution_from_events(execution_id))

    def get_execution_at_tx(self, execution_id: str, tx: int) -> Execution:
        """See :meth:`WorkflowEngine.get_execution_at_tx`."""
        return self._call(self.engine.get_execution_at_tx(execution_id, tx))

    def get_execution_history(self, execution_id: str) -> list[Any]:
        """See :meth:`WorkflowEngine.get_execution_history`."""
        return self._call(self.engine.get_execution_history(execution_id))

    def verify(self, execution_id: str) -> Any:
        """See :meth:`WorkflowEngine.verify`."""
        return self._call(self.engine.verify(execution_id))

    def delete_execution(self, execution_id: str) -> bool:
        """See :meth:`WorkflowEngine.delete_execution`."""
        return self._call(self.engine.delete_execution(execution_id))

    def prune(
        self,
        *,
        finished_before: datetime.datetime | float,
        workflow_id: str | None = None,
        batch: int = 500,
    ) -> list[str]:
        """See :meth:`WorkflowEngine.prune`."""
        return self._call(
            self.engine.prune(finished_before=finished_before, workflow_id=workflow_id, batch=batch)
        )

    if not TYPE_CHECKING:
        # Anything else of the engine, as before the methods above were
        # written out (typed code uses ``.engine``).
        def __getattr__(self, name: str) -> Any:
            attr = getattr(self.engine, name)
            if not asyncio.iscoroutinefunction(attr):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._call(attr(*args, **kwargs))

            call.__name__ = name
            call.__doc__ = attr.__doc__
            return call

"""What the interpreter may ask of the engine that runs it: a narrow protocol.

``Run`` (``runtime.py``) sees only this, never the engine's fields, so the
engine's lifecycle (which executions are live, parked, resuming) stays the
engine's business, and another host (a test double, a worker process) can
run the same interpreter.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..activities import Activity
    from ..dsl import WorkflowIR
    from ..retry import RetryPolicy
    from ..tracing import Tracing
    from .clock import Clock

__all__ = ["Host"]


class Host(Protocol):
    """The engine as one run sees it."""

    clock: Clock
    rng: random.Random
    #: Spans of runs and steps (None: traces are off).
    tracing: Tracing | None

    @property
    def may_park(self) -> bool:
        """Whether runs may leave memory while they wait."""
        ...

    @property
    def closing(self) -> bool:
        """Whether the engine is shutting down (runs stop; they resume later)."""
        ...

    def activity(self, name: str) -> Activity:
        """The registered activity (``UnknownActivityError`` when there is none)."""
        ...

    def activity_defaults(self, name: str) -> tuple[RetryPolicy | None, float | None]:
        """The registry's retry policy and timeout for ``name``."""
        ...

    def resolve_workflow(self, workflow_id: str, version: str | None) -> WorkflowIR:
        """The definition a ``subworkflow`` node names."""
        ...

    async def start_child(
        self, ir: WorkflowIR, inputs: dict[str, Any], child_id: str, parent: dict[str, Any]
    ) -> None:
        """Start (idempotently) the child execution ``child_id``."""
        ...

    async def child_outcome(self, child_id: str) -> tuple[str, Any, Any]:
        """``(status, outputs, error)`` once the child is terminal."""
        ...

    async def cancel_child(self, child_id: str, reason: str) -> None:
        """Cancel a child execution (nothing if it had ended)."""
        ...

"""OpenTelemetry traces of executions (the ``otel`` extra: the API only).

``WorkflowEngineBuilder.with_tracing()`` gives the engine a :class:`Tracing`;
without it the engine holds ``None`` and never imports ``opentelemetry``.
The spans:

- ``RunWorkflow:<workflow_id>``: each stretch of an execution's run in a
  process (from start or resumption until it ends, parks or stops). The
  first one's context is recorded as a W3C ``traceparent`` in the data of
  ``workflow_started`` (the core's reducer ignores fields it does not know,
  and the event is never rewritten), and every later stretch — after a
  park, a restart, in another process — is its child: one trace per
  execution, whatever happened between.
- ``RunActivity:<activity>``: one activity attempt, current while the
  activity runs (user code may start child spans of it); its status is an
  error when the attempt failed.
- ``StartChildWorkflow:<workflow_id>``: the sub-workflow step starting its
  child, whose ``RunWorkflow`` span is a child of it (of the caller's span
  for a top-level ``start_workflow``).
- ``Compensate:<step>``: a saga undoing its completed steps.

Every span carries ``itonami.execution_id`` and ``itonami.workflow_id``;
step spans ``itonami.step`` (the step's id, else its path) and activity
spans ``itonami.attempt``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["Tracing"]

_FAILED = frozenset({"failed", "timed_out", "compensated"})


class Tracing:
    """Makes the engine's spans on ``tracer_provider`` (default: the global one)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as e:
            raise ImportError(
                f"traces need the otel extra (pip install 'itonami[otel]'): {e}"
            ) from e
        from . import _core

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        version = getattr(_core, "__version__", None)
        self.tracer = trace.get_tracer("itonami", version, tracer_provider)

    # ------------------------------------------------------------ workflows

    def start_workflow(self, workflow_id: str, execution_id: str) -> tuple[Span, str | None]:
        """The first ``RunWorkflow`` span of a new execution (a child of the
        current span, if any) and its ``traceparent`` to record."""
        span = self.tracer.start_span(
            f"RunWorkflow:{workflow_id}", attributes=_attrs(execution_id, workflow_id)
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, self._trace.set_span_in_context(span))
        return span, carrier.get("traceparent")

    def resume_workflow(self, workflow_id: str, execution_id: str, traceparent: str | None) -> Span:
        """A later ``RunWorkflow`` span: a child of the recorded context."""
        ctx = None
        if traceparent:
            ctx = self._propagator.extract({"traceparent": traceparent})
        attrs = _attrs(execution_id, workflow_id) | {"itonami.resumed": True}
        return self.tracer.start_span(f"RunWorkflow:{workflow_id}", context=ctx, attributes=attrs)

    @contextlib.contextmanager
    def running(self, span: Span, status: Callable[[], str]) -> Iterator[None]:
        """``span`` is current while the run drives; it ends with the run's stretch,
        an error when ``status()`` is then a failure."""
        with self._trace.use_span(span, end_on_exit=True):
            yield
            outcome = status()
            span.set_attribute("itonami.status", outcome)
            if outcome in _FAILED:
                span.set_status(self._trace.StatusCode.ERROR, f"workflow {outcome}")

    # ------------------------------------------------------------ steps

    @contextlib.contextmanager
    def step(
        self,
        name: str,
        execution_id: str,
        workflow_id: str,
        step: str,
        attempt: int | None = None,
    ) -> Iterator[Span]:
        """A span current for a step (``RunActivity:…``, ``StartChildWorkflow:…``,
        ``Compensate:…``); what escapes it is recorded as its error."""
        attrs = _attrs(execution_id, workflow_id) | {"itonami.step": step}
        if attempt is not None:
            attrs["itonami.attempt"] = attempt
        with self.tracer.start_as_current_span(name, attributes=attrs) as span:
            yield span

    def fail(self, span: Span, error: dict[str, Any]) -> None:
        """Mark ``span`` failed with a recorded error (type and message)."""
        span.set_attribute("itonami.error.type", str(error.get("type")))
        span.set_status(
            self._trace.StatusCode.ERROR, f"{error.get('type')}: {error.get('message')}"
        )


def _attrs(execution_id: str, workflow_id: str) -> dict[str, Any]:
    return {"itonami.execution_id": execution_id, "itonami.workflow_id": workflow_id}

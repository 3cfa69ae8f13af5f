"""OpenTelemetry traces: the span tree of a run (retries, a child, a saga's
compensation), activities seeing their span, one trace across a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from engine_helpers import Harness, act, eventually, wf

from itonami import NonRetryableError, RetryPolicy, WorkflowEngine, WorkflowFailedError

pytest.importorskip("opentelemetry.sdk", reason="the trace tests need opentelemetry-sdk")
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def tree(finished: tuple[ReadableSpan, ...]) -> list[tuple[str, str | None]]:
    """``(name, parent's name)`` of every span, in the order they started."""
    by_id = {s.context.span_id: s for s in finished}
    out = []
    for s in sorted(finished, key=lambda s: s.start_time or 0):
        parent = by_id.get(s.parent.span_id) if s.parent is not None else None
        out.append((s.name, None if parent is None else parent.name))
    return out


def named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return sorted((s for s in finished if s.name == name), key=lambda s: s.start_time or 0)


async def test_the_span_tree_of_retries_a_child_and_a_compensation(
    h: Harness, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    seen: dict[str, Any] = {"calls": 0}

    @h.registry.activity(retry_policy=RetryPolicy(initial_interval=0, maximum_attempts=3))
    async def reserve() -> str:
        seen["calls"] += 1
        seen["current"] = trace.get_current_span().get_span_context().span_id
        with tracer.start_as_current_span("user-work"):
            pass
        if seen["calls"] == 1:
            raise ValueError("busy")
        return "r"

    @h.registry.activity()
    def undo_reserve() -> str:  # a sync activity, in a thread: it sees its span too
        seen["undo"] = trace.get_current_span().get_span_context().span_id
        return "undone"

    @h.registry.activity()
    async def pack() -> str:
        return "p"

    @h.registry.activity()
    async def ship() -> None:
        raise NonRetryableError("no truck")

    h.workflows.append(wf(act("pack", "pack"), id="child"))
    order = wf(
        {
            "op": "saga",
            "id": "order",
            "main_flow": {
                "op": "seq",
                "strategies": [
                    act("reserve", "reserve", compensation="undo_reserve"),
                    {"op": "subworkflow", "id": "packing", "workflow_ref": "child"},
                    act("ship", "ship"),
                ],
            },
        },
        id="orders",
    )
    engine = h.engine
    engine.enable_tracing(provider)
    with tracer.start_as_current_span("caller"):
        eid = await engine.start_workflow(order, {})
    with pytest.raises(WorkflowFailedError):
        await engine.wait_for_completion(eid, timeout=10)
    await engine.wait_for_completion(f"{eid}/0/m/1", timeout=10)

    finished = exporter.get_finished_spans()
    assert sorted(tree(finished)) == sorted(
        [
            ("caller", None),
            ("RunWorkflow:orders", "caller"),
            ("RunActivity:reserve", "RunWorkflow:orders"),
            ("user-work", "RunActivity:reserve"),
            ("RunActivity:reserve", "RunWorkflow:orders"),
            ("user-work", "RunActivity:reserve"),
            ("StartChildWorkflow:child", "RunWorkflow:orders"),
            ("RunWorkflow:child", "StartChildWorkflow:child"),
            ("RunActivity:pack", "RunWorkflow:child"),
            ("RunActivity:ship", "RunWorkflow:orders"),
            ("Compensate:order", "RunWorkflow:orders"),
            ("RunActivity:undo_reserve", "Compensate:order"),
        ]
    )
    assert len({s.context.trace_id for s in finished}) == 1

    run = named(finished, "RunWorkflow:orders")[0]
    assert run.attributes is not None and run.attributes["itonami.execution_id"] == eid
    assert run.attributes["itonami.status"] == "compensated"
    assert run.status.status_code is StatusCode.ERROR
    child = named(finished, "RunWorkflow:child")[0]
    assert child.attributes is not None and child.attributes["itonami.execution_id"] == (
        f"{eid}/0/m/1"
    )
    assert child.attributes["itonami.status"] == "completed"
    assert child.status.status_code is StatusCode.UNSET

    first, second = named(finished, "RunActivity:reserve")
    for span, attempt in ((first, 1), (second, 2)):
        assert span.attributes is not None
        assert span.attributes["itonami.step"] == "reserve"
        assert span.attributes["itonami.attempt"] == attempt
        assert span.attributes["itonami.execution_id"] == eid
    assert first.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.UNSET
    assert seen["current"] == second.context.span_id  # the activity saw its own span
    (undo,) = named(finished, "RunActivity:undo_reserve")
    assert seen["undo"] == undo.context.span_id
    (shipped,) = named(finished, "RunActivity:ship")
    assert shipped.status.status_code is StatusCode.ERROR
    (started,) = (e for e in await engine.get_event_history(eid) if e.kind == "workflow_started")
    ctx = run.context
    assert started.data["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")


@pytest.mark.parametrize("snapshots", [0, 2], ids=["events", "snapshot"])
async def test_a_resumed_execution_continues_its_trace(
    tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter], snapshots: int
) -> None:
    """On SQLite, the engine closed and a new one opened; with snapshots the
    new one loads from a snapshot and reads the trace context from the log."""
    provider, exporter = spans
    h = Harness(f"sqlite:///{tmp_path}/traced.db")

    @h.registry.activity()
    async def step() -> int:
        return 1

    ir = wf(
        {
            "op": "seq",
            "strategies": [
                act("step", "a"),
                {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}},
                act("step", "b"),
            ],
        },
        id="resumable",
    )
    h.engine.enable_tracing(provider)
    h.engine.snapshot_every = snapshots
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "the run to park")
    await h.close()

    again = (
        WorkflowEngine.builder()
        .with_storage(f"sqlite:///{tmp_path}/traced.db")
        .with_activities(h.registry)
        .with_tracing(provider)
        .with_snapshots(snapshots)
        .build()
    )
    async with again:
        await again.signal(eid, "go")
        await again.wait_for_completion(eid, timeout=10)

    finished = exporter.get_finished_spans()
    # One stretch until it parked; after the restart, one to park again
    # (recovery) and one from the signal to the end: each a child of the first.
    first, *resumed = named(finished, "RunWorkflow:resumable")
    assert len(resumed) == 2
    assert first.attributes is not None and first.attributes["itonami.status"] == "running"
    for span in resumed:
        assert span.context.trace_id == first.context.trace_id
        assert span.parent is not None and span.parent.span_id == first.context.span_id
        assert span.attributes is not None and span.attributes["itonami.resumed"] is True
    assert resumed[-1].attributes is not None
    assert resumed[-1].attributes["itonami.status"] == "completed"
    a, b = named(finished, "RunActivity:step")
    assert a.parent is not None and a.parent.span_id == first.context.span_id
    assert b.parent is not None and b.parent.span_id == resumed[-1].context.span_id
    assert {s.context.trace_id for s in finished} == {first.context.trace_id}

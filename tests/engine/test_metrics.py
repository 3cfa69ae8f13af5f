"""Prometheus metrics: what an engine with ``with_metrics`` records, read from a
fresh registry; an engine without them imports no ``prometheus_client``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from engine_helpers import Harness, act, eventually, wf

from itonami import ActivityRegistry, RetryPolicy, WorkflowEngine, WorkflowFailedError

prometheus_client = pytest.importorskip("prometheus_client")
CollectorRegistry = prometheus_client.CollectorRegistry


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    got = reg.get_sample_value(name, labels)
    return 0.0 if got is None else got


async def test_retries_a_signal_and_a_failure_are_counted(h: Harness) -> None:
    calls = {"flaky": 0}

    @h.registry.activity(retry_policy=RetryPolicy(initial_interval=0, maximum_attempts=3))
    async def flaky() -> int:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ValueError("not yet")
        return 1

    @h.registry.activity(retry_policy=RetryPolicy(maximum_attempts=1))
    async def bad() -> None:
        raise ValueError("refused")

    @h.registry.activity()
    async def ok() -> int:
        return 2

    reg = CollectorRegistry()
    engine = h.engine
    engine.enable_metrics(reg)
    orders = wf(
        {
            "op": "seq",
            "strategies": [
                act("flaky", "f"),
                {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}},
                act("bad", "b"),
            ],
        },
        id="orders",
    )
    eid = await engine.start_workflow(orders, {})
    await eventually(lambda: engine.phase(eid) == "parked", "the run to park on its wait")
    assert value(reg, "itonami_executions", phase="parked") == 1
    assert value(reg, "itonami_executions", phase="live") == 0
    await h.clock.advance(30)
    await engine.signal(eid, "go")
    with pytest.raises(WorkflowFailedError):
        await engine.wait_for_completion(eid, timeout=10)
    done = await engine.start_workflow(wf(act("ok", "o"), id="fine"), {})
    await engine.wait_for_completion(done, timeout=10)

    assert value(reg, "itonami_workflow_started_total", workflow_id="orders") == 1
    assert value(reg, "itonami_workflow_failed_total", workflow_id="orders") == 1
    assert value(reg, "itonami_workflow_completed_total", workflow_id="orders") == 0
    assert value(reg, "itonami_workflow_started_total", workflow_id="fine") == 1
    assert value(reg, "itonami_workflow_completed_total", workflow_id="fine") == 1
    # End to end on the engine clock: the 30 s it stayed parked, activities take none.
    e2e = "itonami_workflow_endtoend_latency_seconds"
    assert value(reg, e2e + "_count", workflow_id="orders", status="failed") == 1
    assert value(reg, e2e + "_sum", workflow_id="orders", status="failed") == pytest.approx(30)
    assert value(reg, e2e + "_sum", workflow_id="fine", status="completed") == 0

    lat = "itonami_activity_execution_latency_seconds_count"
    assert value(reg, lat, activity="flaky") == 3
    assert value(reg, "itonami_activity_execution_failed_total", activity="flaky") == 2
    assert value(reg, "itonami_activity_retries_total", activity="flaky") == 2
    assert value(reg, lat, activity="bad") == 1
    assert value(reg, "itonami_activity_execution_failed_total", activity="bad") == 1
    assert value(reg, "itonami_activity_retries_total", activity="bad") == 0
    s2s = "itonami_activity_schedule_to_start_latency_seconds_count"
    assert value(reg, s2s, activity="flaky") == 3 and value(reg, s2s, activity="ok") == 1
    assert value(reg, "itonami_signals_delivered_total") == 1

    # Every event of both histories went through one counted commit.
    events = len(await engine.get_event_history(eid)) + len(await engine.get_event_history(done))
    assert value(reg, "itonami_commit_events_sum") == events
    commits = value(reg, "itonami_commit_latency_seconds_count")
    assert 0 < commits == value(reg, "itonami_commit_events_count") < events
    # Finished executions leave the table: every phase is back to zero.
    for phase in ("resuming", "live", "parked", "backoff", "broken"):
        assert value(reg, "itonami_executions", phase=phase) == 0
    assert value(reg, "itonami_lease_takeovers_total") == 0
    assert value(reg, "itonami_fenced_writes_total") == 0


async def test_timers_fired_and_events_delivered_are_counted(h: Harness) -> None:
    reg = CollectorRegistry()
    h.engine.enable_metrics(reg)
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "condition": {"type": "timer", "duration": "PT1M"}},
                {"op": "wait", "condition": {"type": "event", "event_type": "paid"}},
            ],
        },
        id="waits",
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending == 1, "the timer to be armed")
    assert value(reg, "itonami_timers_fired_total") == 0
    await h.clock.advance(60)
    await eventually(lambda: value(reg, "itonami_timers_fired_total") == 1, "the timer to fire")
    # An event nobody waits for is not a delivery.
    await eventually(lambda: h.engine.phase(eid) == "parked", "the run to park on its event wait")
    assert await h.engine.send_event("refunded", {}) == []
    assert value(reg, "itonami_events_delivered_total") == 0
    assert await h.engine.send_event("paid", {"amount": 3}) == [eid]
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"amount": 3}
    assert value(reg, "itonami_events_delivered_total") == 1
    assert value(reg, "itonami_timers_fired_total") == 1


async def test_engines_on_one_registry_share_its_series() -> None:
    reg = CollectorRegistry()
    one = Harness()
    two = Harness()

    @one.registry.activity()
    async def a() -> int:
        return 1

    two.registry = one.registry
    one.engine.enable_metrics(reg)
    two.engine.enable_metrics(reg)  # a second engine: no "duplicated timeseries"
    try:
        for h in (one, two):
            await h.run(wf(act("a", "x"), id="shared"))
    finally:
        await one.close()
        await two.close()
    assert value(reg, "itonami_workflow_completed_total", workflow_id="shared") == 2


def test_the_builder_turns_metrics_on() -> None:
    reg = CollectorRegistry()
    engine = WorkflowEngine.builder().with_storage("memory").with_metrics(reg).build()
    assert engine.metrics.enabled
    assert WorkflowEngine.builder().with_storage("memory").build().metrics.enabled is False


def test_running_a_workflow_without_metrics_or_traces_imports_neither_library() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        from itonami import ActivityRegistry, WorkflowEngine, WorkflowIR

        reg = ActivityRegistry()

        @reg.activity()
        async def a() -> int:
            return 1

        ir = WorkflowIR.from_dict({"workflow": {"id": "w", "name": "w", "version": "1",
            "strategy": {"op": "activity", "activity_ref": "a"}}})

        async def main() -> None:
            async with WorkflowEngine.builder().with_storage("memory").with_activities(
                reg
            ).build() as engine:
                eid = await engine.start_workflow(ir, {})
                await engine.wait_for_completion(eid, timeout=10)

        asyncio.run(main())
        optional = ("prometheus_client", "opentelemetry")
        print(sorted(m for m in sys.modules if m.startswith(optional)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    assert out.stdout.strip() == "[]"


async def test_a_takeover_and_the_fenced_write_of_the_old_owner_are_counted(
    tmp_path: Path,
) -> None:
    """Owner ``a`` stops renewing its lease while its activity runs (as a paused
    process would); ``b`` takes the execution over once the lease expired and
    finishes it; ``a``'s late result is then refused by the fence."""
    url = f"sqlite:///{tmp_path}/shared.db"
    release = asyncio.Event()
    running = asyncio.Event()

    slow = ActivityRegistry()

    @slow.activity()
    async def pay() -> int:
        running.set()
        await release.wait()
        return 1

    fast = ActivityRegistry()

    @fast.activity()
    async def pay() -> int:  # noqa: F811 - the same activity, in the other process
        return 2

    regs = {"a": CollectorRegistry(), "b": CollectorRegistry()}

    def engine(node: str, activities: ActivityRegistry) -> WorkflowEngine:
        return (
            WorkflowEngine.builder()
            .with_storage(url)
            .with_activities(activities)
            .with_node_id(node)
            .with_lease(0.3)
            .with_metrics(regs[node])
            .build()
        )

    a = engine("a", slow)
    await a.start()
    try:
        eid = await a.start_workflow(wf(act("pay", "p"), id="pay"), {})
        await asyncio.wait_for(running.wait(), 10)
        assert a._lease_task is not None and a._dispatch_task is not None
        # "a" pauses: its lease is no longer renewed, and it takes no work (a
        # running dispatch loop would claim its own expired lease and give it
        # back unowned, which is not a takeover by "b").
        a._lease_task.cancel()
        a._dispatch_task.cancel()
        async with engine("b", fast) as b:
            got = await b.wait_for_completion(eid, timeout=10)
            assert got == {"result": 2}
            assert value(regs["b"], "itonami_lease_takeovers_total") == 1
            release.set()  # "a" wakes and records its result: the fence refuses it
            await eventually(lambda: a.phase(eid) is None, "a to drop its run")
    finally:
        await a.close()
    assert value(regs["a"], "itonami_fenced_writes_total") == 1
    assert value(regs["a"], "itonami_lease_takeovers_total") == 0
    assert value(regs["b"], "itonami_fenced_writes_total") == 0
    assert value(regs["b"], "itonami_workflow_completed_total", workflow_id="pay") == 1
    assert value(regs["a"], "itonami_workflow_started_total", workflow_id="pay") == 1

"""Stopping an engine and starting a new one over the same store resumes work.

These restart in-process (the old engine's tasks are cancelled without
recording anything); tests/crash kills real processes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import Harness, act, drop_schema, eventually, waiting, wf

from itonami import NonRetryableError, WorkflowFailedError

PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")


class Restartable:
    """Engines in turn over one durable store, sharing one test clock."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.calls: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.current: Harness | None = None
        self.clock_now: float | None = None
        self.workflows: list[Any] = []
        self.snapshot_every = 0

    def new(self) -> Harness:
        h = Harness(self.url, **self.options)
        if self.current is not None:
            h.clock = self.current.clock
        h.workflows = self.workflows
        reg = h.registry
        calls = self.calls
        gates = self.gates

        @reg.activity()
        async def step(name: str) -> dict:
            calls[name] = calls.get(name, 0) + 1
            gate = gates.get(name)
            if gate is not None:
                await gate.wait()
            return {"name": name, "n": calls[name]}

        @reg.activity()
        async def flaky(name: str) -> dict:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] < 3:
                raise ConnectionError("flaky")
            return {"name": name}

        @reg.activity()
        async def fail(name: str) -> None:
            calls[name] = calls.get(name, 0) + 1
            raise NonRetryableError(f"{name} failed")

        @reg.activity()
        async def undo(name: str) -> dict:
            calls[f"undo:{name}"] = calls.get(f"undo:{name}", 0) + 1
            gate = gates.get(f"undo:{name}")
            if gate is not None:
                await gate.wait()
            return {"undone": name}

        self.current = h
        if self.snapshot_every:
            h._engine = (
                __import__("itonami")
                .WorkflowEngine.builder()
                .with_storage(self.url, **self.options)
                .with_activities(reg)
                .with_workflows(self.workflows)
                .with_clock(h.clock)
                .with_snapshots(self.snapshot_every, retention=2)
                .build()
            )
        return h

    async def restart(self) -> Harness:
        assert self.current is not None
        await self.current.engine.close()
        h = self.new()
        await h.engine.start()
        return h


@pytest.fixture(params=["sqlite", "postgres"])
async def r(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Restartable]:
    schema = None
    if request.param == "sqlite":
        rs = Restartable(f"sqlite:///{tmp_path}/recover.db")
    else:
        if not PG_URL:
            pytest.skip("PostgreSQL tests need ITONAMI_TEST_POSTGRES_URL")
        schema = f"itonami_r_{uuid.uuid4().hex[:12]}"
        rs = Restartable(PG_URL, schema=schema)
    try:
        yield rs
    finally:
        if rs.current is not None:
            await rs.current.close()
        if schema is not None:
            drop_schema(schema)


def s(name: str, **extra: Any) -> dict[str, Any]:
    return act("step", name, input_mapping={"name": name}, **extra)


async def test_completed_steps_are_not_run_again(r: Restartable) -> None:
    r.gates["b"] = asyncio.Event()
    h = r.new()
    ir = wf({"op": "seq", "strategies": [s("a"), s("b"), s("c")]})
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: r.calls.get("b") == 1, "b running")
    h = await r.restart()
    r.gates["b"].set()
    out = await h.engine.wait_for_completion(eid, timeout=10)
    assert out == {"name": "c", "n": 1}
    # a completed before the restart: never again; b was in flight: run again.
    assert r.calls == {"a": 1, "b": 2, "c": 1}
    attempts = [
        e.attempt
        for e in await h.engine.get_event_history(eid)
        if e.step == "0/1" and e.kind == "activity_scheduled"
    ]
    assert attempts == [1, 2]


async def test_timer_is_rearmed_from_its_stored_fire_time(r: Restartable) -> None:
    h = r.new()
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "condition": {"type": "timer", "duration": "PT1H"}},
                s("after"),
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending == 1, "timer armed")
    fire_at = h.clock.next_wakeup()
    await h.clock.advance(1800)
    h = await r.restart()
    await eventually(lambda: h.clock.pending >= 1, "timer re-armed")
    assert h.clock.next_wakeup() == pytest.approx(fire_at)
    await h.clock.advance(1800)
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "after", "n": 1}
    assert (await h.kinds(eid)).count("timer_scheduled") == 1


async def test_retry_backoff_resumes_after_restart(r: Restartable) -> None:
    h = r.new()
    ir = wf(
        act(
            "flaky",
            input_mapping={"name": "x"},
            retry_policy={"initial_interval": "PT10S", "maximum_attempts": 5},
        )
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending == 1, "retry armed")
    h = await r.restart()
    await eventually(lambda: h.clock.pending == 1, "retry re-armed")
    await h.clock.advance(10)
    await eventually(lambda: r.calls.get("x") == 2 and h.clock.pending == 1, "second retry")
    await h.clock.advance(20)
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "x"}
    assert r.calls["x"] == 3


async def test_signal_wait_resumes_and_buffered_signal_survives(r: Restartable) -> None:
    h = r.new()
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "id": "w1", "condition": {"type": "signal", "signal_name": "go"}},
                {"op": "wait", "id": "w2", "condition": {"type": "signal", "signal_name": "go"}},
                act("step", input_mapping={"name": "$.steps.w2.output.v"}),
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await h.engine.signal(eid, "go", {"v": "first"})
    await h.engine.signal(eid, "go", {"v": "second"})
    h = await r.restart()
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "second", "n": 1}


async def test_saga_compensation_resumes_without_repeating(r: Restartable) -> None:
    r.gates["undo:b"] = asyncio.Event()
    h = r.new()
    ir = wf(
        {
            "op": "saga",
            "main_flow": {
                "op": "seq",
                "strategies": [
                    s(
                        "a",
                        compensation={
                            "op": "activity",
                            "activity_ref": "undo",
                            "input_mapping": {"name": "a"},
                        },
                    ),
                    s(
                        "b",
                        compensation={
                            "op": "activity",
                            "activity_ref": "undo",
                            "input_mapping": {"name": "b"},
                        },
                    ),
                    act("fail", input_mapping={"name": "c"}),
                ],
            },
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: r.calls.get("undo:b") == 1, "compensating b")
    h = await r.restart()
    r.gates["undo:b"].set()
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.status == "compensated"
    assert r.calls["a"] == 1 and r.calls["b"] == 1 and r.calls["c"] == 1
    assert r.calls["undo:a"] == 1 and r.calls["undo:b"] == 2  # b's undo was in flight


async def test_parent_and_child_resume_together(r: Restartable) -> None:
    r.gates["inner"] = asyncio.Event()
    child = wf(s("inner"), id="child")
    r.workflows.append(child)
    h = r.new()
    ir = wf(
        {"op": "seq", "strategies": [{"op": "subworkflow", "workflow_ref": "child"}, s("outer")]},
        id="parent",
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: r.calls.get("inner") == 1, "child running")
    h = await r.restart()
    r.gates["inner"].set()
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "outer", "n": 1}
    assert r.calls == {"inner": 2, "outer": 1}


async def test_long_history_recovers_from_snapshot(r: Restartable) -> None:
    r.snapshot_every = 10
    r.gates["last"] = asyncio.Event()
    h = r.new()
    ir = wf({"op": "seq", "strategies": [*(s(f"s{i}") for i in range(30)), s("last")]})
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: r.calls.get("last") == 1, "last step running")
    snap = await h.engine.storage.load_snapshot(eid)
    assert snap is not None and snap[0] >= 60
    h = await r.restart()
    r.gates["last"].set()
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "last", "n": 2}
    assert all(r.calls[f"s{i}"] == 1 for i in range(30))
    kinds = await h.kinds(eid)
    assert "snapshot_taken" in kinds
    # The restored state is the state a full replay gives (checked on close too).
    full = await h.engine.rebuild_execution_from_events(eid)
    assert full.version == (await h.engine.get_execution(eid)).version


async def test_storage_outage_is_survived_and_the_run_resumes() -> None:
    from itonami.errors import StorageError
    from itonami.storage import MemoryStorage

    class Flaky(MemoryStorage):
        failures = 0

        def submit(self, req):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise StorageError("connection lost")
            return super().submit(req)

    store = Flaky("memory")
    h = Harness()
    h.storage = store  # type: ignore[assignment]
    calls: list[str] = []

    @h.registry.activity()
    async def step(name: str) -> dict:
        calls.append(name)
        if calls == ["a"]:
            store.failures = 3  # the next three commits fail
        return {"name": name}

    ir = wf({"op": "seq", "strategies": [s("a"), s("b")]})
    try:
        eid = await h.engine.start_workflow(ir, {})
        assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "b"}
        # a's result never became durable: a ran again once the store answered.
        assert calls == ["a", "a", "b"]
        interrupted = [
            e.data["error"]["type"]
            for e in await h.engine.get_event_history(eid)
            if e.kind == "activity_retry_scheduled"
        ]
        assert interrupted == ["AttemptInterrupted"]
    finally:
        await h.close()


async def test_signal_right_after_restart_is_not_lost(r: Restartable) -> None:
    """The resumed run may still be walking back to its wait (and about to
    park) when the signal arrives: the signal must wake it all the same."""
    h = r.new()
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                s("before"),
                {"op": "wait", "id": "w", "condition": {"type": "signal", "signal_name": "go"}},
                s("after"),
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    h = await r.restart()
    await h.engine.signal(eid, "go", None)  # no yield between start and signal
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "after", "n": 1}


async def test_delivered_event_is_not_waited_for_again_after_restart(r: Restartable) -> None:
    r.gates["after"] = asyncio.Event()
    h = r.new()
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "id": "paid", "condition": {"type": "event", "event_type": "paid"}},
                s("after"),
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await waiting(h.engine, eid)
    assert await h.engine.send_event("paid", {"amount": 5}) == [eid]
    await eventually(lambda: r.calls.get("after") == 1, "next step running")
    events = await h.engine.get_event_history(eid)
    kinds = [e.kind for e in events]
    at = kinds.index("external_event_received")
    assert kinds[at + 1] == "step_completed" and events[at + 1].data["output"] == {"amount": 5}
    h = await r.restart()
    r.gates["after"].set()
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "after", "n": 2}
    assert [e.kind for e in await h.engine.get_event_history(eid)].count("wait_started") == 1

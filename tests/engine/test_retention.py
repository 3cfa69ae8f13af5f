"""Retention through the engine: delete_execution, prune, with_retention (every backend)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from engine_helpers import Harness, act, waiting, wf

from itonami import ExecutionNotFinishedError, WorkflowEngine
from itonami.errors import ExecutionNotFoundError

WAIT = wf(
    {
        "op": "seq",
        "strategies": [
            act("step"),
            {"op": "wait", "id": "go", "condition": {"type": "signal", "signal_name": "go"}},
        ],
    },
    id="waits",
)
NESTED_CHILD = wf(act("step"), id="leaf")
NESTED = wf({"op": "subworkflow", "id": "child", "workflow_ref": "leaf"}, id="top")


def _activities(h: Harness) -> None:
    h.registry.register(lambda: {"ok": True}, name="step")


async def test_delete_refuses_unfinished_and_removes_a_finished_tree(h: Harness) -> None:
    _activities(h)
    h.workflows.append(NESTED_CHILD)
    engine = h.engine
    running = await engine.start_workflow(WAIT, {})
    await waiting(engine, running)
    with pytest.raises(ExecutionNotFinishedError, match="only finished executions"):
        await engine.delete_execution(running)
    done = await engine.start_workflow(NESTED, {})
    await engine.wait_for_completion(done, timeout=10)
    child = (await engine.query(done))["steps"]["0"]["child_execution_id"]
    assert await engine.delete_execution(done) is True
    for gone in (done, child):
        with pytest.raises(ExecutionNotFoundError):
            await engine.get_execution(gone)
        assert await engine.storage.read_events(gone) == []
    assert await engine.delete_execution(done) is False
    assert [r.execution_id for r in await engine.list_executions()] == [running]
    await engine.signal(running, "go")
    await engine.wait_for_completion(running, timeout=10)


async def test_prune_deletes_what_finished_before_and_never_what_runs(h: Harness) -> None:
    _activities(h)
    h.workflows.append(NESTED_CHILD)
    engine = h.engine
    old = [await engine.start_workflow(NESTED, {}) for _ in range(3)]
    for eid in old:
        await engine.wait_for_completion(eid, timeout=10)
    running = await engine.start_workflow(WAIT, {})
    await waiting(engine, running)
    await h.clock.advance(3600)
    recent = await engine.start_workflow(NESTED, {})
    await engine.wait_for_completion(recent, timeout=10)

    cutoff = h.clock.now() - 1800
    assert await engine.prune(finished_before=cutoff, workflow_id="other") == []
    deleted = await engine.prune(finished_before=cutoff, batch=2)  # 3 trees of 2
    assert set(old) <= set(deleted) and len(deleted) == 6
    left = {r.execution_id for r in await engine.list_executions()}
    assert running in left and recent in left and len(left) == 3  # recent + its child
    # a datetime works as well; the waiting execution stays whatever the time
    later = datetime.fromtimestamp(h.clock.now() + 10, tz=UTC)
    assert len(await engine.prune(finished_before=later)) == 2
    assert [r.execution_id for r in await engine.list_executions()] == [running]
    assert await engine.count_executions() == {"running": 1}


async def test_with_retention_prunes_in_the_background_on_the_engine_clock() -> None:
    h = Harness()
    _activities(h)
    engine = (
        WorkflowEngine.builder()
        .with_storage("memory")
        .with_activities(h.registry)
        .with_clock(h.clock)
        .with_retention(timedelta(hours=1), every=timedelta(minutes=10))
        .build()
    )
    async with engine:
        first = await engine.start_workflow(wf(act("step"), id="one"), {})
        await engine.wait_for_completion(first, timeout=10)
        await h.clock.advance(1800)  # finished 30 min ago: kept
        assert [r.execution_id for r in await engine.list_executions()] == [first]
        await h.clock.advance(3600)  # now 90 min: the next round deletes it

        # The retention task wakes on the clock and prunes: poll the store (bounded).
        for _ in range(2000):
            if not await engine.list_executions():
                break
            await asyncio.sleep(0.001)
        assert await engine.list_executions() == []


def test_with_retention_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        WorkflowEngine.builder().with_retention(-1)
    with pytest.raises(ValueError):
        WorkflowEngine.builder().with_retention(60, every=0)


def test_the_blocking_facade_deletes_and_prunes() -> None:
    h = Harness()
    _activities(h)
    builder = WorkflowEngine.builder().with_storage("memory").with_activities(h.registry)
    with builder.build_sync() as engine:
        eid = engine.start_workflow(wf(act("step"), id="one"), {})
        assert engine.wait_for_completion(eid, timeout=10) == {"ok": True}
        assert engine.count_executions(status="completed") == {"completed": 1}
        assert engine.list_executions(newest_first=True)[0].execution_id == eid
        assert engine.prune(finished_before=0.0) == []
        assert engine.delete_execution(eid) is True

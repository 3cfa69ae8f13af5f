"""The test kit's environment: time without sleeps, signals, events, history assertions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from itonami import ActivityRegistry, TestClock, WorkflowEngine, WorkflowFailedError, WorkflowIR
from itonami.engine.lifecycle import Blocked
from itonami.testing import BlockedForeverError, NotSettledError, WorkflowEnvironment

STORAGES = ["memory", "sqlite"]


def wf(strategy: dict[str, Any], **extra: Any) -> WorkflowIR:
    doc = {"id": "kit", "name": "kit test", "version": "1", "strategy": strategy, **extra}
    return WorkflowIR.from_dict({"workflow": doc})


def seq(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"op": "seq", "strategies": list(nodes)}


def act(ref: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"op": "activity", "activity_ref": ref, **({"id": id} if id else {}), **extra}


def sig(name: str, timeout: str | None = None, id: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"op": "wait", "condition": {"type": "signal", "signal_name": name}}
    if timeout:
        node["timeout"] = timeout
    if id:
        node["id"] = id
    return node


def evt(event_type: str) -> dict[str, Any]:
    return {"op": "wait", "condition": {"type": "event", "event_type": event_type}}


def prepare_registry(calls: list[str]) -> ActivityRegistry:
    registry = ActivityRegistry()

    # A sync function: it runs in a worker thread, which a bare yield to the
    # event loop does not wait for.
    @registry.activity()
    def prepare() -> dict[str, bool]:
        calls.append("prepare")
        return {"ready": True}

    return registry


def hang_registry() -> ActivityRegistry:
    registry = ActivityRegistry()

    @registry.activity()
    async def hang() -> None:
        await asyncio.get_running_loop().create_future()  # never answers

    return registry


@pytest.mark.parametrize("storage", STORAGES)
async def test_start_then_advance_past_a_timeout_fires_it(storage: str) -> None:
    calls: list[str] = []
    ir = wf(seq(act("prepare"), sig("approve", timeout="PT60S")))
    async with WorkflowEnvironment.start_local(
        activities=prepare_registry(calls), storage=storage
    ) as env:
        t0 = env.clock.now()
        eid = await env.start(ir)
        await env.advance(59)
        assert (await env.get_execution(eid)).status == "running"
        await env.advance(2)
        done = await env.wait_for_end(eid, skip_time=False)
        assert done.status == "failed"
        assert done.error["type"] == "WaitTimeout"
        assert env.clock.now() == t0 + 61
        assert calls == ["prepare"]
        await env.assert_history(
            eid,
            [
                "workflow_started",
                ("activity_completed", "0/0"),
                ("wait_started", "0/1"),
                ("step_failed", "0/1"),
                "workflow_failed",
            ],
            mode="subsequence",
        )


async def test_a_bare_test_clock_fires_a_timeout_right_after_start() -> None:
    """Without the environment, ``TestClock.advance`` still lets a run that
    needs no thread reach its wait before time passes."""
    clock = TestClock()
    engine = WorkflowEngine.builder().with_storage("memory").with_clock(clock).build()
    async with engine:
        eid = await engine.start_workflow(wf(sig("approve", timeout="PT60S")), {})
        await clock.advance(61)
        with pytest.raises(WorkflowFailedError, match="approve"):
            await engine.wait_for_completion(eid, timeout=10)


@pytest.mark.parametrize("storage", STORAGES)
async def test_a_signal_wait(storage: str) -> None:
    ir = wf(
        seq(act("prepare"), sig("approve", id="approval")),
        outputs=[{"name": "by", "type": "string", "source": "$.steps.approval.output.by"}],
    )
    async with WorkflowEnvironment.start_local(
        activities=prepare_registry([]), storage=storage
    ) as env:
        eid = await env.start(ir)
        await env.run_until_blocked()
        state = await env.query(eid)
        assert [w["name"] for w in state["waits"].values()] == ["approve"]
        await env.signal(eid, "approve", {"by": "ana"})
        assert await env.wait_for_completion(eid) == {"by": "ana"}
        await env.assert_history(
            eid,
            [
                "workflow_started",
                "activity_scheduled",
                "activity_started",
                "activity_completed",
                "wait_started",
                "signal_received",
                "step_completed",
                "workflow_completed",
            ],
        )


async def test_an_event_sent_right_after_start_reaches_its_wait() -> None:
    async with WorkflowEnvironment.start_local(activities=prepare_registry([])) as env:
        eid = await env.start(wf(seq(act("prepare"), evt("paid"))))
        assert await env.send_event("paid", {"amount": 3}) == [eid]
        await env.wait_for_completion(eid)
        assert await env.history_kinds(eid, step="0/1") == [
            "wait_started",
            "external_event_received",
            "step_completed",
        ]


@pytest.mark.parametrize("storage", STORAGES)
async def test_automatic_time_skipping_skips_retry_backoffs(storage: str) -> None:
    attempts: list[float] = []
    registry = ActivityRegistry()
    env = WorkflowEnvironment.start_local(activities=registry, storage=storage)

    @registry.activity()
    async def flaky() -> str:
        attempts.append(env.clock.now())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    policy = {"initial_interval": "PT1H", "backoff_coefficient": 2.0, "maximum_attempts": 5}
    async with env:
        t0 = env.clock.now()
        eid = await env.start(wf(act("flaky", retry_policy=policy)))
        assert await env.wait_for_completion(eid) == {"result": "ok"}
        # Three hours of backoff (1 h, then 2 h, jitter aside) passed on the
        # test clock; the test took no real time for it.
        assert len(attempts) == 3
        assert attempts[1] - attempts[0] >= 3600 * 0.5
        assert attempts[2] - attempts[0] >= 3600 * 1.5
        assert env.clock.now() - t0 == attempts[2] - t0
        kinds = await env.history_kinds(eid)
        assert kinds.count("activity_retry_scheduled") == 2


async def test_time_skipping_reports_a_run_only_the_test_can_unblock() -> None:
    async with WorkflowEnvironment.start_local() as env:
        eid = await env.start(wf(sig("approve")))
        with pytest.raises(BlockedForeverError, match="signal 'approve'") as info:
            await env.wait_for_completion(eid)
        assert set(info.value.waiting) == {eid}
        await env.signal(eid, "approve")
        await env.wait_for_completion(eid)


async def test_time_skipping_reaches_a_hanging_activitys_timeout() -> None:
    async with WorkflowEnvironment.start_local(activities=hang_registry()) as env:
        t0 = env.clock.now()
        policy = {"maximum_attempts": 1}
        eid = await env.start(wf(act("hang", timeout="PT30S", retry_policy=policy)))
        done = await env.wait_for_end(eid)
        assert done.status == "failed"
        assert "timeout" in done.error["message"]
        assert env.clock.now() == pytest.approx(t0 + 30)


async def test_run_until_blocked_names_what_never_settles() -> None:
    async with WorkflowEnvironment.start_local(activities=hang_registry()) as env:
        eid = await env.start(wf(act("hang")))
        with pytest.raises(NotSettledError, match=eid) as info:
            await env.run_until_blocked(timeout=0.2)
        assert info.value.executions == {eid: "live"}
        await env.cancel(eid)


async def test_time_skipping_does_not_skip_past_work_that_never_ends() -> None:
    async with WorkflowEnvironment.start_local(
        activities=hang_registry(), settle_timeout=0.5
    ) as env:
        t0 = env.clock.now()
        eid = await env.start(wf(act("hang")))  # no timeout: nothing on the clock ends it
        with pytest.raises(NotSettledError, match=eid):
            await env.wait_for_end(eid)
        assert env.clock.now() == t0
        await env.cancel(eid)


async def test_assert_history_shows_the_actual_history_when_it_differs() -> None:
    async with WorkflowEnvironment.start_local(activities=prepare_registry([])) as env:
        eid = await env.start(wf(act("prepare")))
        await env.wait_for_completion(eid)
        with pytest.raises(AssertionError, match="activity_completed @0"):
            await env.assert_history(eid, ["workflow_started", "workflow_completed"])
        with pytest.raises(AssertionError, match="subsequence"):
            await env.assert_history(
                eid, ["workflow_completed", "workflow_started"], mode="subsequence"
            )
        await env.assert_history(
            eid, ["workflow_started", "workflow_completed"], mode="subsequence"
        )


async def test_sqlite_environment_removes_its_files() -> None:
    env = WorkflowEnvironment.start_local(storage="sqlite")
    async with env:
        folder = env._cleanup
        assert folder is not None and (folder / "engine.db").exists()
    assert not folder.exists()


async def test_more_activities_can_be_registered_after_start() -> None:
    async with WorkflowEnvironment.start_local() as env:

        @env.activities.activity()
        async def late() -> int:
            return 7

        eid = await env.start(wf(act("late")))
        assert await env.wait_for_completion(eid) == {"result": 7}


async def test_engine_blocked_says_what_each_execution_waits_for() -> None:
    async with WorkflowEnvironment.start_local(activities=hang_registry()) as env:
        on_signal = await env.start(wf(sig("approve", timeout="PT60S"), id="s"))
        on_timer = await env.start(
            wf({"op": "wait", "condition": {"type": "timer", "duration": "PT1H"}}, id="t")
        )
        # Two branches: the run cannot park, so it is read while live.
        in_parallel = await env.start(
            wf({"op": "parallel", "branches": [sig("a"), sig("b")]}, id="p")
        )
        working = await env.start(wf(act("hang"), id="w"))
        with pytest.raises(NotSettledError):
            await env.run_until_blocked(timeout=0.2)
        t0 = env.clock.now()
        blocked = env.engine.blocked()
        assert blocked[working] is None
        assert env.engine.phase(on_signal) == "parked"
        assert blocked[on_signal] == Blocked(signals=frozenset({"approve"}), wake_at=t0 + 60)
        assert blocked[on_timer] == Blocked(wake_at=t0 + 3600)
        assert env.engine.phase(in_parallel) == "live"
        assert blocked[in_parallel] == Blocked(signals=frozenset({"a", "b"}))
        await env.cancel(working)
        await env.run_until_blocked()
        assert working not in env.engine.blocked()

"""Patterns meeting real life: cancel, timeouts, early signals, refused input,
engine faults. One regression test per class of lifecycle bug, on every
backend (the ``h`` fixture) and across restarts (the ``r`` fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engine_helpers import Harness, act, eventually, waiting, wf
from test_recovery import Restartable, r, s  # noqa: F401  (the fixture)

from itonami import NonRetryableError, RetryPolicy, WorkflowFailedError
from itonami.errors import ItonamiError, WaitTimeoutError


def _wait(condition: dict[str, Any], id: str | None, timeout: str | None) -> dict[str, Any]:
    node: dict[str, Any] = {"op": "wait", "condition": condition}
    if id:
        node["id"] = id
    if timeout:
        node["timeout"] = timeout
    return node


def sig(name: str, id: str | None = None, timeout: str | None = None) -> dict[str, Any]:
    return _wait({"type": "signal", "signal_name": name}, id, timeout)


def evt(event_type: str, id: str | None = None, timeout: str | None = None) -> dict[str, Any]:
    return _wait({"type": "event", "event_type": event_type}, id, timeout)


def timer(duration: str) -> dict[str, Any]:
    return {"op": "wait", "condition": {"type": "timer", "duration": duration}}


def noop_activities(h: Harness, calls: list[str] | None = None) -> None:
    @h.registry.activity()
    async def noop(name: str = "") -> dict:
        if calls is not None:
            calls.append(name)
        return {"name": name}

    @h.registry.activity()
    async def boom(name: str = "") -> None:
        if calls is not None:
            calls.append(name)
        raise NonRetryableError(f"{name} failed")


async def status(h: Harness, eid: str) -> str:
    return (await h.engine.get_execution(eid)).status


async def ends(h: Harness, eid: str) -> str:
    """The terminal status, waiting for it (bounded)."""
    try:
        await h.engine.wait_for_completion(eid, timeout=10)
    except WorkflowFailedError as e:
        return e.status
    return "completed"


async def idle(h: Harness) -> dict[str, int]:
    """Let everything runnable run; then the lifecycle counters, which must
    not move again while nothing happens from outside."""
    for _ in range(5):
        await asyncio.sleep(0.005)
    return h.engine.lifecycle_counts()


async def assert_quiet(h: Harness) -> None:
    before = await idle(h)
    after = await idle(h)
    assert after == before, f"the engine kept working while everything was blocked: {after}"


# ----------------------------------------------------------- 1. waits with timeouts


@pytest.mark.parametrize("kind", ["signal", "event"])
async def test_a_losing_wait_with_a_timeout_is_cancelled_cleanly(h: Harness, kind: str) -> None:
    noop_activities(h)
    loser = sig("go", timeout="PT30S") if kind == "signal" else evt("paid", timeout="PT30S")
    ir = wf(
        {
            "op": "parallel",
            "completion_condition": "any",
            "branches": [loser, act("noop", input_mapping={"name": "$.inputs.n"})],
        },
        inputs=[{"name": "n", "type": "string", "default": "x"}],
    )
    eid = await h.engine.start_workflow(ir, {})
    assert await ends(h, eid) == "completed"
    state = await h.engine.query(eid)
    assert state["steps"]["0/0"]["status"] == "cancelled"
    assert not state["timers"] and not state["waits"]


async def test_a_wait_with_a_timeout_whose_sibling_fails(h: Harness) -> None:
    noop_activities(h)
    ir = wf({"op": "parallel", "branches": [sig("go", timeout="PT30S"), act("boom")]})
    eid = await h.engine.start_workflow(ir, {})
    assert await ends(h, eid) == "failed"
    assert (await h.engine.query(eid))["steps"]["0/0"]["status"] == "cancelled"


async def test_workflow_timeout_during_a_wait_with_a_timeout(h: Harness) -> None:
    ir = wf(sig("go", timeout="PT60S"), timeout="PT10S")
    eid = await h.engine.start_workflow(ir, {})
    await waiting(h.engine, eid)
    await h.clock.advance(11)
    assert await ends(h, eid) == "timed_out"


@pytest.mark.parametrize("node", [sig("go", timeout="PT30S"), evt("paid", timeout="PT30S")])
async def test_cancel_during_a_wait_with_a_timeout(h: Harness, node: dict[str, Any]) -> None:
    eid = await h.engine.start_workflow(wf(node), {})
    await waiting(h.engine, eid)
    assert await h.engine.cancel(eid) is True
    assert await status(h, eid) == "cancelled"


async def test_a_wait_that_times_out_fails_its_step(h: Harness) -> None:
    eid = await h.engine.start_workflow(wf(sig("go", timeout="PT30S")), {})
    await waiting(h.engine, eid)
    await h.clock.advance(31)
    assert await ends(h, eid) == "failed"
    assert (await h.engine.query(eid))["error"]["type"] == "WaitTimeout"


# ----------------------------------------------------------- 2. cancel reaches every state


@pytest.mark.parametrize("what", ["signal", "timer", "backoff"])
async def test_cancel_reaches_a_parked_execution(h: Harness, what: str) -> None:
    @h.registry.activity(retry_policy=RetryPolicy(initial_interval=60, maximum_attempts=5))
    async def flaky() -> None:
        raise ConnectionError("down")

    node = {"signal": sig("go"), "timer": timer("PT60S"), "backoff": act("flaky")}[what]
    eid = await h.engine.start_workflow(wf(node), {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    assert await h.engine.cancel(eid, reason="stop") is True
    assert await status(h, eid) == "cancelled"
    assert (await h.engine.query(eid))["timers"] == {}
    assert await h.engine.cancel(eid) is False  # already ended


def child_wf() -> Any:
    return wf(sig("never"), id="child")


@pytest.mark.parametrize("how", ["cancel", "timeout", "losing"])
async def test_parked_children_end_with_their_parent(h: Harness, how: str) -> None:
    noop_activities(h)
    h.workflows.append(child_wf())
    sub = {"op": "subworkflow", "workflow_ref": "child"}
    if how == "losing":
        ir = wf({"op": "parallel", "completion_condition": "any", "branches": [sub, sig("win")]})
    else:
        ir = wf(sub, timeout="PT10S" if how == "timeout" else None)
    eid = await h.engine.start_workflow(ir, {})
    child = f"{eid}/0" if how != "losing" else f"{eid}/0/0"
    await eventually(lambda: h.engine.phase(child) == "parked", "child parked")
    if how == "cancel":
        assert await h.engine.cancel(eid) is True
        expected = "cancelled"
    elif how == "timeout":
        await h.clock.advance(11)
        expected = "timed_out"
    else:
        await h.engine.signal(eid, "win", 1)
        expected = "completed"
    assert await ends(h, eid) == expected
    assert await ends(h, child) == "cancelled"


async def test_signal_then_cancel_on_a_parked_sequence(h: Harness) -> None:
    eid = await h.engine.start_workflow(wf({"op": "seq", "strategies": [sig("a"), sig("b")]}), {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    await h.engine.signal(eid, "a", 1)
    assert await asyncio.wait_for(h.engine.cancel(eid), 10) is True
    assert await status(h, eid) == "cancelled"


async def test_cancel_right_after_a_new_engine_starts(r: Restartable) -> None:  # noqa: F811
    h = r.new()
    eid = await h.engine.start_workflow(wf({"op": "seq", "strategies": [sig("a"), s("x")]}), {})
    await waiting(h.engine, eid)
    h = await r.restart()
    assert await asyncio.wait_for(h.engine.cancel(eid), 10) is True
    assert await status(h, eid) == "cancelled"


async def test_cancel_of_an_execution_this_engine_does_not_hold(r: Restartable) -> None:  # noqa: F811
    h = r.new()
    eid = await h.engine.start_workflow(wf(sig("a")), {})
    await waiting(h.engine, eid)
    await h.engine.close()
    r.current = None
    h2 = r.new()
    h2._engine = (
        __import__("itonami")
        .WorkflowEngine.builder()
        .with_storage(r.url, **r.options)
        .with_clock(h2.clock)
        .with_recovery(False)
        .build()
    )
    assert h2.engine.phase(eid) is None
    assert await h2.engine.cancel(eid) is True
    assert await status(h2, eid) == "cancelled"


# ----------------------------------------------------------- 3. early and unknown signals


async def test_a_signal_sent_early_is_kept_without_spinning(h: Harness) -> None:
    ir = wf({"op": "seq", "strategies": [sig("approve", "a"), sig("ship", "s")]})
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    await h.engine.signal(eid, "ship", {"carrier": "x"})
    await h.engine.signal(eid, "unknown-name", 1)
    await assert_quiet(h)
    assert h.engine.phase(eid) == "parked"
    await h.engine.signal(eid, "approve", True)
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"carrier": "x"}
    steps = (await h.engine.query(eid))["steps"]
    assert steps["0/0"]["result"] is True


async def test_an_early_signal_survives_a_restart_without_spinning(r: Restartable) -> None:  # noqa: F811
    h = r.new()
    ir = wf({"op": "seq", "strategies": [sig("approve"), sig("ship")]})
    eid = await h.engine.start_workflow(ir, {})
    await waiting(h.engine, eid)
    await h.engine.signal(eid, "ship", 2)
    h = await r.restart()
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked again")
    await assert_quiet(h)
    await h.engine.signal(eid, "approve", 1)
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"result": 2}


# ----------------------------------------------------------- 4. refused signals


@pytest.mark.parametrize("bad", ["x" * 5_000_000, object()])
async def test_a_refused_signal_leaves_the_execution_able_to_proceed(h: Harness, bad: Any) -> None:
    eid = await h.engine.start_workflow(wf(sig("go")), {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    with pytest.raises((ItonamiError, TypeError)):
        await h.engine.signal(eid, "go", bad)
    assert await status(h, eid) == "running"
    await h.engine.signal(eid, "go", {})
    assert await h.engine.wait_for_completion(eid, timeout=10) == {}


# ----------------------------------------------------------- 5. map stops on failure


async def test_map_with_max_concurrency_starts_nothing_after_a_failure(h: Harness) -> None:
    calls: list[str] = []

    @h.registry.activity()
    async def work(n: int) -> int:
        calls.append(str(n))
        if n == 2:
            raise NonRetryableError("two")
        return n

    ir = wf(
        {
            "op": "map",
            "items": "$.inputs.xs",
            "max_concurrency": 1,
            "strategy": act("work", input_mapping={"n": "$.item"}),
        },
        inputs=[{"name": "xs", "type": "array", "required": True}],
    )
    eid = await h.engine.start_workflow(ir, {"xs": [1, 2, 3, 4]})
    assert await ends(h, eid) == "failed"
    assert calls == ["1", "2"]
    steps = (await h.engine.query(eid))["steps"]
    assert steps["0/2"]["status"] == steps["0/3"]["status"] == "cancelled"


# ----------------------------------------------------------- 6. external events


async def test_an_event_sent_once_the_wait_shows_open_is_delivered(h: Harness) -> None:
    eid = await h.engine.start_workflow(wf(evt("paid", "p")), {})
    await waiting(h.engine, eid)
    assert await h.engine.send_event("paid", {"amount": 1}) == [eid]
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"amount": 1}


async def test_an_event_sent_before_any_wait_opens_is_not_kept(h: Harness) -> None:
    noop_activities(h)
    assert await h.engine.send_event("paid", 1) == []
    eid = await h.engine.start_workflow(wf(evt("paid")), {})
    await waiting(h.engine, eid)
    assert await status(h, eid) == "running"
    assert await h.engine.send_event("paid", 2) == [eid]
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"result": 2}


async def test_an_event_right_after_a_new_engine_starts_is_delivered(r: Restartable) -> None:  # noqa: F811
    h = r.new()
    eid = await h.engine.start_workflow(wf({"op": "seq", "strategies": [evt("paid"), s("x")]}), {})
    await waiting(h.engine, eid)
    h = await r.restart()
    assert await h.engine.send_event("paid", {"n": 1}) == [eid]
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "x", "n": 1}


# ----------------------------------------------------------- 8. engine faults


async def test_an_engine_fault_is_recorded_and_the_run_retried(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from itonami.engine import runtime

    noop_activities(h)
    real = runtime.Run.compute_outputs
    failures = {"left": 1}

    def flaky(self: Any, scope: Any, out: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise AttributeError("a dependency broke")
        return real(self, scope, out)

    monkeypatch.setattr(runtime.Run, "compute_outputs", flaky)
    eid = await h.engine.start_workflow(
        wf(
            act("noop", input_mapping={"name": "$.inputs.n"}),
            inputs=[{"name": "n", "type": "string"}],
        ),
        {"n": "a"},
    )
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"name": "a"}
    errors = [e for e in await h.engine.get_event_history(eid) if e.kind == "engine_error"]
    assert len(errors) == 1
    assert errors[0].data["error"]["type"] == "AttributeError"
    assert "a dependency broke" in errors[0].data["error"]["traceback"]


async def test_an_engine_fault_that_persists_fails_the_execution(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from itonami.engine import runtime

    noop_activities(h)

    def broken(self: Any, scope: Any, out: Any) -> Any:
        raise AttributeError("always broken")

    monkeypatch.setattr(runtime.Run, "compute_outputs", broken)
    eid = await h.engine.start_workflow(wf(act("noop")), {})
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.error["type"] == "EngineError"
    assert "always broken" in info.value.error["message"]
    kinds = [e.kind for e in await h.engine.get_event_history(eid)]
    assert kinds.count("engine_error") == h.engine.max_engine_errors
    assert h.engine.phase(eid) is None


# ----------------------------------------------------------- 9. retry loops


async def test_an_instant_unlimited_retry_loop_does_not_starve_the_event_loop(h: Harness) -> None:
    @h.registry.activity(retry_policy=RetryPolicy(initial_interval=0, maximum_attempts=0))
    async def fails() -> None:
        raise ConnectionError("no")

    eid = await h.engine.start_workflow(wf(act("fails")), {})
    with pytest.raises(WaitTimeoutError):
        await h.engine.wait_for_completion(eid, timeout=0.3)
    assert await h.engine.cancel(eid) is True


# ----------------------------------------------------------- 7. map over a wildcard


async def test_map_items_from_a_wildcard_query(h: Harness) -> None:
    @h.registry.activity()
    async def ship(order: str) -> str:
        return f"shipped {order}"

    ir = wf(
        {
            "op": "map",
            "items": "$.inputs.orders[*].id",
            "strategy": act("ship", input_mapping={"order": "$.item"}),
        },
        inputs=[{"name": "orders", "type": "array", "required": True}],
    )
    eid = await h.engine.start_workflow(ir, {"orders": [{"id": "A"}, {"id": "B"}]})
    assert await h.engine.wait_for_completion(eid, timeout=10) == {
        "result": ["shipped A", "shipped B"]
    }


# ----------------------------------------------------------- 8. results of blocked runs


async def test_what_a_blocked_run_appended_last_is_durable(h: Harness) -> None:
    # Both elements' activities fail while their sibling branches wait: the
    # first failure's commit resolves at once on the memory store, and the
    # second failure, appended after it with no barrier to follow (the run
    # then blocks), must still reach the store, not stay in the core alone.

    @h.registry.activity()
    async def yields_then_fails() -> None:
        await asyncio.sleep(0)  # each failure lands in a later turn of the loop
        raise NonRetryableError("failed")

    branches = {"op": "parallel", "branches": [act("yields_then_fails"), sig("go")]}
    ir = wf(
        {
            "op": "map",
            "items": "$.inputs.items",
            "strategy": branches | {"completion_condition": {"at_least": 1}},
        },
        inputs=[{"name": "items", "type": "array", "default": [1, 2]}],
    )
    eid = await h.engine.start_workflow(ir, {})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        steps = (await h.engine.query(eid)).get("steps") or {}
        if sum(step["status"] == "failed" for step in steps.values()) == 2:
            break
        assert loop.time() < deadline, f"both activities should have failed: {steps}"
        await asyncio.sleep(0.001)
    await assert_quiet(h)
    live = await h.engine.query(eid)
    stored = await h.engine.storage.read_events(eid)
    failed = [e for e in stored if e.kind == "activity_failed"]
    assert (len(stored), len(failed)) == (live["version"], 2)
    rebuilt = await h.engine.rebuild_execution_from_events(eid)
    assert (rebuilt.status, rebuilt.version) == ("running", live["version"])

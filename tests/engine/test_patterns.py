"""Every workflow pattern through the engine API, success and failure paths."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import Harness, act, eventually, waiting, wf

from itonami import (
    InputValidationError,
    NonRetryableError,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowIR,
)
from itonami.storage import AppendRequest

SEED = (Path(__file__).parent.parent / "support" / "seed.kotoba").read_text()


def seed_registry(h: Harness, calls: list[str], decline: bool = False) -> None:
    reg = h.registry

    @reg.activity()
    def validate_order(order_id: str, customer_id: str) -> dict:
        calls.append("validate_order")
        return {"valid": True}

    @reg.activity()
    async def process_payment(amount: float) -> dict:
        calls.append("process_payment")
        if decline:
            raise NonRetryableError("card declined")
        return {"charged": amount}

    @reg.activity()
    def reserve_inventory(order_id: str) -> dict:
        calls.append("reserve_inventory")
        return {"reserved": order_id}

    @reg.activity()
    def send_confirmation() -> dict:
        calls.append("send_confirmation")
        return {"processed": True, "confirmationId": "CONF-123"}

    for name in ("cancel_payment", "release_inventory", "send_failure_notification"):

        def comp(_name: str = name, **_: Any) -> dict:
            calls.append(_name)
            return {}

        reg.register(comp, name=name)


async def test_seed_order_processing_runs_as_written(h: Harness) -> None:
    calls: list[str] = []
    seed_registry(h, calls)
    ir = WorkflowIR.from_jsonnet_string(SEED)
    out = await h.run(ir, {"orderId": "ORD-1", "customerId": "C-1", "amount": 10.5})
    assert out == {"processed": True, "confirmationId": "CONF-123"}
    assert calls[0] == "validate_order" and calls[-1] == "send_confirmation"
    assert sorted(calls[1:3]) == ["process_payment", "reserve_inventory"]


async def test_seed_saga_compensation_flow_runs_on_failure(h: Harness) -> None:
    calls: list[str] = []
    seed_registry(h, calls, decline=True)
    ir = WorkflowIR.from_jsonnet_string(SEED)
    eid = await h.engine.start_workflow(ir, {"orderId": "O", "customerId": "C", "amount": 1})
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.status == "compensated", info.value.error
    assert info.value.error["message"] == "card declined"
    assert calls[-3:] == ["cancel_payment", "release_inventory", "send_failure_notification"]
    assert "send_confirmation" not in calls


async def test_inputs_are_validated_with_defaults(h: Harness) -> None:
    @h.registry.activity()
    def echo(**kw: Any) -> dict:
        return kw

    ir = wf(
        act("echo", input_mapping={"a": "$.inputs.a", "b": "$.inputs.b"}),
        inputs=[
            {"name": "a", "type": "integer", "required": True},
            {"name": "b", "type": "string", "required": False, "default": "x"},
        ],
    )
    assert await h.run(ir, {"a": 1}) == {"a": 1, "b": "x"}
    with pytest.raises(InputValidationError):
        await h.engine.start_workflow(ir, {"a": "not a number"})
    with pytest.raises(InputValidationError):
        await h.engine.start_workflow(ir, {})


async def _commits_of_one_run(h: Harness, *steps: dict[str, Any]) -> list[list[str]]:
    """Run a sequence of ``steps`` (``noop`` is a registered activity) once
    more after a warm-up; the event kinds of each of its appends handed to
    the store (the engine's own background writes, lease renewals and claims,
    are not this execution's commits)."""

    @h.registry.activity()
    async def noop() -> dict:
        return {"ok": True}

    ir = wf({"op": "seq", "strategies": list(steps)})
    await h.run(ir)  # registers the definition and warms up
    storage = h.engine.storage
    commits: list[tuple[str, list[str]]] = []
    real_submit = storage.submit

    def counting(req: AppendRequest) -> Any:
        commits.append((req.execution_id, [e.kind for e in req.events]))
        return real_submit(req)

    storage.submit = counting  # type: ignore[method-assign]
    try:
        eid = await h.engine.start_workflow(ir, {})
        await h.engine.wait_for_completion(eid, timeout=10)
    finally:
        del storage.submit
    assert (await h.engine.get_execution(eid)).status == "completed"
    return [kinds for owner, kinds in commits if owner == eid]


async def test_three_steps_take_four_commits_the_first_with_the_start(h: Harness) -> None:
    """workflow_started rides with the first step's barrier, not in a commit of
    its own: a step's result is durable before the next step runs, and nothing more."""
    commits = await _commits_of_one_run(h, act("noop"), act("noop"), act("noop"))
    assert len(commits) == 4
    assert commits[0] == ["workflow_started", "activity_scheduled", "activity_started"]


async def test_a_decision_rides_with_its_branchs_first_step(h: Harness) -> None:
    """A decision is no side effect, so it takes no barrier of its own: it is
    committed with the first step of the branch it chose."""
    decision = {"op": "decision", "conditions": [{"condition": "true", "branch": act("noop")}]}
    commits = await _commits_of_one_run(h, act("noop"), act("noop"), decision)
    assert len(commits) == 4
    assert commits[2] == [
        "activity_completed",
        "decision_made",
        "activity_scheduled",
        "activity_started",
    ]


async def test_a_fired_timer_rides_with_the_next_step(h: Harness) -> None:
    """The timer's schedule is committed before the run sleeps; its firing
    is committed with the next step's barrier, not in a commit of its own."""
    timer = {"op": "wait", "condition": {"type": "timer", "duration": 0}}
    commits = await _commits_of_one_run(h, act("noop"), timer, act("noop"))
    assert commits[-2][:3] == ["timer_fired", "step_completed", "activity_scheduled"]
    assert len(commits) == 4


async def test_retries_until_success_with_backoff(h: Harness) -> None:
    attempts: list[int] = []

    @h.registry.activity()
    async def flaky() -> dict:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return {"ok": True}

    policy = {"initial_interval": "PT1S", "backoff_coefficient": 2.0, "maximum_attempts": 5}
    ir = wf(act("flaky", "f", retry_policy=policy))
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending == 1, "first retry timer")
    t0 = h.clock.now()
    assert h.clock.next_wakeup() == pytest.approx(t0 + 1.0)
    await h.clock.advance(1.0)
    await eventually(lambda: len(attempts) == 2 and h.clock.pending == 1, "second retry timer")
    assert h.clock.next_wakeup() == pytest.approx(t0 + 1.0 + 2.0)
    await h.clock.advance(2.0)
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"ok": True}
    kinds = await h.kinds(eid)
    assert kinds.count("activity_retry_scheduled") == 2
    assert kinds.count("activity_scheduled") == 3
    state = await h.engine.query(eid)
    assert state["steps"]["0"]["attempts"] == 3


async def test_non_retryable_error_fails_at_once(h: Harness) -> None:
    calls = 0

    class PaymentDeclined(Exception):
        pass

    @h.registry.activity()
    def pay() -> None:
        nonlocal calls
        calls += 1
        raise PaymentDeclined("declined")

    ir = wf(
        act(
            "pay", retry_policy={"maximum_attempts": 5, "non_retryable_errors": ["PaymentDeclined"]}
        )
    )
    with pytest.raises(WorkflowFailedError) as info:
        await h.run(ir)
    assert calls == 1
    assert info.value.status == "failed"
    assert info.value.error["type"] == "PaymentDeclined"


async def test_attempts_exhausted_fails_with_last_error(h: Harness) -> None:
    @h.registry.activity()
    async def broken() -> None:
        raise ValueError("always")

    ir = wf(act("broken", retry_policy={"maximum_attempts": 2, "initial_interval": 0}))
    with pytest.raises(WorkflowFailedError) as info:
        await h.run(ir)
    assert info.value.error["type"] == "ValueError"
    eid = info.value.execution_id
    assert (await h.kinds(eid)).count("activity_scheduled") == 2


async def test_start_to_close_timeout_on_test_clock(h: Harness) -> None:
    started = 0

    @h.registry.activity()
    async def hang() -> None:
        nonlocal started
        started += 1
        await asyncio.Event().wait()

    ir = wf(
        act("hang", timeout="PT10S", retry_policy={"maximum_attempts": 2, "initial_interval": 0})
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: started == 1, "first attempt")
    await h.clock.advance(10)
    await eventually(lambda: started == 2, "second attempt")
    await h.clock.advance(10)
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.error["type"] == "ActivityTimeoutError"


async def test_workflow_timeout_is_enforced(h: Harness) -> None:
    @h.registry.activity()
    async def hang() -> None:
        await asyncio.Event().wait()

    ir = wf(act("hang"), timeout="PT30M")
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending >= 1, "workflow deadline armed")
    await h.clock.advance(30 * 60)
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.status == "timed_out"


def gated_registry(h: Harness) -> dict[str, asyncio.Event]:
    gates: dict[str, asyncio.Event] = {}
    cancelled: list[str] = []

    @h.registry.activity()
    async def gate(name: str) -> dict:
        ev = gates.setdefault(name, asyncio.Event())
        try:
            await ev.wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        return {"name": name}

    gates["__cancelled__"] = cancelled  # type: ignore[assignment]
    return gates


async def test_parallel_all_collects_results_in_order(h: Harness) -> None:
    gates = gated_registry(h)
    ir = wf(
        {
            "op": "parallel",
            "branches": [act("gate", input_mapping={"name": n}) for n in ("a", "b", "c")],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: len(gates) == 4, "all branches running")
    for n in ("c", "a", "b"):
        gates[n].set()
    out = await h.engine.wait_for_completion(eid, timeout=10)
    assert out == {"result": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}


@pytest.mark.parametrize(
    ("condition", "finish", "expect_cancelled"),
    [("any", ["b"], ["0/0", "0/2"]), ({"at_least": 2}, ["c", "a"], ["0/1"])],
)
async def test_parallel_any_and_at_least_cancel_the_rest(
    h: Harness, condition: Any, finish: list[str], expect_cancelled: list[str]
) -> None:
    gates = gated_registry(h)
    ir = wf(
        {
            "op": "parallel",
            "completion_condition": condition,
            "branches": [act("gate", input_mapping={"name": n}) for n in ("a", "b", "c")],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: len(gates) == 4, "all branches running")
    for n in finish:
        gates[n].set()
        await asyncio.sleep(0)
    out = (await h.engine.wait_for_completion(eid, timeout=10))["result"]
    assert [o["name"] for o in out if o] == sorted(finish)
    events = await h.engine.get_event_history(eid)
    cancelled = [e.step for e in events if e.kind == "step_cancelled"]
    assert cancelled == expect_cancelled
    assert sorted(gates["__cancelled__"]) == sorted(  # type: ignore[arg-type]
        n for n in ("a", "b", "c") if n not in finish
    )
    state = await h.engine.query(eid)
    for path in expect_cancelled:
        assert state["steps"][path]["status"] == "cancelled"


async def test_parallel_all_fails_when_a_branch_fails(h: Harness) -> None:
    gates = gated_registry(h)

    @h.registry.activity()
    async def boom() -> None:
        raise NonRetryableError("boom")

    ir = wf({"op": "parallel", "branches": [act("gate", input_mapping={"name": "a"}), act("boom")]})
    with pytest.raises(WorkflowFailedError) as info:
        await h.run(ir)
    assert info.value.error["message"] == "boom"
    assert gates["__cancelled__"] == ["a"]  # type: ignore[comparison-overlap]


async def test_map_honours_concurrency_limit_and_keeps_order(h: Harness) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    @h.registry.activity()
    async def square(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return x * x

    ir = wf(
        {
            "op": "map",
            "id": "m",
            "items": "$.inputs.xs",
            "max_concurrency": 3,
            "strategy": act("square", input_mapping={"x": "$.item"}),
        },
        inputs=[{"name": "xs", "type": "array", "required": True}],
    )
    eid = await h.engine.start_workflow(ir, {"xs": list(range(10))})
    await eventually(lambda: running == 3, "three iterations running")
    release.set()
    out = await h.engine.wait_for_completion(eid, timeout=10)
    assert out == {"result": [x * x for x in range(10)]}
    assert peak == 3
    state = await h.engine.query(eid)
    assert state["steps"]["0/9"]["result"] == 81


async def test_map_over_non_list_fails_clearly(h: Harness) -> None:
    @h.registry.activity()
    def noop() -> None:
        return None

    ir = wf({"op": "map", "items": "$.inputs.xs", "strategy": act("noop")})
    with pytest.raises(WorkflowFailedError) as info:
        await h.run(ir, {"xs": 5})
    assert "must select an array, got integer" in info.value.error["message"]


@pytest.mark.parametrize(("amount", "taken"), [(5000, "big"), (50, "small"), (0, "zero")])
async def test_decision_takes_the_first_true_branch(h: Harness, amount: int, taken: str) -> None:
    @h.registry.activity()
    def label(name: str) -> dict:
        return {"label": name}

    ir = wf(
        {
            "op": "decision",
            "conditions": [
                {
                    "condition": "inputs.amount > 1000",
                    "branch": act("label", input_mapping={"name": "big"}),
                },
                {
                    "condition": "inputs.amount > 0",
                    "branch": act("label", input_mapping={"name": "small"}),
                },
            ],
            "default_branch": act("label", input_mapping={"name": "zero"}),
        }
    )
    eid = await h.engine.start_workflow(ir, {"amount": amount})
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"label": taken}
    decisions = [e.data for e in await h.engine.get_event_history(eid) if e.kind == "decision_made"]
    assert decisions == [{"branch": {"big": 0, "small": 1, "zero": "default"}[taken]}]


async def test_decision_on_previous_step_output(h: Harness) -> None:
    @h.registry.activity()
    def check() -> dict:
        return {"ok": False}

    @h.registry.activity()
    def label(name: str) -> dict:
        return {"label": name}

    ir = wf(
        {
            "op": "seq",
            "strategies": [
                act("check", "validate"),
                {
                    "op": "decision",
                    "conditions": [
                        {
                            "condition": "steps.validate.output.ok",
                            "branch": act("label", input_mapping={"name": "yes"}),
                        }
                    ],
                    "default_branch": act("label", input_mapping={"name": "no"}),
                },
            ],
        }
    )
    assert await h.run(ir) == {"label": "no"}


async def test_timer_wait_is_durable_and_fires_on_the_clock(h: Harness) -> None:
    @h.registry.activity()
    def after() -> dict:
        return {"done": True}

    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "condition": {"type": "timer", "duration": "P1D"}},
                act("after"),
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending == 1, "timer armed")
    state = await h.engine.query(eid)
    assert state["timers"]["0/0"] == int((h.clock.now() + 86400) * 1e6)
    await h.clock.advance(86399)
    assert (await h.engine.get_execution(eid)).status == "running"
    await h.clock.advance(1)
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"done": True}
    kinds = await h.kinds(eid)
    assert kinds.index("timer_scheduled") < kinds.index("timer_fired")


SIGNAL_WF = {
    "op": "seq",
    "strategies": [
        {"op": "wait", "id": "approval", "condition": {"type": "signal", "signal_name": "approve"}},
        act(
            "finish",
            input_mapping={"by": "$.steps.approval.output.by", "sig": "$.signals.approve.by"},
        ),
    ],
}


def finish_registry(h: Harness) -> None:
    @h.registry.activity()
    def finish(by: str, sig: str) -> dict:
        return {"approved_by": by, "sig": sig}


async def test_signal_after_the_wait_started(h: Harness) -> None:
    finish_registry(h)
    eid = await h.engine.start_workflow(wf(SIGNAL_WF), {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked on the signal wait")
    await h.engine.signal(eid, "approve", {"by": "alice"})
    assert await h.engine.wait_for_completion(eid, timeout=10) == {
        "approved_by": "alice",
        "sig": "alice",
    }


async def test_signal_before_the_wait_starts_is_kept(h: Harness) -> None:
    finish_registry(h)
    gate = asyncio.Event()

    @h.registry.activity()
    async def slow() -> None:
        await gate.wait()

    ir = wf({"op": "seq", "strategies": [act("slow"), *SIGNAL_WF["strategies"]]})
    eid = await h.engine.start_workflow(ir, {})
    await h.engine.signal(eid, "approve", {"by": "bob"})
    gate.set()
    assert await h.engine.wait_for_completion(eid, timeout=10) == {
        "approved_by": "bob",
        "sig": "bob",
    }
    state = await h.engine.query(eid)
    assert state["signals"]["approve"] == [{"by": "bob"}]
    assert state["signal_cursor"]["approve"] == 1


async def test_signal_wait_timeout_fails_the_step(h: Harness) -> None:
    ir = wf({"op": "wait", "condition": {"type": "signal", "signal_name": "go"}, "timeout": "PT1H"})
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.clock.pending >= 1, "timeout armed")
    await h.clock.advance(3600)
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.error["type"] == "WaitTimeout"


async def test_external_events_are_routed_by_filter(h: Harness) -> None:
    ir = wf(
        {
            "op": "wait",
            "id": "paid",
            "condition": {
                "type": "event",
                "event_type": "payment",
                "filter": "event.order == inputs.order",
            },
        }
    )
    a = await h.engine.start_workflow(ir, {"order": "A"})
    b = await h.engine.start_workflow(ir, {"order": "B"})
    await waiting(h.engine, a, b)
    assert await h.engine.send_event("payment", {"order": "C"}) == []
    assert await h.engine.send_event("payment", {"order": "B", "amount": 3}) == [b]
    assert await h.engine.wait_for_completion(b, timeout=10) == {"order": "B", "amount": 3}
    assert (await h.engine.get_execution(a)).status == "running"
    assert await h.engine.send_event("payment", {"order": "A"}) == [a]
    assert await h.engine.wait_for_completion(a, timeout=10) == {"order": "A"}


def saga_registry(h: Harness, log: list[str], fail_at: str) -> None:
    for name in ("reserve", "charge", "ship"):

        async def do(_name: str = name, **_: Any) -> dict:
            if _name == fail_at:
                raise NonRetryableError(f"{_name} failed")
            log.append(_name)
            return {"did": _name}

        async def undo(_name: str = name, **kw: Any) -> dict:
            log.append(f"undo_{_name}")
            return {"undid": kw}

        h.registry.register(do, name=name)
        h.registry.register(undo, name=f"undo_{name}")


def saga_wf() -> WorkflowIR:
    return wf(
        {
            "op": "saga",
            "main_flow": {
                "op": "seq",
                "strategies": [
                    act(
                        "reserve",
                        "reserve",
                        compensation={
                            "op": "activity",
                            "activity_ref": "undo_reserve",
                            "input_mapping": {"what": "$.step.output.did"},
                        },
                    ),
                    act("charge", "charge", compensation="undo_charge"),
                    act("ship", "ship", compensation="undo_ship"),
                ],
            },
        }
    )


async def test_saga_compensates_exactly_the_completed_steps_in_reverse(h: Harness) -> None:
    log: list[str] = []
    saga_registry(h, log, fail_at="ship")
    with pytest.raises(WorkflowFailedError) as info:
        await h.run(saga_wf())
    assert log == ["reserve", "charge", "undo_charge", "undo_reserve"]
    assert info.value.status == "compensated"
    assert info.value.error["message"] == "ship failed"
    events = await h.engine.get_event_history(info.value.execution_id)
    comp = [e for e in events if e.kind == "compensation_step_completed"]
    assert [e.step for e in comp] == ["0/m/1", "0/m/0"]
    assert comp[1].data["result"] == {"undid": {"what": "reserve"}}
    state = await h.engine.query(info.value.execution_id)
    assert state["status"] == "compensated"
    assert state["compensations"]["0"]["compensated"] == ["0/m/1", "0/m/0"]


async def test_saga_that_succeeds_compensates_nothing(h: Harness) -> None:
    log: list[str] = []
    saga_registry(h, log, fail_at="nothing")
    assert await h.run(saga_wf()) == {"did": "ship"}
    assert log == ["reserve", "charge", "ship"]


async def test_subworkflows_nest_and_propagate_failure(h: Harness) -> None:
    @h.registry.activity()
    def double(x: int) -> dict:
        if x < 0:
            raise NonRetryableError("negative")
        return {"y": 2 * x}

    leaf = wf(
        act("double", input_mapping={"x": "$.inputs.x"}),
        id="leaf",
        inputs=[{"name": "x", "type": "integer", "required": True}],
    )
    middle = wf(
        {"op": "subworkflow", "workflow_ref": "leaf", "input_mapping": {"x": "$.inputs.x"}},
        id="middle",
        inputs=[{"name": "x", "type": "integer", "required": True}],
    )
    top = wf(
        {
            "op": "sub_workflow",
            "id": "child",
            "workflow_ref": "middle",
            "version": "1",
            "input_mapping": {"x": "$.inputs.x"},
        },
        id="top",
        inputs=[{"name": "x", "type": "integer", "required": True}],
    )
    for ir in (leaf, middle):
        await h.engine.register_workflow(ir)
    eid = await h.engine.start_workflow(top, {"x": 21})
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"y": 42}
    children = [
        e.data["child_execution_id"]
        for e in await h.engine.get_event_history(eid)
        if e.kind == "child_workflow_started"
    ]
    assert len(children) == 1
    child = await h.engine.get_execution(children[0])
    assert child.status == "completed" and child.parent["execution_id"] == eid

    bad = await h.engine.start_workflow(top, {"x": -1})
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(bad, timeout=10)
    assert info.value.error["type"] == "ChildWorkflowFailed"
    assert info.value.error["cause"]["type"] == "ChildWorkflowFailed"
    assert info.value.error["cause"]["cause"]["message"] == "negative"


async def test_unknown_subworkflow_is_rejected_before_running(h: Harness) -> None:
    ir = wf({"op": "subworkflow", "workflow_ref": "nope"}, id="parent")
    with pytest.raises(WorkflowDefinitionError) as info:
        await h.engine.start_workflow(ir, {})
    assert "nope" in str(info.value)
    assert await h.engine.list_executions() == []


async def test_cancel_mid_flight_cancels_children(h: Harness) -> None:
    gates = gated_registry(h)
    child = wf(act("gate", input_mapping={"name": "child"}), id="child")
    await h.engine.register_workflow(child)
    ir = wf(
        {
            "op": "parallel",
            "branches": [
                act("gate", input_mapping={"name": "own"}),
                {"op": "subworkflow", "workflow_ref": "child"},
            ],
        },
        id="parent",
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: "own" in gates and "child" in gates, "both running")
    assert await h.engine.cancel(eid, reason="user asked") is True
    with pytest.raises(WorkflowFailedError) as info:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert info.value.status == "cancelled"
    child_id = f"{eid}/0/1"
    await eventually(lambda: h.engine.phase(child_id) != "live", "child stopped")
    assert (await h.engine.get_execution(child_id)).status == "cancelled"
    assert sorted(gates["__cancelled__"]) == ["child", "own"]  # type: ignore[arg-type]
    assert await h.engine.cancel(eid) is False


async def test_start_is_idempotent_by_execution_id(h: Harness) -> None:
    calls = 0

    @h.registry.activity()
    def once() -> dict:
        nonlocal calls
        calls += 1
        return {"n": calls}

    ir = wf(act("once"))
    a = await h.engine.start_workflow(ir, {}, execution_id="order-42")
    b = await h.engine.start_workflow(ir, {}, execution_id="order-42")
    assert a == b == "order-42"
    assert await h.engine.wait_for_completion(a, timeout=10) == {"n": 1}
    assert await h.engine.start_workflow(ir, {}, execution_id="order-42") == "order-42"
    assert calls == 1


async def test_outputs_from_sources_and_last_step(h: Harness) -> None:
    @h.registry.activity()
    def first() -> dict:
        return {"a": 1, "shared": "first"}

    @h.registry.activity()
    def second() -> dict:
        return {"b": 2, "shared": "second"}

    ir = wf(
        {"op": "seq", "strategies": [act("first", "one"), act("second", "two")]},
        outputs=[
            {"name": "a", "type": "integer", "source": "$.steps.one.output.a"},
            {"name": "shared", "type": "string"},
            {"name": "b", "type": "integer"},
        ],
    )
    assert await h.run(ir) == {"a": 1, "shared": "second", "b": 2}


async def test_unknown_activity_is_a_definition_error_and_nothing_is_stored(h: Harness) -> None:
    ir = wf(act("does_not_exist"))
    with pytest.raises(WorkflowDefinitionError) as info:
        await h.engine.start_workflow(ir, {})
    assert info.value.problems[0].path.endswith("activity_ref")
    assert await h.engine.list_executions() == []


async def test_unserialisable_result_fails_the_step_clearly(h: Harness) -> None:
    @h.registry.activity()
    def weird() -> object:
        return {"x": object()}

    with pytest.raises(WorkflowFailedError) as info:
        await h.run(wf(act("weird")))
    assert info.value.error["retryable"] is False
    assert "not JSON" in info.value.error["message"]


async def test_oversized_result_is_rejected_and_history_kept() -> None:
    h = Harness()

    @h.registry.activity()
    def huge() -> str:
        return "x" * 10_000

    h._engine = (
        __import__("itonami")
        .WorkflowEngine.builder()
        .with_storage("memory")
        .with_activities(h.registry)
        .with_clock(h.clock)
        .with_max_payload(1000)
        .build()
    )
    try:
        with pytest.raises(WorkflowFailedError) as info:
            await h.run(wf(act("huge")))
        assert info.value.error["type"] == "PayloadTooLargeError"
        await h.engine.verify(info.value.execution_id)
    finally:
        await h.close()


async def test_oversized_inputs_are_refused_and_nothing_is_stored() -> None:
    from itonami import PayloadTooLargeError, WorkflowEngine

    h = Harness()

    @h.registry.activity()
    def noop() -> None:
        return None

    h._engine = (
        WorkflowEngine.builder()
        .with_storage("memory")
        .with_activities(h.registry)
        .with_clock(h.clock)
        .with_max_payload(1000)
        .build()
    )
    try:
        with pytest.raises(PayloadTooLargeError) as info:
            await h.engine.start_workflow(wf(act("noop")), {"blob": "x" * 5000}, execution_id="big")
        assert info.value.limit == 1000 and info.value.size > 5000
        assert await h.engine.list_executions() == []
        assert not h.engine.core.contains("big")
    finally:
        await h.close()


async def test_concurrent_signals_to_a_parked_execution_are_all_delivered(h: Harness) -> None:
    @h.registry.activity()
    def collect(a: Any, b: Any) -> dict:
        return {"got": sorted([a["n"], b["n"]])}

    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "id": "one", "condition": {"type": "signal", "signal_name": "s"}},
                {"op": "wait", "id": "two", "condition": {"type": "signal", "signal_name": "s"}},
                act(
                    "collect",
                    input_mapping={"a": "$.steps.one.output", "b": "$.steps.two.output"},
                ),
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    await asyncio.gather(h.engine.signal(eid, "s", {"n": 1}), h.engine.signal(eid, "s", {"n": 2}))
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"got": [1, 2]}


async def test_executions_sleeping_on_timers_leave_memory_and_wake_in_order(h: Harness) -> None:
    woke: list[int] = []

    @h.registry.activity()
    def after(n: int) -> dict:
        woke.append(n)
        return {"n": n}

    ir = wf(
        {
            "op": "seq",
            "strategies": [
                {"op": "wait", "condition": {"type": "timer", "duration": "PT1H"}},
                act("after", input_mapping={"n": "$.inputs.n"}),
            ],
        },
        inputs=[{"name": "n", "type": "integer", "required": True}],
    )
    ids = [await h.engine.start_workflow(ir, {"n": n}) for n in range(20)]
    await eventually(lambda: all(h.engine.phase(i) == "parked" for i in ids), "all parked")
    assert h.engine.lifecycle_counts()["live"] == 0
    await h.clock.advance(3599)
    assert woke == []
    await h.clock.advance(1)
    for eid in ids:
        await h.engine.wait_for_completion(eid, timeout=10)
    assert sorted(woke) == list(range(20))

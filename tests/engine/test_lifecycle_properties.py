"""Generative lifecycle test: random workflow trees by random schedules of
what happens to executions in real life.

Trees use every op (activity with failures, retries on the clock and
compensations, seq, parallel, map, decision, timer / signal / event waits
with timeouts, saga, sub-workflow) and sometimes a workflow timeout. The
schedule sends signals (before, during and after their waits; duplicate
and unknown names; oversized and non-JSON payloads), external events,
cancels, advances the test clock and closes and reopens the engine on the
same store. After every action settles:

* every execution is terminal, or held by the engine and blocked on
  something its state names (an open wait, a timer, a retry, a child);
* a ``cancel`` of an unfinished execution returns True and it ends
  ``cancelled``, its children too;
* no activity runs for an execution that had ended;
* nothing moves while everything is blocked (the engine's lifecycle
  counters stay still);
* a fresh replay of every stored history equals the live state and its
  Merkle chain verifies.

``ITONAMI_LIFECYCLE_EXAMPLES`` sets how many schedules run (``make
torture`` runs many more than CI).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from typing import Any

import pytest
from engine_helpers import wf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from itonami import (
    ActivityRegistry,
    NonRetryableError,
    TestClock,
    WorkflowEngine,
    WorkflowIR,
)
from itonami.errors import ExecutionNotRunningError, ItonamiError

EXAMPLES = int(os.environ.get("ITONAMI_LIFECYCLE_EXAMPLES", "25"))
TERMINAL = {"completed", "failed", "cancelled", "timed_out", "compensated"}
SIGNALS = ["a", "b"]
EVENTS = ["e1"]

CHILD = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "child",
            "name": "child",
            "version": "1",
            "strategy": {
                "op": "seq",
                "strategies": [
                    {
                        "op": "wait",
                        "condition": {"type": "signal", "signal_name": "a"},
                        "timeout": "PT90S",
                    },
                    {"op": "activity", "activity_ref": "work", "input_mapping": {"fail": False}},
                ],
            },
        }
    }
)


def trees() -> st.SearchStrategy[dict[str, Any]]:
    activity = st.builds(
        lambda fail, flaky, comp: {
            "op": "activity",
            "activity_ref": "flaky" if flaky else "work",
            "input_mapping": {"fail": fail},
            "retry_policy": {"maximum_attempts": 3, "initial_interval": "PT20S"}
            if flaky
            else {"maximum_attempts": 1},
            **({"compensation": {"op": "activity", "activity_ref": "undo"}} if comp else {}),
        },
        st.booleans(),
        st.booleans(),
        st.booleans(),
    )
    timeout = st.sampled_from([None, "PT30S", "PT120S"])
    wait_signal = st.builds(
        lambda name, t: {
            "op": "wait",
            "condition": {"type": "signal", "signal_name": name},
            **({"timeout": t} if t else {}),
        },
        st.sampled_from(SIGNALS),
        timeout,
    )
    wait_event = st.builds(
        lambda t: {
            "op": "wait",
            "condition": {"type": "event", "event_type": "e1"},
            **({"timeout": t} if t else {}),
        },
        timeout,
    )
    wait_timer = st.builds(
        lambda d: {"op": "wait", "condition": {"type": "timer", "duration": d}},
        st.sampled_from(["PT10S", "PT60S"]),
    )
    sub = st.just({"op": "subworkflow", "workflow_ref": "child"})
    leaf = st.one_of(activity, wait_signal, wait_event, wait_timer, sub)

    def composite(kids: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        few = st.lists(kids, min_size=1, max_size=3)
        return st.one_of(
            st.builds(lambda ks: {"op": "seq", "strategies": ks}, few),
            st.builds(
                lambda ks, n: {
                    "op": "parallel",
                    "branches": ks,
                    "completion_condition": {"at_least": min(n, len(ks))},
                },
                few,
                st.integers(1, 3),
            ),
            st.builds(
                lambda k, limit: {
                    "op": "map",
                    "items": "$.inputs.items",
                    "strategy": k,
                    **({"max_concurrency": limit} if limit else {}),
                },
                kids,
                st.sampled_from([None, 1, 2]),
            ),
            st.builds(
                lambda a, b: {
                    "op": "decision",
                    "conditions": [{"condition": "inputs.flag", "branch": a}],
                    "default_branch": b,
                },
                kids,
                kids,
            ),
            st.builds(lambda k: {"op": "saga", "main_flow": k}, kids),
        )

    return st.recursive(leaf, composite, max_leaves=5)


def actions() -> st.SearchStrategy[list[tuple[Any, ...]]]:
    action = st.one_of(
        st.tuples(
            st.just("signal"),
            st.integers(0, 3),
            st.sampled_from([*SIGNALS, "zz"]),
            st.sampled_from(["ok", "ok", "ok", "big", "nonjson"]),
        ),
        st.tuples(st.just("event"), st.sampled_from(EVENTS)),
        st.tuples(st.just("cancel"), st.integers(0, 3)),
        st.tuples(st.just("advance"), st.sampled_from([5, 31, 61, 3600])),
        st.tuples(st.just("restart")),
    )
    return st.lists(action, min_size=1, max_size=8)


class World:
    """One store, engines in turn over it, and what the activities did."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = TestClock()
        self.calls: Counter[str] = Counter()
        self.registry = ActivityRegistry()
        self.engine: WorkflowEngine | None = None
        self.ended: set[str] = set()

        calls = self.calls

        @self.registry.activity()
        async def work(fail: bool = False) -> dict:
            from itonami import current_context

            eid = current_context().execution_id  # type: ignore[union-attr]
            assert eid not in self.ended, f"an activity ran for {eid} after it ended"
            calls[eid] += 1
            await asyncio.sleep(0)
            if fail:
                raise NonRetryableError("asked to fail")
            return {"ok": True}

        @self.registry.activity()
        async def flaky(fail: bool = False) -> dict:
            from itonami import current_context

            ctx = current_context()
            assert ctx is not None
            assert ctx.execution_id not in self.ended
            calls[ctx.execution_id] += 1
            if fail or ctx.attempt < 2:
                raise ConnectionError("flaky")
            return {"ok": True}

        @self.registry.activity()
        async def undo() -> dict:
            return {"undone": True}

    async def open(self) -> WorkflowEngine:
        self.engine = (
            WorkflowEngine.builder()
            .with_storage(self.url)
            .with_activities(self.registry)
            .with_workflows([CHILD])
            .with_clock(self.clock)
            .with_random_seed(3)
            .build()
        )
        await self.engine.start()
        return self.engine

    async def restart(self) -> WorkflowEngine:
        assert self.engine is not None
        await self.engine.close()
        return await self.open()

    async def ids(self) -> list[str]:
        assert self.engine is not None
        return sorted(r.execution_id for r in await self.engine.list_executions(limit=10_000))

    async def settle(self) -> None:
        """Until nothing moves: every run has reached what blocks it."""
        assert self.engine is not None
        engine = self.engine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        last: Any = None
        still = 0
        while still < 5:
            if loop.time() > deadline:
                raise AssertionError(f"the engine never settled: {engine.lifecycle_counts()}")
            await asyncio.sleep(0.002)
            versions = [(r.execution_id, r.version) for r in await engine.list_executions()]
            now = (engine.lifecycle_counts(), versions, sum(self.calls.values()))
            still = still + 1 if now == last else 0
            last = now

    async def check(self) -> None:
        assert self.engine is not None
        engine = self.engine
        for eid in await self.ids():
            state = await engine.query(eid)
            status = state["status"]
            if status in TERMINAL:
                self.ended.add(eid)
                continue
            phase = engine.phase(eid)
            assert phase in ("live", "parked"), f"{eid} is {status} but {phase} in the engine"
            steps = state.get("steps") or {}
            blocked = (
                state.get("waits")
                or state.get("timers")
                or any(s.get("status") == "retrying" for s in steps.values())
                or any(
                    s.get("child_execution_id") and s.get("status") == "running"
                    for s in steps.values()
                )
            )
            assert blocked, f"{eid} is running but its state names nothing it waits for"
        # Nothing moves while all is blocked.
        before = (engine.lifecycle_counts(), sum(self.calls.values()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert (engine.lifecycle_counts(), sum(self.calls.values())) == before

    async def check_replay(self) -> None:
        assert self.engine is not None
        engine = self.engine
        for eid in await self.ids():
            live = await engine.query(eid)
            rebuilt = await engine.rebuild_execution_from_events(eid)
            assert (rebuilt.status, rebuilt.version) == (live["status"], live["version"])
            assert (await engine.verify(eid)).head_hash == engine.core.head(eid)[1]


async def act(world: World, action: tuple[Any, ...], durable: bool) -> None:
    engine = world.engine
    assert engine is not None
    ids = await world.ids()
    kind = action[0]
    if kind == "signal":
        eid = ids[action[1] % len(ids)]
        payload: Any = {"n": 1}
        if action[3] == "big":
            payload = "x" * 5_000_000
        elif action[3] == "nonjson":
            payload = object()
        before = (await engine.query(eid))["version"]
        try:
            await engine.signal(eid, action[2], payload)
        except ExecutionNotRunningError:
            assert (await engine.query(eid))["status"] in TERMINAL
        except (ItonamiError, TypeError):
            assert action[3] != "ok"
            assert (await engine.query(eid))["version"] == before, "a refused signal wrote"
        else:
            assert action[3] == "ok"
    elif kind == "event":
        await engine.send_event(action[1], {"k": 1})
    elif kind == "cancel":
        eid = ids[action[1] % len(ids)]
        was = (await engine.query(eid))["status"]
        children = [
            s["child_execution_id"]
            for s in ((await engine.query(eid)).get("steps") or {}).values()
            if s.get("child_execution_id")
        ]
        done = await asyncio.wait_for(engine.cancel(eid), 20)
        now = (await engine.query(eid))["status"]
        if was in TERMINAL:
            assert done is False and now == was
        else:
            assert done is True and now == "cancelled", (was, now)
            for child in children:
                assert (await engine.query(child))["status"] in TERMINAL
    elif kind == "advance":
        await world.clock.advance(action[1])
    elif kind == "restart" and durable:
        await world.restart()


async def scenario(store: str, tree: dict[str, Any], timeout: Any, flag: bool, plan: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World("memory" if store == "memory" else f"sqlite:///{tmp}/l.db")
        engine = await world.open()
        try:
            extra = {"timeout": timeout} if timeout else {}
            ir = wf(
                tree,
                inputs=[
                    {"name": "flag", "type": "boolean", "default": False},
                    {"name": "items", "type": "array", "default": [1, 2]},
                ],
                **extra,
            )
            await engine.start_workflow(ir, {"flag": flag})
            await world.settle()
            await world.check()
            for action in plan:
                await act(world, action, durable=store != "memory")
                await world.settle()
                await world.check()
            await world.check_replay()
        finally:
            assert world.engine is not None
            await world.engine.close()


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@example(
    # A branch's result appended while its sibling's commit was in flight,
    # then nothing left to flush it: found by this test.
    tree={
        "op": "parallel",
        "branches": [
            {
                "op": "activity",
                "activity_ref": "work",
                "input_mapping": {"fail": False},
                "retry_policy": {"maximum_attempts": 1},
            },
            {"op": "wait", "condition": {"type": "timer", "duration": "PT10S"}},
        ],
        "completion_condition": {"at_least": 2},
    },
    timeout=None,
    flag=False,
    plan=[("event", "e1")],
)
@given(
    tree=trees(),
    timeout=st.sampled_from([None, None, "PT100S"]),
    flag=st.booleans(),
    plan=actions(),
)
def test_every_execution_ends_correctly_whatever_happens_to_it(
    store: str, tree: dict[str, Any], timeout: Any, flag: bool, plan: Any
) -> None:
    asyncio.run(scenario(store, tree, timeout, flag, plan))

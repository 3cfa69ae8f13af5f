"""Property: any sequence of rounds of concurrent append requests (some stale)
leaves the store equal to a simple model applied in submission order."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import PG_SKIP, PG_URL, StoreFactory, drop_pg_schema, event, new_pg_schema

from itonami.errors import ConflictError
from itonami.storage import TERMINAL_STATUSES, AppendRequest, Storage

EXECUTIONS = ["a", "b", "c"]
STATUSES = ["running", "waiting", "completed"]
STEPS = ["0", "0/1"]

spec = st.tuples(
    st.sampled_from(EXECUTIONS),
    st.sampled_from([-2, -1, 0, 0, 0, 0, 1]),  # offset from the true version: mostly right
    st.integers(0, 3),  # events
    st.sampled_from(STATUSES),
    st.dictionaries(st.sampled_from(STEPS), st.integers(0, 1000), max_size=2),
    st.lists(st.sampled_from(STEPS), max_size=2, unique=True),
)
rounds = st.lists(st.lists(spec, min_size=1, max_size=6), min_size=1, max_size=6)


@dataclass
class Model:
    events: dict[str, list] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    timers: dict[tuple[str, str], int] = field(default_factory=dict)
    max_tx: int = 0

    def version(self, eid: str) -> int:
        return len(self.events.get(eid, []))

    def apply(self, req: AppendRequest) -> bool:
        """Apply like a store would; False when the store must raise ConflictError."""
        eid = req.execution_id
        if req.expected_version != self.version(eid):
            return False
        self.events.setdefault(eid, []).extend(req.events)
        self.status[eid] = req.status
        for ev in req.events:
            self.max_tx = max(self.max_tx, ev.tx)
        for step in req.timers_cleared:
            self.timers.pop((eid, step), None)
        for step, at in req.timers_set.items():
            self.timers[(eid, step)] = at
        if req.status in TERMINAL_STATUSES:
            self.timers = {k: v for k, v in self.timers.items() if k[0] != eid}
        return True


async def run_rounds(store: Storage, plan: list[list[tuple]]) -> None:
    model = Model()
    tx = 0
    for round_ in plan:
        batch: list[AppendRequest] = []
        predicted: list[bool] = []
        for eid, offset, count, status, timers_set, timers_cleared in round_:
            # the version this request will see: the model after the earlier ones in the round
            expected = max(0, model.version(eid) + offset)
            evs = []
            for i in range(count):
                tx += 1
                evs.append(event(eid, expected + 1 + i, tx))
            req = AppendRequest(
                eid,
                expected,
                evs,
                status,
                workflow_id="wf" if expected == 0 else None,
                timers_set=dict(timers_set),
                timers_cleared=list(timers_cleared),
            )
            batch.append(req)
            predicted.append(model.apply(req))
        results = await asyncio.gather(*(store.append(r) for r in batch), return_exceptions=True)
        for req, ok, result in zip(batch, predicted, results, strict=True):
            if ok:
                assert result is None, (req, result)
            else:
                assert isinstance(result, ConflictError), (req, result)
                assert result.actual != req.expected_version
        for eid in EXECUTIONS:
            assert await store.read_events(eid) == model.events.get(eid, [])
            rec = await store.get_execution(eid)
            if eid in model.status:
                assert rec is not None
                assert (rec.version, rec.status) == (model.version(eid), model.status[eid])
            else:
                assert rec is None
        assert await store.max_tx() == model.max_tx
        want_timers = sorted(
            ((e, s, at) for (e, s), at in model.timers.items()), key=lambda t: (t[2], t[0], t[1])
        )
        assert await store.all_timers() == want_timers
        assert await store.unfinished_executions() == [
            r.execution_id
            for r in await store.list_executions()
            if r.status not in TERMINAL_STATUSES
        ]
    assert await store.integrity_check() == []


async def _run_on(kind: str, plan: list[list[tuple]], tmp: Path) -> None:
    schema = new_pg_schema() if kind == "postgres" else None
    store = StoreFactory(kind, tmp, schema).make()
    await store.open()
    try:
        await run_rounds(store, plan)
    finally:
        await store.close()
        if schema is not None:
            drop_pg_schema(schema)


def _check(kind: str, plan: list[list[tuple]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run_on(kind, plan, Path(tmp)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=rounds)
def test_memory_matches_model(plan: list[list[tuple]]) -> None:
    _check("memory", plan)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=rounds)
def test_sqlite_matches_model(plan: list[list[tuple]]) -> None:
    _check("sqlite", plan)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=rounds)
def test_sqlite_in_memory_matches_model(plan: list[list[tuple]]) -> None:
    _check("sqlite-memory", plan)


@pytest.mark.postgres
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=rounds)
def test_postgres_matches_model(plan: list[list[tuple]]) -> None:
    if not PG_URL:
        pytest.skip(PG_SKIP)
    _check("postgres", plan)

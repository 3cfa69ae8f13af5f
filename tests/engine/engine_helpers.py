"""Helpers for engine tests: an in-memory engine on a test clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from itonami import ActivityRegistry, TestClock, WorkflowEngine, WorkflowIR


def wf(strategy: dict[str, Any], **extra: Any) -> WorkflowIR:
    """A workflow around ``strategy`` (id derived from extra or 'wf')."""
    doc: dict[str, Any] = {
        "id": extra.pop("id", "wf"),
        "name": extra.pop("name", "test workflow"),
        "version": extra.pop("version", "1"),
        "strategy": strategy,
    }
    doc.update(extra)
    return WorkflowIR.from_dict({"workflow": doc})


def act(ref: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"op": "activity", "activity_ref": ref, **extra}
    if id is not None:
        node["id"] = id
    return node


async def eventually(predicate: Callable[[], Any], what: str = "condition") -> Any:
    """Poll ``predicate`` while the event loop runs other work (bounded at 10 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def waiting(engine: WorkflowEngine, *ids: str) -> None:
    """Until each execution's state shows an open wait (what ``send_event`` delivers to)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    for eid in ids:
        while not (await engine.query(eid)).get("waits"):
            if loop.time() > deadline:
                raise AssertionError(f"execution {eid} never opened a wait")
            await asyncio.sleep(0.001)


class Harness:
    """An engine plus its clock and registry, built lazily so tests can add activities."""

    def __init__(self, storage: str = "memory", **storage_options: Any) -> None:
        self.storage_options = storage_options
        self.clock = TestClock()
        self.registry = ActivityRegistry()
        self.storage = storage
        self._engine: WorkflowEngine | None = None
        self.workflows: list[WorkflowIR] = []

    @property
    def engine(self) -> WorkflowEngine:
        if self._engine is None:
            self._engine = (
                WorkflowEngine.builder()
                .with_storage(self.storage, **self.storage_options)
                .with_activities(self.registry)
                .with_workflows(self.workflows)
                .with_clock(self.clock)
                .with_random_seed(7)
                .build()
            )
        return self._engine

    async def run(self, ir: WorkflowIR, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        eid = await self.engine.start_workflow(ir, inputs or {})
        return await self.engine.wait_for_completion(eid, timeout=10)

    async def kinds(self, eid: str) -> list[str]:
        return [e.kind for e in await self.engine.get_event_history(eid)]

    async def check_replay(self) -> int:
        """Every stored execution: a fresh replay of its stored history equals the
        live state, and its Merkle chain verifies to the live head."""
        engine = self.engine
        checked = 0
        for rec in await engine.list_executions(limit=100_000):
            live = await engine.query(rec.execution_id)
            rebuilt = await engine.rebuild_execution_from_events(rec.execution_id)
            assert rebuilt.status == live["status"]
            assert rebuilt.outputs == live["outputs"]
            assert rebuilt.version == live["version"]
            report = await engine.verify(rec.execution_id)
            assert report.head_hash == engine.core.head(rec.execution_id)[1]
            checked += 1
        return checked

    async def close(self) -> None:
        if self._engine is not None:
            try:
                if self._engine._started and not self._engine._closed:
                    await self.check_replay()
            finally:
                await self._engine.close()


def drop_schema(schema: str) -> None:
    """Drop a PostgreSQL test schema (``ITONAMI_TEST_POSTGRES_URL``) and its tables."""
    import os

    import psycopg
    from psycopg import sql

    url = os.environ["ITONAMI_TEST_POSTGRES_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

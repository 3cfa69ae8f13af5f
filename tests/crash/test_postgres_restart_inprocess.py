"""A running engine outlives a PostgreSQL crash-restart, without a process restart:
its runs resume from the store once the server answers again."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from crash_helpers import restart_postgres

from itonami import ActivityRegistry, WorkflowEngine, WorkflowIR

PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")

pytestmark = [
    pytest.mark.crash,
    pytest.mark.skipif(
        not (PG_URL and os.environ.get("ITONAMI_PG_DIR") and os.environ.get("ITONAMI_PG_BIN")),
        reason="needs ITONAMI_TEST_POSTGRES_URL, ITONAMI_PG_DIR and ITONAMI_PG_BIN "
        "(.ci/postgres.sh)",
    ),
]


async def test_engine_resumes_its_runs_after_a_server_restart() -> None:
    import psycopg
    from psycopg import sql

    schema = f"itonami_restart_{uuid.uuid4().hex[:12]}"
    gate = asyncio.Event()
    calls: dict[str, int] = {}
    registry = ActivityRegistry()

    @registry.activity()
    async def step(name: str) -> dict:
        calls[name] = calls.get(name, 0) + 1
        if name.startswith("held"):
            await gate.wait()
        return {"name": name}

    ir = WorkflowIR.from_dict(
        {
            "workflow": {
                "id": "restart",
                "name": "restart",
                "version": "1",
                "inputs": [{"name": "n", "type": "integer", "required": True}],
                "strategy": {
                    "op": "seq",
                    "strategies": [
                        {
                            "op": "activity",
                            "activity_ref": "step",
                            "input_mapping": {"name": "first"},
                        },
                        {
                            "op": "activity",
                            "activity_ref": "step",
                            "input_mapping": {"name": "held"},
                        },
                        {
                            "op": "activity",
                            "activity_ref": "step",
                            "input_mapping": {"name": "last"},
                        },
                    ],
                },
            }
        }
    )
    engine = (
        WorkflowEngine.builder()
        .with_storage(PG_URL, schema=schema)
        .with_activities(registry)
        .build()
    )
    try:
        async with engine:
            ids = [await engine.start_workflow(ir, {"n": i}) for i in range(5)]
            while calls.get("held", 0) < 5:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(restart_postgres)
            gate.set()
            for eid in ids:
                assert await engine.wait_for_completion(eid, timeout=60) == {"name": "last"}
            for eid in ids:
                await engine.verify(eid)
        assert calls["first"] == 5 and calls["last"] == 5
        # The held steps' results were lost with the connection at most once each.
        assert 5 <= calls["held"] <= 10
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

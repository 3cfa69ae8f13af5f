"""A damaged store: the damage is named, nothing else is lost."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
from engine_helpers import Harness, act, eventually, wf

from itonami import IntegrityError


async def park_two(path: Path) -> tuple[str, str]:
    h = Harness(f"sqlite:///{path}")

    @h.registry.activity()
    async def step(name: str) -> dict:
        return {"name": name}

    ir = wf(
        {
            "op": "seq",
            "strategies": [
                act("step", input_mapping={"name": "first"}),
                {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}},
                act("step", input_mapping={"name": "last"}),
            ],
        }
    )
    a = await h.engine.start_workflow(ir, {}, execution_id="damaged")
    b = await h.engine.start_workflow(ir, {}, execution_id="healthy")
    await eventually(lambda: h.engine.phase(a) == h.engine.phase(b) == "parked", "both parked")
    await h.engine.close()
    return a, b


def tamper(path: Path, execution_id: str, version: int) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (blob,) = conn.execute(
            "SELECT encoded FROM events WHERE execution_id = ? AND version = ?",
            (execution_id, version),
        ).fetchone()
        # A changed letter inside the JSON payload: still decodes, hashes differently.
        assert b'"go"' in blob
        conn.execute(
            "UPDATE events SET encoded = ? WHERE execution_id = ? AND version = ?",
            (blob.replace(b'"go"', b'"gp"'), execution_id, version),
        )


async def test_tampered_event_is_named_and_other_executions_resume(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    damaged, healthy = await park_two(db)
    tamper(db, damaged, 5)

    h = Harness(f"sqlite:///{db}")

    @h.registry.activity()
    async def step(name: str) -> dict:
        return {"name": name}

    try:
        await h.engine.start()  # the damaged execution is reported, not resumed
        await h.engine.signal(healthy, "go", None)
        assert await h.engine.wait_for_completion(healthy, timeout=10) == {"name": "last"}
        with pytest.raises(IntegrityError) as info:
            await h.engine.get_execution(damaged)
        assert info.value.execution_id == damaged
        assert info.value.version == 5
        # Nothing was rewritten: the stored events are all still there.
        events = await h.engine.storage.read_events(damaged)
        assert [e.version for e in events] == list(range(1, len(events) + 1))
        assert await h.engine.storage.integrity_check() == []
    finally:
        await h.engine.close()


async def test_corrupt_file_gives_a_clear_error(tmp_path: Path) -> None:
    from itonami import CorruptStorageError

    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not a database" * 100)
    h = Harness(f"sqlite:///{db}")
    with pytest.raises(CorruptStorageError) as info:
        await h.engine.start()
    assert str(db) in str(info.value)
    await asyncio.sleep(0)


async def test_tampered_snapshot_is_passed_over_for_the_events(tmp_path: Path) -> None:
    from itonami import WorkflowEngine

    db = tmp_path / "snap.db"
    url = f"sqlite:///{db}"

    def build(h: Harness) -> WorkflowEngine:
        @h.registry.activity()
        async def step(name: str) -> dict:
            return {"name": name}

        return (
            WorkflowEngine.builder()
            .with_storage(url)
            .with_activities(h.registry)
            .with_clock(h.clock)
            .with_snapshots(every=4)
            .build()
        )

    h = Harness(url)
    h._engine = build(h)
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                *(act("step", input_mapping={"name": f"s{i}"}) for i in range(4)),
                {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}},
            ],
        }
    )
    eid = await h.engine.start_workflow(ir, {}, execution_id="snapped")
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    assert await h.engine.storage.load_snapshot(eid) is not None
    await h.engine.close()

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        version, data = conn.execute(
            "SELECT version, data FROM snapshots WHERE execution_id = ? ORDER BY version DESC",
            (eid,),
        ).fetchone()
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x01
        conn.execute(
            "UPDATE snapshots SET data = ? WHERE execution_id = ? AND version = ?",
            (bytes(bad), eid, version),
        )

    h2 = Harness(url)
    h2._engine = build(h2)
    try:
        # The damaged snapshot is passed over: the intact events resume it.
        await h2.engine.start()
        await eventually(lambda: h2.engine.phase(eid) == "parked", "parked again")
        with pytest.raises(IntegrityError, match="snapshot"):
            await h2.engine.verify(eid)
        await h2.engine.signal(eid, "go", 1)
        assert await h2.engine.wait_for_completion(eid, timeout=10) == {"result": 1}
    finally:
        await h2.engine.close()

"""Damaged rows: named as damage, snapshots fallen back from, exit codes apart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import struct
from pathlib import Path

import pytest

from itonami import ActivityRegistry, TestClock, WorkflowEngine, WorkflowIR, _core
from itonami.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from itonami.errors import ExecutionNotFoundError, IntegrityError
from itonami.integrity import (
    _frame,
    load_execution,
    load_history,
    snapshot_problem,
    verify_execution,
)
from itonami.storage import open_storage
from itonami.storage.base import StoredEvent

EID = "snapped"


def _workflow() -> WorkflowIR:
    steps = [
        {"op": "activity", "activity_ref": "step", "input_mapping": {"name": f"s{i}"}}
        for i in range(4)
    ]
    wait = {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}}
    return WorkflowIR.from_dict(
        {
            "workflow": {
                "id": "wf",
                "name": "w",
                "version": "1",
                "strategy": {"op": "seq", "strategies": [*steps, wait]},
            }
        }
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite store holding one parked execution with a snapshot."""
    path = tmp_path / "store.db"

    async def build() -> None:
        registry = ActivityRegistry()

        @registry.activity()
        async def step(name: str) -> dict:
            return {"name": name}

        engine = (
            WorkflowEngine.builder()
            .with_storage(f"sqlite:///{path}")
            .with_activities(registry)
            .with_clock(TestClock())
            .with_snapshots(every=4)
            .build()
        )
        async with engine:
            await engine.start_workflow(_workflow(), {}, execution_id=EID)
            for _ in range(10_000):
                if engine.phase(EID) == "parked":
                    break
                await asyncio.sleep(0.001)
            assert await engine.storage.load_snapshot(EID) is not None

    asyncio.run(build())
    return path


def sql(db: Path, query: str, *params: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        return conn.execute(query, params).fetchall()


async def storage_of(db: Path):
    storage = open_storage(f"sqlite:///{db}")
    await storage.open()
    return storage


def flip_event_byte(db: Path, version: int) -> None:
    (blob,) = sql(
        db, "SELECT encoded FROM events WHERE execution_id=? AND version=?", EID, version
    )[0]
    bad = bytearray(blob)
    bad[1] ^= 0xFF  # the event kind: no longer a kind
    sql(
        db,
        "UPDATE events SET encoded=? WHERE execution_id=? AND version=?",
        bytes(bad),
        EID,
        version,
    )


def newest_snapshot(db: Path) -> tuple[int, bytes]:
    return sql(
        db, "SELECT version, data FROM snapshots WHERE execution_id=? ORDER BY version DESC", EID
    )[0]


async def test_a_flipped_event_byte_is_damage_naming_execution_and_version(db: Path) -> None:
    flip_event_byte(db, 3)
    storage = await storage_of(db)
    try:
        with pytest.raises(IntegrityError) as info:
            await verify_execution(storage, EID)
    finally:
        await storage.close()
    assert (info.value.execution_id, info.value.version) == (EID, 3)
    assert EID in str(info.value) and "version 3" in str(info.value)
    storage = await storage_of(db)
    try:
        with pytest.raises(IntegrityError) as loading:
            await load_history(_core.VersionStore(), storage, EID)
    finally:
        await storage.close()
    assert (loading.value.execution_id, loading.value.version) == (EID, 3)


def test_the_cli_tells_damage_from_usage(db: Path, capsys) -> None:
    assert main(["--db", str(db), "verify", EID]) == EXIT_OK
    # An unknown id is "not found" (exit 1, like damage), told apart by its message.
    capsys.readouterr()
    assert main(["--db", str(db), "verify", "no-such-execution"]) == EXIT_FAILED
    assert capsys.readouterr().err == "itonami: no execution 'no-such-execution'\n"
    assert main(["--db", str(db), "verify", EID, "--head", "00"]) == EXIT_USAGE
    flip_event_byte(db, 3)
    capsys.readouterr()
    assert main(["--db", str(db), "verify", EID]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "does NOT verify" in err and "version 3" in err and "Traceback" not in err


@pytest.mark.parametrize("tx", [-5, 0])
def test_a_tx_that_is_not_a_tx_is_damage_not_a_traceback(db: Path, capsys, tx: int) -> None:
    sql(db, "UPDATE events SET tx=? WHERE execution_id=? AND version=2", tx, EID)
    assert main(["--db", str(db), "verify", EID]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"tx {tx}" in err and "version 2" in err and "Traceback" not in err


async def test_a_damaged_snapshot_falls_back_to_the_events(db: Path, caplog) -> None:
    version, data = newest_snapshot(db)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    sql(
        db,
        "UPDATE snapshots SET data=? WHERE execution_id=? AND version=?",
        bytes(bad),
        EID,
        version,
    )
    storage = await storage_of(db)
    try:
        core = _core.VersionStore()
        with caplog.at_level(logging.WARNING, logger="itonami.integrity"):
            used_snapshot = await load_execution(core, storage, EID)
        assert used_snapshot is False
        assert f"snapshot at version {version}" in caplog.text and EID in caplog.text
        events = await storage.read_events(EID)
        assert core.version(EID) == len(events)
        assert core.head(EID)[1] == events[-1].hash
        with pytest.raises(IntegrityError, match="events verify") as info:
            await verify_execution(storage, EID)
        assert (info.value.execution_id, info.value.version) == (EID, version)
    finally:
        await storage.close()


async def test_a_snapshot_row_whose_version_disagrees_is_detected(db: Path, caplog) -> None:
    version, _ = newest_snapshot(db)
    # an older snapshot's bytes filed under the newest version
    sql(db, "DELETE FROM snapshots WHERE execution_id=?", EID)
    storage = await storage_of(db)
    try:
        events = await storage.read_events(EID)
        store = _core.VersionStore()
        store.load(EID, *_frame(events[: version - 2]))
        older = store.snapshot(EID)
        await storage.save_snapshot(EID, version, older)
        core = _core.VersionStore()
        with caplog.at_level(logging.WARNING, logger="itonami.integrity"):
            assert await load_execution(core, storage, EID) is False
        assert f"holds version {version - 2}" in caplog.text
        assert core.version(EID) == len(events)  # the newest version, not an older one
        with pytest.raises(IntegrityError, match=f"version {version}"):
            await verify_execution(storage, EID)
    finally:
        await storage.close()


async def test_a_sound_snapshot_is_used(db: Path) -> None:
    storage = await storage_of(db)
    try:
        core = _core.VersionStore()
        assert await load_execution(core, storage, EID) is True
        events = await storage.read_events(EID)
        assert core.head(EID) == (len(events), events[-1].hash)
        assert (await verify_execution(storage, EID)).versions == len(events)
        with pytest.raises(ExecutionNotFoundError):
            await load_execution(_core.VersionStore(), storage, "nope")
    finally:
        await storage.close()


def _rows(appended) -> list[StoredEvent]:
    return [StoredEvent(a.version, a.tx, a.timestamp, a.kind, a.hash, a.encoded) for a in appended]


@pytest.mark.parametrize("revision", [2, 3])
def test_snapshot_problem_binds_a_snapshot_to_the_chain_of_either_revision(revision) -> None:
    """A snapshot at any version (the first included) checks against the
    stored node of its version, in the revision its execution uses."""
    start = ("workflow_started", "", 0, b'{"inputs":{},"workflow_id":"wf"}', 1)
    step = ("step_started", "0", 0, b"{}", 2)
    done = ("step_completed", "0", 0, b'{"output":1}', 3)
    golden = Path(__file__).parent.parent / "golden" / "order_completed"
    store = _core.VersionStore()
    if revision == 2:
        # A revision-2 chain: the golden history, recorded by an earlier build.
        hashes = golden.with_suffix(".hashes").read_bytes()
        n = len(hashes) // 32
        store.load(
            "order_completed",
            golden.with_suffix(".history").read_bytes(),
            hashes,
            list(range(1, n + 1)),
            None,
        )
        eid, rows, history, at = (
            "order_completed",
            [],
            golden.with_suffix(".history").read_bytes(),
            0,
        )
        for info in store.history(eid):
            (size,) = struct.unpack_from("<I", history, at)
            encoded = history[at + 4 : at + 4 + size]
            at += 4 + size
            rows.append(
                StoredEvent(info.version, info.tx, info.timestamp, info.kind, info.hash, encoded)
            )
        cuts = [1, 2, n]
    else:
        eid = "fresh"
        rows = _rows(store.append_batch(eid, 0, [start]))
        rows += _rows(store.append_batch(eid, 1, [step, done]))
        cuts = [1, 3]
    for v in cuts:
        at_v = _core.VersionStore()
        at_v.load(eid, *_frame(rows[:v]), None)
        snap = at_v.snapshot(eid)
        before = rows[v - 2] if v > 1 else None
        assert snapshot_problem(eid, v, snap, rows[v - 1], before) is None, v
        # The same snapshot filed against a different stored node is refused.
        wrong = rows[v - 1]._replace(hash=bytes(32))
        assert snapshot_problem(eid, v, snap, wrong, before) is not None

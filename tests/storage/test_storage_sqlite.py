"""SQLite-only behaviour: files, schema versions, corruption, durability, URLs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import StoreFactory, event, request

from itonami.errors import CorruptStorageError, StorageError
from itonami.storage import (
    READY_NOW,
    UNCHANGED,
    AppendRequest,
    Fence,
    MemoryStorage,
    SqliteStorage,
    StoredEvent,
    default_storage_url,
    open_storage,
)
from itonami.storage.sqlite import MIGRATIONS, SCHEMA_VERSION


@pytest.fixture
def sq(tmp_path: Path) -> StoreFactory:
    return StoreFactory("sqlite", tmp_path)


async def _filled(sq: StoreFactory, executions: int = 3, events: int = 4) -> dict[str, list]:
    s = sq.make()
    await s.open()
    written = {}
    for i in range(executions):
        req = request(sq, f"e{i}", 0, events)
        await s.append(req)
        written[req.execution_id] = req.events
    await s.close()
    return written


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# The schema of version 1, written out by hand as a released itonami wrote it.
V1_SCHEMA = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
    "CREATE TABLE executions (execution_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL,"
    " workflow_version TEXT NOT NULL, status TEXT NOT NULL, parent_id TEXT,"
    " created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE events (execution_id TEXT NOT NULL, version INTEGER NOT NULL,"
    " tx INTEGER NOT NULL UNIQUE, timestamp INTEGER NOT NULL, kind TEXT NOT NULL,"
    " hash BLOB NOT NULL, encoded BLOB NOT NULL, PRIMARY KEY (execution_id, version))"
    " WITHOUT ROWID",
    "CREATE TABLE snapshots (execution_id TEXT NOT NULL, version INTEGER NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (execution_id, version)) WITHOUT ROWID",
    "CREATE TABLE definitions (workflow_id TEXT NOT NULL, version TEXT NOT NULL,"
    " content_hash TEXT NOT NULL, document BLOB NOT NULL, seq INTEGER NOT NULL,"
    " PRIMARY KEY (workflow_id, version))",
    "CREATE INDEX definitions_hash ON definitions (content_hash)",
]


async def test_v1_store_is_migrated(sq: StoreFactory) -> None:
    conn = _raw(sq.path)
    for stmt in V1_SCHEMA:
        conn.execute(stmt)
    conn.execute("INSERT INTO executions VALUES ('old', 'wf', '1', 'running', NULL, 10, 20, 1)")
    conn.execute(
        "INSERT INTO events VALUES ('old', 1, 5, 10, 'workflow_started', ?, ?)", (b"h", b"enc")
    )
    conn.execute("INSERT INTO definitions VALUES ('wf', '1', 'hh', ?, 1)", (b"doc",))
    conn.close()

    s = sq.make()
    await s.open()
    try:
        assert [e.encoded for e in await s.read_events("old")] == [b"enc"]
        assert await s.get_definition("wf") == b"doc"
        # timers arrived with version 2
        await s.append(
            AppendRequest("old", 1, [event("old", 2, 6)], "waiting", timers_set={"0": 99})
        )
        assert await s.all_timers() == [("old", "0", 99)]
        assert await s.integrity_check() == []
    finally:
        await s.close()
    conn = _raw(sq.path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"executions_status", "executions_workflow", "timers_fire_at"} <= indexes
    assert {"executions_created", "executions_finished", "executions_parent"} <= indexes
    conn.close()


@pytest.mark.parametrize(
    "where",
    ["", " WHERE status IN ('completed')", " WHERE workflow_id = 'wf'"],
)
async def test_newest_first_pages_walk_an_index(sq: StoreFactory, where: str) -> None:
    """The listing's shape never sorts the whole table (100,000+ executions)."""
    await _filled(sq, executions=1)
    conn = _raw(sq.path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT execution_id FROM executions"
        + where
        + " ORDER BY created_at DESC, execution_id DESC LIMIT 50 OFFSET 100"
    ).fetchall()
    conn.close()
    text = " | ".join(str(row[-1]) for row in plan)
    assert "TEMP B-TREE" not in text and "INDEX" in text, text


async def test_v5_store_gets_the_partial_retention_index(sq: StoreFactory) -> None:
    """Version 6 indexes only finished executions by age; a version 5 store
    (its index over every execution) is carried forward with its rows."""
    await _filled(sq, executions=0)
    conn = _raw(sq.path)
    conn.execute("DROP INDEX executions_finished")
    conn.execute("ALTER TABLE executions DROP COLUMN finished_at")
    conn.execute("CREATE INDEX executions_finished ON executions (status, updated_at)")
    conn.execute("UPDATE schema_version SET version = 5")
    for eid, status in (("old-done", "completed"), ("old-running", "running")):
        conn.execute(
            "INSERT INTO executions (execution_id, workflow_id, workflow_version, status,"
            " parent_id, created_at, updated_at, version)"
            " VALUES (?, 'wf', '1', ?, NULL, 10, 20, 0)",
            (eid, status),
        )
    conn.close()

    s = sq.make()
    await s.open()
    try:
        assert await s.prune(finished_before=21) == ["old-done"]
        assert [r.execution_id for r in await s.list_executions()] == ["old-running"]
    finally:
        await s.close()
    conn = _raw(sq.path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_v6_store_indexes_when_executions_finished(sq: StoreFactory) -> None:
    """Version 7 keeps the finishing time in a column of its own, written
    once, for retention's index; a version 6 store's finished executions get
    theirs from updated_at, and nothing else changes."""
    await _filled(sq, executions=0)
    conn = _raw(sq.path)
    conn.execute("DROP INDEX executions_finished")
    conn.execute("ALTER TABLE executions DROP COLUMN finished_at")
    conn.execute(
        "CREATE INDEX executions_finished ON executions (status, updated_at)"
        " WHERE status IN ('cancelled', 'compensated', 'completed', 'failed', 'timed_out')"
    )
    conn.execute("UPDATE schema_version SET version = 6")
    for eid, status, updated in (("done", "completed", 20), ("later", "failed", 40),
                                 ("running", "running", 10)):  # fmt: skip
        conn.execute(
            "INSERT INTO executions (execution_id, workflow_id, workflow_version, status,"
            " parent_id, created_at, updated_at, version)"
            " VALUES (?, 'wf', '1', ?, NULL, 5, ?, 0)",
            (eid, status, updated),
        )
    conn.close()

    s = sq.make()
    await s.open()
    try:
        assert await s.prune(finished_before=21) == ["done"]
        assert sorted(r.execution_id for r in await s.list_executions()) == ["later", "running"]
    finally:
        await s.close()
    conn = _raw(sq.path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert dict(conn.execute("SELECT execution_id, finished_at FROM executions")) == {
        "later": 40,
        "running": None,
    }
    # Retention's query (finished ones by age) walks the index.
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT e.execution_id FROM executions e"
        " WHERE e.finished_at IS NOT NULL AND e.finished_at < 5"
        " ORDER BY e.finished_at, e.execution_id LIMIT 10"
    ).fetchall()
    conn.close()
    assert "executions_finished" in " | ".join(str(row[-1]) for row in plan)


async def test_finished_at_is_written_once_by_the_commit_that_ends_an_execution(
    sq: StoreFactory,
) -> None:
    s = sq.make()
    await s.open()
    try:
        await s.append(request(sq, "a", 0, 2))
        await s.append(request(sq, "a", 2, 1, status="completed"))
        await s.append(request(sq, "b", 0, 1, status="failed"))  # ends in its first commit
        await s.append(request(sq, "c", 0, 3))
    finally:
        await s.close()
    conn = _raw(sq.path)
    rows = {r[0]: r[1:] for r in conn.execute(
        "SELECT execution_id, finished_at, updated_at FROM executions")}  # fmt: skip
    conn.close()
    assert rows["a"][0] == rows["a"][1] is not None
    assert rows["b"][0] == rows["b"][1] is not None
    assert rows["c"][0] is None


async def test_newer_schema_is_refused(sq: StoreFactory) -> None:
    await _filled(sq)
    conn = _raw(sq.path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    s = sq.make()
    with pytest.raises(StorageError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer"):
        await s.open()
    with pytest.raises(StorageError, match="not open"):
        await s.read_events("e0")


async def test_foreign_database_is_refused(sq: StoreFactory) -> None:
    conn = _raw(sq.path)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.close()
    with pytest.raises(StorageError, match="not an itonami store"):
        await sq.make().open()


async def test_file_that_is_not_sqlite(sq: StoreFactory) -> None:
    sq.path.write_bytes(b"this is a text file, certainly not a database\n" * 40)
    with pytest.raises(CorruptStorageError, match=str(sq.path)):
        await sq.make().open()


@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.95])
async def test_truncated_file(sq: StoreFactory, fraction: float) -> None:
    await _filled(sq, executions=30, events=6)
    size = sq.path.stat().st_size
    assert not Path(f"{sq.path}-wal").exists() or Path(f"{sq.path}-wal").stat().st_size == 0
    with open(sq.path, "r+b") as fh:
        fh.truncate(int(size * fraction))
    s = sq.make()
    with pytest.raises(CorruptStorageError, match=str(sq.path)):
        await s.open()
        try:
            for i in range(30):
                await s.read_events(f"e{i}")
        finally:
            await s.close()


@pytest.mark.parametrize("offset", [0.3, 0.5, 0.8])
async def test_garbled_pages_are_reported(sq: StoreFactory, offset: float) -> None:
    written = await _filled(sq, executions=30, events=6)
    size = sq.path.stat().st_size
    with open(sq.path, "r+b") as fh:
        fh.seek(int(size * offset) // 4096 * 4096)
        fh.write(b"\xa5" * 8192)
    s = sq.make()
    await s.open()
    try:
        problems = await s.integrity_check()
        assert problems and all(p.startswith("sqlite:") for p in problems)
        # every execution reads back intact or raises naming it: never wrong data
        for eid, events in written.items():
            try:
                got = await s.read_events(eid)
            except CorruptStorageError as exc:
                assert exc.execution_id == eid
            else:
                assert got == events
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("column", "value", "bad_version"),
    [
        ("timestamp", 1.5, 2),
        ("hash", "text instead of bytes", 2),
        ("encoded", 12345, 2),
        ("kind", b"\xff\xfe", 2),
    ],
)
async def test_wrong_typed_row(
    sq: StoreFactory, column: str, value: object, bad_version: int
) -> None:
    await _filled(sq)
    conn = _raw(sq.path)
    if column == "kind":  # invalid UTF-8 stored as TEXT
        conn.execute(
            "UPDATE events SET kind = CAST(? AS TEXT) WHERE execution_id='e1' AND version=2",
            (value,),
        )
    else:
        conn.execute(
            f"UPDATE events SET {column} = ? WHERE execution_id = 'e1' AND version = 2", (value,)
        )
    conn.close()
    s = sq.make()
    await s.open()
    try:
        with pytest.raises(CorruptStorageError) as info:
            await s.read_events("e1")
        assert (info.value.execution_id, info.value.version) == ("e1", bad_version)
        assert "e1" in str(info.value)
        assert len(await s.read_events("e0")) == 4
        assert len(await s.read_events("e2")) == 4
        if column != "kind":  # typeof() sees TEXT for the bad UTF-8 too
            assert any("e1" in p and "wrong-typed" in p for p in await s.integrity_check())
    finally:
        await s.close()


async def test_missing_rows_are_reported(sq: StoreFactory) -> None:
    await _filled(sq)
    conn = _raw(sq.path)
    conn.execute("DELETE FROM events WHERE execution_id = 'e1' AND version = 3")
    conn.execute("DELETE FROM events WHERE execution_id = 'e2' AND version = 4")
    conn.close()
    s = sq.make()
    await s.open()
    try:
        with pytest.raises(CorruptStorageError) as gap:
            await s.read_events("e1")
        assert (gap.value.execution_id, gap.value.version) == ("e1", 3)
        with pytest.raises(CorruptStorageError) as tail:
            await s.read_events("e2")  # the tail is gone: the execution row says 4
        assert (tail.value.execution_id, tail.value.version) == ("e2", 4)
        assert [e.version for e in await s.read_events("e1", 3)] == [4]
        assert len(await s.read_events("e0")) == 4
        problems = await s.integrity_check()
        assert any("e1" in p and "version 3 missing" in p for p in problems)
        assert any("e2" in p and "says version 4" in p for p in problems)
    finally:
        await s.close()


@pytest.mark.parametrize(("durability", "level"), [("full", 2), ("normal", 1)])
async def test_durability_setting(sq: StoreFactory, durability: str, level: int) -> None:
    s = open_storage(f"sqlite:///{sq.path}?durability={durability}")
    assert isinstance(s, SqliteStorage)
    await s.open()
    try:
        got = await s._write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        assert got == level
    finally:
        await s.close()
    conn = _raw(sq.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with pytest.raises(ValueError, match="durability"):
        SqliteStorage(str(sq.path), durability="sometimes")


async def test_open_reader_does_not_block_the_writer(sq: StoreFactory) -> None:
    s = sq.make()
    await s.open()
    try:
        await s.append(request(sq, "e", 0, 1))
        reader = _raw(sq.path)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        await asyncio.wait_for(s.append(request(sq, "e", 1, 1)), timeout=5)
        # the old snapshot is still what the open transaction sees
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        reader.execute("COMMIT")
        assert reader.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
        reader.close()
    finally:
        await s.close()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's connection that holds a new file's write lock, as one
    that is switching it to WAL or migrating it does."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("PRAGMA user_version = 1")
    return holder


async def test_opening_waits_out_another_opener_of_a_new_file(
    sq: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite refuses the WAL switch at once, without its busy handler, while
    # another connection holds the write lock: two workers started together on
    # a new store failed like this.
    holder = _hold_write_lock(sq.path)
    refused = threading.Event()
    attempt = SqliteStorage._try_open_writer_connection

    def counted(self: SqliteStorage) -> sqlite3.Connection:
        try:
            return attempt(self)
        except Exception:
            refused.set()
            raise

    monkeypatch.setattr(SqliteStorage, "_try_open_writer_connection", counted)
    s = sq.make(busy_timeout=30)
    opening = asyncio.create_task(s.open())
    assert await asyncio.to_thread(refused.wait, 30), "the open never met the lock"
    assert not opening.done()
    holder.execute("COMMIT")
    holder.close()
    await asyncio.wait_for(opening, timeout=30)
    try:
        await s.append(request(sq, "e", 0, 1))
        assert len(await s.read_events("e")) == 1
    finally:
        await s.close()


async def test_opening_gives_up_on_a_lock_held_past_the_busy_timeout(sq: StoreFactory) -> None:
    holder = _hold_write_lock(sq.path)
    try:
        s = sq.make(busy_timeout=0.2)
        with pytest.raises(
            StorageError, match=r"store\.db: SQLite error while opening: database is locked"
        ):
            await s.open()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_own_commits_are_not_taken_for_another_process(sq: StoreFactory) -> None:
    # With the writer on the loop, wait_for_work asks the write connection,
    # whose data_version moves only for other connections' commits: an
    # engine's own steps do not send it looking for work.
    a, b = sq.make(), sq.make()
    await a.open()
    await b.open()
    try:
        await a.append(request(sq, "e", 0, 1))
        await a.wait_for_work(0)  # the first look only notes where things stand
        for v in range(1, 4):
            await a.append(request(sq, "e", v, 1))
            assert await a.wait_for_work(0) is False
        await b.append(request(sq, "f", 0, 1))
        assert await a.wait_for_work(0) is True
        assert await a.wait_for_work(0) is False
    finally:
        await a.close()
        await b.close()


def test_open_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_storage("memory"), MemoryStorage)
    rel = open_storage("sqlite:///data/x.db")
    assert isinstance(rel, SqliteStorage) and rel.path == "data/x.db"
    absolute = open_storage(f"sqlite:///{tmp_path}/y.db", readers=3)
    assert isinstance(absolute, SqliteStorage) and absolute.path == f"{tmp_path}/y.db"
    mem = open_storage("sqlite:///:memory:")
    assert isinstance(mem, SqliteStorage) and mem.path == ":memory:"
    with pytest.raises(ValueError, match=r"supported are .*sqlite.*postgresql"):
        open_storage("mysql://localhost/db")
    with pytest.raises(ValueError, match="unknown SQLite option 'journal'"):
        open_storage("sqlite:///x.db?journal=off")
    tuned = open_storage("sqlite:///x.db?writer=thread&durability=normal&readers=4")
    assert isinstance(tuned, SqliteStorage)
    assert (tuned.writer, tuned.durability, tuned._n_readers) == ("thread", "normal", 4)
    with pytest.raises(ValueError, match="writer must be 'loop' or 'thread'"):
        open_storage("sqlite:///x.db?writer=fast")


def test_default_storage_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ITONAMI_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_storage_url() == f"sqlite:///{tmp_path}/xdg/itonami/itonami.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_storage_url() == f"sqlite:///{tmp_path}/home/.local/share/itonami/itonami.db"
    monkeypatch.setenv("ITONAMI_DB", "postgresql://u@h/db")
    assert default_storage_url() == "postgresql://u@h/db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITONAMI_DB", "local.db")
    url = default_storage_url()
    assert url == f"sqlite:///{tmp_path}/local.db"
    s = open_storage(url)
    assert isinstance(s, SqliteStorage) and s.path == f"{tmp_path}/local.db"


async def test_store_in_a_new_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"
    s = open_storage(f"sqlite:///{path}")
    await s.open()
    await s.close()
    assert path.exists()
    os.remove(path)


# The schema of version 2 (before leases), as the previous release wrote it.
V2_SCHEMA = [
    *V1_SCHEMA,
    "CREATE TABLE timers (execution_id TEXT NOT NULL, step TEXT NOT NULL,"
    " fire_at INTEGER NOT NULL, PRIMARY KEY (execution_id, step)) WITHOUT ROWID",
    "CREATE INDEX timers_fire_at ON timers (fire_at)",
    "CREATE INDEX executions_status ON executions (status, created_at)",
    "CREATE INDEX executions_workflow ON executions (workflow_id, created_at)",
    "UPDATE schema_version SET version = 2",
]


async def test_v2_store_is_carried_forward_to_leases(sq: StoreFactory) -> None:
    conn = _raw(sq.path)
    for stmt in V2_SCHEMA:
        conn.execute(stmt)
    for eid, status, tx in (("run", "running", 41), ("done", "completed", 42)):
        conn.execute(
            "INSERT INTO executions VALUES (?, 'wf', '1', ?, NULL, 10, 20, 1)", (eid, status)
        )
        conn.execute(
            "INSERT INTO events VALUES (?, 1, ?, 10, 'workflow_started', ?, ?)",
            (eid, tx, b"h", b"enc"),
        )
    conn.close()

    s = sq.make()
    await s.open()
    try:
        # What was unfinished is ready for a claiming node; what finished is not.
        (claim,) = await s.claim("n1", capabilities=[], limit=5)
        assert (claim.execution_id, claim.epoch) == ("run", 1)
        req = request(sq, "run", 1, 1)
        req.allocate_tx, req.fence = True, Fence("n1", 1)
        (tx,) = await s.commit(req)
        assert tx == 43  # the counter starts above the stored txs
        assert await s.integrity_check() == []
    finally:
        await s.close()
    conn = _raw(sq.path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_an_append_sets_the_status_only_when_it_changes(sq: StoreFactory) -> None:
    # SQLite rewrites an index entry for every column an UPDATE's SET names,
    # changed or not: a running execution's commit must leave `status` out,
    # or each one rewrites its `executions_status` entry (a WAL page).
    s = sq.make()
    await s.open()
    updates: list[str] = []
    try:
        assert isinstance(s, SqliteStorage) and s._wconn is not None
        s._wconn.set_trace_callback(
            lambda sql: updates.append(sql) if sql.startswith("UPDATE executions") else None
        )
        await s.append(request(sq, "e", 0, 2))
        await s.append(request(sq, "e", 2, 1))  # running -> running
        running = await s.get_execution("e")
        await s.append(request(sq, "e", 3, 1, status="completed"))
        done = await s.get_execution("e")
    finally:
        s._wconn.set_trace_callback(None)  # type: ignore[union-attr]
        await s.close()
    assert [("status =" in u) for u in updates] == [False, True]
    assert running is not None and (running.status, running.version) == ("running", 3)
    assert done is not None and (done.status, done.version) == ("completed", 4)


async def test_a_tx_that_is_not_an_integer_cannot_be_stored(sq: StoreFactory) -> None:
    # Events are keyed by tx (the table's rowid), so SQLite itself refuses
    # the damage the type check used to find.
    await _filled(sq)
    conn = _raw(sq.path)
    with pytest.raises(sqlite3.IntegrityError, match="datatype mismatch"):
        conn.execute("UPDATE events SET tx = 'x' WHERE execution_id = 'e1' AND version = 2")
    conn.close()
    s = sq.make()
    await s.open()
    try:
        assert len(await s.read_events("e1")) == 4
        assert await s.integrity_check() == []
    finally:
        await s.close()


def _store_at(path: Path, version: int) -> sqlite3.Connection:
    """A store with the schema as this code's migrations left it at ``version``."""
    conn = _raw(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for v, statements in MIGRATIONS:
        if v <= version:
            for stmt in statements:
                conn.execute(stmt)
    return conn


async def test_events_are_rekeyed_by_tx_and_damage_stops_the_upgrade(sq: StoreFactory) -> None:
    conn = _store_at(sq.path, 7)
    for eid, tx in (("a", 7), ("b", 3)):
        conn.execute(
            "INSERT INTO executions (execution_id, workflow_id, workflow_version, status,"
            " created_at, updated_at, version, epoch) VALUES (?, 'wf', '1', 'running', 1, 1, 2, 0)",
            (eid,),
        )
        for version in (1, 2):
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, 10, 'step', ?, ?)",
                (eid, version, tx + version, b"h" * 32, f"{eid}{version}".encode()),
            )
    conn.execute("UPDATE events SET tx = 'damaged' WHERE execution_id = 'b' AND version = 2")
    conn.close()

    s = sq.make()
    with pytest.raises(CorruptStorageError, match="from version 7 to 8") as info:
        await s.open()
    assert "nothing was changed" in str(info.value)
    conn = _raw(sq.path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (7,)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone() == (4,)
    conn.execute("UPDATE events SET tx = 5 WHERE execution_id = 'b' AND version = 2")
    conn.close()

    s = sq.make()
    await s.open()
    try:
        for eid, txs in (("a", [8, 9]), ("b", [4, 5])):
            got = await s.read_events(eid)
            assert [(e.version, e.tx, e.encoded) for e in got] == [
                (1, txs[0], f"{eid}1".encode()),
                (2, txs[1], f"{eid}2".encode()),
            ]
        assert await s.integrity_check() == []
    finally:
        await s.close()
    conn = _raw(sq.path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    pk = [row[1] for row in conn.execute("PRAGMA table_info(events)") if row[5]]
    assert columns[0] == "tx" and pk == ["tx"]
    conn.close()


# ------------------------------------------------------------------ bulk group commits

#: A fixed clock, so READY_NOW and leases read the same on both paths.
NOW_US = 5_000_000


def _sqlite(path: Path, *, bulk: bool) -> SqliteStorage:
    return SqliteStorage(str(path), bulk=bulk, clock=lambda: NOW_US, durability="normal")


def _dump(path: Path) -> dict[str, list[tuple]]:
    """Every row an append writes, table by table, in key order."""
    conn = _raw(path)
    try:
        return {
            table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()
            for table, columns, order in (
                ("executions", "*", "execution_id"),
                (
                    "events",
                    "execution_id, version, tx, timestamp, kind, hash, encoded",
                    "execution_id, version",
                ),
                ("timers", "*", "execution_id, step"),
                ("execution_needs", "*", "execution_id, capability"),
                ("event_waits", "*", "execution_id, event_type"),
                ("inbox", "*", "execution_id, seq"),
                ("counters", "*", "name"),
            )
        }
    finally:
        conn.close()


def _bulk_order(reqs: list[AppendRequest]) -> list[int]:
    """The order in which the bulk path runs a group's appends: each
    execution's first plain append, then the rest in submission order."""
    first: list[int] = []
    later: list[int] = []
    seen: set[str] = set()
    for i, r in enumerate(reqs):
        plain = r.ack_inbox_upto is None and not r.waits_set and not r.waits_cleared
        (first if plain and r.execution_id not in seen else later).append(i)
        seen.add(r.execution_id)
    return first + later


def _outcome(result: object) -> object:
    if isinstance(result, BaseException):
        return (type(result).__name__, str(result))
    return result


async def _group(store: SqliteStorage, reqs: list[AppendRequest]) -> list[object]:
    """Submit ``reqs`` in one group commit; each one's txs or (error type, message)."""
    commits = store.commits
    futures = [store.submit(r) for r in reqs]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert store.commits == commits + 1
    return [_outcome(r) for r in results]


async def _group_per_op(store: SqliteStorage, reqs: list[AppendRequest]) -> list[object]:
    """The same group on the one-by-one path, in the bulk path's order."""
    order = _bulk_order(reqs)
    results = await _group(store, [reqs[i] for i in order])
    out: list[object] = [None] * len(reqs)
    for i, result in zip(order, results, strict=True):
        out[i] = result
    return out


def _ev(eid: str, version: int, tx: int = 1) -> StoredEvent:
    return event(eid, version, tx)


def _mixed_setup() -> list[AppendRequest]:
    """Appends, awaited one by one, that make the executions the group meets."""
    return [
        AppendRequest("old", 0, [_ev("old", 1), _ev("old", 2)], "running", workflow_id="wf",
                      allocate_tx=True, needs=["cpu"], timers_set={"0": 50}),
        AppendRequest("stale", 0, [_ev("stale", 1)], "running", workflow_id="wf",
                      allocate_tx=True),
        AppendRequest("owned", 0, [_ev("owned", 1)], "running", workflow_id="wf",
                      allocate_tx=True, fence=Fence("node-a", 0)),
        AppendRequest("acked", 0, [_ev("acked", 1)], "waiting", workflow_id="wf",
                      allocate_tx=True, waits_set=["paid"]),
        AppendRequest("ending", 0, [_ev("ending", 1)], "running", workflow_id="wf",
                      allocate_tx=True, timers_set={"0": 70}, needs=["gpu"]),
    ]  # fmt: skip


def _mixed_group() -> list[AppendRequest]:
    """One group: a fresh execution, a fresh owned one, appends to existing
    ones (one ending), a conflict, a fence, and one the bulk path cannot take."""
    return [
        AppendRequest("new", 0, [_ev("new", 1), _ev("new", 2)], "running", workflow_id="wf",
                      workflow_version="2", parent_id="old", allocate_tx=True,
                      ready_at=READY_NOW, needs=["gpu", "cpu", "gpu"], preferred="node-c",
                      timers_set={"0/1": 90}),
        AppendRequest("new-owned", 0, [_ev("new-owned", 1)], "running", workflow_id="wf",
                      allocate_tx=True, fence=Fence("node-a", 0), lease_seconds=2.5,
                      preferred="node-c"),
        AppendRequest("old", 2, [_ev("old", 3)], "running", allocate_tx=True,
                      timers_cleared=["0"], timers_set={"1": 60}, needs=["gpu"], ready_at=123),
        AppendRequest("stale", 0, [_ev("stale", 1)], "running", workflow_id="wf",
                      allocate_tx=True),
        AppendRequest("owned", 1, [_ev("owned", 2)], "running", allocate_tx=True,
                      fence=Fence("node-b", 1)),
        AppendRequest("acked", 1, [_ev("acked", 2)], "running", allocate_tx=True,
                      ack_inbox_upto=1, waits_cleared=["paid"]),
        AppendRequest("ending", 1, [_ev("ending", 2)], "completed", allocate_tx=True),
        AppendRequest("old", 3, [_ev("old", 4)], "waiting", allocate_tx=True),
    ]  # fmt: skip


async def _run_mixed(path: Path, *, bulk: bool) -> tuple[list[object], int]:
    store = _sqlite(path, bulk=bulk)
    await store.open()
    try:
        for req in _mixed_setup():
            await store.append(req)
        await store.post_message("acked", "signal", "go", b"1")
        group = _mixed_group()
        results = await (_group(store, group) if bulk else _group_per_op(store, group))
        fenced_writes = (await store.cluster_stats()).fenced_writes
        assert await store.integrity_check() == []
    finally:
        await store.close()
    return results, fenced_writes


async def test_bulk_group_commit_gives_each_request_its_own_outcome(tmp_path: Path) -> None:
    results, fenced_writes = await _run_mixed(tmp_path / "bulk.db", bulk=True)
    new, new_owned, old, stale, owned, acked, ending, old_again = results
    # Setup used txs 1-6; the bulk appends get theirs in request order, the
    # appends that go one by one (an inbox ack, a second append to "old") after.
    assert (new, new_owned, old, ending) == ([7, 8], [9], [10], [11])
    assert stale == (
        "ConflictError", "execution stale: expected version 0, but the stored version is 1"
    )  # fmt: skip
    assert owned[0] == "FencedError" and "owned by node-a at epoch 1" in str(owned[1])
    assert (acked, old_again) == ([12], [13])
    assert fenced_writes == 1

    rows = _dump(tmp_path / "bulk.db")
    cols = [
        "execution_id", "workflow_id", "workflow_version", "status", "parent_id",
        "created_at", "updated_at", "version", "owner", "epoch", "lease_expires_at",
        "ready_at", "inbox_acked", "preferred", "finished_at",
    ]  # fmt: skip
    conn = _raw(tmp_path / "bulk.db")
    execs = {
        r[0]: dict(zip(cols, r, strict=True))
        for r in conn.execute(f"SELECT {', '.join(cols)} FROM executions")
    }
    conn.close()
    ts = {v: event("x", v, 1).timestamp for v in range(1, 5)}
    assert execs["new"] == {
        "execution_id": "new", "workflow_id": "wf", "workflow_version": "2", "status": "running",
        "parent_id": "old", "created_at": ts[1], "updated_at": ts[2], "version": 2,
        "owner": None, "epoch": 0, "lease_expires_at": None, "ready_at": NOW_US,
        "inbox_acked": 0, "preferred": "node-c", "finished_at": None,
    }  # fmt: skip
    owned_row = execs["new-owned"]
    assert (owned_row["owner"], owned_row["epoch"], owned_row["preferred"]) == ("node-a", 1, None)
    assert owned_row["lease_expires_at"] == NOW_US + 2_500_000
    assert (execs["old"]["version"], execs["old"]["status"]) == (4, "waiting")
    assert execs["old"]["ready_at"] == 123  # set by the bulk append, kept by the next
    assert (execs["stale"]["version"], execs["owned"]["version"]) == (1, 1)
    assert (execs["acked"]["version"], execs["acked"]["inbox_acked"]) == (2, 1)
    assert execs["ending"]["finished_at"] == ts[2] and execs["ending"]["owner"] is None
    assert execs["ending"]["ready_at"] is None
    assert [(r[0], r[1], r[2]) for r in rows["timers"]] == [
        ("new", "0/1", 90), ("old", "1", 60)
    ]  # fmt: skip
    assert rows["execution_needs"] == [("new", "cpu"), ("new", "gpu"), ("old", "gpu")]
    assert rows["event_waits"] == [] and rows["inbox"] == []
    txs = [r[2] for r in rows["events"]]
    assert sorted(txs) == list(range(1, 14))


async def test_bulk_and_per_op_paths_store_the_same(tmp_path: Path) -> None:
    bulk = await _run_mixed(tmp_path / "bulk.db", bulk=True)
    per_op = await _run_mixed(tmp_path / "perop.db", bulk=False)
    assert bulk == per_op
    assert _dump(tmp_path / "bulk.db") == _dump(tmp_path / "perop.db")


@contextlib.asynccontextmanager
async def _store_with_a(path: Path) -> AsyncIterator[SqliteStorage]:
    """An open bulk store holding execution "a" at version 1 (tx 1)."""
    store = _sqlite(path, bulk=True)
    await store.open()
    try:
        await store.append(AppendRequest("a", 0, [_ev("a", 1, 1)], "running", workflow_id="wf"))
        yield store
    finally:
        await store.close()


async def test_a_duplicate_event_in_a_bulk_fails_only_its_request(tmp_path: Path) -> None:
    async with _store_with_a(tmp_path / "s.db") as store:
        results = await _group(
            store,
            [
                AppendRequest("b", 0, [_ev("b", 1, 2)], "running", workflow_id="wf"),
                # tx 1 is stored already: the bulk insert of events fails,
                # the batch is redone op by op and only this request fails.
                AppendRequest("c", 0, [_ev("c", 1, 1)], "running", workflow_id="wf"),
                AppendRequest("a", 1, [], "completed", allocate_tx=True),
            ],
        )
        assert results[0] == [2] and results[2] == []
        assert results[1][0] == "StorageError" and "already stored" in str(results[1][1])
        assert await store.get_execution("c") is None
        assert [e.tx for e in await store.read_events("b")] == [2]
        rec = await store.get_execution("a")
        assert rec is not None and rec.status == "completed"


async def test_an_unexpected_bulk_failure_redoes_the_batch_carefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SqliteStorage._bulk_append
    calls: list[int] = []

    def failing(self: SqliteStorage, conn: sqlite3.Connection, reqs: list) -> list:
        calls.append(len(reqs))
        real(self, conn, reqs)  # writes everything, then fails: all must be rolled back
        raise RuntimeError("injected")

    monkeypatch.setattr(SqliteStorage, "_bulk_append", failing)
    async with _store_with_a(tmp_path / "s.db") as store:
        results = await _group(
            store,
            [
                AppendRequest("a", 1, [_ev("a", 2)], "running", allocate_tx=True),
                AppendRequest("b", 0, [_ev("b", 1)], "running", workflow_id="wf",
                              allocate_tx=True),
                AppendRequest("a", 5, [_ev("a", 6)], "running", allocate_tx=True),
            ],
        )  # fmt: skip
        assert calls == [1, 2]
        assert results[:2] == [[2], [3]]
        assert results[2][0] == "ConflictError"
        assert [e.tx for e in await store.read_events("a")] == [1, 2]
        assert await store.integrity_check() == []


# One request of a random group: (execution, version offset from the stored
# one, events, status, tx mode, fence, ready_at, needs, inbox ack, waits).
_request_spec = st.tuples(
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from([-1, 0, 0, 0, 0, 1]),
    st.integers(0, 2),
    st.sampled_from(["running", "waiting", "completed"]),
    st.sampled_from(["allocate", "allocate", "given", "stored"]),  # stored: a duplicate tx
    st.sampled_from([None, None, "n1", "n2"]),
    st.sampled_from([UNCHANGED, UNCHANGED, None, READY_NOW, 500]),
    st.sampled_from([None, None, (), ("gpu",), ("gpu", "cpu")]),
    st.sampled_from([None, None, None, 1]),
    st.sampled_from([(), (), ("paid",)]),
    st.dictionaries(st.sampled_from(["0", "0/1"]), st.integers(0, 1000), max_size=2),
    st.lists(st.sampled_from(["0", "0/1"]), max_size=2, unique=True),
)


def _random_request(spec: tuple, version: int, tx: Iterator[int]) -> AppendRequest:
    eid, offset, count, status, txs, owner, ready, needs, ack, waits, armed, cleared = spec
    expected = max(0, version + offset)
    given = txs == "given"
    events = [
        event(eid, expected + 1 + i, next(tx) if given else 1 if txs == "stored" else 999)
        for i in range(count)
    ]
    fence = None
    if owner is not None:
        fence = Fence(owner, 0 if expected == 0 else 1)
    return AppendRequest(
        eid,
        expected,
        events,
        status,
        workflow_id="wf" if expected == 0 else None,
        allocate_tx=txs == "allocate",
        fence=fence,
        ready_at=ready,
        needs=needs,
        ack_inbox_upto=ack,
        waits_set=list(waits),
        timers_set=dict(armed),
        timers_cleared=list(cleared),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(st.lists(_request_spec, min_size=1, max_size=8), min_size=1, max_size=5))
def test_bulk_path_matches_the_per_op_path(plan: list[list[tuple]]) -> None:
    """Random groups of appends give the same outcomes and stored rows on
    both paths (the per-op one run in the order the bulk path runs them)."""

    async def run(tmp: Path) -> None:
        bulk, per_op = _sqlite(tmp / "bulk.db", bulk=True), _sqlite(tmp / "perop.db", bulk=False)
        await bulk.open()
        await per_op.open()
        tx = itertools.count(1000)
        try:
            for round_ in plan:
                versions: dict[str, int] = {}
                for eid in {spec[0] for spec in round_}:
                    rec = await bulk.get_execution(eid)
                    versions[eid] = 0 if rec is None else rec.version
                group = []
                for spec in round_:
                    req = _random_request(spec, versions[spec[0]], tx)
                    versions[req.execution_id] = req.expected_version + len(req.events)
                    group.append(req)
                assert await _group(bulk, group) == await _group_per_op(per_op, group)
                assert _dump(tmp / "bulk.db") == _dump(tmp / "perop.db")
        finally:
            await bulk.close()
            await per_op.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))

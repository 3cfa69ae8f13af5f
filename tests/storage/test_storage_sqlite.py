"""SQLite-only behaviour: files, schema versions, corruption, durability, URLs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from storage_helpers import StoreFactory, event, request

from itonami.errors import CorruptStorageError, StorageError
from itonami.storage import (
    AppendRequest,
    Fence,
    MemoryStorage,
    SqliteStorage,
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

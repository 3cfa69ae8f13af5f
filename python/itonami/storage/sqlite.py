"""The SQLite backend: one file, WAL mode, one write connection with group commit.

Design:

* **One write connection.** Writes (appends, snapshots, definitions,
  pruning) are queued as operations and run as ONE transaction per batch
  (``BEGIN IMMEDIATE`` ... ``COMMIT``): one commit, one fsync for the batch.
  A conflict is detected before its operation writes, so batches run without
  savepoints; any other failure rolls the batch back and runs it again with
  a ``SAVEPOINT`` around each operation, so one bad operation fails alone.
  Futures are settled only after the commit returned, so an awaited append
  is durable.
* **Where the writes run** (``writer=``): ``"loop"`` (default) runs each
  batch on the event loop's thread at the end of the loop turn in which its
  operations were submitted. ``"thread"`` runs them on a dedicated thread,
  batching whatever queued up while the previous commit was in flight.
  Python's ``sqlite3`` releases the GIL around every statement; a writer
  thread must then wait to take it back from a busy event loop for each
  statement, which made the thread mode several times slower than the fsync
  it keeps off the loop (measured: see docs/benchmarks.md).
* **Readers** use their own connections (a small pool served by a small
  thread pool). In WAL mode they read a consistent snapshot and never block
  the writer, nor it them.
* **Durability**: ``durability="full"`` (the default) sets
  ``synchronous=FULL``: a committed transaction survives power loss.
  ``durability="normal"`` sets ``synchronous=NORMAL``: with WAL this still
  survives a crash of the process, but the last transactions may be lost on
  power loss or an OS crash; in exchange commits do not wait for an fsync.
* **Schema versions**: the ``schema_version`` table holds the version of the
  schema; on open the missing entries of :data:`MIGRATIONS` are applied in one
  transaction. A store written by a newer itonami is refused.
* ``sqlite:///:memory:`` keeps everything in the write connection, and the
  reads go through it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from itonami._failpoints import hit
from itonami.errors import ConflictError, CorruptStorageError, StorageError
from itonami.storage.base import (
    TERMINAL_STATUSES,
    AppendRequest,
    ExecutionRecord,
    Storage,
    StoredEvent,
    check_definition,
    check_event_rows,
    check_paging,
    check_request,
    conflict,
    definition_mismatch,
    find_history_problems,
    status_filter,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStorage"]

T = TypeVar("T")

_MAGIC = b"SQLite format 3\x00"

#: Ordered schema migrations: (version reached, statements). Never edit an
#: entry once released; append a new one.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            "CREATE TABLE executions ("
            " execution_id TEXT PRIMARY KEY,"
            " workflow_id TEXT NOT NULL,"
            " workflow_version TEXT NOT NULL,"
            " status TEXT NOT NULL,"
            " parent_id TEXT,"
            " created_at INTEGER NOT NULL,"
            " updated_at INTEGER NOT NULL,"
            " version INTEGER NOT NULL)",
            "CREATE TABLE events ("
            " execution_id TEXT NOT NULL,"
            " version INTEGER NOT NULL,"
            " tx INTEGER NOT NULL UNIQUE,"
            " timestamp INTEGER NOT NULL,"
            " kind TEXT NOT NULL,"
            " hash BLOB NOT NULL,"
            " encoded BLOB NOT NULL,"
            " PRIMARY KEY (execution_id, version)) WITHOUT ROWID",
            "CREATE TABLE snapshots ("
            " execution_id TEXT NOT NULL,"
            " version INTEGER NOT NULL,"
            " data BLOB NOT NULL,"
            " PRIMARY KEY (execution_id, version)) WITHOUT ROWID",
            "CREATE TABLE definitions ("
            " workflow_id TEXT NOT NULL,"
            " version TEXT NOT NULL,"
            " content_hash TEXT NOT NULL,"
            " document BLOB NOT NULL,"
            " seq INTEGER NOT NULL,"
            " PRIMARY KEY (workflow_id, version))",
            "CREATE INDEX definitions_hash ON definitions (content_hash)",
        ),
    ),
    (
        2,
        (
            "CREATE TABLE timers ("
            " execution_id TEXT NOT NULL,"
            " step TEXT NOT NULL,"
            " fire_at INTEGER NOT NULL,"
            " PRIMARY KEY (execution_id, step)) WITHOUT ROWID",
            "CREATE INDEX timers_fire_at ON timers (fire_at)",
            "CREATE INDEX executions_status ON executions (status, created_at)",
            "CREATE INDEX executions_workflow ON executions (workflow_id, created_at)",
        ),
    ),
]

#: The schema version this code writes.
SCHEMA_VERSION: int = MIGRATIONS[-1][0]

_EXEC_COLUMNS = (
    "execution_id, workflow_id, workflow_version, status, parent_id, created_at, updated_at, "
    "version"
)


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    write: bool
    is_append: bool = False
    #: The thread that submitted the op (the loop's).
    thread: int = dataclasses.field(default_factory=threading.get_ident)


_STOP = object()


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the caller was cancelled; the write happened regardless
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class _RedoCarefully(Exception):
    """An op failed after it may have written: redo the batch with savepoints."""


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    # The named constants exist from Python 3.11; the codes are SQLite's own.
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg


class SqliteStorage(Storage):
    """A :class:`Storage` in one SQLite file.

    ``path`` is a file path or ``":memory:"``. Options: ``durability``
    (``"full"`` or ``"normal"``, see the module docstring), ``readers`` (reader
    connections, default 2), ``busy_timeout`` (seconds to wait for another
    process holding the write lock, default 10), ``writer``:

    - ``"loop"`` (default): writes run on the event loop's thread. Everything
      submitted during one turn of the loop is committed together at the end
      of that turn (group commit). The loop is blocked for the commit's fsync
      (tens of microseconds on an SSD, a few milliseconds on slow disks), but
      no thread competes for the GIL.
    - ``"thread"``: a dedicated writer thread. The loop never waits for a
      disk, but Python's ``sqlite3`` releases and re-takes the GIL around
      every statement, and each re-take waits for the busy loop thread: on a
      busy engine this costs far more than the fsync it hides. Choose it for
      slow disks with an otherwise busy event loop.
    """

    def __init__(
        self,
        path: str,
        *,
        url: str | None = None,
        durability: str = "full",
        readers: int = 2,
        busy_timeout: float = 10.0,
        writer: str = "loop",
    ) -> None:
        super().__init__(url or f"sqlite:///{path}")
        if writer not in ("loop", "thread"):
            raise ValueError(f"writer must be 'loop' or 'thread', got {writer!r}")
        self.writer = writer
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        self.path = path
        self.durability = durability
        self._memory = path == ":memory:"
        self._n_readers = readers
        self._busy_ms = int(busy_timeout * 1000)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._read_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conns: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._open = False
        self._wconn: sqlite3.Connection | None = None  # writer="loop" only
        self._batch: list[_Op] = []
        self._flush_scheduled = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Check the file, start the writer thread, migrate, and open the readers."""
        if self._open:
            return
        if not self._memory:
            self._check_file()
        if self.writer == "loop":
            self._wconn = self._open_writer_connection()
            await self._open_readers()
            return
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(ready,), name="itonami-sqlite-writer", daemon=True
        )
        self._writer.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.to_thread(self._writer.join)
            self._writer = None
            raise
        await self._open_readers()

    async def _open_readers(self) -> None:
        if not self._memory:
            try:
                for _ in range(self._n_readers):
                    conn = self._connect(reader=True)
                    self._all_readers.append(conn)
                    self._reader_conns.put(conn)
            except sqlite3.Error as exc:
                self._open = True
                await self.close()
                raise self._map_error(exc, "opening a reader connection") from exc
            self._read_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._n_readers, thread_name_prefix="itonami-sqlite-read"
            )
        self._open = True

    async def close(self) -> None:
        """Let queued writes finish, stop the writer and close every connection."""
        if not self._open:
            return
        self._open = False
        if self._wconn is not None:
            self._flush_batch()
            self._wconn.close()
            self._wconn = None
        self._queue.put(_STOP)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._read_pool is not None:
            await asyncio.to_thread(self._read_pool.shutdown, wait=True)
            self._read_pool = None
        for conn in self._all_readers:
            conn.close()
        self._all_readers.clear()
        self._reader_conns = queue.SimpleQueue()

    def _check_file(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the folder {parent} for {self.path}: {exc}") from exc
        if os.path.isdir(self.path):
            raise StorageError(f"{self.path} is a directory, not a SQLite database file")
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(_MAGIC))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc}") from exc
        if head and head != _MAGIC:
            raise CorruptStorageError(
                f"{self.path} is not a SQLite database (bad header); refusing to open it"
            )

    def _connect(self, *, reader: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=not reader,
            timeout=self._busy_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
        if reader:
            conn.execute("PRAGMA query_only = 1")
        return conn

    # ------------------------------------------------------------------ writer thread

    def _open_writer_connection(self) -> sqlite3.Connection:
        """The write connection, in WAL mode with the chosen sync level, migrated."""
        try:
            conn = self._connect(reader=False)
        except sqlite3.Error as exc:
            raise self._map_error(exc, "opening") from exc
        try:
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            self._migrate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._map_error(exc, "opening") from exc
            raise
        return conn

    def _writer_main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._open_writer_connection()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            self._writer_loop(conn)
        finally:
            conn.close()

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ops: list[_Op] = []
            for item in batch:
                if item is _STOP:
                    stopping = True
                else:
                    ops.append(item)
            writes = [op for op in ops if op.write]
            if writes:
                self._run_writes(conn, writes)
            for op in ops:
                if not op.write:
                    self._run_read_op(conn, op)

    def _run_writes(self, conn: sqlite3.Connection, ops: list[_Op], careful: bool = False) -> None:
        """Run ``ops`` in one transaction and commit once (group commit).

        An op that fails must not take the others down. A conflict is found
        before its op writes anything, so the fast path runs without
        savepoints; any other failure rolls the batch back and runs it again
        with a savepoint around each op (``careful``).
        """
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                if careful:
                    conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn)
                except ConflictError as exc:
                    if careful:
                        conn.execute("RELEASE op")
                    outcomes.append((op, None, exc))
                except Exception as exc:
                    if not careful:
                        raise _RedoCarefully from exc
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((op, None, self._map_error(exc, "writing")))
                else:
                    if careful:
                        conn.execute("RELEASE op")
                    outcomes.append((op, result, None))
            hit("storage.mid_commit")
            conn.execute("COMMIT")
            hit("storage.after_commit")
        except _RedoCarefully:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._run_writes(conn, ops, careful=True)
            return
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            err = self._map_error(exc, "committing") if isinstance(exc, sqlite3.Error) else exc
            for op in ops:
                self._post(op, None, err)
            return
        self.commits += 1
        self.appends += sum(1 for op, _, failure in outcomes if op.is_append and failure is None)
        for op, result, failure in outcomes:
            self._post(op, result, failure)

    def _run_read_op(self, conn: sqlite3.Connection, op: _Op) -> None:
        try:
            result = self._in_read_tx(conn, op.fn)
        except BaseException as exc:
            self._post(op, None, exc)
        else:
            self._post(op, result, None)

    @staticmethod
    def _post(op: _Op, result: Any, exc: BaseException | None) -> None:
        if threading.get_ident() == op.thread:
            _settle(op.future, result, exc)  # writer="loop": already on the loop
            return
        # RuntimeError: the caller's loop is closed, so nobody is waiting.
        with contextlib.suppress(RuntimeError):
            op.loop.call_soon_threadsafe(_settle, op.future, result, exc)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "schema_version" in tables:
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                if row is None or type(row[0]) is not int:
                    raise CorruptStorageError(f"{self.path}: schema_version table is damaged")
                have = row[0]
            elif tables:
                raise StorageError(
                    f"{self.path} holds tables ({', '.join(sorted(tables))}) but is not an "
                    "itonami store (no schema_version table)"
                )
            else:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                have = 0
            if have > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {have}, newer than the {SCHEMA_VERSION} "
                    "this itonami understands; upgrade itonami to open it"
                )
            for version, statements in MIGRATIONS:
                if version > have:
                    for stmt in statements:
                        conn.execute(stmt)
            if have < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ plumbing

    def _map_error(self, exc: BaseException, doing: str) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            if _is_corruption(exc):
                return CorruptStorageError(f"{self.path} is damaged ({doing}): {exc}")
            return StorageError(f"{self.path}: SQLite error while {doing}: {exc}")
        return exc

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"storage {self.url} is not open")

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, is_append: bool = False) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Op(fn, fut, loop, write=True, is_append=is_append))
        return await fut

    def _enqueue(self, op: _Op) -> None:
        if self._wconn is None:
            self._queue.put(op)
            return
        self._batch.append(op)
        if not self._flush_scheduled:
            # Everything submitted during this turn of the loop commits together.
            self._flush_scheduled = True
            op.loop.call_soon(self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_scheduled = False
        ops, self._batch = self._batch, []
        if self._wconn is None or not ops:
            return
        writes = [op for op in ops if op.write]
        if writes:
            self._run_writes(self._wconn, writes)
        for op in ops:
            if not op.write:
                self._run_read_op(self._wconn, op)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._memory:
            fut: asyncio.Future[T] = loop.create_future()
            self._enqueue(_Op(fn, fut, loop, write=False))
            return await fut
        assert self._read_pool is not None
        return await loop.run_in_executor(self._read_pool, self._pooled_read, fn)

    def _pooled_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._reader_conns.get()
        try:
            return self._in_read_tx(conn, fn)
        finally:
            self._reader_conns.put(conn)

    def _in_read_tx(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn.execute("BEGIN")
            return fn(conn)
        except sqlite3.Error as exc:
            raise self._map_error(exc, "reading") from exc
        finally:
            # Read-only: ending it by ROLLBACK loses nothing, and on a damaged
            # file a COMMIT can fail after the reads succeeded.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ API

    async def append(self, req: AppendRequest) -> None:
        """Append under optimistic concurrency; group-committed with concurrent appends."""
        await self.submit(req)

    def submit(self, req: AppendRequest) -> asyncio.Future[None]:
        """Queue the append for the writer thread's next group commit."""
        self._check_open()
        check_request(req)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._enqueue(
            _Op(lambda conn: self._append_tx(conn, req), fut, loop, write=True, is_append=True)
        )
        return fut

    def _append_tx(self, conn: sqlite3.Connection, req: AppendRequest) -> None:
        eid = req.execution_id
        row = conn.execute(
            "SELECT version FROM executions WHERE execution_id = ?", (eid,)
        ).fetchone()
        actual = row[0] if row else 0
        if type(actual) is not int:
            raise CorruptStorageError(
                f"execution {eid}: stored version {actual!r} is not an integer", execution_id=eid
            )
        if actual != req.expected_version:
            raise conflict(eid, req.expected_version, actual)
        events = req.events
        try:
            conn.executemany(
                "INSERT INTO events (execution_id, version, tx, timestamp, kind, hash, encoded)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(eid, e.version, e.tx, e.timestamp, e.kind, e.hash, e.encoded) for e in events],
            )
        except sqlite3.IntegrityError as exc:
            raise StorageError(
                f"append to {eid}: an event's version or tx is already stored ({exc})"
            ) from exc
        new_version = req.expected_version + len(events)
        last_ts = events[-1].timestamp if events else None
        if row is None:
            first_ts = events[0].timestamp if events else 0
            conn.execute(
                f"INSERT INTO executions ({_EXEC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    eid,
                    req.workflow_id,
                    req.workflow_version or "",
                    req.status,
                    req.parent_id,
                    first_ts,
                    first_ts if last_ts is None else last_ts,
                    new_version,
                ),
            )
        else:
            conn.execute(
                "UPDATE executions SET status = ?, version = ?,"
                " updated_at = COALESCE(?, updated_at) WHERE execution_id = ?",
                (req.status, new_version, last_ts, eid),
            )
        if req.timers_cleared:
            conn.executemany(
                "DELETE FROM timers WHERE execution_id = ? AND step = ?",
                [(eid, step) for step in req.timers_cleared],
            )
        if req.timers_set:
            conn.executemany(
                "INSERT INTO timers (execution_id, step, fire_at) VALUES (?, ?, ?)"
                " ON CONFLICT (execution_id, step) DO UPDATE SET fire_at = excluded.fire_at",
                [(eid, step, at) for step, at in req.timers_set.items()],
            )
        if req.status in TERMINAL_STATUSES:
            conn.execute("DELETE FROM timers WHERE execution_id = ?", (eid,))

    async def read_events(self, execution_id: str, from_version: int = 0) -> list[StoredEvent]:
        """Events after ``from_version``; damaged rows raise CorruptStorageError."""

        def run(conn: sqlite3.Connection) -> list[StoredEvent]:
            head = conn.execute(
                "SELECT version FROM executions WHERE execution_id = ?", (execution_id,)
            ).fetchone()
            # kind is fetched as bytes so that invalid UTF-8 names its version
            # instead of failing the whole query.
            cur = conn.execute(
                "SELECT version, tx, timestamp, CAST(kind AS BLOB), typeof(kind), hash, encoded"
                " FROM events WHERE execution_id = ? AND version > ? ORDER BY version",
                (execution_id, from_version),
            )
            rows = []
            for version, tx, ts, kind_raw, kind_type, hash_, encoded in cur:
                kind: Any = kind_raw
                if kind_type == "text":
                    try:
                        kind = bytes(kind_raw).decode("utf-8")
                    except UnicodeDecodeError:
                        kind = kind_raw
                rows.append((version, tx, ts, kind, hash_, encoded))
            head_version = head[0] if head and type(head[0]) is int else None
            return check_event_rows(execution_id, rows, from_version, head_version)

        try:
            return await self._read(run)
        except CorruptStorageError as exc:
            if exc.execution_id is not None:
                raise
            raise CorruptStorageError(
                f"execution {execution_id}: cannot read its events: {exc}",
                execution_id=execution_id,
            ) from exc

    async def save_snapshot(self, execution_id: str, version: int, data: bytes) -> None:
        """Store (or replace) the snapshot at ``version``."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (execution_id, version, data) VALUES (?, ?, ?)",
                (execution_id, version, bytes(data)),
            )

        await self._write(run)

    async def load_snapshot(self, execution_id: str) -> tuple[int, bytes] | None:
        """The newest snapshot, or None."""

        def run(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
            row = conn.execute(
                "SELECT version, data FROM snapshots WHERE execution_id = ?"
                " ORDER BY version DESC LIMIT 1",
                (execution_id,),
            ).fetchone()
            if row is None:
                return None
            if type(row[0]) is not int or not isinstance(row[1], bytes):
                raise CorruptStorageError(
                    f"execution {execution_id}: stored snapshot {row[0]!r} has wrong-typed values",
                    execution_id=execution_id,
                )
            return row[0], row[1]

        return await self._read(run)

    async def prune_snapshots(self, execution_id: str, keep: int) -> int:
        """Delete all but the ``keep`` newest snapshots."""
        if keep < 0:
            raise StorageError(f"prune_snapshots {execution_id}: keep must be >= 0, got {keep}")

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM snapshots WHERE execution_id = ? AND version NOT IN"
                " (SELECT version FROM snapshots WHERE execution_id = ?"
                "  ORDER BY version DESC LIMIT ?)",
                (execution_id, execution_id, keep),
            )
            return cur.rowcount

        return await self._write(run)

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's row, or None."""

        def run(conn: sqlite3.Connection) -> ExecutionRecord | None:
            row = conn.execute(
                f"SELECT {_EXEC_COLUMNS} FROM executions WHERE execution_id = ?", (execution_id,)
            ).fetchone()
            return None if row is None else ExecutionRecord(*row)

        return await self._read(run)

    async def list_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[ExecutionRecord]:
        """Filtered executions, ordered by creation time then id."""
        check_paging(limit, offset)
        statuses = status_filter(status)
        if statuses is not None and not statuses:
            return []
        where: list[str] = []
        params: list[Any] = []
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        sql = f"SELECT {_EXEC_COLUMNS} FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, execution_id LIMIT ? OFFSET ?"
        params.extend([limit, offset])

        def run(conn: sqlite3.Connection) -> list[ExecutionRecord]:
            return [ExecutionRecord(*row) for row in conn.execute(sql, params)]

        return await self._read(run)

    async def unfinished_executions(self) -> list[str]:
        """Ids of the executions not in a terminal status."""
        terminal = sorted(TERMINAL_STATUSES)
        sql = (
            "SELECT execution_id FROM executions WHERE status NOT IN"
            f" ({', '.join('?' for _ in terminal)}) ORDER BY created_at, execution_id"
        )
        return await self._read(lambda conn: [r[0] for r in conn.execute(sql, terminal)])

    async def due_timers(self, now: int) -> list[tuple[str, str, int]]:
        """Timers with ``fire_at <= now``, soonest first."""
        sql = (
            "SELECT execution_id, step, fire_at FROM timers WHERE fire_at <= ?"
            " ORDER BY fire_at, execution_id, step"
        )
        return await self._read(lambda conn: [tuple(r) for r in conn.execute(sql, (now,))])

    async def all_timers(self) -> list[tuple[str, str, int]]:
        """Every timer, soonest first."""
        sql = "SELECT execution_id, step, fire_at FROM timers ORDER BY fire_at, execution_id, step"
        return await self._read(lambda conn: [tuple(r) for r in conn.execute(sql)])

    async def put_definition(
        self, workflow_id: str, version: str, content_hash: str, document: bytes
    ) -> None:
        """Register a definition (idempotent; different content for a version is refused)."""
        check_definition(workflow_id, version, content_hash, document)

        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT content_hash FROM definitions WHERE workflow_id = ? AND version = ?",
                (workflow_id, version),
            ).fetchone()
            if row is not None:
                if row[0] != content_hash:
                    raise definition_mismatch(workflow_id, version, row[0], content_hash)
                return
            conn.execute(
                "INSERT INTO definitions (workflow_id, version, content_hash, document, seq)"
                " VALUES (?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM definitions))",
                (workflow_id, version, content_hash, bytes(document)),
            )

        await self._write(run)

    async def get_definition(self, workflow_id: str, version: str | None = None) -> bytes | None:
        """A document by workflow and version (None = newest registered)."""
        if version is None:
            sql = "SELECT document FROM definitions WHERE workflow_id = ? ORDER BY seq DESC LIMIT 1"
            params: tuple[Any, ...] = (workflow_id,)
        else:
            sql = "SELECT document FROM definitions WHERE workflow_id = ? AND version = ?"
            params = (workflow_id, version)

        def run(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(sql, params).fetchone()
            return None if row is None else row[0]

        return await self._read(run)

    async def get_definition_by_hash(self, content_hash: str) -> bytes | None:
        """A document by content hash."""

        def run(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT document FROM definitions WHERE content_hash = ? ORDER BY seq LIMIT 1",
                (content_hash,),
            ).fetchone()
            return None if row is None else row[0]

        return await self._read(run)

    async def max_tx(self) -> int:
        """The largest stored tx (0 when empty)."""

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(tx) FROM events").fetchone()
            value = row[0] if row and row[0] is not None else 0
            if type(value) is not int:
                raise CorruptStorageError(f"{self.path}: a stored tx is not an integer: {value!r}")
            return value

        return await self._read(run)

    async def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` plus history, type and orphan checks."""

        def run(conn: sqlite3.Connection) -> list[str]:
            problems: list[str] = []
            try:
                for (line,) in conn.execute("PRAGMA integrity_check"):
                    if line != "ok":
                        problems.append(f"sqlite: {line}")
            except sqlite3.DatabaseError as exc:
                return [f"sqlite: {exc}"]
            if problems:  # the b-trees are damaged: our own queries would mislead
                return problems
            for eid, version, types in conn.execute(
                "SELECT execution_id, version, typeof(tx) || ',' || typeof(timestamp) || ','"
                " || typeof(kind) || ',' || typeof(hash) || ',' || typeof(encoded) FROM events"
                " WHERE typeof(tx) != 'integer' OR typeof(timestamp) != 'integer'"
                " OR typeof(kind) != 'text' OR typeof(hash) != 'blob'"
                " OR typeof(encoded) != 'blob'"
            ):
                problems.append(
                    f"execution {eid}: event version {version!r} has wrong-typed values "
                    f"(tx, timestamp, kind, hash, encoded are {types})"
                )
            pairs = conn.execute(
                "SELECT execution_id, version FROM events ORDER BY execution_id, version"
            )
            heads = dict(conn.execute("SELECT execution_id, version FROM executions").fetchall())
            problems.extend(find_history_problems(pairs, heads))
            for eid, version in conn.execute(
                "SELECT s.execution_id, s.version FROM snapshots s"
                " LEFT JOIN executions e ON e.execution_id = s.execution_id"
                " WHERE e.execution_id IS NULL OR s.version > e.version"
            ):
                problems.append(
                    f"execution {eid}: snapshot at version {version} is beyond the stored history"
                )
            for eid, step in conn.execute(
                "SELECT t.execution_id, t.step FROM timers t"
                " LEFT JOIN executions e ON e.execution_id = t.execution_id"
                " WHERE e.execution_id IS NULL"
            ):
                problems.append(f"execution {eid}: timer {step} has no execution row")
            return problems

        return await self._read(run)

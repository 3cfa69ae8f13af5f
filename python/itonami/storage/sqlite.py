"""The SQLite backend: one file, WAL mode, one write connection with group commit.

Design:

* **One write connection.** Writes (appends, snapshots, definitions,
  pruning) are queued as operations and run as ONE transaction per batch
  (``BEGIN IMMEDIATE`` ... ``COMMIT``): one commit, one fsync for the batch.
  A conflict is detected before its operation writes, so batches run without
  savepoints; any other failure rolls the batch back and runs it again with
  a ``SAVEPOINT`` around each operation, so one bad operation fails alone.
  With ``bulk=True`` (the default) the batch's plain appends are written
  together first: one read of their rows, one ``executemany`` per table;
  inbox acks, event waits, an execution's later appends in the batch and
  the other operations follow one by one, in submission order.
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
* **Other processes.** Several processes may share one file. The database's
  write lock serialises their transactions; waiting for it never blocks the
  event loop: with ``writer="loop"`` a batch first tries to take the lock
  without waiting, and when another process holds it the batch is handed to
  a thread that waits up to ``busy_timeout`` (later batches queue behind
  it). Transaction ids are allocated inside the write transaction above
  every stored tx and the ``counters`` row (raised before events are
  deleted), so they are unique and increase in commit order across
  processes, and a commit writes no counter page.
* **Clock.** Lease expiry and ``ready_at`` use this process's wall clock:
  SQLite is shared by processes of one machine, which share the clock.
* **Wake hints**: :meth:`SqliteStorage.wait_for_work` polls ``PRAGMA
  data_version`` (it changes when another connection committed) every
  ``poll_interval`` seconds, and returns at once for this store's own
  commits that made work ready. With ``writer="loop"`` it asks the write
  connection, on the loop's thread, so the store's own commits are not
  taken for another process's.
* **Readers** use their own connections (a small pool served by a small
  thread pool). In WAL mode they read a consistent snapshot and never block
  the writer, nor it them.
* **Durability**: ``durability="full"`` (the default) sets
  ``synchronous=FULL``: a committed transaction survives power loss.
  ``durability="normal"`` sets ``synchronous=NORMAL``: with WAL this still
  survives a crash of the process, but the last transactions may be lost on
  power loss or an OS crash; in exchange commits do not wait for an fsync.
* **Schema versions**: the ``schema_version`` table holds the version of the
  schema; on open the missing entries of :data:`MIGRATIONS` (the shared ones
  of :mod:`itonami.storage.sqlbase`) are applied in one transaction. A store
  written by a newer itonami is refused. Every query is shared with
  PostgreSQL too; this module holds only SQLite's connections and spellings.
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from itonami._failpoints import hit
from itonami.errors import ConflictError, CorruptStorageError, StorageError
from itonami.storage.base import (
    TERMINAL_STATUSES,
    AppendRequest,
    Wakeup,
    check_request,
    conflict,
    fenced,
)
from itonami.storage.sqlbase import (
    DELETE_NEEDS,
    DELETE_TIMER,
    ENDED_TABLES,
    INSERT_EVENT,
    INSERT_EXECUTION,
    INSERT_NEED,
    NOW,
    UPSERT_TIMER,
    WAKE,
    Op,
    Q,
    SqlStorage,
    bulk_ok,
    migrations,
    needs_clock,
    new_execution_row,
    ready_value,
    update_for_append,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStorage"]

T = TypeVar("T")

_MAGIC = b"SQLite format 3\x00"

#: Ordered schema migrations: (version reached, statements). Never edit an
#: entry once released; append a new one (in :func:`sqlbase.migrations`).
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = migrations(
    {
        "int": "INTEGER",
        "blob": "BLOB",
        "norowid": " WITHOUT ROWID",
        "seq": "seq INTEGER NOT NULL",
    },
    extra={
        # Events keyed by tx, the table's rowid: txs only grow, so a commit
        # appends at the right edge of the table's B-tree (SQLite splits that
        # edge in two pages), and the tx index goes. Keyed by (execution_id,
        # version) without a rowid, a commit rewrote a leaf of that tree and
        # one of the tx index, and each split of a full leaf rebalanced three:
        # 15.6 of a 3-step workflow's 33 WAL pages, 11.3 keyed by tx. A stored
        # tx that is not an integer stops the copy (the upgrade then changes
        # nothing and names the damage).
        8: (
            "CREATE TABLE events_by_tx ("
            " tx INTEGER PRIMARY KEY,"
            " execution_id TEXT NOT NULL,"
            " version INTEGER NOT NULL,"
            " timestamp INTEGER NOT NULL,"
            " kind TEXT NOT NULL,"
            " hash BLOB NOT NULL,"
            " encoded BLOB NOT NULL)",
            "INSERT INTO events_by_tx (tx, execution_id, version, timestamp, kind, hash, encoded)"
            " SELECT tx, execution_id, version, timestamp, kind, hash, encoded FROM events",
            "DROP TABLE events",
            "ALTER TABLE events_by_tx RENAME TO events",
            "CREATE UNIQUE INDEX events_version ON events (execution_id, version)",
        ),
    },
)

#: The schema version this code writes.
SCHEMA_VERSION: int = MIGRATIONS[-1][0]


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    write: bool
    is_append: bool = False
    #: An append's request: the bulk path may take it (see _bulk_append).
    req: AppendRequest | None = None
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


#: Execution ids per ``IN (...)`` of the bulk append's read (well inside
#: SQLite's variable limit, 999 before 3.32).
_IN_CHUNK = 500

_SQLITE_BUSY = 5
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class _RedoCarefully(Exception):
    """An op failed after it may have written: redo the batch with savepoints."""


def _split_bulk(ops: list[_Op]) -> tuple[list[tuple[_Op, AppendRequest]], list[_Op]]:
    """The appends the bulk path takes (with their requests), and the other ops.

    An execution's first append in the batch may go in bulk; a later one
    goes one by one after the bulk, so it sees the first one's write, as in
    submission order. Other writes run after the bulk appends, as on
    PostgreSQL: concurrent ops carry no order among themselves, and an op
    that must follow an append awaits it first.
    """
    together: list[tuple[_Op, AppendRequest]] = []
    one_by_one: list[_Op] = []
    seen: set[str] = set()
    for op in ops:
        req = op.req
        if req is not None and req.execution_id not in seen and bulk_ok(req):
            together.append((op, req))
        else:
            one_by_one.append(op)
        if req is not None:
            seen.add(req.execution_id)
    return together, one_by_one


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    # Extended codes (SQLITE_BUSY_RECOVERY, _SNAPSHOT, ...) keep the primary
    # code in their low byte.
    primary = code & 0xFF if isinstance(code, int) else None
    return primary == _SQLITE_BUSY or "database is locked" in str(exc).lower()


class _Busy(Exception):
    """Another process holds the write lock: wait for it off the event loop."""


class _Locked(Exception):
    """Opening met another process's lock; the open is tried again."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _now_us() -> int:
    return time.time_ns() // 1000


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    # The named constants exist from Python 3.11; the codes are SQLite's own.
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg


class SqliteStorage(SqlStorage):
    """A :class:`Storage` in one SQLite file.

    ``path`` is a file path or ``":memory:"``. Options: ``durability``
    (``"full"`` or ``"normal"``, see the module docstring), ``readers`` (reader
    connections, default 2), ``busy_timeout`` (seconds to wait for another
    process holding the write lock, default 10; waited off the event loop),
    ``poll_interval`` (seconds between ``data_version`` checks of
    :meth:`wait_for_work`, default 0.05), ``bulk`` (default True: the plain
    appends of a group commit are written together, a statement per table;
    False runs every append through the shared SQL one by one, which the
    tests use to check both), ``writer``:

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

    #: Txs are handed out above every stored tx and the counter row (which
    #: holds the txs of deleted events): only read, so no commit writes the
    #: counter's page.
    TX_TOP = (
        "MAX(COALESCE((SELECT MAX(tx) FROM events), 0),"
        " COALESCE((SELECT value FROM counters WHERE name = 'tx'), 0))"
    )

    def __init__(
        self,
        path: str,
        *,
        url: str | None = None,
        durability: str = "full",
        readers: int = 2,
        busy_timeout: float = 10.0,
        writer: str = "loop",
        poll_interval: float = 0.05,
        clock: Callable[[], int] | None = None,
        bulk: bool = True,
    ) -> None:
        super().__init__(url or f"sqlite:///{path}")
        self.bulk = bulk
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
        # writer="loop": a batch waiting for another process's lock on a thread.
        self._waiting: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock_wait = False
        self._woke = False  # an op of the running batch made work ready
        self._wakeup = Wakeup()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.poll_interval = poll_interval
        #: The store's clock in µs (this process's wall clock unless a test fakes it).
        self.clock: Callable[[], int] = clock or _now_us
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        self._seen_version: int | None = None
        self._seen_writer_version: int | None = None
        #: Batches that had to wait for another process's write lock.
        self.lock_waits = 0

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Check the file, start the writer thread, migrate, and open the readers."""
        if self._open:
            return
        if not self._memory:
            self._check_file()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.writer == "loop":
            if self._memory:
                self._wconn = self._open_writer_connection()
            else:
                # Migrating may wait for another process's lock: not on the loop.
                self._wconn = await asyncio.to_thread(self._open_writer_connection)
                # From now on the loop never waits for the lock (see _flush_batch).
                self._wconn.execute("PRAGMA busy_timeout = 0")
                self._waiting = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="itonami-sqlite-lockwait"
                )
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
                max_workers=self._n_readers + 1, thread_name_prefix="itonami-sqlite-read"
            )
            await asyncio.get_running_loop().run_in_executor(self._read_pool, self._changed)
        self._open = True

    async def close(self) -> None:
        """Let queued writes finish, stop the writer and close every connection."""
        if not self._open:
            return
        self._open = False
        if self._wconn is not None:
            while self._lock_wait or self._batch:
                if self._lock_wait:
                    await asyncio.sleep(0.005)  # the lock-wait thread settles it
                else:
                    self._flush_scheduled = False
                    self._flush_batch()
            if self._waiting is not None:
                await asyncio.to_thread(self._waiting.shutdown, wait=True)
                self._waiting = None
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
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
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
        # Connections move between the loop and worker threads; their use is
        # serialised by the writer queue and the reader pool.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_ms / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms:d}")
        if reader:
            conn.execute("PRAGMA query_only = 1")
        return conn

    # ------------------------------------------------------------------ writer thread

    def _open_writer_connection(self) -> sqlite3.Connection:
        """The write connection, in WAL mode with the chosen sync level, migrated.

        Switching a new file to WAL needs an exclusive lock, and SQLite answers
        "database is locked" at once, without its busy handler, when another
        process holds the file mid-switch or mid-migration. So processes that
        open one new store together retry here, for up to the busy timeout.
        """
        deadline = time.monotonic() + self._busy_ms / 1000
        pause = 0.002
        while True:
            try:
                return self._try_open_writer_connection()
            except _Locked as locked:
                if time.monotonic() + pause > deadline:
                    raise self._map_error(locked.error, "opening") from locked.error
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _try_open_writer_connection(self) -> sqlite3.Connection:
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
            if isinstance(exc, sqlite3.Error) and _is_busy(exc):
                raise _Locked(exc) from exc
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

    def _run_writes(
        self, conn: sqlite3.Connection, ops: list[_Op], careful: bool = False, nowait: bool = False
    ) -> None:
        """Run ``ops`` in one transaction and commit once (group commit).

        An op that fails must not take the others down. A conflict is found
        before its op writes anything, so the fast path runs without
        savepoints; any other failure rolls the batch back and runs it again
        with a savepoint around each op (``careful``). With ``nowait`` a lock
        held by another process raises :class:`_Busy` before anything ran.

        With ``bulk`` the fast path first writes the appends it can take
        together (:meth:`_bulk_append`), then runs the other ops one by one.
        """
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        self._woke = False
        together, one_by_one = _split_bulk(ops) if self.bulk and not careful else ([], ops)
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if nowait and _is_busy(exc):
                    raise _Busy from exc
                raise
            if together:
                try:
                    results = self._bulk_append(conn, [req for _, req in together])
                except Exception as exc:
                    raise _RedoCarefully from exc
                for (op, _), res in zip(together, results, strict=True):
                    if isinstance(res, ConflictError):
                        outcomes.append((op, None, res))
                    else:
                        outcomes.append((op, res, None))
            for op in one_by_one:
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
            # In the order the fast path ran them, so that redoing a batch
            # cannot change which of its ops succeed.
            self._run_writes(conn, [op for op, _ in together] + one_by_one, careful=True)
            return
        except _Busy:
            raise
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
        if self._woke:
            self._woke = False
            self._wake_local()
        for op, result, failure in outcomes:
            self._post(op, result, failure)

    def _wake_local(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wakeup.notify()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wakeup.notify)

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
                        try:
                            conn.execute(stmt)
                        except sqlite3.IntegrityError as exc:
                            # Rolled back below: the store stays as it was.
                            raise CorruptStorageError(
                                f"{self.path}: upgrading the schema from version {have} to"
                                f" {version} stopped at stored data its tables refuse ({exc});"
                                " nothing was changed"
                            ) from exc
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
        if self._lock_wait:
            return  # the connection is busy on the lock-wait thread; it flushes after
        ops, self._batch = self._batch, []
        if self._wconn is None or not ops:
            return
        writes = [op for op in ops if op.write]
        if writes:
            try:
                self._run_writes(self._wconn, writes, nowait=self._waiting is not None)
            except _Busy:
                self._wait_for_lock(ops)
                return
        for op in ops:
            if not op.write:
                self._run_read_op(self._wconn, op)

    def _wait_for_lock(self, ops: list[_Op]) -> None:
        """Run a batch on a thread that may wait for another process's write lock."""
        assert self._waiting is not None and self._wconn is not None
        self._lock_wait = True
        self.lock_waits += 1
        conn = self._wconn
        loop = ops[0].loop
        busy_ms = self._busy_ms

        def run() -> None:
            try:
                conn.execute(f"PRAGMA busy_timeout = {busy_ms:d}")
            except sqlite3.Error as exc:
                err = self._map_error(exc, "waiting for the write lock")
                for op in ops:
                    self._post(op, None, err)
                return
            try:
                writes = [op for op in ops if op.write]
                self._run_writes(conn, writes)
                for op in ops:
                    if not op.write:
                        self._run_read_op(conn, op)
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA busy_timeout = 0")

        def settled(_: concurrent.futures.Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(done, _)

        def done(_: concurrent.futures.Future[None]) -> None:
            self._lock_wait = False
            if self._batch and not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush_batch)

        fut = self._waiting.submit(run)
        fut.add_done_callback(settled)

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

    # ------------------------------------------------------------------ driver

    def _drive(self, conn: sqlite3.Connection, op: Op[T]) -> T:
        """Run a shared operation's statements on ``conn``."""
        try:
            item = next(op)
            while True:
                if item is NOW:
                    result: Any = self.clock()
                elif item is WAKE:
                    self._woke = True
                    result = None
                else:
                    try:
                        result = self._execute(conn, item)
                    except sqlite3.Error as exc:
                        item = op.throw(exc)
                        continue
                item = op.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value

    @staticmethod
    def _execute(conn: sqlite3.Connection, q: Q) -> Any:
        if q.fetch == "many":
            conn.executemany(q.sql, q.params)
            return None
        cur = conn.execute(q.sql, q.params)
        if q.fetch == "one":
            return cur.fetchone()
        if q.fetch == "all":
            return cur.fetchall()
        if q.fetch == "rowcount":
            return cur.rowcount
        return None

    async def _read_op(self, make: Callable[[], Op[T]], *, snapshot: bool = False) -> T:
        # Every read runs in one read transaction: always a consistent view.
        return await self._read(lambda conn: self._drive(conn, make()))

    async def _write_op(self, make: Callable[[], Op[T]]) -> T:
        return await self._write(lambda conn: self._drive(conn, make()))

    def _allocate(self, counter: str, n: int) -> Op[list[int]]:
        if counter == "tx":
            # TX_TOP (MAX over the tx index is one lookup): the write lock
            # makes the read and the events' insert one step.
            row = yield Q(f"SELECT {self.TX_TOP}", (), "one")
            top = int(row[0])
            return list(range(top + 1, top + n + 1))
        row = yield Q(
            "UPDATE counters SET value = value + ? WHERE name = ? RETURNING value",
            (n, counter),
            "one",
        )
        last = int(row[0])
        return list(range(last - n + 1, last + 1))

    def _delete_rows(self, ids: Sequence[str]) -> Op[None]:
        # Txs are allocated above the stored ones: before events go, the
        # counter row keeps their txs from being handed out again.
        yield Q(
            "UPDATE counters SET value = MAX(value, (SELECT COALESCE(MAX(tx), 0) FROM events))"
            " WHERE name = 'tx'",
            (),
        )
        yield from super()._delete_rows(ids)

    def _raise_floor(self, counter: str, value: int) -> Op[None]:
        if counter != "tx":  # the tx allocation looks at the stored txs itself
            yield Q("UPDATE counters SET value = MAX(value, ?) WHERE name = ?", (value, counter))

    def _read_counter(self, counter: str) -> Op[int]:
        row = yield Q("SELECT value FROM counters WHERE name = ?", (counter,), "one")
        return 0 if row is None else int(row[0])

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def contains(self, column: str, needle: str) -> tuple[str, list[Any]]:
        # SQLite's LIKE ignores ASCII case; the escaped LIKE keeps the
        # metacharacters literal and instr() makes the match case-sensitive.
        like, params = super().contains(column, needle)
        return f"{like} AND instr({column}, ?) > 0", [*params, needle]

    # kind is fetched as bytes so that invalid UTF-8 names its version
    # instead of failing the whole query.
    _EVENT_COLUMNS = "version, tx, timestamp, CAST(kind AS BLOB), typeof(kind), hash, encoded"

    def _event_row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        version, tx, ts, kind_raw, kind_type, hash_, encoded = raw
        kind: Any = kind_raw
        if kind_type == "text":
            try:
                kind = bytes(kind_raw).decode("utf-8")
            except UnicodeDecodeError:
                kind = kind_raw
        return (version, tx, ts, kind, hash_, encoded)

    def _integrity_fatal(self) -> Op[list[str]]:
        try:
            lines = yield Q("PRAGMA integrity_check", (), "all")
        except sqlite3.DatabaseError as exc:
            return [f"sqlite: {exc}"]
        return [f"sqlite: {line}" for (line,) in lines if line != "ok"]

    def _integrity_types(self) -> Op[list[str]]:
        bad = yield Q(
            "SELECT execution_id, version, typeof(tx) || ',' || typeof(timestamp) || ','"
            " || typeof(kind) || ',' || typeof(hash) || ',' || typeof(encoded) FROM events"
            " WHERE typeof(tx) != 'integer' OR typeof(timestamp) != 'integer'"
            " OR typeof(kind) != 'text' OR typeof(hash) != 'blob'"
            " OR typeof(encoded) != 'blob'",
            (),
            "all",
        )
        return [
            f"execution {eid}: event version {version!r} has wrong-typed values "
            f"(tx, timestamp, kind, hash, encoded are {types})"
            for eid, version, types in bad
        ]

    # ------------------------------------------------------------------ appends

    async def append(self, req: AppendRequest) -> None:
        """Append under optimistic concurrency; group-committed with concurrent appends."""
        await self.submit(req)

    def submit(self, req: AppendRequest) -> asyncio.Future[list[int]]:
        """Queue the append for the next group commit; resolves to the events' txs."""
        self._check_open()
        check_request(req)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[int]] = loop.create_future()
        self._enqueue(
            _Op(
                lambda conn: self._drive(conn, self._append(req)),
                fut,
                loop,
                write=True,
                is_append=True,
                req=req,
            )
        )
        return fut

    def _bulk_append(
        self, conn: sqlite3.Connection, reqs: list[AppendRequest]
    ) -> list[list[int] | ConflictError]:
        """Write the appends of one group commit together: each request's
        txs, or its ConflictError / FencedError (which wrote nothing).

        The same semantics as :meth:`SqlStorage._append` for each request,
        with one read of the rows (and of the tx top) for the whole batch and
        one ``executemany`` per table instead of a dozen statements per
        request. Versions and fences are checked in Python from the rows
        read under the write lock; txs are handed out in request order above
        the top, as one-by-one appends would. The execution ids must be
        distinct (see :func:`_split_bulk`). Any exception leaves the
        transaction to be rolled back and redone one op at a time.
        """
        ids = [r.execution_id for r in reqs]
        rows: dict[str, tuple[Any, Any, Any, Any]] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            clause, params = self.in_list("execution_id", ids[i : i + _IN_CHUNK])
            for eid, version, owner, epoch, status in conn.execute(
                "SELECT execution_id, version, owner, epoch, status FROM executions"
                f" WHERE {clause}",
                params,
            ):
                rows[eid] = (version, owner, epoch, status)
        now = self.clock() if any(needs_clock(r) for r in reqs) else 0
        top = 0
        if any(r.allocate_tx and r.events for r in reqs):
            top = int(conn.execute(f"SELECT {self.TX_TOP}").fetchone()[0])
        results: list[list[int] | ConflictError] = []
        fenced_writes = 0
        new_rows: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        updates: dict[str, list[list[Any]]] = {}
        cleared: list[tuple[str, str]] = []
        armed: list[tuple[str, str, int]] = []
        ended: list[tuple[str]] = []
        renamed: list[tuple[str]] = []
        needs: list[tuple[str, str]] = []
        for req in reqs:
            eid = req.execution_id
            fence = req.fence
            row = rows.get(eid)
            if row is None:
                if req.expected_version != 0:
                    results.append(conflict(eid, req.expected_version, 0))
                    continue
            else:
                actual, owner, epoch, _ = row
                if type(actual) is not int:
                    raise CorruptStorageError(
                        f"execution {eid}: stored version {actual!r} is not an integer",
                        execution_id=eid,
                    )
                if fence is not None and (owner, epoch) != (fence.owner, fence.epoch):
                    fenced_writes += 1
                    results.append(fenced(eid, fence, owner, epoch))
                    continue
                if actual != req.expected_version:
                    results.append(conflict(eid, req.expected_version, actual))
                    continue
            if req.allocate_tx:
                txs = list(range(top + 1, top + 1 + len(req.events)))
            else:
                txs = [e.tx for e in req.events]
            # The next request's top, as TX_TOP would read it after this insert.
            top = max(top, *txs) if txs else top
            results.append(txs)
            events.extend(
                (eid, e.version, tx, e.timestamp, e.kind, e.hash, e.encoded)
                for e, tx in zip(req.events, txs, strict=True)
            )
            set_ready, ready = ready_value(req, now)
            if row is None:
                new_rows.append(new_execution_row(req, now, ready))
            else:
                sql, params = update_for_append(
                    req, set_ready, ready, self.GREATEST, set_status=row[3] != req.status
                )
                updates.setdefault(sql, []).append(params)
            cleared.extend((eid, step) for step in req.timers_cleared)
            armed.extend((eid, step, at) for step, at in req.timers_set.items())
            if req.status in TERMINAL_STATUSES:
                ended.append((eid,))
            elif req.needs is not None:
                if row is not None:  # a row created just now has no needs to replace
                    renamed.append((eid,))
                needs.extend((eid, name) for name in sorted(set(req.needs)))
            if set_ready and ready is not None and fence is None:
                self._woke = True  # claimable by other processes now
        if fenced_writes:
            self._drive(conn, self._allocate("fenced_writes", fenced_writes))
        # In the order _append writes one request's rows: the timers a
        # terminal status deletes were set first, old needs go before new ones.
        statements: list[tuple[str, Sequence[Sequence[Any]]]] = [
            (INSERT_EXECUTION, new_rows),
            (INSERT_EVENT, events),
            *updates.items(),
            (DELETE_TIMER, cleared),
            (UPSERT_TIMER, armed),
            *((f"DELETE FROM {table} WHERE execution_id = ?", ended) for table in ENDED_TABLES),
            (DELETE_NEEDS, renamed),
            (INSERT_NEED, needs),
        ]
        for sql, many in statements:
            if many:
                conn.executemany(sql, many)
        return results

    # ------------------------------------------------------------------ wake hints

    async def wait_for_work(self, timeout: float) -> bool:
        """Return on a commit by another connection or a local ready write, else at timeout."""
        self._check_open()
        if self._memory:
            return await self._wakeup.wait(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        pool = self._read_pool
        assert pool is not None
        while self._open:
            changed = self._others_committed()
            if changed is None:  # the write connection is on another thread
                changed = await loop.run_in_executor(pool, self._changed)
            if changed:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            if await self._wakeup.wait(min(self.poll_interval, left)):
                if self._open and self._wconn is None:
                    # Our own commit shows in the watch connection's
                    # data_version too: take it as seen.
                    await loop.run_in_executor(pool, self._changed)
                return True
        return False  # closed meanwhile

    def _others_committed(self) -> bool | None:
        """Whether another connection committed since the last check, asked of
        the write connection on the loop's thread (None when it is not here).

        A connection's data_version moves only for other connections'
        commits, so this store's own commits wake nobody here and the check
        needs no thread.
        """
        conn = self._wconn
        if conn is None or self._lock_wait:
            return None
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            raise self._map_error(exc, "checking for other processes' commits") from exc
        seen, self._seen_writer_version = self._seen_writer_version, version
        return seen is not None and version != seen

    def _changed(self) -> bool:
        """Whether another connection committed since the last check."""
        with self._watch_lock:
            if not self._open:
                return False  # closing: open no connection that nobody closes
            if self._watch is None:
                self._watch = self._connect(reader=True)
            (version,) = self._watch.execute("PRAGMA data_version").fetchone()
            seen, self._seen_version = self._seen_version, version
            return seen is not None and version != seen

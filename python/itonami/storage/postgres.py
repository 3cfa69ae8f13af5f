"""The PostgreSQL backend (psycopg 3, plain async connections).

Design:

* **One writer connection** driven by one task. Writes are queued; the task
  takes everything queued while its previous commit was in flight and runs
  it as one transaction, each operation in its own savepoint (a nested
  ``conn.transaction()``), so one conflict rolls back only its own request.
  ``synchronous_commit`` is left at the server default (on): a commit is
  flushed to the WAL before the awaited call returns.
* **Conflicts across processes**: an append locks its execution row with
  ``SELECT ... FOR UPDATE`` (or creates it with ``INSERT ... ON CONFLICT DO
  NOTHING``, which waits for a concurrent creator) before comparing versions,
  and ``(execution_id, version)`` is the events' primary key; two writers on
  different connections therefore cannot both append the same version.
* **Readers**: a small pool of autocommit connections.
* **Schema**: the same tables as SQLite (``BIGINT``, ``BYTEA``); migrations run
  under an advisory lock on open. ``schema=`` puts the tables in that schema
  (created if missing) via ``search_path``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from itonami.errors import StorageError
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

try:
    import psycopg
    from psycopg import sql
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL backend needs psycopg 3: pip install 'itonami[postgres]'"
    ) from _exc

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStorage"]

T = TypeVar("T")

Conn = psycopg.AsyncConnection[Any]

#: Ordered schema migrations: (version reached, statements). Append only.
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
            " created_at BIGINT NOT NULL,"
            " updated_at BIGINT NOT NULL,"
            " version BIGINT NOT NULL)",
            "CREATE TABLE events ("
            " execution_id TEXT NOT NULL,"
            " version BIGINT NOT NULL,"
            " tx BIGINT NOT NULL UNIQUE,"
            " timestamp BIGINT NOT NULL,"
            " kind TEXT NOT NULL,"
            " hash BYTEA NOT NULL,"
            " encoded BYTEA NOT NULL,"
            " PRIMARY KEY (execution_id, version))",
            "CREATE TABLE snapshots ("
            " execution_id TEXT NOT NULL,"
            " version BIGINT NOT NULL,"
            " data BYTEA NOT NULL,"
            " PRIMARY KEY (execution_id, version))",
            "CREATE TABLE definitions ("
            " workflow_id TEXT NOT NULL,"
            " version TEXT NOT NULL,"
            " content_hash TEXT NOT NULL,"
            " document BYTEA NOT NULL,"
            " seq BIGINT GENERATED ALWAYS AS IDENTITY,"
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
            " fire_at BIGINT NOT NULL,"
            " PRIMARY KEY (execution_id, step))",
            "CREATE INDEX timers_fire_at ON timers (fire_at)",
            "CREATE INDEX executions_status ON executions (status, created_at)",
            "CREATE INDEX executions_workflow ON executions (workflow_id, created_at)",
        ),
    ),
]

#: The schema version this code writes.
SCHEMA_VERSION: int = MIGRATIONS[-1][0]

# An arbitrary constant: serialises schema migrations of concurrent openers.
_MIGRATION_LOCK = 0x17A0_4A11

_EXEC_COLUMNS = (
    "execution_id, workflow_id, workflow_version, status, parent_id, created_at, updated_at, "
    "version"
)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(slots=True)
class _Op:
    fn: Callable[[Conn], Awaitable[Any]]
    future: asyncio.Future[Any]
    is_append: bool
    req: AppendRequest | None = None  # set for appends: they may go in bulk


_STOP = object()


class PostgresStorage(Storage):
    """A :class:`Storage` in a PostgreSQL database.

    Options: ``schema`` (tables go in this schema, created if missing),
    ``readers`` (reader connections, default 2), ``connect_timeout`` (seconds).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        readers: int = 2,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(url)
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        self.schema = schema
        self._n_readers = readers
        self._connect_timeout = connect_timeout
        self._where = redact(url)
        self._writer: Conn | None = None
        self._readers: list[Conn] = []
        self._idle: asyncio.Queue[Conn] | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._open = False

    # ------------------------------------------------------------------ lifecycle

    async def _connect(self) -> Conn:
        # The URL is used as given (postgres:// is accepted by libpq as well).
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL at {self._where}: {exc}") from exc
        try:
            if self.schema is not None:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
                await conn.execute(
                    sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
                )
        except psycopg.Error as exc:
            await conn.close()
            raise StorageError(
                f"PostgreSQL at {self._where}: cannot use schema {self.schema!r}: {exc}"
            ) from exc
        return conn

    async def open(self) -> None:
        """Connect the writer and the readers, and create or migrate the schema."""
        if self._open:
            return
        self._writer = await self._connect()
        try:
            await self._migrate(self._writer)
            self._idle = asyncio.Queue()
            for _ in range(self._n_readers):
                conn = await self._connect()
                self._readers.append(conn)
                self._idle.put_nowait(conn)
        except BaseException:
            await self._close_connections()
            raise
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._writer_loop(), name="itonami-postgres-writer")
        self._open = True

    async def close(self) -> None:
        """Let queued writes finish, stop the writer task and close the connections."""
        if not self._open:
            return
        self._open = False
        assert self._queue is not None and self._task is not None
        self._queue.put_nowait(_STOP)
        await self._task
        self._task = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in [self._writer, *self._readers]:
            if conn is not None:
                await conn.close()
        self._writer = None
        self._readers.clear()
        self._idle = None

    async def _migrate(self, conn: Conn) -> None:
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                cur = await conn.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema()"
                )
                tables = {r[0] for r in await cur.fetchall()}
                if "schema_version" in tables:
                    cur = await conn.execute("SELECT version FROM schema_version")
                    row = await cur.fetchone()
                    if row is None:
                        raise StorageError(f"{self._where}: the schema_version table is empty")
                    have = int(row[0])
                elif tables:
                    raise StorageError(
                        f"{self._where}: schema holds tables ({', '.join(sorted(tables))}) "
                        "but is not an itonami store (no schema_version table)"
                    )
                else:
                    await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                    have = 0
                if have > SCHEMA_VERSION:
                    raise StorageError(
                        f"{self._where} has schema version {have}, newer than the "
                        f"{SCHEMA_VERSION} this itonami understands; upgrade itonami to open it"
                    )
                for version, statements in MIGRATIONS:
                    if version > have:
                        for stmt in statements:
                            await conn.execute(stmt)
                if have < SCHEMA_VERSION:
                    await conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL at {self._where}: migrating failed: {exc}") from exc

    # ------------------------------------------------------------------ writer task

    async def _writer_loop(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            ops = [item for item in batch if item is not _STOP]
            stopping = len(ops) != len(batch)
            if ops:
                await self._run_batch(ops)

    async def _run_batch(self, ops: list[_Op]) -> None:
        if all(op.req is not None for op in ops):
            done = await self._run_bulk(ops)
            if done:
                return
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            conn = await self._writer_connection()
            async with conn.transaction():
                for op in ops:
                    try:
                        async with conn.transaction():  # a SAVEPOINT
                            result = await op.fn(conn)
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise  # the connection is gone: the batch fails
                    except Exception as exc:
                        outcomes.append((op, None, self._map_error(exc, "writing")))
                    else:
                        outcomes.append((op, result, None))
        except Exception as exc:
            err = self._map_error(exc, "committing")
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(err)
            return
        self.commits += 1
        self.appends += sum(1 for op, _, failure in outcomes if op.is_append and failure is None)
        for op, result, failure in outcomes:
            if op.future.done():
                continue
            if failure is not None:
                op.future.set_exception(failure)
            else:
                op.future.set_result(result)

    async def _run_bulk(self, ops: list[_Op]) -> bool:
        """Commit a batch of appends with a handful of statements in all.

        One statement per table instead of several per request (each a round
        trip to the server). Conflicts are decided in Python from the locked
        versions. Returns False, having changed nothing, when the batch needs
        the one-by-one path (an execution twice in the batch, a failed
        statement).
        """
        reqs = [op.req for op in ops if op.req is not None]
        ids = [r.execution_id for r in reqs]
        if len(set(ids)) != len(ids):
            return False
        outcomes: list[BaseException | None] = []
        try:
            conn = await self._writer_connection()
            async with conn.transaction():
                outcomes = await self._bulk_append_tx(conn, reqs)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            err = self._map_error(exc, "committing")
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(err)
            return True
        except psycopg.Error:
            return False  # rolled back: let the careful path find the culprit
        self.commits += 1
        self.appends += sum(1 for failure in outcomes if failure is None)
        for op, failure in zip(ops, outcomes, strict=True):
            if op.future.done():
                continue
            if failure is not None:
                op.future.set_exception(failure)
            else:
                op.future.set_result(None)
        return True

    async def _bulk_append_tx(
        self, conn: Conn, reqs: list[AppendRequest]
    ) -> list[BaseException | None]:
        ids = [r.execution_id for r in reqs]
        rows = await self._fetchall(
            conn,
            "SELECT execution_id, version FROM executions WHERE execution_id = ANY(%s)"
            " ORDER BY execution_id FOR UPDATE",
            (ids,),
        )
        versions = {eid: int(v) for eid, v in rows}
        fresh = [r for r in reqs if r.execution_id not in versions and r.expected_version == 0]
        if fresh:
            created = await self._fetchall(
                conn,
                f"INSERT INTO executions ({_EXEC_COLUMNS})"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::bigint[], %s::bigint[], %s::bigint[])"
                " ON CONFLICT (execution_id) DO NOTHING RETURNING execution_id",
                (
                    [r.execution_id for r in fresh],
                    [r.workflow_id or "" for r in fresh],
                    [r.workflow_version or "" for r in fresh],
                    [r.status for r in fresh],
                    [r.parent_id for r in fresh],
                    [r.events[0].timestamp if r.events else 0 for r in fresh],
                    [r.events[0].timestamp if r.events else 0 for r in fresh],
                    [0] * len(fresh),
                ),
            )
            made = {row[0] for row in created}
            lost = [r.execution_id for r in fresh if r.execution_id not in made]
            for eid in made:
                versions[eid] = 0
            if lost:  # created by another connection meanwhile
                again = await self._fetchall(
                    conn,
                    "SELECT execution_id, version FROM executions"
                    " WHERE execution_id = ANY(%s) FOR UPDATE",
                    (lost,),
                )
                versions.update({eid: int(v) for eid, v in again})
        outcomes: list[BaseException | None] = []
        ok: list[AppendRequest] = []
        for r in reqs:
            actual = versions.get(r.execution_id, 0)
            if actual != r.expected_version:
                outcomes.append(conflict(r.execution_id, r.expected_version, actual))
            else:
                outcomes.append(None)
                ok.append(r)
        events = [(r.execution_id, e) for r in ok for e in r.events]
        if events:
            await conn.execute(
                "INSERT INTO events (execution_id, version, tx, timestamp, kind, hash, encoded)"
                " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[],"
                " %s::text[], %s::bytea[], %s::bytea[])",
                (
                    [eid for eid, _ in events],
                    [e.version for _, e in events],
                    [e.tx for _, e in events],
                    [e.timestamp for _, e in events],
                    [e.kind for _, e in events],
                    [e.hash for _, e in events],
                    [e.encoded for _, e in events],
                ),
            )
        if ok:
            await conn.execute(
                "UPDATE executions AS x SET status = u.status, version = u.version,"
                " updated_at = COALESCE(u.updated_at, x.updated_at)"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[])"
                " AS u(execution_id, status, version, updated_at)"
                " WHERE x.execution_id = u.execution_id",
                (
                    [r.execution_id for r in ok],
                    [r.status for r in ok],
                    [r.expected_version + len(r.events) for r in ok],
                    [r.events[-1].timestamp if r.events else None for r in ok],
                ),
            )
        cleared = [(r.execution_id, step) for r in ok for step in r.timers_cleared]
        if cleared:
            await conn.execute(
                "DELETE FROM timers AS t USING unnest(%s::text[], %s::text[]) AS d(eid, step)"
                " WHERE t.execution_id = d.eid AND t.step = d.step",
                ([c[0] for c in cleared], [c[1] for c in cleared]),
            )
        armed = [(r.execution_id, step, at) for r in ok for step, at in r.timers_set.items()]
        if armed:
            await conn.execute(
                "INSERT INTO timers (execution_id, step, fire_at)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])"
                " ON CONFLICT (execution_id, step) DO UPDATE SET fire_at = EXCLUDED.fire_at",
                ([a[0] for a in armed], [a[1] for a in armed], [a[2] for a in armed]),
            )
        ended = [r.execution_id for r in ok if r.status in TERMINAL_STATUSES]
        if ended:
            await conn.execute("DELETE FROM timers WHERE execution_id = ANY(%s)", (ended,))
        return outcomes

    async def _writer_connection(self) -> Conn:
        if self._writer is None or self._writer.closed or self._writer.broken:
            if self._writer is not None:
                await self._writer.close()
            self._writer = await self._connect()
        return self._writer

    # ------------------------------------------------------------------ plumbing

    def _map_error(self, exc: BaseException, doing: str) -> BaseException:
        if isinstance(exc, psycopg.Error):
            return StorageError(f"PostgreSQL at {self._where}: error while {doing}: {exc}")
        return exc

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"storage {self._where} is not open")

    async def _write(
        self,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        is_append: bool = False,
        req: AppendRequest | None = None,
    ) -> T:
        self._check_open()
        assert self._queue is not None
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(fn, fut, is_append, req))
        return await fut

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        self._check_open()
        assert self._idle is not None
        idle = self._idle
        conn = await idle.get()
        try:
            if conn.closed or conn.broken:
                await conn.close()
                self._readers.remove(conn)
                conn = await self._connect()
                self._readers.append(conn)
            return await fn(conn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL at {self._where}: error while reading: {exc}") from exc
        finally:
            idle.put_nowait(conn)

    @staticmethod
    async def _fetchall(conn: Conn, query: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    @staticmethod
    async def _fetchone(conn: Conn, query: str, params: Sequence[Any] = ()) -> Any:
        cur = await conn.execute(query, params)
        return await cur.fetchone()

    # ------------------------------------------------------------------ API

    async def append(self, req: AppendRequest) -> None:
        """Append under optimistic concurrency; group-committed with concurrent appends."""
        check_request(req)

        async def run(conn: Conn) -> None:
            await self._append_tx(conn, req)

        await self._write(run, is_append=True, req=req)

    async def _append_tx(self, conn: Conn, req: AppendRequest) -> None:
        eid = req.execution_id
        events = req.events
        new_version = req.expected_version + len(events)
        first_ts = events[0].timestamp if events else 0
        last_ts = events[-1].timestamp if events else None
        select = "SELECT version FROM executions WHERE execution_id = %s FOR UPDATE"
        row = await self._fetchone(conn, select, (eid,))
        created = False
        if row is None:
            inserted = await self._fetchone(
                conn,
                f"INSERT INTO executions ({_EXEC_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (execution_id) DO NOTHING RETURNING version",
                (
                    eid,
                    req.workflow_id or "",
                    req.workflow_version or "",
                    req.status,
                    req.parent_id,
                    first_ts,
                    first_ts if last_ts is None else last_ts,
                    0,
                ),
            )
            if inserted is None:  # another connection created it meanwhile
                row = await self._fetchone(conn, select, (eid,))
            created = inserted is not None
        actual = 0 if created or row is None else int(row[0])
        if actual != req.expected_version:
            raise conflict(eid, req.expected_version, actual)
        if events:
            async with conn.cursor() as cur:
                try:
                    await cur.executemany(
                        "INSERT INTO events"
                        " (execution_id, version, tx, timestamp, kind, hash, encoded)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [
                            (eid, e.version, e.tx, e.timestamp, e.kind, e.hash, e.encoded)
                            for e in events
                        ],
                    )
                except psycopg.errors.UniqueViolation as exc:
                    raise StorageError(
                        f"append to {eid}: an event's version or tx is already stored ({exc})"
                    ) from exc
        await conn.execute(
            "UPDATE executions SET status = %s, version = %s,"
            " updated_at = COALESCE(%s, updated_at) WHERE execution_id = %s",
            (req.status, new_version, last_ts, eid),
        )
        if req.timers_cleared:
            await conn.execute(
                "DELETE FROM timers WHERE execution_id = %s AND step = ANY(%s)",
                (eid, list(req.timers_cleared)),
            )
        if req.timers_set:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO timers (execution_id, step, fire_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (execution_id, step) DO UPDATE SET fire_at = EXCLUDED.fire_at",
                    [(eid, step, at) for step, at in req.timers_set.items()],
                )
        if req.status in TERMINAL_STATUSES:
            await conn.execute("DELETE FROM timers WHERE execution_id = %s", (eid,))

    async def read_events(self, execution_id: str, from_version: int = 0) -> list[StoredEvent]:
        """Events after ``from_version``; a gap raises CorruptStorageError."""

        async def run(conn: Conn) -> list[StoredEvent]:
            # The head first: events committed after it only extend the list.
            head = await self._fetchone(
                conn, "SELECT version FROM executions WHERE execution_id = %s", (execution_id,)
            )
            rows = await self._fetchall(
                conn,
                "SELECT version, tx, timestamp, kind, hash, encoded FROM events"
                " WHERE execution_id = %s AND version > %s ORDER BY version",
                (execution_id, from_version),
            )
            return check_event_rows(
                execution_id, rows, from_version, None if head is None else head[0]
            )

        return await self._read(run)

    async def save_snapshot(self, execution_id: str, version: int, data: bytes) -> None:
        """Store (or replace) the snapshot at ``version``."""

        async def run(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO snapshots (execution_id, version, data) VALUES (%s, %s, %s)"
                " ON CONFLICT (execution_id, version) DO UPDATE SET data = EXCLUDED.data",
                (execution_id, version, bytes(data)),
            )

        await self._write(run)

    async def load_snapshot(self, execution_id: str) -> tuple[int, bytes] | None:
        """The newest snapshot, or None."""

        async def run(conn: Conn) -> tuple[int, bytes] | None:
            row = await self._fetchone(
                conn,
                "SELECT version, data FROM snapshots WHERE execution_id = %s"
                " ORDER BY version DESC LIMIT 1",
                (execution_id,),
            )
            return None if row is None else (row[0], bytes(row[1]))

        return await self._read(run)

    async def prune_snapshots(self, execution_id: str, keep: int) -> int:
        """Delete all but the ``keep`` newest snapshots."""
        if keep < 0:
            raise StorageError(f"prune_snapshots {execution_id}: keep must be >= 0, got {keep}")

        async def run(conn: Conn) -> int:
            cur = await conn.execute(
                "DELETE FROM snapshots WHERE execution_id = %s AND version NOT IN"
                " (SELECT version FROM snapshots WHERE execution_id = %s"
                "  ORDER BY version DESC LIMIT %s)",
                (execution_id, execution_id, keep),
            )
            return cur.rowcount

        return await self._write(run)

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's row, or None."""

        async def run(conn: Conn) -> ExecutionRecord | None:
            row = await self._fetchone(
                conn,
                f"SELECT {_EXEC_COLUMNS} FROM executions WHERE execution_id = %s",
                (execution_id,),
            )
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
            where.append("status = ANY(%s)")
            params.append(statuses)
        if workflow_id is not None:
            where.append("workflow_id = %s")
            params.append(workflow_id)
        query = f"SELECT {_EXEC_COLUMNS} FROM executions"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at, execution_id LIMIT %s OFFSET %s"
        params.extend([limit, offset])

        async def run(conn: Conn) -> list[ExecutionRecord]:
            return [ExecutionRecord(*r) for r in await self._fetchall(conn, query, params)]

        return await self._read(run)

    async def unfinished_executions(self) -> list[str]:
        """Ids of the executions not in a terminal status."""

        async def run(conn: Conn) -> list[str]:
            rows = await self._fetchall(
                conn,
                "SELECT execution_id FROM executions WHERE NOT (status = ANY(%s))"
                " ORDER BY created_at, execution_id",
                (sorted(TERMINAL_STATUSES),),
            )
            return [r[0] for r in rows]

        return await self._read(run)

    async def due_timers(self, now: int) -> list[tuple[str, str, int]]:
        """Timers with ``fire_at <= now``, soonest first."""

        async def run(conn: Conn) -> list[tuple[str, str, int]]:
            rows = await self._fetchall(
                conn,
                "SELECT execution_id, step, fire_at FROM timers WHERE fire_at <= %s"
                " ORDER BY fire_at, execution_id, step",
                (now,),
            )
            return [tuple(r) for r in rows]

        return await self._read(run)

    async def all_timers(self) -> list[tuple[str, str, int]]:
        """Every timer, soonest first."""

        async def run(conn: Conn) -> list[tuple[str, str, int]]:
            rows = await self._fetchall(
                conn,
                "SELECT execution_id, step, fire_at FROM timers"
                " ORDER BY fire_at, execution_id, step",
            )
            return [tuple(r) for r in rows]

        return await self._read(run)

    async def put_definition(
        self, workflow_id: str, version: str, content_hash: str, document: bytes
    ) -> None:
        """Register a definition (idempotent; different content for a version is refused)."""
        check_definition(workflow_id, version, content_hash, document)

        async def run(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO definitions (workflow_id, version, content_hash, document)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (workflow_id, version) DO NOTHING",
                (workflow_id, version, content_hash, bytes(document)),
            )
            row = await self._fetchone(
                conn,
                "SELECT content_hash FROM definitions WHERE workflow_id = %s AND version = %s",
                (workflow_id, version),
            )
            if row is not None and row[0] != content_hash:
                raise definition_mismatch(workflow_id, version, row[0], content_hash)

        await self._write(run)

    async def get_definition(self, workflow_id: str, version: str | None = None) -> bytes | None:
        """A document by workflow and version (None = newest registered)."""
        if version is None:
            query = (
                "SELECT document FROM definitions WHERE workflow_id = %s ORDER BY seq DESC LIMIT 1"
            )
            params: tuple[Any, ...] = (workflow_id,)
        else:
            query = "SELECT document FROM definitions WHERE workflow_id = %s AND version = %s"
            params = (workflow_id, version)

        async def run(conn: Conn) -> bytes | None:
            row = await self._fetchone(conn, query, params)
            return None if row is None else bytes(row[0])

        return await self._read(run)

    async def get_definition_by_hash(self, content_hash: str) -> bytes | None:
        """A document by content hash."""

        async def run(conn: Conn) -> bytes | None:
            row = await self._fetchone(
                conn,
                "SELECT document FROM definitions WHERE content_hash = %s ORDER BY seq LIMIT 1",
                (content_hash,),
            )
            return None if row is None else bytes(row[0])

        return await self._read(run)

    async def max_tx(self) -> int:
        """The largest stored tx (0 when empty)."""

        async def run(conn: Conn) -> int:
            row = await self._fetchone(conn, "SELECT COALESCE(MAX(tx), 0) FROM events")
            return int(row[0])

        return await self._read(run)

    async def integrity_check(self) -> list[str]:
        """History, orphan and snapshot checks (types are enforced by PostgreSQL)."""

        async def run(conn: Conn) -> list[str]:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                pairs = await self._fetchall(
                    conn, "SELECT execution_id, version FROM events ORDER BY execution_id, version"
                )
                heads = dict(
                    await self._fetchall(conn, "SELECT execution_id, version FROM executions")
                )
                problems = find_history_problems(pairs, heads)
                for eid, version in await self._fetchall(
                    conn,
                    "SELECT s.execution_id, s.version FROM snapshots s"
                    " LEFT JOIN executions e ON e.execution_id = s.execution_id"
                    " WHERE e.execution_id IS NULL OR s.version > e.version",
                ):
                    problems.append(
                        f"execution {eid}: snapshot at version {version} is beyond the "
                        "stored history"
                    )
                for eid, step in await self._fetchall(
                    conn,
                    "SELECT t.execution_id, t.step FROM timers t"
                    " LEFT JOIN executions e ON e.execution_id = t.execution_id"
                    " WHERE e.execution_id IS NULL",
                ):
                    problems.append(f"execution {eid}: timer {step} has no execution row")
                return problems

        return await self._read(run)

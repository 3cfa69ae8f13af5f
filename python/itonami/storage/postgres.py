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
* **Schema**: the same tables and queries as SQLite, written once in
  :mod:`itonami.storage.sqlbase` (``BIGINT``, ``BYTEA`` here); migrations run
  under an advisory lock on open. ``schema=`` puts the tables in that schema
  (created if missing) via ``search_path``.
* **Counters** (tx, inbox seq, reassignments, fenced writes) are sequences:
  ``nextval`` never waits for another transaction, so writers in different
  processes do not serialise on a counter row, and a fenced write is counted
  even though its savepoint rolls back. A tx is drawn after the execution's
  row is locked, so each execution's txs increase with its versions.
* **Leases** use the database clock (``clock_timestamp()``), so nodes with
  skewed clocks agree on expiry; claims lock rows ``FOR UPDATE SKIP LOCKED``,
  so concurrent claimers never wait for, nor take, each other's rows.
* **Wake hints**: a batch that made work ready runs ``NOTIFY`` on the
  ``itonami_ready`` channel (per schema: ``itonami_ready_<schema>``) in its
  transaction, which PostgreSQL delivers only once it committed.
  :meth:`PostgresStorage.wait_for_work` listens on its own connection.
* **Bulk appends**: a batch made only of appends (fences, store txs and the
  ready index included; no inbox acks or event waits) takes a fast path
  with one statement per table, deciding fences and conflicts in Python
  from the locked rows; anything else runs the shared per-request SQL of
  :mod:`itonami.storage.sqlbase`, one savepoint each. The conformance suite
  checks that both agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from itonami import _core
from itonami.errors import CorruptStorageError, StorageError
from itonami.storage.base import (
    READY_NOW,
    TERMINAL_STATUSES,
    UNCHANGED,
    AppendRequest,
    Claim,
    Wakeup,
    check_event_rows,
    check_request,
    conflict,
    fenced,
)
from itonami.storage.base import redact_url as redact
from itonami.storage.sqlbase import NOW, WAKE, Op, Q, SqlStorage, bulk_ok, lease_us, migrations

log = logging.getLogger("itonami.storage.postgres")

try:
    import psycopg
    import psycopg.adapt
    from psycopg import sql
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL backend needs psycopg 3: pip install 'itonami[postgres]'"
    ) from _exc

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStorage"]

T = TypeVar("T")

Conn = psycopg.AsyncConnection[Any]

_COUNTERS = ("tx", "inbox", "reassignments", "fenced_writes")

#: Ordered schema migrations: (version reached, statements). Append only.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = migrations(
    {
        "int": "BIGINT",
        "blob": "BYTEA",
        "norowid": "",
        "seq": "seq BIGINT GENERATED ALWAYS AS IDENTITY",
    },
    extra={
        3: (
            *(f"CREATE SEQUENCE itonami_{name}_seq" for name in _COUNTERS),
            # Start the tx sequence above every stored tx.
            "SELECT setval('itonami_tx_seq', GREATEST(COALESCE(MAX(tx), 0), 1),"
            " MAX(tx) IS NOT NULL) FROM events",
        ),
        # Room on each page for the row's next version: a commit of a
        # running execution then rewrites its row in place (HOT).
        7: ("ALTER TABLE executions SET (fillfactor = 80)",),
    },
)

#: The schema version this code writes.
SCHEMA_VERSION: int = MIGRATIONS[-1][0]

# An arbitrary constant: serialises schema migrations of concurrent openers.
_MIGRATION_LOCK = 0x17A0_4A11

_EXEC_COLUMNS = (
    "execution_id, workflow_id, workflow_version, status, parent_id, created_at, updated_at, "
    "version"
)

_NOW_SQL = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"
# `n` values of a store-wide counter's sequence (`_allocate`, and the tx
# draw of the pipelined bulk append, which sends it as a statement of its own).
_DRAW_SQL = "SELECT nextval('itonami_{}_seq') AS v FROM generate_series(1, %s) ORDER BY v"
_DRAW_TXS_SQL = _DRAW_SQL.format("tx")


class _PgArray:
    """An array parameter already in PostgreSQL's binary format (the Rust core's)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Int8Array(_PgArray):
    __slots__ = ()


class _TextArray(_PgArray):
    __slots__ = ()


class _ByteaArray(_PgArray):
    __slots__ = ()


class _BoolArray(_PgArray):
    __slots__ = ()


class _ArrayDumper(psycopg.adapt.Dumper):
    """Sends a :class:`_PgArray`'s bytes as they are, in binary."""

    format = psycopg.pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        data: bytes = obj.data
        return data


class _Int8ArrayDumper(_ArrayDumper):
    oid = 1016  # int8[]


class _TextArrayDumper(_ArrayDumper):
    oid = 1009  # text[]


class _ByteaArrayDumper(_ArrayDumper):
    oid = 1001  # bytea[]


class _BoolArrayDumper(_ArrayDumper):
    oid = 1000  # bool[]


_ARRAY_DUMPERS: tuple[tuple[type[_PgArray], type[_ArrayDumper]], ...] = (
    (_Int8Array, _Int8ArrayDumper),
    (_TextArray, _TextArrayDumper),
    (_ByteaArray, _ByteaArrayDumper),
    (_BoolArray, _BoolArrayDumper),
)


class _Unencodable(Exception):
    """A value the Rust array encoder refuses (a wrong type, an int past
    int8): the bulk append gives the batch to the one-by-one path, where
    psycopg adapts each value and the server refuses only its request."""


def _encoded(encode: Callable[[Any], bytes], values: list[Any]) -> bytes:
    """``encode(values)``, its refusal as :class:`_Unencodable`."""
    try:
        return encode(values)
    except (TypeError, ValueError) as exc:
        raise _Unencodable(str(exc)) from exc


def _int8s(values: list[int] | list[int | None]) -> _Int8Array:
    return _Int8Array(_encoded(_core.pg_array_int8, values))


def _texts(values: list[str] | list[str | None]) -> _TextArray:
    return _TextArray(_encoded(_core.pg_array_text, values))


def _byteas(values: list[bytes] | list[bytes | bytearray | None]) -> _ByteaArray:
    return _ByteaArray(_encoded(_core.pg_array_bytea, values))


def _bools(values: list[bool] | list[bool | None]) -> _BoolArray:
    return _BoolArray(_encoded(_core.pg_array_bool, values))


@dataclass(slots=True)
class _Op:
    fn: Callable[[Conn], Awaitable[Any]]
    future: asyncio.Future[Any]
    is_append: bool
    req: AppendRequest | None = None  # set for appends: they may go in bulk


_STOP = object()


class PostgresStorage(SqlStorage):
    """A :class:`Storage` in a PostgreSQL database.

    Options: ``schema`` (tables go in this schema, created if missing),
    ``readers`` (reader connections, default 2), ``connect_timeout`` (seconds),
    ``bulk`` (default True: batches of appends take the bulk path; False runs
    every request through the shared SQL, which the tests use to check both).
    """

    precise_hints = True
    FOR_UPDATE = " FOR UPDATE"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
    GREATEST = "GREATEST"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        readers: int = 2,
        connect_timeout: float = 10.0,
        bulk: bool = True,
    ) -> None:
        super().__init__(url)
        self.bulk = bulk
        if readers < 1:
            raise ValueError(f"readers must be >= 1, got {readers}")
        self.schema = schema
        self._n_readers = readers
        self._connect_timeout = connect_timeout
        self._where = redact(url)
        self._writer: Conn | None = None
        # Claims run on a connection of their own, one at a time.
        self._claimer: Conn | None = None
        self._claim_lock = asyncio.Lock()
        self._readers: list[Conn] = []
        self._idle: asyncio.Queue[Conn] | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._open = False
        self._woke = False
        self._wakeup = Wakeup()
        self._listener: Conn | None = None
        self._listen_start: asyncio.Future[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self.channel = "itonami_ready" if schema is None else f"itonami_ready_{schema}"
        self._sql_cache: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def _connect(self, *, keyed: bool = False) -> Conn:
        """A new autocommit connection in the store's schema. ``keyed``: the
        writer's or the claimer's, whose statements find their rows by key
        (see below)."""
        # The URL is used as given (postgres:// is accepted by libpq as well).
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL at {self._where}: {exc}") from exc
        for cls, dumper in _ARRAY_DUMPERS:
            conn.adapters.register_dumper(cls, dumper)
        try:
            if self.schema is not None:
                # CREATE SCHEMA IF NOT EXISTS is not safe against a concurrent
                # one (a duplicate-key error on the catalog): processes opening
                # a fresh store at the same instant take turns.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    await conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(self.schema)
                        )
                    )
                await conn.execute(
                    sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
                )
            if keyed:
                # Every statement of the writer and the claimer finds its rows by key, but on
                # young tables (a new store; statistics not yet analyzed) the
                # planner reckons a scan of the table cheaper than tens of
                # index probes, and the scans grow with the table: that was
                # half of the server's time under load. Index probes then.
                await conn.execute("SET enable_seqscan = off")
        except psycopg.Error as exc:
            await conn.close()
            raise StorageError(
                f"PostgreSQL at {self._where}: cannot use schema {self.schema!r}: {exc}"
            ) from exc
        except BaseException:
            # Cancelled while setting the connection up (a closing engine): it
            # is nobody's yet, so close it here or it leaks.
            await conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Connect the writer and the readers, and create or migrate the schema."""
        if self._open:
            return
        self._writer = await self._connect(keyed=True)
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
        if self._listen_start is not None:
            with contextlib.suppress(BaseException):
                await self._listen_start
            self._listen_start = None
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(BaseException):
                await self._listen_task
            self._listen_task = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in [self._writer, self._claimer, *self._readers]:
            if conn is not None:
                await conn.close()
        self._writer = self._claimer = None
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
                try:
                    await self._run_batch(ops)
                except Exception as exc:
                    # Whatever went wrong, no caller may wait forever and the
                    # writer must outlive it.
                    log.exception("the PostgreSQL writer failed a batch")
                    for op in ops:
                        if not op.future.done():
                            op.future.set_exception(exc)

    async def _run_batch(self, ops: list[_Op]) -> None:
        if self.bulk:
            appends = [op for op in ops if op.req is not None and bulk_ok(op.req)]
            rest = [op for op in ops if not (op.req is not None and bulk_ok(op.req))]
            # Other appends need the one-by-one path; other writes (claims,
            # renewals, messages) ride in the same transaction after the
            # bulk appends. Concurrent ops carry no order among themselves,
            # and an op that must follow an append awaits it first.
            if appends and all(op.req is None for op in rest):
                done = await self._run_bulk(appends, rest)
                if done:
                    return
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        self._woke = False
        try:
            conn = await self._writer_connection()
            if len(ops) == 1:
                # No savepoint (two round trips): a failure rolls back a
                # transaction that holds only this op.
                try:
                    async with conn.transaction():
                        outcomes.append((ops[0], await ops[0].fn(conn), None))
                        await self._notify_if_woke(conn)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise  # the connection is gone
                except Exception as exc:
                    ops[0].future.set_exception(self._map_error(exc, "writing"))
                    return
            else:
                async with conn.transaction():
                    await self._run_ops(conn, ops, outcomes)
                    await self._notify_if_woke(conn)
        except Exception as exc:
            err = self._map_error(exc, "committing")
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(err)
            return
        self.commits += 1
        self.appends += sum(1 for op, _, failure in outcomes if op.is_append and failure is None)
        if self._woke:
            self._wakeup.notify()
        for op, result, failure in outcomes:
            if op.future.done():
                continue
            if failure is not None:
                op.future.set_exception(failure)
            else:
                op.future.set_result(result)

    async def _notify_if_woke(self, conn: Conn) -> None:
        if self._woke:
            # Delivered by PostgreSQL only once this transaction commits.
            await conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(self.channel)))

    async def _run_ops(
        self, conn: Conn, ops: list[_Op], outcomes: list[tuple[_Op, Any, BaseException | None]]
    ) -> None:
        """Run each op in its own savepoint, so one failure rolls back only itself."""
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

    async def _run_bulk(self, ops: list[_Op], rest: Sequence[_Op] = ()) -> bool:
        """Commit a batch of appends with a handful of statements in all
        (then ``rest``, other writes, one by one in the same transaction).

        One statement per table instead of several per request (each a round
        trip to the server). Fences and conflicts are decided in Python from
        the locked rows. Returns False, having changed nothing, when the
        batch needs the one-by-one path (an execution twice in the batch, a
        failed statement).
        """
        reqs = [op.req for op in ops if op.req is not None]
        ids = [r.execution_id for r in reqs]
        if len(set(ids)) != len(ids):
            return False
        outcomes: list[BaseException | list[int]] = []
        others: list[tuple[_Op, Any, BaseException | None]] = []
        self._woke = False
        try:
            conn = await self._writer_connection()
            if rest:
                async with conn.transaction():
                    # Pipelined (see below), then the other writes on their own:
                    # their statements may fail on purpose, which must surface
                    # where each is sent, not at the pipeline's end.
                    async with conn.pipeline():
                        outcomes = await self._bulk_append_tx(conn, reqs)
                    await self._run_ops(conn, list(rest), others)
                    await self._notify_if_woke(conn)
            else:
                # Statements whose results nothing waits for (BEGIN, the
                # inserts and updates, NOTIFY, COMMIT) go out together in
                # pipeline mode: a step's commit is 3 round trips, not 6-8.
                async with conn.pipeline(), conn.transaction():
                    outcomes = await self._bulk_append_tx(conn, reqs)
                    await self._notify_if_woke(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError, StorageError) as exc:
            # The connection is gone or cannot be made (a restarting
            # server): every op of the batch fails, the writer goes on.
            err = self._map_error(exc, "committing")
            for op in [*ops, *rest]:
                if not op.future.done():
                    op.future.set_exception(err)
            return True
        except (psycopg.Error, _Unencodable):
            return False  # rolled back: let the careful path find the culprit
        self.commits += 1
        self.appends += sum(1 for outcome in outcomes if isinstance(outcome, list))
        if self._woke:
            self._wakeup.notify()
        for op, outcome in zip(ops, outcomes, strict=True):
            if op.future.done():
                continue
            if isinstance(outcome, BaseException):
                op.future.set_exception(outcome)
            else:
                op.future.set_result(outcome)
        for op, result, failure in others:
            if op.future.done():
                continue
            if failure is not None:
                op.future.set_exception(failure)
            else:
                op.future.set_result(result)
        return True

    async def _bulk_append_tx(
        self, conn: Conn, reqs: list[AppendRequest]
    ) -> list[BaseException | list[int]]:
        # Array parameters are sent in binary (%b): in text, psycopg quotes
        # every element with a regular expression (and bytea as hex), which
        # was ~0.5 ms of a worker's CPU per 3-step workflow in the profile.
        # They are encoded by the Rust core (_int8s, _texts, ...): psycopg's
        # binary list dumper, in Python per element, was ~12% of a worker's CPU.
        ids = [r.execution_id for r in reqs]
        select = (
            "SELECT execution_id, version, owner, epoch FROM executions"
            " WHERE execution_id = ANY(%b::text[]) ORDER BY execution_id FOR UPDATE"
        )
        # Sent together, run in order: the clock and the txs are read after
        # the rows are locked (txs increase per execution), in one round trip.
        # Txs are drawn for every request that asks; a refused one leaves a
        # gap (txs are unique and increasing, not dense).
        locked = await conn.execute(select, (_texts(ids),))
        clock = None
        if any(r.ready_at == READY_NOW or (r.fence and r.expected_version == 0) for r in reqs):
            clock = await conn.execute(_NOW_SQL)
        wanted = sum(len(r.events) for r in reqs if r.allocate_tx)
        drawn = await conn.execute(_DRAW_TXS_SQL, (wanted,)) if wanted else None
        rows = {eid: (int(v), owner, epoch) for eid, v, owner, epoch in await locked.fetchall()}
        now = 0 if clock is None else int((await clock.fetchall())[0][0])
        fresh_txs = iter([int(r[0]) for r in await drawn.fetchall()] if drawn is not None else [])
        fresh = [r for r in reqs if r.execution_id not in rows and r.expected_version == 0]
        made: set[str] = set()
        if fresh:

            def owned(r: AppendRequest) -> bool:
                return r.fence is not None and r.status not in TERMINAL_STATUSES

            stamps = _int8s([r.events[0].timestamp if r.events else 0 for r in fresh])
            created = await self._fetchall(
                conn,
                f"INSERT INTO executions ({_EXEC_COLUMNS}, owner, epoch, lease_expires_at,"
                " preferred)"
                " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[],"
                " %b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::text[],"
                " %b::bigint[], %b::bigint[], %b::text[])"
                " ON CONFLICT (execution_id) DO NOTHING RETURNING execution_id",
                (
                    _texts([r.execution_id for r in fresh]),
                    _texts([r.workflow_id or "" for r in fresh]),
                    _texts([r.workflow_version or "" for r in fresh]),
                    _texts([r.status for r in fresh]),
                    _texts([r.parent_id for r in fresh]),
                    stamps,  # created_at
                    stamps,  # updated_at
                    _int8s([0] * len(fresh)),
                    _texts([r.fence.owner if owned(r) and r.fence else None for r in fresh]),
                    _int8s([1 if r.fence else 0 for r in fresh]),
                    _int8s([now + lease_us(r.lease_seconds) if owned(r) else None for r in fresh]),
                    _texts([None if r.fence else r.preferred for r in fresh]),
                ),
            )
            made = {row[0] for row in created}
            lost = [r.execution_id for r in fresh if r.execution_id not in made]
            for eid in made:
                rows[eid] = (0, None, 1)
            if lost:  # created by another connection meanwhile
                again = await self._fetchall(
                    conn,
                    "SELECT execution_id, version, owner, epoch FROM executions"
                    " WHERE execution_id = ANY(%b::text[]) FOR UPDATE",
                    (_texts(lost),),
                )
                rows.update({eid: (int(v), owner, epoch) for eid, v, owner, epoch in again})
        outcomes: list[BaseException | list[int]] = []
        ok: list[AppendRequest] = []
        fenced_count = 0
        for r in reqs:
            eid = r.execution_id
            actual, owner, epoch = rows.get(eid, (0, None, 0))
            fence = r.fence
            if (
                fence is not None
                and eid in rows
                and eid not in made
                and (owner, epoch) != (fence.owner, fence.epoch)
            ):
                fenced_count += 1
                outcomes.append(fenced(eid, fence, owner, epoch))
            elif eid not in rows or actual != r.expected_version:
                outcomes.append(conflict(eid, r.expected_version, actual))
            else:
                outcomes.append([])
                ok.append(r)
        if fenced_count:
            await self._drive(conn, self._allocate("fenced_writes", fenced_count))
        # Store txs for the requests that asked, in request order.
        drawn_for = {
            r.execution_id: [next(fresh_txs) for _ in r.events] for r in reqs if r.allocate_tx
        }
        txs_of: dict[str, list[int]] = {
            r.execution_id: drawn_for[r.execution_id] if r.allocate_tx else [e.tx for e in r.events]
            for r in ok
        }
        given = [e.tx for r in ok if not r.allocate_tx for e in r.events]
        if given:
            await self._drive(conn, self._raise_floor("tx", max(given)))
        events = [
            (r.execution_id, e, tx)
            for r in ok
            for e, tx in zip(r.events, txs_of[r.execution_id], strict=True)
        ]
        if events:
            await conn.execute(
                "INSERT INTO events (execution_id, version, tx, timestamp, kind, hash, encoded)"
                " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[],"
                " %b::text[], %b::bytea[], %b::bytea[])",
                (
                    _texts([eid for eid, _, _ in events]),
                    _int8s([e.version for _, e, _ in events]),
                    _int8s([tx for _, _, tx in events]),
                    _int8s([e.timestamp for _, e, _ in events]),
                    _texts([e.kind for _, e, _ in events]),
                    _byteas([e.hash for _, e, _ in events]),
                    _byteas([e.encoded for _, e, _ in events]),
                ),
            )
        ready: list[int | None] = []
        for r in ok:
            value = r.ready_at
            if value == READY_NOW:
                value = now
            ready.append(value)
            if (
                value is not None
                and value != UNCHANGED
                and r.fence is None
                and r.status not in TERMINAL_STATUSES
            ):
                self._woke = True  # claimable by others now (not an owner's own commit)
        if ok:
            await conn.execute(
                "UPDATE executions AS x SET status = u.status, version = u.version,"
                " updated_at = COALESCE(u.updated_at, x.updated_at),"
                " finished_at = CASE WHEN u.terminal THEN COALESCE(u.updated_at, x.updated_at)"
                "  ELSE x.finished_at END,"
                " ready_at = CASE WHEN u.terminal THEN NULL"
                "  WHEN u.set_ready THEN u.ready ELSE x.ready_at END,"
                " owner = CASE WHEN u.terminal THEN NULL ELSE x.owner END,"
                " lease_expires_at = CASE WHEN u.terminal THEN NULL ELSE x.lease_expires_at END"
                " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bool[],"
                " %b::bool[], %b::bigint[])"
                " AS u(execution_id, status, version, updated_at, terminal, set_ready, ready)"
                " WHERE x.execution_id = u.execution_id",
                (
                    _texts([r.execution_id for r in ok]),
                    _texts([r.status for r in ok]),
                    _int8s([r.expected_version + len(r.events) for r in ok]),
                    _int8s([r.events[-1].timestamp if r.events else None for r in ok]),
                    _bools([r.status in TERMINAL_STATUSES for r in ok]),
                    _bools([r.ready_at != UNCHANGED for r in ok]),
                    _int8s([None if v == UNCHANGED else v for v in ready]),
                ),
            )
        cleared = [(r.execution_id, step) for r in ok for step in r.timers_cleared]
        if cleared:
            await conn.execute(
                "DELETE FROM timers AS t USING unnest(%b::text[], %b::text[]) AS d(eid, step)"
                " WHERE t.execution_id = d.eid AND t.step = d.step",
                (_texts([c[0] for c in cleared]), _texts([c[1] for c in cleared])),
            )
        armed = [(r.execution_id, step, at) for r in ok for step, at in r.timers_set.items()]
        if armed:
            await conn.execute(
                "INSERT INTO timers (execution_id, step, fire_at)"
                " SELECT * FROM unnest(%b::text[], %b::text[], %b::bigint[])"
                " ON CONFLICT (execution_id, step) DO UPDATE SET fire_at = EXCLUDED.fire_at",
                (
                    _texts([a[0] for a in armed]),
                    _texts([a[1] for a in armed]),
                    _int8s([a[2] for a in armed]),
                ),
            )
        renamed = [r for r in ok if r.needs is not None and r.status not in TERMINAL_STATUSES]
        if renamed:
            await conn.execute(
                "DELETE FROM execution_needs WHERE execution_id = ANY(%b::text[])",
                (_texts([r.execution_id for r in renamed]),),
            )
            pairs = [(r.execution_id, n) for r in renamed for n in sorted(set(r.needs or ()))]
            if pairs:
                await conn.execute(
                    "INSERT INTO execution_needs (execution_id, capability)"
                    " SELECT * FROM unnest(%b::text[], %b::text[])",
                    (_texts([p[0] for p in pairs]), _texts([p[1] for p in pairs])),
                )
        ended = [r.execution_id for r in ok if r.status in TERMINAL_STATUSES]
        if ended:
            ended_ids = _texts(ended)
            for table in ("timers", "execution_needs", "event_waits", "inbox"):
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE execution_id = ANY(%b::text[])").format(
                        sql.Identifier(table)
                    ),
                    (ended_ids,),
                )
        for i, r in enumerate(reqs):
            if isinstance(outcomes[i], list):
                outcomes[i] = txs_of[r.execution_id]
        return outcomes

    async def _writer_connection(self) -> Conn:
        if self._writer is None or self._writer.closed or self._writer.broken:
            if self._writer is not None:
                await self._writer.close()
            self._writer = await self._connect(keyed=True)
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
            for attempt in (1, 2):
                if conn.closed or conn.broken:
                    await conn.close()
                    if conn in self._readers:
                        self._readers.remove(conn)
                    # When this fails (the server is still down) the dead
                    # connection goes back to the pool and the next read retries.
                    conn = await self._connect()
                    self._readers.append(conn)
                try:
                    return await fn(conn)
                except psycopg.Error as exc:
                    # A connection the server dropped (a restart) shows only
                    # when used: a read is safe to repeat once on a new one.
                    if attempt == 2 or not (conn.closed or conn.broken):
                        raise StorageError(
                            f"PostgreSQL at {self._where}: error while reading: {exc}"
                        ) from exc
            raise AssertionError("unreachable")  # pragma: no cover
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

    # ------------------------------------------------------------------ driver

    def _sql(self, text: str) -> str:
        converted = self._sql_cache.get(text)
        if converted is None:
            converted = self._sql_cache[text] = text.replace("?", "%s")
        return converted

    async def _drive(self, conn: Conn, op: Op[T]) -> T:
        """Run a shared operation's statements on ``conn``."""
        try:
            item = next(op)
            while True:
                if item is NOW:
                    row = await self._fetchone(conn, _NOW_SQL)
                    result: Any = int(row[0])
                elif item is WAKE:
                    self._woke = True
                    result = None
                else:
                    try:
                        result = await self._execute(conn, item)
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise
                    except psycopg.Error as exc:
                        item = op.throw(exc)
                        continue
                item = op.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value

    async def _execute(self, conn: Conn, q: Q) -> Any:
        text = self._sql(q.sql)
        if q.fetch == "many":
            async with conn.cursor() as cur:
                await cur.executemany(text, q.params)
            return None
        cur = await conn.execute(text, q.params)
        if q.fetch == "one":
            return await cur.fetchone()
        if q.fetch == "all":
            return await cur.fetchall()
        if q.fetch == "rowcount":
            return cur.rowcount
        return None

    async def _read_op(self, make: Callable[[], Op[T]], *, snapshot: bool = False) -> T:
        if not snapshot:
            return await self._read(lambda conn: self._drive(conn, make()))

        async def run(conn: Conn) -> T:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                return await self._drive(conn, make())

        return await self._read(run)

    async def _write_op(self, make: Callable[[], Op[T]]) -> T:
        return await self._write(lambda conn: self._drive(conn, make()))

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column = ANY(?)``: one array parameter, one cached statement."""
        return f"{column} = ANY(?)", [list(values)]

    def _definition_insert(self) -> str:
        # seq is an identity column here.
        return (
            "INSERT INTO definitions (workflow_id, version, content_hash, document)"
            " VALUES (?, ?, ?, ?)"
        )

    # Pick (FOR UPDATE SKIP LOCKED), lease, count the takeovers and return,
    # in one statement. The clock is read once, in a CTE (clock_timestamp()
    # is volatile: evaluated there rather than per row, the ready index
    # stays usable). Sequences are not transactional, so counting in
    # RETURNING is as safe as a statement of its own.
    #
    # The claim commits without waiting for its WAL flush (synchronous_commit
    # off for its own transaction): a lease the server forgets in a crash
    # only fences its holder's next write, and that write, synchronous,
    # flushes the claim first (WAL is flushed in order), so no step runs
    # on a lease that is not durable. It spares a dispatch an fsync.
    _CLAIM_SQL = (
        f"WITH c AS ({_NOW_SQL} AS now,"
        " set_config('synchronous_commit', 'off', true) AS relaxed), picked AS ("
        " SELECT e.execution_id, e.owner AS old_owner FROM executions e, c"
        " WHERE e.ready_at IS NOT NULL AND e.ready_at <= c.now"
        " AND (e.owner IS NULL OR e.lease_expires_at <= c.now)"
        " AND (e.preferred IS NULL OR e.preferred = %s OR e.ready_at <= c.now - %s)"
        " AND NOT EXISTS (SELECT 1 FROM execution_needs n"
        "  WHERE n.execution_id = e.execution_id AND NOT (n.capability = ANY(%b::text[])))"
        " ORDER BY e.ready_at, e.execution_id LIMIT %s FOR UPDATE OF e SKIP LOCKED),"
        " claimed AS (UPDATE executions x SET owner = %s, epoch = x.epoch + 1,"
        " lease_expires_at = c.now + %s, preferred = NULL FROM picked, c"
        " WHERE x.execution_id = picked.execution_id"
        " RETURNING x.execution_id, x.workflow_id, x.workflow_version, x.version, x.status,"
        " picked.old_owner, x.epoch, x.lease_expires_at, x.ready_at,"
        " CASE WHEN picked.old_owner IS NOT NULL"
        "  THEN nextval('itonami_reassignments_seq') END AS counted)"
        # With each claimed execution of at most %s versions, its events.
        " SELECT cl.*, ev.version, ev.tx, ev.timestamp, ev.kind, ev.hash, ev.encoded"
        " FROM claimed cl LEFT JOIN events ev ON ev.execution_id = cl.execution_id"
        " AND cl.version <= %s AND ev.version <= cl.version"
        " ORDER BY cl.ready_at, cl.execution_id, ev.version"
    )

    async def _claim(
        self,
        node_id: str,
        caps: list[str],
        limit: int,
        lease: int,
        steal_us: int,
        history_upto: int = 0,
    ) -> list[Claim]:
        # One round trip: the statement alone, autocommitted on a connection
        # of its own (no BEGIN/COMMIT, no read first: a claim that finds
        # nothing writes nothing; no wait behind the writer's group commit).
        # A dispatch spent four round trips here before. The connection is
        # keyed like the writer's: on a young table the planner scanned all
        # of executions to update the picked rows.
        params = (node_id, steal_us, _texts(caps), limit, node_id, lease, history_upto)
        async with self._claim_lock:
            self._check_open()
            conn = self._claimer
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    await conn.close()
                conn = self._claimer = await self._connect(keyed=True)
            try:
                # Not repeated on a dropped connection: the server may have
                # run it (its leases then expire unused).
                rows = await self._fetchall(conn, self._CLAIM_SQL, params)
            except psycopg.Error as exc:
                raise StorageError(
                    f"PostgreSQL at {self._where}: error while claiming: {exc}"
                ) from exc
        # Oldest ready first, as the shared claim; one row per event (or one
        # with no event) of each claimed execution, in version order.
        heads: dict[str, tuple[Any, ...]] = {}
        events: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            eid = row[0]
            if eid not in heads:
                heads[eid] = row
                events[eid] = []
            if row[10] is not None:
                events[eid].append(row[10:])
        out = []
        for eid, row in heads.items():
            history = None
            if 0 < row[3] <= history_upto:
                # Damaged rows are left to the caller's own read to report.
                with contextlib.suppress(CorruptStorageError):
                    history = tuple(check_event_rows(eid, events[eid], 0, row[3]))
            out.append(self._claim_row(row, row[6], row[7], row[5] is not None, history))
        return out

    def _allocate(self, counter: str, n: int) -> Op[list[int]]:
        rows = yield Q(_DRAW_SQL.format(counter), (n,), "all")
        return [int(r[0]) for r in rows]

    def _raise_floor(self, counter: str, value: int) -> Op[None]:
        # Only ever raises it; racing nextval calls can only make it larger.
        yield Q(
            f"SELECT setval('itonami_{counter}_seq', ?) FROM itonami_{counter}_seq"
            " WHERE NOT is_called OR last_value < ?",
            (value, value),
            "all",
        )

    def _read_counter(self, counter: str) -> Op[int]:
        row = yield Q(
            f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM itonami_{counter}_seq",
            (),
            "one",
        )
        return 0 if row is None else int(row[0])

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    # ------------------------------------------------------------------ appends

    async def append(self, req: AppendRequest) -> None:
        """Append under optimistic concurrency; group-committed with concurrent appends."""
        await self.submit(req)

    def submit(self, req: AppendRequest) -> asyncio.Future[list[int]]:
        """Queue the append for the writer's next group commit; resolves to the txs."""
        self._check_open()
        check_request(req)
        assert self._queue is not None
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

        async def run(conn: Conn) -> list[int]:
            return await self._drive(conn, self._append(req))

        self._queue.put_nowait(_Op(run, fut, True, req))
        return fut

    # ------------------------------------------------------------------ wake hints

    async def wait_for_work(self, timeout: float) -> bool:
        """Return on a ``NOTIFY`` from any process (or this one's commit), else at timeout."""
        self._check_open()
        if self._listen_task is None or self._listen_task.done():
            # One start at a time, and never abandoned half-way by a waiter
            # that is cancelled (a connection must not leak). On failure,
            # polling still finds the work; the next call tries again.
            starting = self._listen_start
            if starting is None or starting.done():
                starting = self._listen_start = asyncio.ensure_future(self._listen())
                starting.add_done_callback(_retrieve)
            with contextlib.suppress(StorageError):
                await asyncio.shield(starting)
        return await self._wakeup.wait(timeout)

    async def _listen(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                await self._listener.close()
        self._listener = await self._connect()
        try:
            await self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL at {self._where}: cannot LISTEN: {exc}") from exc
        self._listen_task = asyncio.create_task(
            self._pump(self._listener), name="itonami-postgres-listen"
        )

    async def _pump(self, conn: Conn) -> None:
        with contextlib.suppress(psycopg.Error):
            async for _ in conn.notifies():
                self._wakeup.notify()


def _retrieve(fut: asyncio.Future[None]) -> None:
    """Mark a background start's failure as seen (its waiters may be gone)."""
    if not fut.cancelled():
        fut.exception()

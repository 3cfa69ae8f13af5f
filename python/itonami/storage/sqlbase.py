"""The SQL both relational backends share: schema, migrations and every query.

:class:`SqlStorage` implements the whole :class:`~itonami.storage.base.Storage`
interface once. Each operation is written as a generator that yields the
statements it needs (:class:`Q`) and receives their results, so the same
code drives SQLite's blocking ``sqlite3`` connections and PostgreSQL's async
psycopg ones. A dialect subclass (``sqlite.py``, ``postgres.py``) supplies
only what differs:

* connections, batching and where the statements run (``_read_op``,
  ``_write_op``, ``_submit_op``);
* the placeholder style and a few SQL spellings (:meth:`SqlStorage.sql`,
  :meth:`SqlStorage.in_list`, ``FOR UPDATE``, column types in the DDL);
* counters: SQLite keeps them in the ``counters`` table (its writers are
  serialised by the database lock anyway); PostgreSQL uses sequences, which
  never block a concurrent transaction nor roll back with a failed one;
* the store's clock (:data:`NOW`), wake hints after commit (:data:`WAKE`),
  migrations' locking and error classification.

Schema version 3 adds, for processes that share the store: lease columns on
``executions`` (``owner``, ``epoch``, ``lease_expires_at``, ``ready_at``,
``inbox_acked``), ``execution_needs`` (capability names per execution),
``inbox``, ``event_waits``, ``nodes`` and ``counters``. Migrating an older
store makes its unfinished executions ready and starts the tx counter above
the largest stored tx.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from abc import abstractmethod
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from itonami.errors import CorruptStorageError, StorageError
from itonami.storage.base import (
    READY_NOW,
    TERMINAL_STATUSES,
    UNCHANGED,
    AppendRequest,
    Claim,
    ClusterStats,
    ExecutionFilter,
    ExecutionRecord,
    Fence,
    Lease,
    Message,
    NodeInfo,
    Storage,
    StoredEvent,
    check_definition,
    check_deletable,
    check_event_rows,
    check_fence,
    check_history_upto,
    check_lease_seconds,
    check_message,
    check_needs,
    check_node,
    check_node_id,
    check_prune,
    check_release,
    conflict,
    decode_names,
    definition_mismatch,
    encode_names,
    fenced,
    find_history_problems,
    like_contains,
    node_status,
    pick_trees,
    waiting_for,
)

__all__ = ["NOW", "WAKE", "Op", "Q", "SqlStorage", "migrations"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Q:
    """One statement for the driver: ``fetch`` is none, one, all, rowcount or many.

    ``many`` runs the statement once per parameter tuple in ``params``.
    Placeholders are ``?``; the dialect rewrites them.
    """

    sql: str
    params: Sequence[Any] = ()
    fetch: str = "none"


class _Token:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Yielded by an operation: the driver answers with the store's clock in µs.
NOW = _Token("NOW")
#: Yielded by a write: the driver wakes other processes once it committed.
WAKE = _Token("WAKE")

#: An operation: yields :class:`Q`, :data:`NOW` or :data:`WAKE`, returns T.
Op = Generator[Any, Any, T]

_TERMINAL = tuple(sorted(TERMINAL_STATUSES))
#: The predicate of the partial index ``executions_finished``, spelled with
#: literals: a query uses that index only when it states the same predicate.
_FINISHED = f"status IN ({', '.join(repr(s) for s in _TERMINAL)})"

#: Every table holding rows of an execution; retention deletes from each.
_EXECUTION_TABLES = (
    "events",
    "snapshots",
    "timers",
    "execution_needs",
    "inbox",
    "event_waits",
    "executions",
)
#: Ids per ``DELETE … IN (…)`` statement (well inside every parameter limit).
_DELETE_CHUNK = 500

_EXEC_COLUMNS = (
    "execution_id, workflow_id, workflow_version, status, parent_id, created_at, updated_at, "
    "version"
)


def migrations(
    types: dict[str, str], extra: dict[int, tuple[str, ...]] | None = None
) -> list[tuple[int, tuple[str, ...]]]:
    """The ordered schema migrations, with the dialect's column types filled in.

    ``types`` maps ``int``, ``blob``, ``norowid`` (a table suffix) and
    ``seq`` (the definitions' registration order column); ``extra`` appends
    dialect statements to a version (PostgreSQL's sequences). Never edit a
    released entry; append a new one.
    """
    t = types
    more = extra or {}
    terminal = ", ".join(f"'{s}'" for s in _TERMINAL)
    out: list[tuple[int, tuple[str, ...]]] = [
        (
            1,
            (
                "CREATE TABLE executions ("
                " execution_id TEXT PRIMARY KEY,"
                " workflow_id TEXT NOT NULL,"
                " workflow_version TEXT NOT NULL,"
                " status TEXT NOT NULL,"
                " parent_id TEXT,"
                f" created_at {t['int']} NOT NULL,"
                f" updated_at {t['int']} NOT NULL,"
                f" version {t['int']} NOT NULL)",
                "CREATE TABLE events ("
                " execution_id TEXT NOT NULL,"
                f" version {t['int']} NOT NULL,"
                f" tx {t['int']} NOT NULL UNIQUE,"
                f" timestamp {t['int']} NOT NULL,"
                " kind TEXT NOT NULL,"
                f" hash {t['blob']} NOT NULL,"
                f" encoded {t['blob']} NOT NULL,"
                f" PRIMARY KEY (execution_id, version)){t['norowid']}",
                "CREATE TABLE snapshots ("
                " execution_id TEXT NOT NULL,"
                f" version {t['int']} NOT NULL,"
                f" data {t['blob']} NOT NULL,"
                f" PRIMARY KEY (execution_id, version)){t['norowid']}",
                "CREATE TABLE definitions ("
                " workflow_id TEXT NOT NULL,"
                " version TEXT NOT NULL,"
                " content_hash TEXT NOT NULL,"
                f" document {t['blob']} NOT NULL,"
                f" {t['seq']},"
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
                f" fire_at {t['int']} NOT NULL,"
                f" PRIMARY KEY (execution_id, step)){t['norowid']}",
                "CREATE INDEX timers_fire_at ON timers (fire_at)",
                "CREATE INDEX executions_status ON executions (status, created_at)",
                "CREATE INDEX executions_workflow ON executions (workflow_id, created_at)",
            ),
        ),
        (
            3,
            (
                "ALTER TABLE executions ADD COLUMN owner TEXT",
                f"ALTER TABLE executions ADD COLUMN epoch {t['int']} NOT NULL DEFAULT 0",
                f"ALTER TABLE executions ADD COLUMN lease_expires_at {t['int']}",
                f"ALTER TABLE executions ADD COLUMN ready_at {t['int']}",
                f"ALTER TABLE executions ADD COLUMN inbox_acked {t['int']} NOT NULL DEFAULT 0",
                # Stores written before leases existed: what was unfinished is
                # runnable, so a claiming node picks it up.
                f"UPDATE executions SET ready_at = 0 WHERE status NOT IN ({terminal})",
                "CREATE INDEX executions_ready ON executions (ready_at) WHERE ready_at IS NOT NULL",
                "CREATE INDEX executions_owner ON executions (owner) WHERE owner IS NOT NULL",
                f"CREATE TABLE counters (name TEXT PRIMARY KEY, value {t['int']} NOT NULL)",
                "INSERT INTO counters (name, value) SELECT 'tx', COALESCE(MAX(tx), 0) FROM events",
                "INSERT INTO counters (name, value)"
                " VALUES ('inbox', 0), ('reassignments', 0), ('fenced_writes', 0)",
                "CREATE TABLE execution_needs ("
                " execution_id TEXT NOT NULL,"
                " capability TEXT NOT NULL,"
                f" PRIMARY KEY (execution_id, capability)){t['norowid']}",
                "CREATE TABLE inbox ("
                " execution_id TEXT NOT NULL,"
                f" seq {t['int']} NOT NULL,"
                " kind TEXT NOT NULL,"
                " name TEXT NOT NULL,"
                f" payload {t['blob']} NOT NULL,"
                f" posted_at {t['int']} NOT NULL,"
                f" PRIMARY KEY (execution_id, seq)){t['norowid']}",
                "CREATE TABLE event_waits ("
                " event_type TEXT NOT NULL,"
                " execution_id TEXT NOT NULL,"
                f" PRIMARY KEY (event_type, execution_id)){t['norowid']}",
                "CREATE INDEX event_waits_execution ON event_waits (execution_id)",
                "CREATE TABLE nodes ("
                " node_id TEXT PRIMARY KEY,"
                f" capacity {t['int']} NOT NULL,"
                f" inflight {t['int']} NOT NULL,"
                " capabilities TEXT NOT NULL,"
                " versions TEXT NOT NULL,"
                f" registered_at {t['int']} NOT NULL,"
                f" heartbeat_at {t['int']} NOT NULL)",
            ),
        ),
        (
            4,
            (
                # Listing pages newest (or oldest) first under each filter, and
                # retention finds finished executions and their children.
                "CREATE INDEX executions_created ON executions (created_at, execution_id)",
                "DROP INDEX executions_status",
                "CREATE INDEX executions_status ON executions (status, created_at, execution_id)",
                "DROP INDEX executions_workflow",
                "CREATE INDEX executions_workflow"
                " ON executions (workflow_id, created_at, execution_id)",
                "CREATE INDEX executions_finished ON executions (status, updated_at)",
                "CREATE INDEX executions_parent ON executions (parent_id)"
                " WHERE parent_id IS NOT NULL",
            ),
        ),
        (
            5,
            # The node a balancer chose for an unowned execution.
            ("ALTER TABLE executions ADD COLUMN preferred TEXT",),
        ),
        (
            6,
            (
                # Only finished executions are in the retention index, so a
                # commit of a running one (a new updated_at) does not write it.
                "DROP INDEX executions_finished",
                "CREATE INDEX executions_finished ON executions (status, updated_at)"
                f" WHERE {_FINISHED}",
            ),
        ),
        (
            7,
            (
                # Retention indexes the time an execution finished, a column
                # written once, instead of updated_at, which every commit
                # rewrites: no index then holds a column that a running
                # execution's commits change, so PostgreSQL rewrites the row
                # in place (a HOT update) instead of adding an entry to each
                # of the table's indexes.
                f"ALTER TABLE executions ADD COLUMN finished_at {t['int']}",
                f"UPDATE executions SET finished_at = updated_at WHERE {_FINISHED}",
                "DROP INDEX executions_finished",
                "CREATE INDEX executions_finished ON executions (finished_at, execution_id)"
                " WHERE finished_at IS NOT NULL",
            ),
        ),
        # SQLite keys its events table by tx (its dialect's statements); the
        # other dialects have nothing to change.
        (8, ()),
    ]
    return [(v, stmts + more.get(v, ())) for v, stmts in out]


@functools.cache
def _select_for_append(for_update: str, tx_top: str) -> str:
    top = f", {tx_top}" if tx_top else ""
    return (
        f"SELECT version, owner, epoch, status{top} FROM executions"
        f" WHERE execution_id = ?{for_update}"
    )


@functools.cache
def _update_for_append(
    terminal: bool, set_ready: bool, ack: bool, greatest: str, set_status: bool = True
) -> str:
    """The UPDATE of an append to an existing execution (one text per shape, cached).

    ``status`` is set only when it changes: SQLite rewrites an index entry
    for every column a SET names, changed or not, so a running execution's
    commit would rewrite its ``executions_status`` entry each time (a WAL
    page per commit).
    """
    sets = ["status = ?"] if set_status else []
    sets += ["version = ?", "updated_at = COALESCE(?, updated_at)"]
    if terminal:
        sets += [
            "finished_at = COALESCE(?, updated_at)",
            "ready_at = NULL",
            "owner = NULL",
            "lease_expires_at = NULL",
        ]
    elif set_ready:
        sets.append("ready_at = ?")
    if ack:
        sets.append(f"inbox_acked = {greatest}(inbox_acked, ?)")
    return f"UPDATE executions SET {', '.join(sets)} WHERE execution_id = ?"


#: The INSERT of a new execution's row, written with its final values.
INSERT_EXECUTION = (
    f"INSERT INTO executions ({_EXEC_COLUMNS}, owner, epoch, lease_expires_at,"
    " ready_at, inbox_acked, preferred, finished_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The INSERT of an appended event (one parameter tuple per event).
INSERT_EVENT = (
    "INSERT INTO events (execution_id, version, tx, timestamp, kind, hash, encoded)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
#: The DELETE of a timer an append cleared: (execution_id, step).
DELETE_TIMER = "DELETE FROM timers WHERE execution_id = ? AND step = ?"
#: The upsert of a timer an append set: (execution_id, step, fire_at).
UPSERT_TIMER = (
    "INSERT INTO timers (execution_id, step, fire_at) VALUES (?, ?, ?)"
    " ON CONFLICT (execution_id, step) DO UPDATE SET fire_at = excluded.fire_at"
)
#: The DELETE of an execution's capability names before new ones go in.
DELETE_NEEDS = "DELETE FROM execution_needs WHERE execution_id = ?"
#: The INSERT of one capability name an execution needs.
INSERT_NEED = "INSERT INTO execution_needs (execution_id, capability) VALUES (?, ?)"
#: The tables an execution's rows are deleted from when it finishes.
ENDED_TABLES = ("timers", "execution_needs", "event_waits", "inbox")


def bulk_ok(req: AppendRequest) -> bool:
    """Whether a backend's bulk append can take ``req`` (all but inbox acks
    and event waits, which go through :meth:`SqlStorage._append`)."""
    return req.ack_inbox_upto is None and not req.waits_set and not req.waits_cleared


def ready_value(req: AppendRequest, now: int) -> tuple[bool, int | None]:
    """Whether the append sets ``ready_at``, and the value (READY_NOW is ``now``)."""
    set_ready = req.status not in TERMINAL_STATUSES and req.ready_at != UNCHANGED
    ready = req.ready_at if set_ready else None
    if ready == READY_NOW:
        ready = now
    return set_ready, ready


def needs_clock(req: AppendRequest) -> bool:
    """Whether the append reads the store's clock (READY_NOW, or a first fenced append)."""
    return (req.status not in TERMINAL_STATUSES and req.ready_at == READY_NOW) or (
        req.expected_version == 0 and req.fence is not None
    )


def new_execution_row(req: AppendRequest, now: int, ready: int | None) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_EXECUTION` for a first append."""
    events = req.events
    first_ts = events[0].timestamp if events else 0
    last_ts = events[-1].timestamp if events else first_ts
    terminal = req.status in TERMINAL_STATUSES
    owner, epoch, expires = None, 0, None
    if req.fence is not None:
        epoch = 1
        if not terminal:
            owner, expires = req.fence.owner, now + lease_us(req.lease_seconds)
    return (
        req.execution_id,
        req.workflow_id or "",
        req.workflow_version or "",
        req.status,
        req.parent_id,
        first_ts,
        last_ts,
        req.expected_version + len(events),
        owner,
        epoch,
        expires,
        ready,
        req.ack_inbox_upto or 0,
        None if owner is not None else req.preferred,
        last_ts if terminal else None,
    )


def update_for_append(
    req: AppendRequest,
    set_ready: bool,
    ready: int | None,
    greatest: str,
    *,
    set_status: bool = True,
) -> tuple[str, list[Any]]:
    """The UPDATE of an append to an existing execution and its parameters
    (``set_status``: the stored status differs from the request's)."""
    terminal = req.status in TERMINAL_STATUSES
    ack = req.ack_inbox_upto is not None
    last_ts = req.events[-1].timestamp if req.events else None
    params: list[Any] = [req.status] if set_status else []
    params += [req.expected_version + len(req.events), last_ts]
    if terminal:
        params.append(last_ts)  # finished_at
    if set_ready:
        params.append(ready)
    if ack:
        params.append(req.ack_inbox_upto)
    params.append(req.execution_id)
    return _update_for_append(terminal, set_ready, ack, greatest, set_status), params


def lease_us(lease_seconds: float) -> int:
    """A lease length in whole µs (at least 1)."""
    return max(1, math.ceil(lease_seconds * 1_000_000))


class SqlStorage(Storage):
    """The :class:`Storage` methods of both SQL backends, written once.

    Subclasses implement the driver (``_read_op``, ``_write_op``,
    ``_submit_op``) and the dialect hooks below.
    """

    #: ``" FOR UPDATE"`` where row locks exist (PostgreSQL), else empty.
    FOR_UPDATE = ""
    #: The claim query's row locking: ``" FOR UPDATE SKIP LOCKED"`` on PostgreSQL.
    SKIP_LOCKED = ""
    #: The SQL function taking the larger of two values.
    GREATEST = "MAX"
    #: An expression for the largest tx handed out so far, read with the
    #: execution's row by an append that allocates txs (no statement of its
    #: own); empty where txs come from ``_allocate`` alone (a sequence).
    TX_TOP = ""

    # ------------------------------------------------------------------ driver hooks

    @abstractmethod
    async def _read_op(self, make: Callable[[], Op[T]], *, snapshot: bool = False) -> T:
        """Run a read operation on a reader connection (``snapshot``: one consistent view)."""

    @abstractmethod
    async def _write_op(self, make: Callable[[], Op[T]]) -> T:
        """Run a write operation in the writer's next transaction and await its commit."""

    # ------------------------------------------------------------------ dialect hooks

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (...)`` with bound parameters (``1 = 0`` for an empty list)."""
        if not values:
            return "1 = 0", []
        return f"{column} IN ({', '.join('?' for _ in values)})", list(values)

    @abstractmethod
    def _allocate(self, counter: str, n: int) -> Op[list[int]]:
        """``n`` fresh increasing values of a store-wide counter, in this transaction."""

    @abstractmethod
    def _raise_floor(self, counter: str, value: int) -> Op[None]:
        """Make later values of ``counter`` exceed ``value``."""

    @abstractmethod
    def _read_counter(self, counter: str) -> Op[int]:
        """The counter's current value (0 when never used)."""

    def _definition_insert(self) -> str:
        """The INSERT of a new definition; SQLite numbers ``seq`` itself."""
        return (
            "INSERT INTO definitions (workflow_id, version, content_hash, document, seq)"
            " VALUES (?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM definitions))"
        )

    @staticmethod
    def _events_after(
        execution_id: str, from_version: int, limit: int | None
    ) -> tuple[str, tuple[Any, ...]]:
        """The FROM ... clause and parameters of an execution's events after a version."""
        sql = " FROM events WHERE execution_id = ? AND version > ? ORDER BY version"
        if limit is None:
            return sql, (execution_id, from_version)
        return sql + " LIMIT ?", (execution_id, from_version, max(limit, 0))

    #: The columns an event row is read with; :meth:`_event_row` turns one
    #: into ``(version, tx, timestamp, kind, hash, encoded)``.
    _EVENT_COLUMNS = "version, tx, timestamp, kind, hash, encoded"

    def _event_row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(raw)

    def _event_rows(
        self, execution_id: str, from_version: int, limit: int | None = None
    ) -> Op[list[tuple[Any, ...]]]:
        where, params = self._events_after(execution_id, from_version, limit)
        rows = yield Q(f"SELECT {self._EVENT_COLUMNS}" + where, params, "all")
        return [self._event_row(r) for r in rows]

    def _integrity_fatal(self) -> Op[list[str]]:
        """The database's own check; problems here stop the other checks."""
        return []
        yield  # pragma: no cover - makes this a generator

    def _integrity_types(self) -> Op[list[str]]:
        """Wrong-typed values, where the database does not enforce types."""
        return []
        yield  # pragma: no cover - makes this a generator

    @abstractmethod
    def _is_unique_violation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database refusing a duplicate key."""

    # ------------------------------------------------------------------ appends

    def _append(self, req: AppendRequest) -> Op[list[int]]:
        """One append: fence, version check, tx allocation, events and indexes."""
        eid = req.execution_id
        events = req.events
        fence = req.fence
        terminal = req.status in TERMINAL_STATUSES
        first = req.expected_version == 0
        now = (yield NOW) if needs_clock(req) else 0
        set_ready, ready = ready_value(req, now)
        select = _select_for_append(self.FOR_UPDATE, self.TX_TOP if req.allocate_tx else "")
        row = yield Q(select, (eid,), "one")
        created = False
        if row is None and first:
            # The row is written with its final values: one statement, not two.
            inserted = yield Q(
                INSERT_EXECUTION + " ON CONFLICT (execution_id) DO NOTHING RETURNING version",
                new_execution_row(req, now, ready),
                "one",
            )
            if inserted is None:  # another connection created it meanwhile
                row = yield Q(select, (eid,), "one")
            else:
                created = True
        if not created:
            actual = 0 if row is None else row[0]
            if type(actual) is not int:
                raise CorruptStorageError(
                    f"execution {eid}: stored version {actual!r} is not an integer",
                    execution_id=eid,
                )
            if (
                fence is not None
                and row is not None
                and (row[1], row[2]) != (fence.owner, fence.epoch)
            ):
                yield from self._allocate("fenced_writes", 1)
                raise fenced(eid, fence, row[1], row[2])
            if actual != req.expected_version or row is None:
                raise conflict(eid, req.expected_version, actual)
        txs = [e.tx for e in events]
        if events:
            if req.allocate_tx and row is not None and len(row) > 4:
                top = int(row[4])  # TX_TOP, read in this transaction
                txs = list(range(top + 1, top + 1 + len(events)))
            elif req.allocate_tx:
                txs = yield from self._allocate("tx", len(events))
            else:
                yield from self._raise_floor("tx", max(txs))
            try:
                yield Q(
                    INSERT_EVENT,
                    [
                        (eid, e.version, tx, e.timestamp, e.kind, e.hash, e.encoded)
                        for e, tx in zip(events, txs, strict=True)
                    ],
                    "many",
                )
            except Exception as exc:
                if not self._is_unique_violation(exc):
                    raise
                raise StorageError(
                    f"append to {eid}: an event's version or tx is already stored ({exc})"
                ) from exc
        if not created:
            yield Q(
                *update_for_append(
                    req, set_ready, ready, self.GREATEST, set_status=row[3] != req.status
                )
            )
        if req.timers_cleared:
            yield Q(DELETE_TIMER, [(eid, step) for step in req.timers_cleared], "many")
        if req.timers_set:
            yield Q(UPSERT_TIMER, [(eid, step, at) for step, at in req.timers_set.items()], "many")
        if req.ack_inbox_upto is not None:
            yield Q(
                "DELETE FROM inbox WHERE execution_id = ? AND seq <= ?", (eid, req.ack_inbox_upto)
            )
        if terminal:
            for table in ENDED_TABLES:
                yield Q(f"DELETE FROM {table} WHERE execution_id = ?", (eid,))
        else:
            if req.needs is not None:
                # A row created just now has no needs to replace.
                yield from self._set_needs(eid, req.needs, replace=not created)
            if req.waits_cleared:
                yield Q(
                    "DELETE FROM event_waits WHERE execution_id = ? AND event_type = ?",
                    [(eid, name) for name in req.waits_cleared],
                    "many",
                )
            if req.waits_set:
                yield Q(
                    "INSERT INTO event_waits (event_type, execution_id) VALUES (?, ?)"
                    " ON CONFLICT (event_type, execution_id) DO NOTHING",
                    [(name, eid) for name in dict.fromkeys(req.waits_set)],
                    "many",
                )
        if set_ready and ready is not None and fence is None:
            # Other processes may claim it now (an owner's own commits are
            # nobody else's work: no hint, no claim storm).
            yield WAKE
        return txs

    def _set_needs(
        self, execution_id: str, needs: Iterable[str], *, replace: bool = True
    ) -> Op[None]:
        if replace:
            yield Q(DELETE_NEEDS, (execution_id,))
        names = sorted(set(needs))
        if names:
            yield Q(INSERT_NEED, [(execution_id, name) for name in names], "many")

    # ------------------------------------------------------------------ reads

    async def read_events(
        self, execution_id: str, from_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events after ``from_version`` (at most ``limit``); damaged rows raise
        CorruptStorageError."""

        def op() -> Op[list[StoredEvent]]:
            # The head first: events committed after it only extend the list.
            head = yield Q(
                "SELECT version FROM executions WHERE execution_id = ?", (execution_id,), "one"
            )
            rows = yield from self._event_rows(execution_id, from_version, limit)
            head_version = head[0] if head is not None and type(head[0]) is int else None
            if head_version is not None and limit is not None:
                head_version = min(head_version, from_version + max(limit, 0))
            return check_event_rows(execution_id, rows, from_version, head_version)

        try:
            return await self._read_op(op)
        except CorruptStorageError as exc:
            if exc.execution_id is not None:
                raise
            raise CorruptStorageError(
                f"execution {execution_id}: cannot read its events: {exc}",
                execution_id=execution_id,
            ) from exc

    async def read_histories(self, heads: Mapping[str, int]) -> dict[str, list[StoredEvent]]:
        """Events 1..``heads[id]`` of each execution, in one read (per 200).

        An execution whose rows do not cover its head is left out (the
        caller's own read of it then reports the damage); the others are
        unaffected.
        """
        ids = sorted(heads)

        def op() -> Op[dict[str, list[StoredEvent]]]:
            out: dict[str, list[StoredEvent]] = {}
            for i in range(0, len(ids), 200):
                chunk = ids[i : i + 200]
                where, params = self.in_list("execution_id", chunk)
                raw = yield Q(
                    f"SELECT execution_id, {self._EVENT_COLUMNS} FROM events WHERE {where}"
                    " ORDER BY execution_id, version",
                    tuple(params),
                    "all",
                )
                grouped: dict[str, list[tuple[Any, ...]]] = {eid: [] for eid in chunk}
                for row in raw:
                    event = self._event_row(row[1:])
                    rows = grouped.get(row[0])
                    if rows is not None and type(event[0]) is int and event[0] <= heads[row[0]]:
                        rows.append(event)
                for eid, rows in grouped.items():
                    with contextlib.suppress(CorruptStorageError):
                        out[eid] = check_event_rows(eid, rows, 0, heads[eid])
            return out

        if not ids:
            return {}
        return await self._read_op(op)

    async def save_snapshot(self, execution_id: str, version: int, data: bytes) -> None:
        """Store (or replace) the snapshot at ``version``."""

        def op() -> Op[None]:
            yield Q(
                "INSERT INTO snapshots (execution_id, version, data) VALUES (?, ?, ?)"
                " ON CONFLICT (execution_id, version) DO UPDATE SET data = excluded.data",
                (execution_id, version, bytes(data)),
            )

        await self._write_op(op)

    async def load_snapshot(self, execution_id: str) -> tuple[int, bytes] | None:
        """The newest snapshot, or None."""

        def op() -> Op[tuple[int, bytes] | None]:
            row = yield Q(
                "SELECT version, data FROM snapshots WHERE execution_id = ?"
                " ORDER BY version DESC LIMIT 1",
                (execution_id,),
                "one",
            )
            if row is None:
                return None
            version, data = row
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            if type(version) is not int or not isinstance(data, bytes):
                raise CorruptStorageError(
                    f"execution {execution_id}: stored snapshot {version!r} has wrong-typed values",
                    execution_id=execution_id,
                )
            return version, data

        return await self._read_op(op)

    async def prune_snapshots(self, execution_id: str, keep: int) -> int:
        """Delete all but the ``keep`` newest snapshots."""
        if keep < 0:
            raise StorageError(f"prune_snapshots {execution_id}: keep must be >= 0, got {keep}")

        def op() -> Op[int]:
            count = yield Q(
                "DELETE FROM snapshots WHERE execution_id = ? AND version NOT IN"
                " (SELECT version FROM snapshots WHERE execution_id = ?"
                "  ORDER BY version DESC LIMIT ?)",
                (execution_id, execution_id, keep),
                "rowcount",
            )
            return int(count)

        return await self._write_op(op)

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's row, or None."""

        def op() -> Op[ExecutionRecord | None]:
            row = yield Q(
                f"SELECT {_EXEC_COLUMNS} FROM executions WHERE execution_id = ?",
                (execution_id,),
                "one",
            )
            return None if row is None else ExecutionRecord(*row)

        return await self._read_op(op)

    def contains(self, column: str, needle: str) -> tuple[str, list[Any]]:
        """``column`` contains ``needle`` (case-sensitive, bound, LIKE-escaped)."""
        return f"{column} LIKE ? ESCAPE '!'", [like_contains(needle)]

    def _filter_sql(self, f: ExecutionFilter) -> tuple[str, list[Any]]:
        """The ``WHERE`` clause (or "") and its parameters for an execution filter."""
        where: list[str] = []
        params: list[Any] = []
        if f.statuses is not None:
            clause, values = self.in_list("status", f.statuses)
            where.append(clause)
            params.extend(values)
        for condition, value in (
            ("workflow_id = ?", f.workflow_id),
            ("workflow_version = ?", f.workflow_version),
            ("created_at >= ?", f.created_after),
            ("created_at < ?", f.created_before),
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        if f.id_contains is not None:
            clause, values = self.contains("execution_id", f.id_contains)
            where.append(clause)
            params.extend(values)
        return (" WHERE " + " AND ".join(where)) if where else "", params

    async def _list_executions(
        self, f: ExecutionFilter, *, newest_first: bool, limit: int, offset: int
    ) -> list[ExecutionRecord]:
        where, params = self._filter_sql(f)
        # Either direction walks one of the (…, created_at, execution_id) indexes.
        order = "created_at DESC, execution_id DESC" if newest_first else "created_at, execution_id"
        query = f"SELECT {_EXEC_COLUMNS} FROM executions{where} ORDER BY {order} LIMIT ? OFFSET ?"
        params.extend([limit, offset])

        def op() -> Op[list[ExecutionRecord]]:
            rows = yield Q(query, params, "all")
            return [ExecutionRecord(*r) for r in rows]

        return await self._read_op(op)

    async def _count_executions(self, f: ExecutionFilter) -> dict[str, int]:
        where, params = self._filter_sql(f)
        query = f"SELECT status, COUNT(*) FROM executions{where} GROUP BY status ORDER BY status"

        def op() -> Op[dict[str, int]]:
            rows = yield Q(query, params, "all")
            return {r[0]: int(r[1]) for r in rows}

        return await self._read_op(op)

    # ------------------------------------------------------------------ retention

    def _trees(self, roots: Sequence[str]) -> Op[dict[str, list[tuple[str, str]]]]:
        """Each root's ``(id, status)`` with every descendant's (sub-workflows)."""
        if not roots:
            return {}
        seeds, params = self.in_list("execution_id", list(roots))
        # UNION (not UNION ALL) also ends the walk should parent links loop.
        rows = yield Q(
            "WITH RECURSIVE tree(root, id) AS ("
            f" SELECT execution_id, execution_id FROM executions WHERE {seeds}"
            " UNION SELECT t.root, c.execution_id FROM executions c"
            "  JOIN tree t ON c.parent_id = t.id)"
            " SELECT t.root, t.id, e.status FROM tree t"
            " JOIN executions e ON e.execution_id = t.id ORDER BY t.root, t.id",
            params,
            "all",
        )
        trees: dict[str, list[tuple[str, str]]] = {}
        for root, eid, status in rows:
            trees.setdefault(root, []).append((eid, status))
        return trees

    def _delete_rows(self, ids: Sequence[str]) -> Op[None]:
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = list(ids[start : start + _DELETE_CHUNK])
            for table in _EXECUTION_TABLES:
                clause, params = self.in_list("execution_id", chunk)
                yield Q(f"DELETE FROM {table} WHERE {clause}", params)

    async def delete_execution(self, execution_id: str) -> bool:
        """Delete a finished execution and its sub-workflows; False if unknown."""

        def op() -> Op[bool]:
            row = yield Q(
                "SELECT parent_id FROM executions WHERE execution_id = ?" + self.FOR_UPDATE,
                (execution_id,),
                "one",
            )
            if row is None:
                return False
            parent_status = None
            if row[0] is not None:
                parent = yield Q(
                    "SELECT status FROM executions WHERE execution_id = ?", (row[0],), "one"
                )
                parent_status = None if parent is None else parent[0]
            trees = yield from self._trees([execution_id])
            tree = trees.get(execution_id, [])
            check_deletable(execution_id, tree, parent_status)
            yield from self._delete_rows([eid for eid, _ in tree])
            return True

        return await self._write_op(op)

    async def prune(
        self, *, finished_before: int, workflow_id: str | None = None, limit: int = 500
    ) -> list[str]:
        """Delete one batch of old finished execution trees; the deleted ids."""
        check_prune(finished_before, workflow_id, limit)
        params: list[Any] = []
        query = (
            "SELECT e.execution_id FROM executions e"
            " WHERE e.finished_at IS NOT NULL AND e.finished_at < ?"
            " AND (e.parent_id IS NULL OR NOT EXISTS"
            "  (SELECT 1 FROM executions p WHERE p.execution_id = e.parent_id))"
        )
        params.append(finished_before)
        if workflow_id is not None:
            query += " AND e.workflow_id = ?"
            params.append(workflow_id)
        query += " ORDER BY e.finished_at, e.execution_id LIMIT ?"
        params.append(limit)

        def op() -> Op[list[str]]:
            rows = yield Q(query, params, "all")
            roots = [r[0] for r in rows]
            trees = yield from self._trees(roots)
            ids = pick_trees(roots, trees, limit)
            yield from self._delete_rows(ids)
            return ids

        return await self._write_op(op)

    async def unfinished_executions(self) -> list[str]:
        """Ids of the executions not in a terminal status."""
        clause, values = self.in_list("status", _TERMINAL)

        def op() -> Op[list[str]]:
            rows = yield Q(
                f"SELECT execution_id FROM executions WHERE NOT ({clause})"
                " ORDER BY created_at, execution_id",
                values,
                "all",
            )
            return [r[0] for r in rows]

        return await self._read_op(op)

    async def due_timers(self, now: int) -> list[tuple[str, str, int]]:
        """Timers with ``fire_at <= now``, soonest first."""

        def op() -> Op[list[tuple[str, str, int]]]:
            rows = yield Q(
                "SELECT execution_id, step, fire_at FROM timers WHERE fire_at <= ?"
                " ORDER BY fire_at, execution_id, step",
                (now,),
                "all",
            )
            return [tuple(r) for r in rows]

        return await self._read_op(op)

    async def all_timers(self) -> list[tuple[str, str, int]]:
        """Every timer, soonest first."""

        def op() -> Op[list[tuple[str, str, int]]]:
            rows = yield Q(
                "SELECT execution_id, step, fire_at FROM timers"
                " ORDER BY fire_at, execution_id, step",
                (),
                "all",
            )
            return [tuple(r) for r in rows]

        return await self._read_op(op)

    async def put_definition(
        self, workflow_id: str, version: str, content_hash: str, document: bytes
    ) -> None:
        """Register a definition (idempotent; different content for a version is refused)."""
        check_definition(workflow_id, version, content_hash, document)
        doc = bytes(document)

        def op() -> Op[None]:
            row = yield Q(
                "SELECT content_hash FROM definitions WHERE workflow_id = ? AND version = ?",
                (workflow_id, version),
                "one",
            )
            if row is None:
                yield Q(
                    self._definition_insert() + " ON CONFLICT (workflow_id, version) DO NOTHING",
                    (workflow_id, version, content_hash, doc),
                )
                row = yield Q(
                    "SELECT content_hash FROM definitions WHERE workflow_id = ? AND version = ?",
                    (workflow_id, version),
                    "one",
                )
            if row is not None and row[0] != content_hash:
                raise definition_mismatch(workflow_id, version, row[0], content_hash)

        await self._write_op(op)

    async def get_definition(self, workflow_id: str, version: str | None = None) -> bytes | None:
        """A document by workflow and version (None = newest registered)."""
        if version is None:
            query = (
                "SELECT document FROM definitions WHERE workflow_id = ? ORDER BY seq DESC LIMIT 1"
            )
            params: tuple[Any, ...] = (workflow_id,)
        else:
            query = "SELECT document FROM definitions WHERE workflow_id = ? AND version = ?"
            params = (workflow_id, version)

        def op() -> Op[bytes | None]:
            row = yield Q(query, params, "one")
            return None if row is None else bytes(row[0])

        return await self._read_op(op)

    async def list_definitions(self) -> list[tuple[str, str, str]]:
        """Every registered definition, in registration order."""

        def op() -> Op[list[tuple[str, str, str]]]:
            rows = yield Q(
                "SELECT workflow_id, version, content_hash FROM definitions ORDER BY seq", (), "all"
            )
            return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

        return await self._read_op(op)

    async def get_definition_by_hash(self, content_hash: str) -> bytes | None:
        """A document by content hash."""

        def op() -> Op[bytes | None]:
            row = yield Q(
                "SELECT document FROM definitions WHERE content_hash = ? ORDER BY seq LIMIT 1",
                (content_hash,),
                "one",
            )
            return None if row is None else bytes(row[0])

        return await self._read_op(op)

    async def max_tx(self) -> int:
        """The largest stored tx (0 when empty)."""

        def op() -> Op[int]:
            row = yield Q("SELECT MAX(tx) FROM events", (), "one")
            value = row[0] if row and row[0] is not None else 0
            if type(value) is not int:
                raise CorruptStorageError(f"{self.url}: a stored tx is not an integer: {value!r}")
            return value

        return await self._read_op(op)

    async def integrity_check(self) -> list[str]:
        """Dialect checks, then history, orphan and snapshot checks."""

        def op() -> Op[list[str]]:
            fatal = yield from self._integrity_fatal()
            if fatal:  # the database itself is damaged: our queries would mislead
                return fatal
            typed = yield from self._integrity_types()
            pairs = yield Q(
                "SELECT execution_id, version FROM events ORDER BY execution_id, version",
                (),
                "all",
            )
            heads = yield Q("SELECT execution_id, version FROM executions", (), "all")
            problems = typed + find_history_problems(pairs, dict(heads))
            rows = yield Q(
                "SELECT s.execution_id, s.version FROM snapshots s"
                " LEFT JOIN executions e ON e.execution_id = s.execution_id"
                " WHERE e.execution_id IS NULL OR s.version > e.version",
                (),
                "all",
            )
            for eid, version in rows:
                problems.append(
                    f"execution {eid}: snapshot at version {version} is beyond the stored history"
                )
            for table, what in (
                ("timers", "timer {}"),
                ("inbox", "inbox message {}"),
                ("event_waits", "event wait for {}"),
                ("execution_needs", "need {}"),
            ):
                column = {
                    "timers": "step",
                    "inbox": "seq",
                    "event_waits": "event_type",
                    "execution_needs": "capability",
                }[table]
                rows = yield Q(
                    f"SELECT t.execution_id, t.{column} FROM {table} t"
                    " LEFT JOIN executions e ON e.execution_id = t.execution_id"
                    " WHERE e.execution_id IS NULL",
                    (),
                    "all",
                )
                for eid, key in rows:
                    problems.append(f"execution {eid}: {what.format(key)} has no execution row")
            return problems

        return await self._read_op(op, snapshot=True)

    # ------------------------------------------------------------------ leases

    def _claim_row(
        self,
        row: Sequence[Any],
        epoch: int,
        expires: int,
        reassigned: bool,
        history: tuple[StoredEvent, ...] | None = None,
    ) -> Claim:
        eid, workflow_id, workflow_version, version, status = row[:5]
        return Claim(
            execution_id=eid,
            epoch=epoch,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            version=version,
            status=status,
            lease_expires_at=expires,
            reassigned=reassigned,
            history=history,
        )

    async def claim(
        self,
        node_id: str,
        *,
        capabilities: Iterable[str],
        limit: int = 1,
        lease_seconds: float = 30.0,
        steal_after: float = 2.0,
        history_upto: int = 0,
    ) -> list[Claim]:
        """Take up to ``limit`` ready, unowned (or expired) executions this node can run."""
        check_node_id(node_id)
        check_lease_seconds(lease_seconds)
        check_history_upto(history_upto)
        steal_us = max(0, math.ceil(steal_after * 1_000_000))
        caps = sorted(set(capabilities))
        check_needs(node_id, caps)
        if limit <= 0:
            return []
        return await self._claim(
            node_id, caps, limit, lease_us(lease_seconds), steal_us, history_upto
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
        """The claim's statements (a dialect may run them in one round trip,
        reading the short histories with them)."""
        # A read first: a claim that finds nothing (most polls) never takes
        # the write lock or a write transaction. What the read misses, the
        # next poll or hint finds.
        if not await self._read_op(self._claimable_op):
            return []
        return await self._write_op(lambda: self._claim_op(node_id, caps, limit, lease, steal_us))

    def _claimable_op(self) -> Op[bool]:
        """Whether any execution is ready and unowned (or its lease expired)."""
        now = yield NOW
        row = yield Q(
            "SELECT 1 FROM executions WHERE ready_at IS NOT NULL AND ready_at <= ?"
            " AND (owner IS NULL OR lease_expires_at <= ?) LIMIT 1",
            (now, now),
            "one",
        )
        return row is not None

    def _claim_op(
        self, node_id: str, caps: list[str], limit: int, lease: int, steal_us: int
    ) -> Op[list[Claim]]:
        """Take up to ``limit`` claimable executions whose needs ``caps`` cover."""
        have, have_params = self.in_list("n.capability", caps)
        now = yield NOW
        rows = yield Q(
            "SELECT execution_id, workflow_id, workflow_version, version, status, owner, epoch"
            " FROM executions e WHERE ready_at IS NOT NULL AND ready_at <= ?"
            " AND (owner IS NULL OR lease_expires_at <= ?)"
            " AND (preferred IS NULL OR preferred = ? OR ready_at <= ?)"
            " AND NOT EXISTS (SELECT 1 FROM execution_needs n"
            f"  WHERE n.execution_id = e.execution_id AND NOT ({have}))"
            f" ORDER BY ready_at, execution_id LIMIT ?{self.SKIP_LOCKED}",
            (now, now, node_id, now - steal_us, *have_params, limit),
            "all",
        )
        if not rows:
            return []
        expires = now + lease
        ids, id_params = self.in_list("execution_id", [row[0] for row in rows])
        # The rows are ours (the write lock, or FOR UPDATE): one statement for all.
        yield Q(
            "UPDATE executions SET owner = ?, epoch = epoch + 1, lease_expires_at = ?,"
            f" preferred = NULL WHERE {ids}",
            (node_id, expires, *id_params),
        )
        out = [self._claim_row(row, row[6] + 1, expires, row[5] is not None) for row in rows]
        taken = sum(1 for c in out if c.reassigned)
        if taken:
            yield from self._allocate("reassignments", taken)
        return out

    async def acquire(
        self, execution_id: str, node_id: str, *, lease_seconds: float = 30.0
    ) -> Claim | None:
        """Take one execution's lease if it is free, expired or already this node's."""
        check_node_id(node_id)
        check_lease_seconds(lease_seconds)
        terminal, terminal_params = self.in_list("status", _TERMINAL)

        def op() -> Op[Claim | None]:
            now = yield NOW
            row = yield Q(
                "SELECT execution_id, workflow_id, workflow_version, version, status, owner,"
                " epoch, lease_expires_at FROM executions WHERE execution_id = ?"
                f" AND NOT ({terminal}){self.FOR_UPDATE}",
                (execution_id, *terminal_params),
                "one",
            )
            if row is None:
                return None
            owner, epoch, expires_at = row[5], row[6], row[7]
            live = owner is not None and expires_at is not None and expires_at > now
            if live and owner != node_id:
                return None
            reassigned = owner is not None and owner != node_id
            if owner != node_id:
                epoch += 1
            expires = now + lease_us(lease_seconds)
            yield Q(
                "UPDATE executions SET owner = ?, epoch = ?, lease_expires_at = ?"
                " WHERE execution_id = ?",
                (node_id, epoch, expires, execution_id),
            )
            if reassigned:
                yield from self._allocate("reassignments", 1)
            return self._claim_row(row, epoch, expires, reassigned)

        return await self._write_op(op)

    async def renew(
        self, node_id: str, leases: Iterable[tuple[str, int]], *, lease_seconds: float = 30.0
    ) -> list[str]:
        """Extend the given leases; return the ids whose lease is lost."""
        check_node_id(node_id)
        check_lease_seconds(lease_seconds)
        wanted = dict(leases)
        if not wanted:
            return []
        pairs = sorted(wanted.items())
        values = ", ".join("(?, ?)" for _ in pairs)
        flat = [v for pair in pairs for v in pair]

        def op() -> Op[list[str]]:
            now = yield NOW
            rows = yield Q(
                "UPDATE executions SET lease_expires_at = ? WHERE owner = ?"
                f" AND (execution_id, epoch) IN (VALUES {values}) RETURNING execution_id",
                (now + lease_us(lease_seconds), node_id, *flat),
                "all",
            )
            kept = {r[0] for r in rows}
            return [eid for eid, _ in pairs if eid not in kept]

        return await self._write_op(op)

    async def release(
        self,
        execution_id: str,
        node_id: str,
        epoch: int,
        *,
        ready_at: int | None = UNCHANGED,
        needs: Iterable[str] | None = None,
        preferred: str | None = None,
    ) -> bool:
        """Drop the lease, setting ``ready_at``, ``needs`` and the preferred
        node; False if it was lost."""
        names = check_release(execution_id, node_id, epoch, needs)
        if preferred is not None:
            check_node_id(preferred)

        def op() -> Op[bool]:
            row = yield Q(
                "SELECT owner, epoch, status FROM executions WHERE execution_id = ?"
                + self.FOR_UPDATE,
                (execution_id,),
                "one",
            )
            if row is None or row[0] != node_id or row[1] != epoch:
                yield from self._allocate("fenced_writes", 1)
                return False
            sets = ["owner = NULL", "lease_expires_at = NULL", "preferred = ?"]
            params: list[Any] = [preferred]
            woke = False
            if ready_at != UNCHANGED and row[2] not in TERMINAL_STATUSES:
                ready = ready_at
                if ready == READY_NOW:
                    ready = yield NOW
                sets.append("ready_at = ?")
                params.append(ready)
                woke = ready is not None
            yield Q(
                f"UPDATE executions SET {', '.join(sets)} WHERE execution_id = ?",
                (*params, execution_id),
            )
            if names is not None and row[2] not in TERMINAL_STATUSES:
                yield from self._set_needs(execution_id, names)
            if woke:
                yield WAKE
            return True

        return await self._write_op(op)

    async def get_lease(self, execution_id: str) -> Lease | None:
        """The ownership columns of one execution."""

        def op() -> Op[Lease | None]:
            row = yield Q(
                "SELECT owner, epoch, lease_expires_at, ready_at, preferred FROM executions"
                " WHERE execution_id = ?",
                (execution_id,),
                "one",
            )
            if row is None:
                return None
            needs = yield Q(
                "SELECT capability FROM execution_needs WHERE execution_id = ? ORDER BY capability",
                (execution_id,),
                "all",
            )
            return Lease(
                execution_id, row[0], row[1], row[2], row[3], [n[0] for n in needs], row[4]
            )

        return await self._read_op(op, snapshot=True)

    async def execution_statuses(self, execution_ids: Iterable[str]) -> dict[str, str]:
        """Statuses of many executions, read in batches of 500 ids."""
        ids = sorted(set(execution_ids))
        if not ids:
            return {}

        def op() -> Op[dict[str, str]]:
            out: dict[str, str] = {}
            for i in range(0, len(ids), 500):
                clause, params = self.in_list("execution_id", ids[i : i + 500])
                rows = yield Q(
                    f"SELECT execution_id, status FROM executions WHERE {clause}", params, "all"
                )
                out.update({r[0]: r[1] for r in rows})
            return out

        return await self._read_op(op)

    # ------------------------------------------------------------------ inbox

    async def post_message(
        self, execution_id: str, kind: str, name: str, payload: bytes = b""
    ) -> int:
        """Commit a message to the inbox, make the execution ready, and wake the nodes."""
        data = check_message(execution_id, kind, name, payload)

        def op() -> Op[int]:
            row = yield Q(
                "SELECT status FROM executions WHERE execution_id = ?" + self.FOR_UPDATE,
                (execution_id,),
                "one",
            )
            if row is None:
                raise StorageError(f"post_message: no execution {execution_id}")
            if row[0] in TERMINAL_STATUSES:
                raise StorageError(
                    f"post_message: execution {execution_id} has finished ({row[0]})"
                )
            now = yield NOW
            (seq,) = yield from self._allocate("inbox", 1)
            yield Q(
                "INSERT INTO inbox (execution_id, seq, kind, name, payload, posted_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (execution_id, seq, kind, name, data, now),
            )
            # Never push a runnable execution's ready time later.
            yield Q(
                "UPDATE executions SET ready_at = ? WHERE execution_id = ?"
                " AND (ready_at IS NULL OR ready_at > ?)",
                (now, execution_id, now),
            )
            yield WAKE
            return seq

        return await self._write_op(op)

    async def read_messages(self, execution_id: str, after_seq: int = 0) -> list[Message]:
        """Messages not yet acknowledged with ``seq > after_seq``."""

        def op() -> Op[list[Message]]:
            rows = yield Q(
                "SELECT i.seq, i.kind, i.name, i.payload, i.posted_at FROM inbox i"
                " JOIN executions e ON e.execution_id = i.execution_id"
                " WHERE i.execution_id = ? AND i.seq > ? AND i.seq > e.inbox_acked"
                " ORDER BY i.seq",
                (execution_id, after_seq),
                "all",
            )
            return [Message(execution_id, r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

        return await self._read_op(op)

    async def ack_messages(self, execution_id: str, upto_seq: int, fence: Fence) -> None:
        """Delete the messages up to ``upto_seq`` under ``fence`` (FencedError if lost)."""
        check_fence(execution_id, fence)

        def op() -> Op[None]:
            row = yield Q(
                "SELECT owner, epoch FROM executions WHERE execution_id = ?" + self.FOR_UPDATE,
                (execution_id,),
                "one",
            )
            if row is None:
                raise StorageError(f"ack_messages: no execution {execution_id}")
            if row[0] != fence.owner or row[1] != fence.epoch:
                yield from self._allocate("fenced_writes", 1)
                raise fenced(execution_id, fence, row[0], row[1])
            yield Q(
                f"UPDATE executions SET inbox_acked = {self.GREATEST}(inbox_acked, ?)"
                " WHERE execution_id = ?",
                (upto_seq, execution_id),
            )
            yield Q(
                "DELETE FROM inbox WHERE execution_id = ? AND seq <= ?", (execution_id, upto_seq)
            )

        await self._write_op(op)

    async def pending_messages(self, node_id: str) -> list[str]:
        """Executions ``node_id`` owns with unacknowledged messages."""

        def op() -> Op[list[str]]:
            rows = yield Q(
                "SELECT DISTINCT i.execution_id FROM inbox i"
                " JOIN executions e ON e.execution_id = i.execution_id"
                " WHERE e.owner = ? AND i.seq > e.inbox_acked ORDER BY i.execution_id",
                (node_id,),
                "all",
            )
            return [r[0] for r in rows]

        return await self._read_op(op)

    async def find_event_waiters(self, event_type: str) -> list[str]:
        """Executions whose last append opened a wait for ``event_type``."""

        def op() -> Op[list[str]]:
            rows = yield Q(
                "SELECT execution_id FROM event_waits WHERE event_type = ? ORDER BY execution_id",
                (event_type,),
                "all",
            )
            return [r[0] for r in rows]

        return await self._read_op(op)

    # ------------------------------------------------------------------ nodes

    async def register_node(
        self,
        node_id: str,
        *,
        capacity: int,
        capabilities: Iterable[str],
        versions: dict[str, str] | None = None,
    ) -> None:
        """Insert or replace the node's row; its heartbeat is now."""
        caps = check_node(node_id, capacity, capabilities)
        vers = encode_versions(versions)

        def op() -> Op[None]:
            now = yield NOW
            yield Q(
                "INSERT INTO nodes (node_id, capacity, inflight, capabilities, versions,"
                " registered_at, heartbeat_at) VALUES (?, ?, 0, ?, ?, ?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET capacity = excluded.capacity,"
                " capabilities = excluded.capabilities, versions = excluded.versions,"
                " heartbeat_at = excluded.heartbeat_at",
                (node_id, capacity, encode_names(caps), vers, now, now),
            )

        await self._write_op(op)

    async def heartbeat(self, node_id: str, *, inflight: int) -> bool:
        """Stamp the node's heartbeat with the store's clock."""

        def op() -> Op[bool]:
            now = yield NOW
            count = yield Q(
                "UPDATE nodes SET heartbeat_at = ?, inflight = ? WHERE node_id = ?",
                (now, inflight, node_id),
                "rowcount",
            )
            return bool(count)

        return await self._write_op(op)

    async def deregister_node(self, node_id: str) -> None:
        """Delete the node's row."""

        def op() -> Op[None]:
            yield Q("DELETE FROM nodes WHERE node_id = ?", (node_id,))

        await self._write_op(op)

    def _nodes(self, suspect_after: float, dead_after: float) -> Op[list[NodeInfo]]:
        now = yield NOW
        rows = yield Q(
            "SELECT node_id, capacity, inflight, capabilities, versions, heartbeat_at"
            " FROM nodes ORDER BY node_id",
            (),
            "all",
        )
        out = []
        for node_id, capacity, inflight, caps, vers, beat in rows:
            age = max(0.0, (now - beat) / 1_000_000)
            out.append(
                NodeInfo(
                    node_id,
                    capacity,
                    inflight,
                    decode_names(caps),
                    decode_versions(vers),
                    age,
                    node_status(age, suspect_after, dead_after),
                )
            )
        return out

    async def list_nodes(
        self, *, suspect_after: float = 15.0, dead_after: float = 60.0
    ) -> list[NodeInfo]:
        """Registered nodes with heartbeat age and status."""
        return await self._read_op(lambda: self._nodes(suspect_after, dead_after))

    async def cluster_stats(
        self, *, suspect_after: float = 15.0, dead_after: float = 60.0
    ) -> ClusterStats:
        """Ready queue, capability waits, nodes and the reassignment/fence counters."""

        def op() -> Op[ClusterStats]:
            nodes = yield from self._nodes(suspect_after, dead_after)
            now = yield NOW
            row = yield Q(
                "SELECT COUNT(*), MIN(ready_at) FROM executions WHERE ready_at IS NOT NULL"
                " AND ready_at <= ? AND (owner IS NULL OR lease_expires_at <= ?)",
                (now, now),
                "one",
            )
            ready, oldest = row[0], row[1]
            needs = yield Q(
                "SELECT n.execution_id, n.capability FROM execution_needs n"
                " JOIN executions e ON e.execution_id = n.execution_id"
                " WHERE e.ready_at IS NOT NULL AND e.ready_at <= ?"
                " AND (e.owner IS NULL OR e.lease_expires_at <= ?)"
                " ORDER BY n.execution_id, n.capability",
                (now, now),
                "all",
            )
            reassignments = yield from self._read_counter("reassignments")
            fenced_writes = yield from self._read_counter("fenced_writes")
            return ClusterStats(
                ready=int(ready),
                oldest_ready_age=0.0 if oldest is None else max(0.0, (now - oldest) / 1e6),
                waiting_for=waiting_for(nodes, needs),
                nodes=nodes,
                reassignments=reassignments,
                fenced_writes=fenced_writes,
            )

        return await self._read_op(op, snapshot=True)


def encode_versions(versions: dict[str, str] | None) -> str:
    """A node's component versions as stored (JSON object)."""
    return json.dumps(dict(sorted((versions or {}).items())))


def decode_versions(text: Any) -> dict[str, str]:
    """The inverse of :func:`encode_versions` (damaged text reads as empty)."""
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

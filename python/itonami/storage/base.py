"""The storage interface every backend implements, and the records it stores.

A store keeps, per execution, an append-only list of encoded events (versions
1..n, each with the store-wide transaction id ``tx`` and the Merkle node hash
the core computed), the execution's summary row, its snapshots, its durable
timers, and the registered workflow definitions. It knows nothing of what the
events mean: the engine decides the status and the timers and hands them over
with each append.

Semantics shared by all backends (the conformance suite in ``tests/storage``
checks each of them):

* :meth:`Storage.append` is atomic and durable when it returns. It raises
  :class:`~itonami.errors.ConflictError` when the stored version is not the
  expected one, and then writes nothing.
* The events of one request must carry the versions ``expected_version + 1``
  onwards, in order; anything else is refused with a
  :class:`~itonami.errors.StorageError` before touching the store.
* The first append of an execution (``expected_version == 0``) must name its
  ``workflow_id``.
* In one request, ``timers_cleared`` is applied before ``timers_set``. When an
  execution reaches a terminal status, all of its timers are dropped.
* Reading an execution whose stored rows are damaged raises
  :class:`~itonami.errors.CorruptStorageError` naming the execution and the
  version; other executions still read.

Sharing a store between processes (ownership, inbox, nodes):

* **Transaction ids.** With ``AppendRequest.allocate_tx`` the store allocates
  the events' txs in the committing transaction from one store-wide counter
  (the events' own ``tx`` values are then ignored): unique and increasing in
  commit order across every process. :meth:`Storage.submit` resolves to the
  txs of the committed events; the engine hands them to
  ``VersionStore.assign_txs``. Without the flag the caller's txs are stored
  as given and the counter is raised past them.
* **Leases.** Each execution has an ``owner`` (node id or none), an
  ``epoch`` (the fencing token; it grows on every change of owner) and a
  lease expiry taken from the store's clock (PostgreSQL's
  ``clock_timestamp()``; for SQLite, one machine, this process's clock).
  :meth:`Storage.claim` takes unowned or expired executions that have work to
  do; :meth:`Storage.acquire`, :meth:`Storage.renew` and
  :meth:`Storage.release` do the rest. An append that carries a
  :class:`Fence` is checked against owner and epoch in its own transaction
  and raises :class:`~itonami.errors.FencedError` (writing nothing) when the
  lease was taken over. A lease that expired but that nobody took over still
  fences as its owner's: the epoch, not the clock, decides.
* **Ready index.** ``ready_at`` on an execution says when it next has work to
  do (``None``: nothing until a message arrives; :data:`READY_NOW`: runnable)
  and its *needs* the capabilities a node must have to run the next step.
  Appends and :meth:`Storage.release` set them; posting a message makes the
  execution ready; a terminal status clears both.
* **Inbox.** :meth:`Storage.post_message` commits a signal, cancel or event
  for an execution from any process; the owner reads the messages, records
  them as events and acknowledges them in the same append
  (``AppendRequest.ack_inbox_upto``). Event waits (``waits_set``) index which
  executions wait for which external event type.
* **Wake hints.** :meth:`Storage.wait_for_work` returns early when work may
  have arrived (PostgreSQL ``LISTEN``/``NOTIFY``, SQLite ``PRAGMA
  data_version``, an event in memory); it is a hint, callers poll as well.
  Hints go out when an execution becomes claimable by other processes (an
  unowned ready execution, a release, a message), not for an owner's own
  commits.
* **Preferred node.** ``AppendRequest.preferred`` (first append of an
  unowned execution) and ``release(preferred=…)`` name the node a balancer
  chose; :meth:`Storage.claim` gives the execution to other nodes only once
  it has been ready for ``steal_after`` seconds.
* **Nodes.** Processes register in a nodes table and heartbeat by the store's
  clock; :meth:`Storage.list_nodes` and :meth:`Storage.cluster_stats` report.

The intended call sequence of an engine that shares its store (``node`` is
the process's node id, ``caps`` its capabilities: e.g. ``wf:<definition
hash>`` for each definition it has and ``activity:<name>`` for each activity
it registered; the store treats them as opaque names):

1. **Start**: ``register_node(node, capacity=…, capabilities=caps,
   versions=…)``, then a task that calls ``heartbeat(node, inflight=…)`` and
   ``renew(node, [(id, epoch), …])`` every few seconds (well inside the
   lease) and drops every run whose id ``renew`` returns.
2. **Start an execution**: its first append carries ``allocate_tx=True``,
   ``fence=Fence(node, 0)`` and ``lease_seconds``: the store creates it owned
   by ``node`` at epoch 1. Store the definition first (``put_definition``):
   any node can then load it by hash.
3. **Commit**: every later append carries ``allocate_tx=True``,
   ``fence=Fence(node, epoch)``, ``ready_at`` (:data:`READY_NOW` while it has
   work, the due time of its next timer or retry, ``None`` when it waits for
   a message), ``needs`` (what its next step requires), ``ack_inbox_upto``
   (the last inbox seq its events record) and ``waits_set`` /
   ``waits_cleared`` (external event types it starts / stops waiting for).
   ``await submit(req)`` gives the txs; pass them to
   ``VersionStore.assign_txs(execution_id, req.expected_version + 1, txs)``.
   A :class:`~itonami.errors.FencedError` means another node owns it now:
   drop the run (and its core copy) without writing anything more.
4. **Claim**: in a loop, ``claim(node, capabilities=caps, limit=free
   capacity, lease_seconds=…)``; for each :class:`Claim`, load the execution
   from the store, read its inbox (``read_messages``) and run it with
   ``Fence(node, claim.epoch)``. Between rounds, ``await
   wait_for_work(timeout)`` with a bounded timeout that backs off while the
   queue is empty: it returns early on a hint, and the poll catches what a
   hint missed.
5. **Park**: when the run can only wait, commit its last events, then
   ``release(id, node, epoch, ready_at=<next due time or None>,
   needs=…)`` and forget the run. On shutdown, release every owned
   execution with ``ready_at=READY_NOW`` so another node takes it at once.
6. **Messages from anywhere** (the CLI included, without activities):
   ``post_message(id, "signal" | "cancel" | "event", name, payload)`` commits
   the message and makes the execution ready; its owner (or whoever claims
   it) records it as an event and acks it. ``send_event(type, payload)`` is
   ``for id in await find_event_waiters(type): post_message(id, "event",
   type, payload)``.
7. **Health**: ``cluster_stats()`` (nodes with status, load, capacity and
   capabilities; ready depth and oldest age; executions waiting for a
   capability and what they miss; reassignments and fenced writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from itonami.errors import ConflictError, CorruptStorageError, FencedError, StorageError

__all__ = [
    "MESSAGE_KINDS",
    "READY_NOW",
    "TERMINAL_STATUSES",
    "UNCHANGED",
    "AppendRequest",
    "Claim",
    "ClusterStats",
    "ExecutionFilter",
    "ExecutionRecord",
    "Fence",
    "Lease",
    "Message",
    "NodeInfo",
    "Storage",
    "StoredEvent",
    "Wakeup",
    "check_event_rows",
    "check_request",
    "conflict",
    "find_history_problems",
]

#: Execution statuses after which nothing but snapshots is appended.
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "failed", "cancelled", "timed_out", "compensated"}
)


#: ``ready_at`` value: runnable now, by the store's clock.
READY_NOW: int = 0
#: ``ready_at`` value of an append that leaves the ready index as it was.
UNCHANGED: int = -1
#: What :meth:`Storage.post_message` accepts as ``kind``.
MESSAGE_KINDS: frozenset[str] = frozenset({"signal", "cancel", "event"})


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a write claims to hold: ``owner`` node id and ``epoch``."""

    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Claim:
    """An execution this node now owns: write with ``Fence(node_id, epoch)``.

    ``reassigned`` is True when the lease was taken from another owner whose
    lease had expired. ``lease_expires_at`` is in µs of the store's clock.
    ``history``: the execution's events 1..``version``, when the claim read
    them with it (see :meth:`Storage.claim`'s ``history_upto``), else None.
    """

    execution_id: str
    epoch: int
    workflow_id: str
    workflow_version: str
    version: int
    status: str
    lease_expires_at: int
    reassigned: bool = False
    history: tuple[StoredEvent, ...] | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """The ownership columns of one execution (µs of the store's clock)."""

    execution_id: str
    owner: str | None
    epoch: int
    expires_at: int | None
    ready_at: int | None
    needs: list[str]
    preferred: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One inbox entry; ``seq`` grows store-wide in commit order."""

    execution_id: str
    seq: int
    kind: str
    name: str
    payload: bytes
    posted_at: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A registered node as the store sees it (ages in seconds)."""

    node_id: str
    capacity: int
    inflight: int
    capabilities: list[str]
    versions: dict[str, str]
    heartbeat_age: float
    status: str  # "healthy", "suspect" or "dead"


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """What :meth:`Storage.cluster_stats` reports.

    ``ready`` counts executions that have work to do now and no live lease;
    ``oldest_ready_age`` is how long (s) the oldest of them has waited.
    ``waiting_for`` maps each ready execution that no live node can run to
    the capabilities it needs that no live node has.
    """

    ready: int
    oldest_ready_age: float
    waiting_for: dict[str, list[str]]
    nodes: list[NodeInfo]
    reassignments: int
    fenced_writes: int


class StoredEvent(NamedTuple):
    """One applied event as persisted: what the core's ``Appended`` carries.

    A named tuple rather than a frozen dataclass: every event of every
    commit is built as one (twice with the memory store), and a tuple is
    built in about half the time, immutable all the same.
    """

    version: int
    tx: int
    timestamp: int
    kind: str
    hash: bytes
    encoded: bytes


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """The summary row of one execution (µs timestamps)."""

    execution_id: str
    workflow_id: str
    workflow_version: str
    status: str
    parent_id: str | None
    created_at: int
    updated_at: int
    version: int


@dataclass(slots=True)
class AppendRequest:
    """Events to append to one execution under optimistic concurrency.

    ``status`` is the execution's status after these events. ``workflow_id``,
    ``workflow_version`` and ``parent_id`` are read only on the first append
    of an execution. ``timers_set`` maps a step path to its fire time (µs);
    ``timers_cleared`` lists step paths whose timer is gone.

    For processes that share the store:

    - ``allocate_tx``: the store allocates the events' txs (their own ``tx``
      is ignored) and ``submit`` resolves to them.
    - ``fence``: the lease this write needs; a stale one raises
      :class:`~itonami.errors.FencedError` and writes nothing. On the first
      append of an execution it makes ``fence.owner`` the owner at epoch 1
      (``fence.epoch`` must be 0) with a lease of ``lease_seconds``.
    - ``ready_at``: :data:`UNCHANGED` (default), ``None`` (nothing to do until
      a message arrives), :data:`READY_NOW`, or a time in µs (a due timer).
    - ``needs``: the capabilities the next step requires (``None`` keeps them).
    - ``ack_inbox_upto``: inbox messages up to this seq are consumed (they are
      recorded by these events); they are deleted in the same transaction.
    - ``waits_set`` / ``waits_cleared``: external event types this execution
      starts / stops waiting for.
    - ``preferred``: on the first append of an unowned execution, the node a
      balancer chose for it (see :meth:`Storage.claim`).
    """

    execution_id: str
    expected_version: int
    events: list[StoredEvent]
    status: str
    workflow_id: str | None = None
    workflow_version: str | None = None
    parent_id: str | None = None
    timers_set: dict[str, int] = field(default_factory=dict)
    timers_cleared: list[str] = field(default_factory=list)
    allocate_tx: bool = False
    fence: Fence | None = None
    lease_seconds: float = 30.0
    ready_at: int | None = UNCHANGED
    needs: Sequence[str] | None = None
    ack_inbox_upto: int | None = None
    preferred: str | None = None
    waits_set: list[str] = field(default_factory=list)
    waits_cleared: list[str] = field(default_factory=list)


def check_request(req: AppendRequest) -> None:
    """Refuse a malformed request before it reaches a transaction.

    Raises :class:`StorageError` naming the execution and the first bad event.
    """
    eid = req.execution_id
    if not isinstance(eid, str) or not eid:
        raise StorageError(f"append: execution_id must be a non-empty string, got {eid!r}")
    if not isinstance(req.expected_version, int) or req.expected_version < 0:
        raise StorageError(
            f"append to {eid}: expected_version must be an int >= 0, got {req.expected_version!r}"
        )
    if not isinstance(req.status, str) or not req.status:
        raise StorageError(f"append to {eid}: status must be a non-empty string")
    if req.expected_version == 0 and not req.workflow_id:
        raise StorageError(f"append to {eid}: the first append of an execution needs workflow_id")
    want = req.expected_version
    for i, ev in enumerate(req.events):
        want += 1
        # The common case in one expression; _check_event names what is wrong.
        if (
            type(ev) is StoredEvent
            and ev.version == want
            and type(ev.tx) is int
            and ev.tx > 0
            and type(ev.timestamp) is int
            and type(ev.kind) is str
            and ev.kind
            and type(ev.hash) is bytes
            and type(ev.encoded) is bytes
        ):
            continue
        _check_event(eid, i, want, ev)
    for step, fire_at in req.timers_set.items():
        if not isinstance(step, str) or not isinstance(fire_at, int):
            raise StorageError(f"append to {eid}: timer {step!r} needs a str step and int fire_at")
    if req.fence is not None:
        check_fence(eid, req.fence)
        if req.expected_version == 0 and req.fence.epoch != 0:
            raise StorageError(
                f"append to {eid}: the first append takes the lease with epoch 0, "
                f"got {req.fence.epoch}"
            )
        check_lease_seconds(req.lease_seconds)
    if req.ready_at is not None and (type(req.ready_at) is not int or req.ready_at < UNCHANGED):
        raise StorageError(f"append to {eid}: ready_at must be None or an int >= -1")
    if req.needs is not None:
        check_needs(eid, req.needs)
    if req.ack_inbox_upto is not None and (
        type(req.ack_inbox_upto) is not int or req.ack_inbox_upto < 0
    ):
        raise StorageError(f"append to {eid}: ack_inbox_upto must be an int >= 0")
    for name in (*req.waits_set, *req.waits_cleared):
        if not isinstance(name, str) or not name:
            raise StorageError(f"append to {eid}: event wait types must be non-empty strings")


def _check_event(eid: str, i: int, want: int, ev: Any) -> None:
    """Event ``#i`` of an append to ``eid``, which should have version ``want``."""
    if not isinstance(ev, StoredEvent):
        raise StorageError(f"append to {eid}: event #{i} is not a StoredEvent")
    if ev.version != want:
        raise StorageError(
            f"append to {eid}: event #{i} has version {ev.version}, expected {want} "
            "(versions must follow expected_version without gaps)"
        )
    if not isinstance(ev.tx, int) or ev.tx <= 0:
        raise StorageError(f"append to {eid}: version {want} has invalid tx {ev.tx!r}")
    if not isinstance(ev.timestamp, int):
        raise StorageError(f"append to {eid}: version {want} has a non-integer timestamp")
    if not isinstance(ev.kind, str) or not ev.kind:
        raise StorageError(f"append to {eid}: version {want} has an empty kind")
    if not isinstance(ev.hash, bytes) or not isinstance(ev.encoded, bytes):
        raise StorageError(f"append to {eid}: version {want}: hash and encoded must be bytes")


def check_fence(execution_id: str, fence: Fence) -> None:
    """Refuse a malformed fence."""
    if not isinstance(fence, Fence) or not fence.owner or not isinstance(fence.owner, str):
        raise StorageError(f"execution {execution_id}: a fence needs a non-empty owner")
    if type(fence.epoch) is not int or fence.epoch < 0:
        raise StorageError(f"execution {execution_id}: a fence needs an int epoch >= 0")


def check_lease_seconds(lease_seconds: float) -> None:
    """Refuse a lease that is not a positive number of seconds."""
    if not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
        raise StorageError(f"a lease must last > 0 seconds, got {lease_seconds!r}")


def check_history_upto(history_upto: int) -> None:
    """Refuse a claim's history bound that is not an int >= 0."""
    if type(history_upto) is not int or history_upto < 0:
        raise StorageError(f"history_upto must be an int >= 0, got {history_upto!r}")


def check_needs(execution_id: str, needs: Iterable[str]) -> None:
    """Refuse capability names that are not non-empty strings."""
    if isinstance(needs, str):
        raise StorageError(f"execution {execution_id}: needs must be a list of names, not a str")
    for name in needs:
        if not isinstance(name, str) or not name:
            raise StorageError(f"execution {execution_id}: needs must be non-empty strings")


def check_message(execution_id: str, kind: str, name: str, payload: bytes) -> bytes:
    """Refuse a malformed inbox message; return its payload as bytes."""
    if kind not in MESSAGE_KINDS:
        raise StorageError(
            f"post_message to {execution_id}: kind must be one of "
            f"{', '.join(sorted(MESSAGE_KINDS))}, got {kind!r}"
        )
    if not isinstance(name, str) or not isinstance(payload, (bytes, bytearray)):
        raise StorageError(f"post_message to {execution_id}: name is a str, payload bytes")
    return bytes(payload)


def check_node(node_id: str, capacity: int, capabilities: Iterable[str]) -> list[str]:
    """Refuse a malformed node registration; return its capabilities as a list."""
    check_node_id(node_id)
    caps = list(capabilities)
    check_needs(node_id, caps)
    if type(capacity) is not int or capacity < 0:
        raise StorageError(f"node {node_id}: capacity must be an int >= 0")
    return caps


def check_release(execution_id: str, node_id: str, epoch: int, needs: Any) -> list[str] | None:
    """Refuse a malformed release; return ``needs`` as a list (or None)."""
    check_fence(execution_id, Fence(node_id, epoch))
    if needs is None:
        return None
    names = list(needs)
    check_needs(execution_id, names)
    return names


def check_node_id(node_id: str) -> None:
    """Refuse an empty node id."""
    if not isinstance(node_id, str) or not node_id:
        raise StorageError(f"a node id must be a non-empty string, got {node_id!r}")


def fenced(execution_id: str, fence: Fence, owner: str | None, epoch: int) -> FencedError:
    """The :class:`FencedError` every backend raises for a lost lease."""
    holder = f"owned by {owner} at epoch {epoch}" if owner else f"unowned at epoch {epoch}"
    return FencedError(
        f"execution {execution_id}: {fence.owner} writes with epoch {fence.epoch}, but the "
        f"execution is {holder}; the write was rejected",
        execution_id=execution_id,
        expected=fence.epoch,
        actual=epoch,
        owner=owner,
    )


def node_status(age: float, suspect_after: float, dead_after: float) -> str:
    """``healthy``, ``suspect`` or ``dead`` for a heartbeat ``age`` seconds old."""
    if age >= dead_after:
        return "dead"
    if age >= suspect_after:
        return "suspect"
    return "healthy"


def encode_names(names: Iterable[str]) -> str:
    """Capability lists as stored: a sorted JSON array."""
    return json.dumps(sorted(set(names)))


def decode_names(text: Any) -> list[str]:
    """The inverse of :func:`encode_names` (damaged text reads as empty)."""
    try:
        value = json.loads(text) if text else []
    except (TypeError, ValueError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def conflict(execution_id: str, expected: int, actual: int) -> ConflictError:
    """The :class:`ConflictError` every backend raises for a stale version."""
    return ConflictError(
        f"execution {execution_id}: expected version {expected}, but the stored version "
        f"is {actual}",
        execution_id=execution_id,
        expected=expected,
        actual=actual,
    )


def check_event_rows(
    execution_id: str,
    rows: Iterable[Sequence[Any]],
    from_version: int,
    head_version: int | None,
) -> list[StoredEvent]:
    """Turn raw ``(version, tx, timestamp, kind, hash, encoded)`` rows into events.

    Rows must be ordered by version and cover ``from_version + 1`` up to
    ``head_version`` (the version on the execution row, when known) without a
    gap. A wrong-typed value or a missing version raises
    :class:`CorruptStorageError` naming the execution and the version.
    """
    out: list[StoredEvent] = []
    want = from_version + 1
    for row in rows:
        version, tx, timestamp, kind, hash_, encoded = row
        if type(version) is not int:
            raise CorruptStorageError(
                f"execution {execution_id}: stored version {version!r} after version "
                f"{want - 1} is not an integer",
                execution_id=execution_id,
                version=want,
            )
        if version != want:
            raise CorruptStorageError(
                f"execution {execution_id}: version {want} is missing from the stored "
                f"history (next stored version is {version})",
                execution_id=execution_id,
                version=want,
            )
        bad = []
        if type(tx) is not int:
            bad.append(f"tx={tx!r}")
        if type(timestamp) is not int:
            bad.append(f"timestamp={timestamp!r}")
        if not isinstance(kind, str):
            bad.append(f"kind={kind!r}")
        if isinstance(hash_, (bytearray, memoryview)):
            hash_ = bytes(hash_)
        if isinstance(encoded, (bytearray, memoryview)):
            encoded = bytes(encoded)
        if not isinstance(hash_, bytes):
            bad.append(f"hash of type {type(hash_).__name__}")
        if not isinstance(encoded, bytes):
            bad.append(f"encoded of type {type(encoded).__name__}")
        if bad:
            raise CorruptStorageError(
                f"execution {execution_id}: stored event version {version} has wrong-typed "
                f"values: {', '.join(bad)}",
                execution_id=execution_id,
                version=version,
            )
        out.append(StoredEvent(version, tx, timestamp, kind, hash_, encoded))
        want += 1
    if head_version is not None and want <= head_version:
        raise CorruptStorageError(
            f"execution {execution_id}: version {want} is missing from the stored history "
            f"(the execution is at version {head_version})",
            execution_id=execution_id,
            version=want,
        )
    return out


def find_history_problems(versions: Iterable[tuple[Any, Any]], heads: dict[str, Any]) -> list[str]:
    """Consistency problems of ``(execution_id, version)`` pairs sorted by both.

    ``heads`` maps each execution id to the version on its execution row.
    Reports gaps, events without an execution row, and heads that disagree
    with the events.
    """
    problems: list[str] = []
    last: dict[str, int] = {}
    for eid, version in versions:
        if type(version) is not int:
            problems.append(f"execution {eid}: stored version {version!r} is not an integer")
            continue
        prev = last.get(eid, 0)
        if version != prev + 1:
            problems.append(
                f"execution {eid}: version {prev + 1} missing (next stored is {version})"
            )
        last[eid] = version
    for eid in sorted(set(last) - set(heads)):
        problems.append(f"execution {eid}: events stored but no execution row")
    for eid, head in sorted(heads.items()):
        stored = last.get(eid, 0)
        if head != stored:
            problems.append(
                f"execution {eid}: execution row says version {head!r}, events go to {stored}"
            )
    return problems


class Storage(ABC):
    """A durable home for executions, their events, snapshots, timers and definitions.

    Use as ``await storage.open()`` ... ``await storage.close()``, or as an
    async context manager. ``commits`` counts the write transactions the
    backend committed and ``appends`` the append requests it applied, so
    callers (and tests) can see group commit at work.
    """

    url: str
    commits: int
    appends: int
    #: Whether what it holds survives the process (False for ``memory``).
    durable: bool = True

    #: Whether :meth:`wait_for_work` hints only at work another process may
    #: claim (PostgreSQL's NOTIFY, memory); False where any commit may hint
    #: (SQLite's ``data_version``), so claimers pace themselves.
    precise_hints: bool = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.commits = 0
        self.appends = 0

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None:
        """Finish queued writes and release connections; safe to call twice."""

    @abstractmethod
    async def append(self, req: AppendRequest) -> None:
        """Append ``req.events`` atomically and durably, or raise ConflictError."""

    def submit(self, req: AppendRequest) -> asyncio.Future[list[int]]:
        """Start appending ``req`` now; the future resolves once it is durable.

        It resolves to the txs of the committed events, in version order (the
        store's own when ``req.allocate_tx``). The append goes ahead even if
        nobody awaits the future (await it through ``asyncio.shield`` when the
        waiter may be cancelled). Backends override this to queue the request
        without creating a task.
        """

        async def run() -> list[int]:
            await self.append(req)
            return [e.tx for e in req.events]

        return asyncio.ensure_future(run())

    async def commit(self, req: AppendRequest) -> list[int]:
        """Append ``req`` like :meth:`append` and return the committed events' txs."""
        return await self.submit(req)

    @abstractmethod
    async def read_events(
        self, execution_id: str, from_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """The events with version > ``from_version``, in order ([] if unknown);
        at most ``limit`` of them when it is given."""

    async def read_histories(self, heads: Mapping[str, int]) -> dict[str, list[StoredEvent]]:
        """Events 1..``heads[id]`` of each of several executions, keyed by id:
        what a claim needs to load the executions it took, in one read where
        the backend can. An execution whose stored rows do not cover its
        head is left out (reading it alone reports the damage)."""
        out: dict[str, list[StoredEvent]] = {}
        for eid, head in heads.items():
            with contextlib.suppress(CorruptStorageError):
                events = await self.read_events(eid, 0, limit=head)
                if len(events) == head:
                    out[eid] = events
        return out

    @abstractmethod
    async def save_snapshot(self, execution_id: str, version: int, data: bytes) -> None:
        """Store a snapshot of the execution at ``version`` (replaces one at that version)."""

    @abstractmethod
    async def load_snapshot(self, execution_id: str) -> tuple[int, bytes] | None:
        """The newest snapshot as ``(version, data)``, or None."""

    @abstractmethod
    async def prune_snapshots(self, execution_id: str, keep: int) -> int:
        """Delete all but the ``keep`` newest snapshots; return how many went."""

    @abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's summary row, or None."""

    async def list_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        workflow_version: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        id_contains: str | None = None,
        newest_first: bool = False,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[ExecutionRecord]:
        """Executions under the filters, oldest first (then by id), or newest first.

        ``status`` is one status or several; ``created_after`` (inclusive) and
        ``created_before`` (exclusive) bound ``created_at`` in µs;
        ``id_contains`` keeps ids containing that substring (case-sensitive,
        ``%`` and ``_`` match themselves). ``limit``/``offset`` page the result.
        """
        check_paging(limit, offset)
        f = ExecutionFilter.of(
            status, workflow_id, workflow_version, created_after, created_before, id_contains
        )
        if f.empty:
            return []
        return await self._list_executions(f, newest_first=newest_first, limit=limit, offset=offset)

    async def count_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        workflow_version: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        id_contains: str | None = None,
    ) -> dict[str, int]:
        """How many executions each status has under the filters of
        :meth:`list_executions` (statuses with none are left out)."""
        f = ExecutionFilter.of(
            status, workflow_id, workflow_version, created_after, created_before, id_contains
        )
        if f.empty:
            return {}
        return await self._count_executions(f)

    @abstractmethod
    async def _list_executions(
        self, f: ExecutionFilter, *, newest_first: bool, limit: int, offset: int
    ) -> list[ExecutionRecord]:
        """:meth:`list_executions` with its arguments checked (``f`` not empty)."""

    @abstractmethod
    async def _count_executions(self, f: ExecutionFilter) -> dict[str, int]:
        """:meth:`count_executions` with its filter checked (not empty)."""

    @abstractmethod
    async def delete_execution(self, execution_id: str) -> bool:
        """Delete a finished execution with its sub-workflow executions.

        Everything of theirs goes: events, snapshots, timers, lease columns,
        needs, inbox and event waits. Returns False for an unknown id. Raises
        :class:`~itonami.errors.StorageError` (deleting nothing) when the
        execution, one of its descendants, or its parent has not finished.
        """

    @abstractmethod
    async def prune(
        self, *, finished_before: int, workflow_id: str | None = None, limit: int = 500
    ) -> list[str]:
        """Delete one bounded batch of finished executions; return the deleted ids.

        Candidates are top-level executions (no parent, or a parent no longer
        stored) with a terminal status whose last update is before
        ``finished_before`` (µs) and, with ``workflow_id``, of that workflow;
        each goes together with its descendants (sub-workflows), oldest first,
        and one whose tree holds an unfinished execution stays. The batch stops
        before it would exceed ``limit`` ids (one tree always fits). Call again
        until it returns ``[]``.
        """

    @abstractmethod
    async def unfinished_executions(self) -> list[str]:
        """Ids of executions whose status is not terminal, oldest first."""

    @abstractmethod
    async def due_timers(self, now: int) -> list[tuple[str, str, int]]:
        """``(execution_id, step, fire_at)`` with ``fire_at <= now``, soonest first."""

    @abstractmethod
    async def all_timers(self) -> list[tuple[str, str, int]]:
        """Every stored timer, soonest first."""

    @abstractmethod
    async def put_definition(
        self, workflow_id: str, version: str, content_hash: str, document: bytes
    ) -> None:
        """Register a definition; registering the same content again is a no-op.

        The same ``(workflow_id, version)`` with a different ``content_hash``
        raises :class:`StorageError`.
        """

    @abstractmethod
    async def get_definition(self, workflow_id: str, version: str | None = None) -> bytes | None:
        """A registered document; ``version=None`` means the newest registered."""

    @abstractmethod
    async def get_definition_by_hash(self, content_hash: str) -> bytes | None:
        """The registered document with this content hash, or None."""

    @abstractmethod
    async def list_definitions(self) -> list[tuple[str, str, str]]:
        """Every registered definition as ``(workflow_id, version, content_hash)``,
        in registration order."""

    @abstractmethod
    async def max_tx(self) -> int:
        """The largest stored tx (0 for an empty store)."""

    @abstractmethod
    async def integrity_check(self) -> list[str]:
        """Problems found in the stored data; an empty list means consistent."""

    # ------------------------------------------------------------------ sharing

    @abstractmethod
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
        """Take up to ``limit`` executions that have work to do now.

        Eligible: ``ready_at <= now``, unowned or with an expired lease, and
        whose needs are a subset of ``capabilities``; an execution *preferred*
        for another node (a balancer's choice) only once it has been ready
        for ``steal_after`` seconds. Each claimed execution gets ``node_id``
        as owner, its epoch + 1, a lease of ``lease_seconds`` and no
        preference; taking an expired lease counts as a reassignment.
        Concurrent claimers never get the same execution.

        ``history_upto``: a backend that can read the events of the claimed
        executions of at most that many versions in the same round trip
        puts them in :attr:`Claim.history` (PostgreSQL does); others leave
        it None, and the caller reads them itself.
        """

    @abstractmethod
    async def acquire(
        self, execution_id: str, node_id: str, *, lease_seconds: float = 30.0
    ) -> Claim | None:
        """Take the lease of one execution whatever its ready state.

        Succeeds when it is unowned, its lease expired, or ``node_id`` already
        holds it (then the epoch stays and the lease is renewed); otherwise,
        or when the execution is unknown or terminal, returns None.
        """

    @abstractmethod
    async def renew(
        self, node_id: str, leases: Iterable[tuple[str, int]], *, lease_seconds: float = 30.0
    ) -> list[str]:
        """Extend the leases ``(execution_id, epoch)`` held by ``node_id``.

        Returns the ids whose lease is lost (another owner, a newer epoch, or
        the execution is gone or terminal): drop those runs.
        """

    @abstractmethod
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
        """Give the lease up (on park or shutdown), setting what it waits for next
        and the node a balancer prefers for it (``None``: any).

        The epoch stays, so the next owner's claim bumps it. Returns False
        (and changes nothing, counting a fenced write) when ``node_id`` at
        ``epoch`` no longer holds it.
        """

    @abstractmethod
    async def get_lease(self, execution_id: str) -> Lease | None:
        """Owner, epoch, expiry, ready_at, needs and preference of one execution
        (None if unknown)."""

    @abstractmethod
    async def execution_statuses(self, execution_ids: Iterable[str]) -> dict[str, str]:
        """The status of each of these executions that exists (one query for
        many: what waiting for executions run elsewhere polls)."""

    @abstractmethod
    async def post_message(
        self, execution_id: str, kind: str, name: str, payload: bytes = b""
    ) -> int:
        """Commit a message to the execution's inbox and make it ready; return its seq.

        ``kind`` is one of :data:`MESSAGE_KINDS`. Raises
        :class:`~itonami.errors.StorageError` for an unknown or finished
        execution. Wakes :meth:`wait_for_work` in every process.
        """

    @abstractmethod
    async def read_messages(self, execution_id: str, after_seq: int = 0) -> list[Message]:
        """Unacknowledged messages with ``seq > after_seq``, oldest first."""

    @abstractmethod
    async def ack_messages(self, execution_id: str, upto_seq: int, fence: Fence) -> None:
        """Delete messages up to ``upto_seq`` as consumed, under ``fence``.

        Prefer ``AppendRequest.ack_inbox_upto``, which does the same in the
        append that records them.
        """

    @abstractmethod
    async def pending_messages(self, node_id: str) -> list[str]:
        """Ids of the executions ``node_id`` owns that have unacknowledged
        inbox messages (what an owner acts on after a wake hint)."""

    @abstractmethod
    async def find_event_waiters(self, event_type: str) -> list[str]:
        """Ids of the executions waiting for an external event of this type."""

    @abstractmethod
    async def wait_for_work(self, timeout: float) -> bool:
        """Wait until work may have arrived (True) or ``timeout`` seconds passed (False).

        A hint only: it may return True with nothing to do, and callers also
        poll, since a hint can be missed.
        """

    @abstractmethod
    async def register_node(
        self,
        node_id: str,
        *,
        capacity: int,
        capabilities: Iterable[str],
        versions: dict[str, str] | None = None,
    ) -> None:
        """Register (or re-register) a node; its heartbeat starts now."""

    @abstractmethod
    async def heartbeat(self, node_id: str, *, inflight: int) -> bool:
        """Record a heartbeat by the store's clock; False if the node is not registered."""

    @abstractmethod
    async def deregister_node(self, node_id: str) -> None:
        """Remove a node from the nodes table."""

    @abstractmethod
    async def list_nodes(
        self, *, suspect_after: float = 15.0, dead_after: float = 60.0
    ) -> list[NodeInfo]:
        """Registered nodes with heartbeat age and status, by node id."""

    @abstractmethod
    async def cluster_stats(
        self, *, suspect_after: float = 15.0, dead_after: float = 60.0
    ) -> ClusterStats:
        """Ready queue depth and age, capability waits, nodes and counters."""


def waiting_for(
    nodes: Sequence[NodeInfo], needs: Iterable[tuple[str, str]]
) -> dict[str, list[str]]:
    """Per ready execution, the needed capabilities that no live node has.

    A node counts as live unless it is ``dead``; an execution is listed only
    when no single live node has all of its needs.
    """
    live = [set(n.capabilities) for n in nodes if n.status != "dead"]
    by_exec: dict[str, set[str]] = {}
    for eid, cap in needs:
        by_exec.setdefault(eid, set()).add(cap)
    out: dict[str, list[str]] = {}
    for eid, want in by_exec.items():
        if any(want <= have for have in live):
            continue
        everyone: set[str] = set().union(*live) if live else set()
        missing = sorted(want - everyone) or sorted(want)
        out[eid] = missing
    return out


class Wakeup:
    """A broadcast wake-up for :meth:`Storage.wait_for_work` (one event loop).

    :meth:`notify` wakes every current waiter and remembers that it happened,
    so a waiter arriving later returns at once (hints are never lost between
    two calls of one waiter, only merged).
    """

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._pending = False

    def notify(self) -> None:
        """Wake the waiters (call on the loop's thread)."""
        self._pending = True
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> bool:
        """True when notified (now or since the last wait), False after ``timeout``."""
        if self._pending:
            self._pending = False
            return True
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        self._pending = False
        return True


def status_filter(status: str | Sequence[str] | None) -> list[str] | None:
    """Normalise the ``status`` argument of ``list_executions``."""
    if status is None:
        return None
    if isinstance(status, str):
        return [status]
    return list(status)


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """The filters of :meth:`Storage.list_executions` and
    :meth:`Storage.count_executions`, checked once for every backend."""

    statuses: list[str] | None = None
    workflow_id: str | None = None
    workflow_version: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    id_contains: str | None = None

    @classmethod
    def of(
        cls,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        workflow_version: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        id_contains: str | None = None,
    ) -> ExecutionFilter:
        """The checked filter; wrong-typed arguments raise :class:`StorageError`."""
        statuses = status_filter(status)
        for name, value in (
            ("workflow_id", workflow_id),
            ("workflow_version", workflow_version),
            ("id_contains", id_contains),
        ):
            if value is not None and not isinstance(value, str):
                raise StorageError(f"list_executions: {name} must be a str, got {value!r}")
        for name, moment in (("created_after", created_after), ("created_before", created_before)):
            if moment is not None and type(moment) is not int:
                raise StorageError(f"list_executions: {name} must be an int (µs), got {moment!r}")
        if statuses is not None and not all(isinstance(s, str) for s in statuses):
            raise StorageError(f"list_executions: status must be str values, got {statuses!r}")
        return cls(
            statuses, workflow_id, workflow_version, created_after, created_before, id_contains
        )

    @property
    def empty(self) -> bool:
        """Whether nothing can match (an empty status list)."""
        return self.statuses is not None and not self.statuses

    def matches(self, rec: ExecutionRecord) -> bool:
        """Whether ``rec`` passes every filter (what the SQL ``WHERE`` says)."""
        return (
            (self.statuses is None or rec.status in self.statuses)
            and (self.workflow_id is None or rec.workflow_id == self.workflow_id)
            and (self.workflow_version is None or rec.workflow_version == self.workflow_version)
            and (self.created_after is None or rec.created_at >= self.created_after)
            and (self.created_before is None or rec.created_at < self.created_before)
            and (self.id_contains is None or self.id_contains in rec.execution_id)
        )


def check_prune(finished_before: int, workflow_id: str | None, limit: int) -> None:
    """Refuse malformed ``prune`` arguments."""
    if type(finished_before) is not int:
        raise StorageError(f"prune: finished_before must be an int (µs), got {finished_before!r}")
    if workflow_id is not None and not isinstance(workflow_id, str):
        raise StorageError(f"prune: workflow_id must be a str, got {workflow_id!r}")
    if type(limit) is not int or limit < 1:
        raise StorageError(f"prune: limit must be an int >= 1, got {limit!r}")


def check_deletable(execution_id: str, tree: Sequence[tuple[str, str]], parent: str | None) -> None:
    """Refuse to delete ``execution_id`` unless its tree (``(id, status)``,
    itself included) has finished and its parent's status (``None``: no
    parent stored) is terminal."""
    running = [eid for eid, status in tree if status not in TERMINAL_STATUSES]
    if running:
        what = "it has not" if execution_id in running else f"{', '.join(sorted(running))} has not"
        raise StorageError(
            f"delete_execution {execution_id}: {what} finished (only finished executions "
            "and their finished sub-workflows are deleted)"
        )
    if parent is not None and parent not in TERMINAL_STATUSES:
        raise StorageError(
            f"delete_execution {execution_id}: its parent execution is still {parent}"
        )


def pick_trees(
    roots: Sequence[str], trees: dict[str, list[tuple[str, str]]], limit: int
) -> list[str]:
    """The ids ``prune`` deletes: whole finished trees, in ``roots`` order,
    while they fit in ``limit`` ids (the first always does)."""
    out: list[str] = []
    for root in roots:
        tree = trees.get(root, [])
        if not tree or any(status not in TERMINAL_STATUSES for _, status in tree):
            continue
        if out and len(out) + len(tree) > limit:
            break
        out.extend(eid for eid, _ in tree)
    return out


def like_contains(needle: str, escape: str = "!") -> str:
    """A ``LIKE`` pattern matching values that contain ``needle`` literally
    (``%``, ``_`` and the escape character itself are escaped)."""
    for char in (escape, "%", "_"):
        needle = needle.replace(char, escape + char)
    return f"%{needle}%"


def check_paging(limit: int, offset: int) -> None:
    """Refuse negative paging arguments."""
    if limit < 0 or offset < 0:
        raise StorageError(f"list_executions: limit and offset must be >= 0 ({limit}, {offset})")


def check_definition(workflow_id: str, version: str, content_hash: str, document: bytes) -> None:
    """Refuse a malformed definition registration."""
    if not workflow_id or not isinstance(workflow_id, str):
        raise StorageError("put_definition: workflow_id must be a non-empty string")
    if not isinstance(version, str):
        raise StorageError(f"put_definition {workflow_id}: version must be a string")
    if not content_hash or not isinstance(content_hash, str):
        raise StorageError(f"put_definition {workflow_id}: content_hash must be a non-empty string")
    if not isinstance(document, bytes):
        raise StorageError(f"put_definition {workflow_id}: document must be bytes")


def definition_mismatch(workflow_id: str, version: str, old: str, new: str) -> StorageError:
    """The error for re-registering a version with different content."""
    return StorageError(
        f"workflow {workflow_id} version {version} is already registered with content hash "
        f"{old}; refusing different content {new} (bump the version)"
    )


def redact_url(url: str) -> str:
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

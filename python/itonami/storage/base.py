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
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from itonami.errors import ConflictError, CorruptStorageError, StorageError

__all__ = [
    "TERMINAL_STATUSES",
    "AppendRequest",
    "ExecutionRecord",
    "Storage",
    "StoredEvent",
    "check_event_rows",
    "check_request",
    "conflict",
    "find_history_problems",
]

#: Execution statuses after which nothing but snapshots is appended.
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "failed", "cancelled", "timed_out", "compensated"}
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One applied event as persisted: what the core's ``Appended`` carries."""

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
    for i, ev in enumerate(req.events):
        want = req.expected_version + 1 + i
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
    for step, fire_at in req.timers_set.items():
        if not isinstance(step, str) or not isinstance(fire_at, int):
            raise StorageError(f"append to {eid}: timer {step!r} needs a str step and int fire_at")


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

    def submit(self, req: AppendRequest) -> asyncio.Future[None]:
        """Start appending ``req`` now; the future resolves once it is durable.

        The append goes ahead even if nobody awaits the future (await it
        through ``asyncio.shield`` when the waiter may be cancelled). Backends
        override this to queue the request without creating a task.
        """
        return asyncio.ensure_future(self.append(req))

    @abstractmethod
    async def read_events(self, execution_id: str, from_version: int = 0) -> list[StoredEvent]:
        """The events with version > ``from_version``, in order ([] if unknown)."""

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

    @abstractmethod
    async def list_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[ExecutionRecord]:
        """Executions filtered by status and workflow, oldest first (then by id)."""

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
    async def max_tx(self) -> int:
        """The largest stored tx (0 for an empty store)."""

    @abstractmethod
    async def integrity_check(self) -> list[str]:
        """Problems found in the stored data; an empty list means consistent."""


def status_filter(status: str | Sequence[str] | None) -> list[str] | None:
    """Normalise the ``status`` argument of ``list_executions``."""
    if status is None:
        return None
    if isinstance(status, str):
        return [status]
    return list(status)


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

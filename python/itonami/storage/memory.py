"""An in-process store made of dicts: same semantics as the others, no durability."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

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

__all__ = ["MemoryStorage"]


class MemoryStorage(Storage):
    """Everything in dicts; lost when the process ends. Each append is one "commit"."""

    durable = False

    def __init__(self, url: str = "memory") -> None:
        super().__init__(url)
        self._events: dict[str, list[StoredEvent]] = {}
        self._executions: dict[str, ExecutionRecord] = {}
        self._snapshots: dict[str, dict[int, bytes]] = {}
        self._timers: dict[str, dict[str, int]] = {}  # execution -> step -> fire_at
        # (workflow_id, version) -> (content_hash, document); dict order = registration order
        self._definitions: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._txs: set[int] = set()
        self._max_tx = 0
        self._open = False

    async def open(self) -> None:
        """Mark the store open (there is nothing to connect to)."""
        self._open = True

    async def close(self) -> None:
        """Mark the store closed; the data stays for a later ``open``."""
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"storage {self.url} is not open")

    async def append(self, req: AppendRequest) -> None:
        """Apply the request, or raise ConflictError and change nothing."""
        self._apply(req)

    def submit(self, req: AppendRequest) -> asyncio.Future[None]:
        """Apply the request at once; the future is already resolved."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._apply(req)
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        return fut

    def _apply(self, req: AppendRequest) -> None:
        self._check_open()
        check_request(req)
        eid = req.execution_id
        rec = self._executions.get(eid)
        actual = rec.version if rec else 0
        if actual != req.expected_version:
            raise conflict(eid, req.expected_version, actual)
        for ev in req.events:
            if ev.tx in self._txs:
                raise StorageError(f"append to {eid}: tx {ev.tx} is already used")
        last_ts = req.events[-1].timestamp if req.events else None
        if rec is None:
            assert req.workflow_id is not None  # check_request guarantees it
            first_ts = req.events[0].timestamp if req.events else 0
            rec = ExecutionRecord(
                execution_id=eid,
                workflow_id=req.workflow_id,
                workflow_version=req.workflow_version or "",
                status=req.status,
                parent_id=req.parent_id,
                created_at=first_ts,
                updated_at=first_ts if last_ts is None else last_ts,
                version=0,
            )
        self._executions[eid] = ExecutionRecord(
            rec.execution_id,
            rec.workflow_id,
            rec.workflow_version,
            req.status,
            rec.parent_id,
            rec.created_at,
            rec.updated_at if last_ts is None else last_ts,
            req.expected_version + len(req.events),
        )
        self._events.setdefault(eid, []).extend(req.events)
        for ev in req.events:
            self._txs.add(ev.tx)
            self._max_tx = max(self._max_tx, ev.tx)
        if req.status in TERMINAL_STATUSES:
            self._timers.pop(eid, None)
        elif req.timers_cleared or req.timers_set:
            timers = self._timers.setdefault(eid, {})
            for step in req.timers_cleared:
                timers.pop(step, None)
            timers.update(req.timers_set)
        self.commits += 1
        self.appends += 1

    async def read_events(self, execution_id: str, from_version: int = 0) -> list[StoredEvent]:
        """Events after ``from_version``, in order."""
        self._check_open()
        events = self._events.get(execution_id, [])
        rows = [
            (e.version, e.tx, e.timestamp, e.kind, e.hash, e.encoded) for e in events[from_version:]
        ]
        rec = self._executions.get(execution_id)
        return check_event_rows(execution_id, rows, from_version, rec.version if rec else None)

    async def save_snapshot(self, execution_id: str, version: int, data: bytes) -> None:
        """Keep ``data`` as the snapshot at ``version``."""
        self._check_open()
        self._snapshots.setdefault(execution_id, {})[version] = bytes(data)

    async def load_snapshot(self, execution_id: str) -> tuple[int, bytes] | None:
        """The newest snapshot, or None."""
        self._check_open()
        snaps = self._snapshots.get(execution_id)
        if not snaps:
            return None
        version = max(snaps)
        return version, snaps[version]

    async def prune_snapshots(self, execution_id: str, keep: int) -> int:
        """Drop all but the ``keep`` newest snapshots."""
        self._check_open()
        if keep < 0:
            raise StorageError(f"prune_snapshots {execution_id}: keep must be >= 0, got {keep}")
        snaps = self._snapshots.get(execution_id, {})
        doomed = sorted(snaps, reverse=True)[keep:]
        for version in doomed:
            del snaps[version]
        return len(doomed)

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's row, or None."""
        self._check_open()
        return self._executions.get(execution_id)

    async def list_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[ExecutionRecord]:
        """Filtered executions, ordered by creation time then id."""
        self._check_open()
        check_paging(limit, offset)
        statuses = status_filter(status)
        found = [
            r
            for r in self._executions.values()
            if (statuses is None or r.status in statuses)
            and (workflow_id is None or r.workflow_id == workflow_id)
        ]
        found.sort(key=lambda r: (r.created_at, r.execution_id))
        return found[offset : offset + limit]

    async def unfinished_executions(self) -> list[str]:
        """Ids of the executions not in a terminal status."""
        self._check_open()
        recs = [r for r in self._executions.values() if r.status not in TERMINAL_STATUSES]
        recs.sort(key=lambda r: (r.created_at, r.execution_id))
        return [r.execution_id for r in recs]

    async def due_timers(self, now: int) -> list[tuple[str, str, int]]:
        """Timers with ``fire_at <= now``."""
        return [t for t in await self.all_timers() if t[2] <= now]

    async def all_timers(self) -> list[tuple[str, str, int]]:
        """Every timer, soonest first."""
        self._check_open()
        timers = [
            (eid, step, at) for eid, steps in self._timers.items() for step, at in steps.items()
        ]
        timers.sort(key=lambda t: (t[2], t[0], t[1]))
        return timers

    async def put_definition(
        self, workflow_id: str, version: str, content_hash: str, document: bytes
    ) -> None:
        """Register a definition (idempotent)."""
        self._check_open()
        check_definition(workflow_id, version, content_hash, document)
        old = self._definitions.get((workflow_id, version))
        if old is not None:
            if old[0] != content_hash:
                raise definition_mismatch(workflow_id, version, old[0], content_hash)
            return
        self._definitions[(workflow_id, version)] = (content_hash, bytes(document))

    async def get_definition(self, workflow_id: str, version: str | None = None) -> bytes | None:
        """A document by workflow and version (None = newest registered)."""
        self._check_open()
        if version is not None:
            found = self._definitions.get((workflow_id, version))
            return found[1] if found else None
        newest = None
        for (wid, _), (_, doc) in self._definitions.items():
            if wid == workflow_id:
                newest = doc
        return newest

    async def get_definition_by_hash(self, content_hash: str) -> bytes | None:
        """A document by content hash."""
        self._check_open()
        for h, doc in self._definitions.values():
            if h == content_hash:
                return doc
        return None

    async def max_tx(self) -> int:
        """The largest tx appended."""
        self._check_open()
        return self._max_tx

    async def integrity_check(self) -> list[str]:
        """Own consistency checks over the dicts."""
        self._check_open()
        pairs = sorted(
            ((eid, e.version) for eid, evs in self._events.items() for e in evs),
        )
        heads = {eid: r.version for eid, r in self._executions.items()}
        return find_history_problems(pairs, heads)

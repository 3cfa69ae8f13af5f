"""An in-process store made of dicts: same semantics as the others, no durability.

Leases, the inbox and the nodes table behave as in the SQL backends (the
conformance suite checks it), with this process's clock as the store's
clock and an :class:`asyncio.Event` as the wake hint.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from itonami.errors import StorageError
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
    Wakeup,
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
    check_request,
    conflict,
    definition_mismatch,
    fenced,
    find_history_problems,
    node_status,
    pick_trees,
    waiting_for,
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _lease_us(lease_seconds: float) -> int:
    return max(1, math.ceil(lease_seconds * 1_000_000))


@dataclass(slots=True)
class _Own:
    owner: str | None = None
    epoch: int = 0
    expires_at: int | None = None
    ready_at: int | None = None
    needs: set[str] = field(default_factory=set)
    acked: int = 0
    preferred: str | None = None


@dataclass(slots=True)
class _Node:
    capacity: int
    inflight: int
    capabilities: list[str]
    versions: dict[str, str]
    heartbeat_at: int


__all__ = ["MemoryStorage"]


class MemoryStorage(Storage):
    """Everything in dicts; lost when the process ends. Each append is one "commit".

    ``clock`` returns the store's time in µs (default: the wall clock); tests
    pass a fake one to step through lease expiry.
    """

    precise_hints = True

    durable = False

    def __init__(self, url: str = "memory", *, clock: Callable[[], int] | None = None) -> None:
        super().__init__(url)
        self.clock: Callable[[], int] = clock or _now_us
        # (version, tx, timestamp, kind, hash, encoded) rows, a StoredEvent's fields
        self._events: dict[str, list[tuple[int, int, int, str, bytes, bytes]]] = {}
        self._executions: dict[str, ExecutionRecord] = {}
        self._snapshots: dict[str, dict[int, bytes]] = {}
        self._timers: dict[str, dict[str, int]] = {}  # execution -> step -> fire_at
        # (workflow_id, version) -> (content_hash, document); dict order = registration order
        self._definitions: dict[tuple[str, str], tuple[str, bytes]] = {}
        self._txs: set[int] = set()
        self._max_tx = 0
        self._tx_counter = 0
        self._own: dict[str, _Own] = {}
        self._inbox: dict[str, list[Message]] = {}
        self._inbox_seq = 0
        self._waits: dict[str, set[str]] = {}  # event type -> executions
        self._nodes: dict[str, _Node] = {}
        self._reassignments = 0
        self._fenced_writes = 0
        self._wakeup = Wakeup()
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

    def submit(self, req: AppendRequest) -> asyncio.Future[list[int]]:
        """Apply the request at once; the future is already resolved to the txs."""
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        try:
            txs = self._apply(req)
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(txs)
        return fut

    def _apply(self, req: AppendRequest) -> list[int]:
        self._check_open()
        check_request(req)
        eid = req.execution_id
        rec = self._executions.get(eid)
        own = self._own.get(eid)
        fence = req.fence
        if (
            rec is not None
            and own is not None
            and fence is not None
            and (own.owner != fence.owner or own.epoch != fence.epoch)
        ):
            self._fenced_writes += 1
            raise fenced(eid, fence, own.owner, own.epoch)
        actual = rec.version if rec else 0
        if actual != req.expected_version:
            raise conflict(eid, req.expected_version, actual)
        events = req.events
        if req.allocate_tx:
            first = self._tx_counter + 1
            txs = list(range(first, first + len(events)))
        else:
            txs = [ev.tx for ev in events]
            for tx in txs:
                if tx in self._txs:
                    raise StorageError(f"append to {eid}: tx {tx} is already used")
        # Kept as plain tuples: the garbage collector stops tracking a tuple of
        # atoms, not a named tuple's, and every event ever appended stays here.
        rows = [(e[0], tx, e[2], e[3], e[4], e[5]) for e, tx in zip(events, txs, strict=True)]
        top = max(txs) if txs else 0
        if top > self._tx_counter:
            self._tx_counter = top
        if rec is None:
            assert req.workflow_id is not None  # check_request guarantees it
            first_ts = events[0].timestamp if events else 0
            self._executions[eid] = ExecutionRecord(
                eid,
                req.workflow_id,
                req.workflow_version or "",
                req.status,
                req.parent_id,
                first_ts,
                events[-1].timestamp if events else first_ts,
                len(events),
            )
            self._events[eid] = rows
        else:
            self._executions[eid] = ExecutionRecord(
                rec.execution_id,
                rec.workflow_id,
                rec.workflow_version,
                req.status,
                rec.parent_id,
                rec.created_at,
                events[-1].timestamp if events else rec.updated_at,
                req.expected_version + len(events),
            )
            self._events.setdefault(eid, []).extend(rows)
        self._txs.update(txs)
        if top > self._max_tx:
            self._max_tx = top
        if own is None:
            own = self._own[eid] = _Own()
            if fence is not None:
                own.owner, own.epoch = fence.owner, 1
                own.expires_at = self.clock() + _lease_us(req.lease_seconds)
            else:
                own.preferred = req.preferred
        if req.ack_inbox_upto is not None:
            own.acked = max(own.acked, req.ack_inbox_upto)
            self._drop_messages(eid, req.ack_inbox_upto)
        if req.status in TERMINAL_STATUSES:
            self._timers.pop(eid, None)
            own.owner = own.expires_at = own.ready_at = None
            own.needs = set()
            self._inbox.pop(eid, None)
            for waiting in self._waits.values():
                waiting.discard(eid)
        else:
            if req.timers_cleared or req.timers_set:
                timers = self._timers.setdefault(eid, {})
                for step in req.timers_cleared:
                    timers.pop(step, None)
                timers.update(req.timers_set)
            if req.ready_at != UNCHANGED:
                own.ready_at = self.clock() if req.ready_at == READY_NOW else req.ready_at
                if own.ready_at is not None and fence is None:
                    self._wakeup.notify()  # claimable by others now
            if req.needs is not None:
                own.needs = set(req.needs)
            for name in req.waits_cleared:
                self._waits.get(name, set()).discard(eid)
            for name in req.waits_set:
                self._waits.setdefault(name, set()).add(eid)
        self.commits += 1
        self.appends += 1
        return txs

    def _drop_messages(self, execution_id: str, upto: int) -> None:
        kept = [m for m in self._inbox.get(execution_id, []) if m.seq > upto]
        if kept:
            self._inbox[execution_id] = kept
        else:
            self._inbox.pop(execution_id, None)

    async def read_events(
        self, execution_id: str, from_version: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events after ``from_version``, in order (at most ``limit``)."""
        self._check_open()
        events = self._events.get(execution_id, [])
        end = None if limit is None else from_version + max(limit, 0)
        rows = events[from_version:end]
        rec = self._executions.get(execution_id)
        head = rec.version if rec else None
        if head is not None and end is not None:
            head = min(head, end)
        return check_event_rows(execution_id, rows, from_version, head)

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

    async def _list_executions(
        self, f: ExecutionFilter, *, newest_first: bool, limit: int, offset: int
    ) -> list[ExecutionRecord]:
        self._check_open()
        found = [r for r in self._executions.values() if f.matches(r)]
        found.sort(key=lambda r: (r.created_at, r.execution_id), reverse=newest_first)
        return found[offset : offset + limit]

    async def _count_executions(self, f: ExecutionFilter) -> dict[str, int]:
        self._check_open()
        counts: dict[str, int] = {}
        for r in self._executions.values():
            if f.matches(r):
                counts[r.status] = counts.get(r.status, 0) + 1
        return dict(sorted(counts.items()))

    def _tree(self, root: str) -> list[tuple[str, str]]:
        children: dict[str, list[str]] = {}
        for rec in self._executions.values():
            if rec.parent_id is not None:
                children.setdefault(rec.parent_id, []).append(rec.execution_id)
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        todo = [root]
        while todo:
            eid = todo.pop()
            if eid in seen or eid not in self._executions:
                continue
            seen.add(eid)
            out.append((eid, self._executions[eid].status))
            todo.extend(children.get(eid, ()))
        return sorted(out)

    def _delete(self, ids: Iterable[str]) -> None:
        for eid in ids:
            for table in (self._events, self._snapshots, self._timers, self._own, self._inbox):
                table.pop(eid, None)
            for waiting in self._waits.values():
                waiting.discard(eid)
            del self._executions[eid]

    async def delete_execution(self, execution_id: str) -> bool:
        """Delete a finished execution and its sub-workflows; False if unknown."""
        self._check_open()
        rec = self._executions.get(execution_id)
        if rec is None:
            return False
        parent = self._executions.get(rec.parent_id) if rec.parent_id is not None else None
        tree = self._tree(execution_id)
        check_deletable(execution_id, tree, None if parent is None else parent.status)
        self._delete(eid for eid, _ in tree)
        return True

    async def prune(
        self, *, finished_before: int, workflow_id: str | None = None, limit: int = 500
    ) -> list[str]:
        """Delete one batch of old finished execution trees; the deleted ids."""
        self._check_open()
        check_prune(finished_before, workflow_id, limit)
        roots = sorted(
            (
                r
                for r in self._executions.values()
                if r.status in TERMINAL_STATUSES
                and r.updated_at < finished_before
                and (workflow_id is None or r.workflow_id == workflow_id)
                and (r.parent_id is None or r.parent_id not in self._executions)
            ),
            key=lambda r: (r.updated_at, r.execution_id),
        )[:limit]
        trees = {r.execution_id: self._tree(r.execution_id) for r in roots}
        ids = pick_trees([r.execution_id for r in roots], trees, limit)
        self._delete(ids)
        return ids

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

    async def list_definitions(self) -> list[tuple[str, str, str]]:
        """Every registered definition, in registration order."""
        self._check_open()
        return [(wid, ver, h) for (wid, ver), (h, _) in self._definitions.items()]

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
            ((eid, e[0]) for eid, evs in self._events.items() for e in evs),
        )
        heads = {eid: r.version for eid, r in self._executions.items()}
        return find_history_problems(pairs, heads)

    # ------------------------------------------------------------------ sharing

    def _claim_of(self, eid: str, own: _Own, reassigned: bool) -> Claim:
        rec = self._executions[eid]
        assert own.expires_at is not None
        return Claim(
            eid,
            own.epoch,
            rec.workflow_id,
            rec.workflow_version,
            rec.version,
            rec.status,
            own.expires_at,
            reassigned,
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
        self._check_open()
        check_node_id(node_id)
        check_lease_seconds(lease_seconds)
        check_history_upto(history_upto)  # the events are a read away: none here
        caps = set(capabilities)
        check_needs(node_id, caps)
        now = self.clock()
        stealable = now - max(0, math.ceil(steal_after * 1_000_000))
        eligible = sorted(
            (own.ready_at, eid)
            for eid, own in self._own.items()
            if own.ready_at is not None
            and own.ready_at <= now
            and (own.owner is None or (own.expires_at is not None and own.expires_at <= now))
            and (own.preferred in (None, node_id) or own.ready_at <= stealable)
            and own.needs <= caps
        )
        out = []
        for _, eid in eligible[: max(0, limit)]:
            own = self._own[eid]
            reassigned = own.owner is not None
            own.owner, own.epoch, own.preferred = node_id, own.epoch + 1, None
            own.expires_at = now + _lease_us(lease_seconds)
            self._reassignments += reassigned
            out.append(self._claim_of(eid, own, reassigned))
        return out

    async def acquire(
        self, execution_id: str, node_id: str, *, lease_seconds: float = 30.0
    ) -> Claim | None:
        """Take one execution's lease if it is free, expired or already this node's."""
        self._check_open()
        check_node_id(node_id)
        check_lease_seconds(lease_seconds)
        rec = self._executions.get(execution_id)
        own = self._own.get(execution_id)
        if rec is None or own is None or rec.status in TERMINAL_STATUSES:
            return None
        now = self.clock()
        live = own.owner is not None and own.expires_at is not None and own.expires_at > now
        if live and own.owner != node_id:
            return None
        reassigned = own.owner is not None and own.owner != node_id
        if own.owner != node_id:
            own.epoch += 1
        own.owner = node_id
        own.expires_at = now + _lease_us(lease_seconds)
        self._reassignments += reassigned
        return self._claim_of(execution_id, own, reassigned)

    async def renew(
        self, node_id: str, leases: Iterable[tuple[str, int]], *, lease_seconds: float = 30.0
    ) -> list[str]:
        """Extend the given leases; return the ids whose lease is lost."""
        self._check_open()
        check_node_id(node_id)
        check_lease_seconds(lease_seconds)
        expires = self.clock() + _lease_us(lease_seconds)
        lost = []
        for eid, epoch in sorted(dict(leases).items()):
            own = self._own.get(eid)
            if own is None or own.owner != node_id or own.epoch != epoch:
                lost.append(eid)
            else:
                own.expires_at = expires
        return lost

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
        self._check_open()
        names = check_release(execution_id, node_id, epoch, needs)
        if preferred is not None:
            check_node_id(preferred)
        own = self._own.get(execution_id)
        if own is None or own.owner != node_id or own.epoch != epoch:
            self._fenced_writes += 1
            return False
        own.owner = own.expires_at = None
        own.preferred = preferred
        rec = self._executions[execution_id]
        if rec.status not in TERMINAL_STATUSES:
            if ready_at != UNCHANGED:
                own.ready_at = self.clock() if ready_at == READY_NOW else ready_at
                if own.ready_at is not None:
                    self._wakeup.notify()
            if names is not None:
                own.needs = set(names)
        return True

    async def get_lease(self, execution_id: str) -> Lease | None:
        """The ownership columns of one execution."""
        self._check_open()
        own = self._own.get(execution_id)
        if own is None:
            return None
        return Lease(
            execution_id,
            own.owner,
            own.epoch,
            own.expires_at,
            own.ready_at,
            sorted(own.needs),
            own.preferred,
        )

    async def execution_statuses(self, execution_ids: Iterable[str]) -> dict[str, str]:
        """Statuses of the executions among these ids that exist."""
        self._check_open()
        return {
            eid: rec.status
            for eid in execution_ids
            if (rec := self._executions.get(eid)) is not None
        }

    async def post_message(
        self, execution_id: str, kind: str, name: str, payload: bytes = b""
    ) -> int:
        """Store a message, make the execution ready and wake the waiters."""
        self._check_open()
        data = check_message(execution_id, kind, name, payload)
        rec = self._executions.get(execution_id)
        if rec is None:
            raise StorageError(f"post_message: no execution {execution_id}")
        if rec.status in TERMINAL_STATUSES:
            raise StorageError(
                f"post_message: execution {execution_id} has finished ({rec.status})"
            )
        now = self.clock()
        self._inbox_seq += 1
        seq = self._inbox_seq
        self._inbox.setdefault(execution_id, []).append(
            Message(execution_id, seq, kind, name, data, now)
        )
        own = self._own.setdefault(execution_id, _Own())
        if own.ready_at is None or own.ready_at > now:
            own.ready_at = now
        self._wakeup.notify()
        return seq

    async def read_messages(self, execution_id: str, after_seq: int = 0) -> list[Message]:
        """Messages not yet acknowledged with ``seq > after_seq``."""
        self._check_open()
        own = self._own.get(execution_id)
        acked = own.acked if own else 0
        return [m for m in self._inbox.get(execution_id, []) if m.seq > after_seq and m.seq > acked]

    async def ack_messages(self, execution_id: str, upto_seq: int, fence: Fence) -> None:
        """Delete the messages up to ``upto_seq`` under ``fence``."""
        self._check_open()
        check_fence(execution_id, fence)
        own = self._own.get(execution_id)
        if own is None:
            raise StorageError(f"ack_messages: no execution {execution_id}")
        if own.owner != fence.owner or own.epoch != fence.epoch:
            self._fenced_writes += 1
            raise fenced(execution_id, fence, own.owner, own.epoch)
        own.acked = max(own.acked, upto_seq)
        self._drop_messages(execution_id, upto_seq)

    async def pending_messages(self, node_id: str) -> list[str]:
        """Executions ``node_id`` owns with unacknowledged messages."""
        self._check_open()
        return sorted(
            eid
            for eid, msgs in self._inbox.items()
            if msgs
            and (own := self._own.get(eid)) is not None
            and own.owner == node_id
            and any(m.seq > own.acked for m in msgs)
        )

    async def find_event_waiters(self, event_type: str) -> list[str]:
        """Executions that wait for ``event_type``."""
        self._check_open()
        return sorted(self._waits.get(event_type, set()))

    async def wait_for_work(self, timeout: float) -> bool:
        """Return when this store made work ready, or after ``timeout`` seconds."""
        self._check_open()
        return await self._wakeup.wait(timeout)

    async def register_node(
        self,
        node_id: str,
        *,
        capacity: int,
        capabilities: Iterable[str],
        versions: dict[str, str] | None = None,
    ) -> None:
        """Insert or replace the node's entry; its heartbeat is now."""
        self._check_open()
        caps = check_node(node_id, capacity, capabilities)
        old = self._nodes.get(node_id)
        self._nodes[node_id] = _Node(
            capacity,
            old.inflight if old else 0,
            sorted(set(caps)),
            dict(sorted((versions or {}).items())),
            self.clock(),
        )

    async def heartbeat(self, node_id: str, *, inflight: int) -> bool:
        """Stamp the node's heartbeat."""
        self._check_open()
        node = self._nodes.get(node_id)
        if node is None:
            return False
        node.heartbeat_at = self.clock()
        node.inflight = inflight
        return True

    async def deregister_node(self, node_id: str) -> None:
        """Forget the node."""
        self._check_open()
        self._nodes.pop(node_id, None)

    async def list_nodes(
        self, *, suspect_after: float = 15.0, dead_after: float = 60.0
    ) -> list[NodeInfo]:
        """Registered nodes with heartbeat age and status."""
        self._check_open()
        now = self.clock()
        out = []
        for node_id, n in sorted(self._nodes.items()):
            age = max(0.0, (now - n.heartbeat_at) / 1_000_000)
            out.append(
                NodeInfo(
                    node_id,
                    n.capacity,
                    n.inflight,
                    list(n.capabilities),
                    dict(n.versions),
                    age,
                    node_status(age, suspect_after, dead_after),
                )
            )
        return out

    async def cluster_stats(
        self, *, suspect_after: float = 15.0, dead_after: float = 60.0
    ) -> ClusterStats:
        """Ready queue, capability waits, nodes and counters."""
        nodes = await self.list_nodes(suspect_after=suspect_after, dead_after=dead_after)
        now = self.clock()
        ready = [
            (eid, own)
            for eid, own in self._own.items()
            if own.ready_at is not None
            and own.ready_at <= now
            and (own.owner is None or (own.expires_at is not None and own.expires_at <= now))
        ]
        oldest = min((own.ready_at for _, own in ready if own.ready_at is not None), default=None)
        needs = sorted((eid, cap) for eid, own in ready for cap in own.needs)
        return ClusterStats(
            ready=len(ready),
            oldest_ready_age=0.0 if oldest is None else max(0.0, (now - oldest) / 1e6),
            waiting_for=waiting_for(nodes, needs),
            nodes=nodes,
            reassignments=self._reassignments,
            fenced_writes=self._fenced_writes,
        )

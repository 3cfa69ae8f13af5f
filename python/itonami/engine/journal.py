"""The one way events are written: through the core's reducer, then to storage.

A :class:`Journal` belongs to one execution while this engine writes to it
(its live run, or a short write to a parked execution). ``append`` applies an
event through the Rust core (the one reducer: it checks the event against the
state, hashes it into the Merkle chain and returns the encoded bytes) and
keeps it pending; ``flush`` is the durability barrier that hands the pending
events to storage and returns once they are committed. Everything else —
status, timers, open waits — is derived from the core's state, never
mirrored here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import orjson

from .._failpoints import hit
from ..errors import FencedError, StorageError
from ..metrics import NOOP, Recorder
from ..storage import READY_NOW, AppendRequest, Fence, Storage, StoredEvent
from .clock import Clock, to_micros

__all__ = ["Journal", "JournalBroken"]

_EMPTY = b"{}"
#: A core row as a StoredEvent (the named tuple's own constructor of a tuple).
_stored = StoredEvent._make
#: Kinds that may open or close a wait (only commits holding one re-derive
#: the event-wait index).
_WAIT_KINDS = frozenset(
    {"wait_started", "external_event_received", "step_completed", "step_failed", "step_cancelled"}
)
_KIND = attrgetter("kind")


class JournalBroken(StorageError):
    """A commit of this journal failed earlier; it accepts nothing more."""


class Journal:
    """Appends of one execution: applied by the core, committed by storage.

    Events of one execution appended while a commit is in flight ride in the
    next commit together (group commit within the execution; storage groups
    commits across executions). A waiter that is cancelled does not cancel
    the commit.
    """

    def __init__(
        self,
        core: Any,
        storage: Storage,
        clock: Clock,
        execution_id: str,
        *,
        version: int,
        first: tuple[str, str, str | None] | None = None,
        snapshot_every: int = 0,
        snapshot_retention: int = 2,
        on_broken: Callable[[Journal], None] | None = None,
        owner: str | None = None,
        epoch: int = 0,
        lease_seconds: float = 30.0,
        needs: list[str] | None = None,
        metrics: Recorder = NOOP,
    ) -> None:
        self.core = core
        self.metrics = metrics
        # When the commit in flight was handed to storage (perf_counter), and its size.
        self._submitted = (0.0, 0)
        self.storage = storage
        self.clock = clock
        self.execution_id = execution_id
        self.version = version  # newest version applied by the core
        self.durable_version = version  # newest version the storage holds
        self.status = "pending" if version == 0 else "running"
        # (workflow_id, workflow_version, parent_id) for the execution's first commit.
        self._first = first
        self._pending: list[StoredEvent] = []
        self._flushing: asyncio.Future[list[int]] | None = None
        # Flushers waiting for the commit in flight; woken once it is taken in.
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_first = version
        self._flush_target = version
        self.broken: BaseException | None = None
        self._snapshot_every = snapshot_every
        self._snapshot_retention = snapshot_retention
        self._last_snapshot = version
        self._on_broken = on_broken
        #: Commits handed to storage (for the engine's idle checks and metrics).
        self.commits = 0
        self._deferred = False
        # The lease every commit is fenced with (None: write unfenced, for an
        # execution this engine does not own).
        self.owner = owner
        self.epoch = epoch
        self._last_fence: Fence | None = None
        self._lease_seconds = lease_seconds
        self._needs = needs
        #: The node a balancer chose, for the first commit of an unowned execution.
        self.preferred: str | None = None
        #: The newest inbox message the pending events record: the commit
        #: that carries them deletes it, so a message is consumed exactly once.
        self.ack_inbox_upto: int | None = None
        # The event types this execution's open waits expect, as the store's
        # index last heard them (derived from the state at each commit that
        # may change them, so send_event in any process finds the waiters).
        self._event_types: set[str] | None = None if version else set()

    def state(self) -> Any:
        """The core's state of the execution, including pending events."""
        return self.core.state(self.execution_id)

    def append(
        self,
        kind: str,
        step: str = "",
        attempt: int = 0,
        data: Any = None,
        *,
        flushed_by_caller: bool = False,
    ) -> StoredEvent:
        """Apply one event through the core's reducer; durable after :meth:`flush`.

        ``flushed_by_caller``: the caller flushes itself within this turn of
        the event loop, so no end-of-turn commit is scheduled for the event
        (it rides with the next barrier's commit instead of one of its own).
        """
        return self.append_step([(kind, step, attempt, data)], flushed_by_caller)[-1]

    def append_step(
        self,
        events: list[tuple[str, str, int, Any]],
        flushed_by_caller: bool = False,
    ) -> list[StoredEvent]:
        """Apply the ``(kind, step, attempt, data)`` events of one step at once.

        One call into the core (the coarse step call): all of them or, on an
        error, none; they share one timestamp.
        """
        if self.broken is not None:
            raise self.broken
        rows, status = self.core.append_step(
            self.execution_id,
            self.version,
            [(k, s, a, _EMPTY if d is None else orjson.dumps(d)) for k, s, a, d in events],
            to_micros(self.clock.now()),
        )
        stored = list(map(_stored, rows))
        self.version = stored[-1].version
        self.status = status
        self._pending.extend(stored)
        if not self._deferred and not flushed_by_caller:
            # Whatever is appended reaches the store by the end of this turn of
            # the event loop even if no barrier follows (a branch that blocks
            # while its sibling's result is pending): the state a reader sees
            # is never long ahead of the store. Appends of one turn still ride
            # in one commit, and barriers keep their place.
            self._deferred = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        return stored

    def _flush_soon(self) -> None:
        self._deferred = False
        if self.broken is None and self._flushing is None and self._pending:
            fut = self._submit()
            if fut.done():
                # Committed on the spot (the memory store), so no done-callback
                # was added: apply it now. Left for a flush that may never
                # come (the run blocked), the commit would look in flight for
                # good, and no later deferred append would ever be submitted.
                self._committed(fut)

    async def emit(
        self, kind: str, step: str = "", attempt: int = 0, data: Any = None
    ) -> StoredEvent:
        """Append one event and return once it is durable."""
        a = self.append(kind, step, attempt, data)
        await self.flush()
        return a

    async def flush(self, upto: int | None = None) -> None:
        """Return once every event appended so far (or up to version ``upto``)
        is durable."""
        target = self.version if upto is None else upto
        while self.durable_version < target:
            if self.broken is not None:
                raise self.broken
            fut = self._flushing
            if fut is None:
                fut = self._submit()
            if fut.done():
                # Resolved, but its done-callback may still be queued (the
                # memory backend commits on the spot; SQLite resolves from its
                # thread): apply it here, or this loop would never yield.
                self._committed(fut)
                continue
            # Woken by _committed, which already runs as the commit's
            # done-callback: cheaper than shielding the commit (no outer
            # future with two callbacks of its own), and as safe: cancelling
            # this flusher cancels only its own waiter, never the commit.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if upto is None and self.broken is not None:
            raise self.broken
        if self._snapshot_due():
            await self._snapshot()

    def event_types(self) -> set[str]:
        """Event types of the execution's open event waits (pending events included)."""
        return set(self.core.state(self.execution_id).open_event_types())

    async def settle(self) -> None:
        """Commit what was appended and wait out any commit in flight,
        ignoring failures: after this the store holds all it ever will of
        this journal (what a fault handler needs before it reloads)."""
        with contextlib.suppress(Exception):
            await self.flush()
        fut = self._flushing
        if fut is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(fut)

    def _submit(self) -> asyncio.Future[list[int]]:
        events, self._pending = self._pending, []
        first = self._first if self.durable_version == 0 else None
        req = AppendRequest(
            execution_id=self.execution_id,
            expected_version=self.durable_version,
            events=events,
            status=self.status,
            workflow_id=first[0] if first else None,
            workflow_version=first[1] if first else None,
            parent_id=first[2] if first else None,
            # Transaction ids come from the store, so they are unique and
            # increasing across every process that shares it.
            allocate_tx=True,
            fence=self._fence(),
            lease_seconds=self._lease_seconds,
        )
        if self.ack_inbox_upto is not None:
            req.ack_inbox_upto, self.ack_inbox_upto = self.ack_inbox_upto, None
        if not _WAIT_KINDS.isdisjoint(map(_KIND, events)):
            old = self._event_types
            if old is None:
                old = set()  # re-sent for a revived run: setting is idempotent
            now = self.event_types()
            req.waits_set = sorted(now - old)
            req.waits_cleared = sorted(old - now)
            self._event_types = now
        if first is not None:
            # Runnable (once its lease expires, by another process) and
            # claimable only by processes that have its activities.
            req.ready_at = READY_NOW
            req.needs = self._needs
            req.preferred = self.preferred
        self._flush_target = events[-1].version
        self._flush_first = events[0].version
        self.commits += 1
        if self.metrics.enabled:
            self._submitted = (time.perf_counter(), len(events))
        try:
            fut = self.storage.submit(req)
        except BaseException as exc:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        self._flushing = fut
        if not fut.done():
            fut.add_done_callback(self._committed)
        return fut

    def _fence(self) -> Fence | None:
        """The fence of the lease held now (one object while it does not change)."""
        fence = self._last_fence
        if self.owner is None:
            return None
        if fence is None or fence.owner != self.owner or fence.epoch != self.epoch:
            fence = self._last_fence = Fence(self.owner, self.epoch)
        return fence

    def _committed(self, fut: asyncio.Future[list[int]]) -> None:
        if self._flushing is not fut:
            return
        try:
            self._take_in(fut)
        finally:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _take_in(self, fut: asyncio.Future[list[int]]) -> None:
        self._flushing = None
        exc = (
            StorageError("the commit was cancelled (the store closed)")
            if fut.cancelled()
            else fut.exception()
        )
        if exc is not None:
            # The core holds events the store does not: forget them, so the
            # next reader reloads what is durable, and accept nothing more.
            self.broken = exc
            if isinstance(exc, FencedError):
                self.metrics.fenced_write()
            if self._on_broken is not None:
                self._on_broken(self)
            return
        txs = fut.result()
        if self.metrics.enabled:
            began, size = self._submitted
            self.metrics.commit(time.perf_counter() - began, size)
        if txs and self.core.contains(self.execution_id):
            # The versions now carry the txs the store gave them (MVCC reads
            # as of a tx agree with every other process).
            self.core.assign_txs(self.execution_id, self._flush_first, list(txs))
        if self._flush_first == 1 and self.owner is not None:
            self.epoch = 1  # the store made the creator its owner at epoch 1
        self.durable_version = self._flush_target
        if self._pending and not self._deferred:
            # Appended while this commit was in flight, with no barrier
            # waiting for them: they go in the next commit, not never.
            self._deferred = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _snapshot_due(self) -> bool:
        every = self._snapshot_every
        return bool(every) and self.durable_version - self._last_snapshot >= every

    async def _snapshot(self) -> None:
        # Only a durable version may be snapshotted: a snapshot that covered
        # events the log lacks would resurrect them after a crash.
        if self.status != "running" or self.core.version(self.execution_id) != (
            self.durable_version
        ):
            return
        data = self.core.snapshot(self.execution_id)
        version = self.durable_version
        self._last_snapshot = version  # before any await: concurrent flushers skip it
        hit("snapshot.during")
        await self.storage.save_snapshot(self.execution_id, version, data)
        await self.storage.prune_snapshots(self.execution_id, self._snapshot_retention)
        # Recorded in the history too; rides with the next commit.
        self.append("snapshot_taken", "", 0, {"version": version})

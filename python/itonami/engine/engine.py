"""The workflow engine: definitions, executions, signals, events, queries.

``WorkflowEngine`` ties the layers together: the DSL gives it a validated
strategy tree, the activity registry gives it code to run, the Rust core's
``VersionStore`` applies every event through the one reducer (and hashes it
into the Merkle chain), and a storage backend makes each event durable before
the interpreter acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import heapq
import itertools
import logging
import os
import platform
import random
import socket
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .. import _core
from ..activities import Activity, ActivityRegistry, redact
from ..dsl import WorkflowIR
from ..errors import (
    ConflictError,
    ExecutionNotFinishedError,
    ExecutionNotFoundError,
    ExecutionNotRunningError,
    FencedError,
    ItonamiError,
    Problem,
    StorageError,
    WaitTimeoutError,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from ..integrity import load_execution, load_history, verify_execution
from ..metrics import NOOP
from ..payload import to_recorded
from ..retry import RetryPolicy
from ..storage import (
    READY_NOW,
    Claim,
    ExecutionRecord,
    Fence,
    NodeInfo,
    Storage,
    StoredEvent,
    default_storage_url,
    open_storage,
)
from ..storage.base import waiting_for as missing_capabilities
from .clock import Clock, SystemClock
from .cluster import Balancer, ClusterHealth, LeastLoadedBalancer, describe_missing
from .ids import new_execution_id
from .journal import Journal
from .lifecycle import Blocked, Entry, ExecutionTable, Phase
from .runtime import TERMINAL, Run

if TYPE_CHECKING:
    from ..metrics import Recorder
    from ..tracing import Tracing
    from .sync import SyncWorkflowEngine

__all__ = ["Execution", "WorkflowEngine", "WorkflowEngineBuilder"]

# The dispatch loop's poll bounds (s) and the least gap between a claim that
# found nothing and the next one.
_POLL_MIN = 0.05
_POLL_MAX = 1.0
_CLAIM_GAP = 0.005
# How long the balancer's view of the nodes table is reused (s).
_NODE_VIEW_SECONDS = 1.0
# Bounds (s) of the poll for outcomes of executions run elsewhere.
_WATCH_MIN = 0.01
_WATCH_MAX = 0.25
# Histories up to this many events load without a look for a snapshot.
_SHORT_HISTORY = 64

log = logging.getLogger("itonami.engine")


@dataclass(frozen=True)
class Execution:
    """A read-only view of an execution at one version."""

    execution_id: str
    workflow_id: str
    workflow_version: str
    status: str
    inputs: Any
    outputs: Any
    error: Any
    version: int
    tx: int
    created_at: float
    updated_at: float
    parent: Any

    @property
    def finished(self) -> bool:
        """Whether the execution reached a terminal status."""
        return self.status in TERMINAL

    @classmethod
    def from_state(cls, state: Any) -> Execution:
        d = state.to_dict()
        return cls(
            execution_id=d.get("execution_id", ""),
            workflow_id=d.get("workflow_id") or "",
            workflow_version=d.get("workflow_version") or "",
            status=d.get("status", "pending"),
            inputs=d.get("inputs"),
            outputs=d.get("outputs"),
            error=d.get("error"),
            version=d.get("version", 0),
            tx=d.get("tx", 0),
            created_at=(d.get("created_at") or 0) / 1e6,
            updated_at=(d.get("updated_at") or 0) / 1e6,
            parent=d.get("parent"),
        )


class WorkflowEngineBuilder:
    """Fluent configuration of a :class:`WorkflowEngine`."""

    def __init__(self) -> None:
        self._storage: str | Storage | None = None
        self._activities = ActivityRegistry()
        self._workflows: list[WorkflowIR] = []
        self._clock: Clock = SystemClock()
        self._snapshot_every = 0
        self._snapshot_retention = 2
        self._max_payload = 4 * 1024 * 1024
        self._seed: int | None = None
        self._park = True
        self._max_engine_errors = 3
        self._node_id: str | None = None
        self._lease_seconds = 8.0
        self._capacity = 1000
        self._health: tuple[float, float] | None = None
        self._steal_after = 2.0
        self._balancer: Balancer | None = None
        self._recover: bool | frozenset[str] = True
        self._storage_options: dict[str, Any] = {}
        self._retention: tuple[float, float] | None = None
        self._metrics: tuple[bool, Any] = (False, None)
        self._tracing: tuple[bool, Any] = (False, None)

    def with_storage(self, storage: str | Storage, **options: Any) -> WorkflowEngineBuilder:
        """``"memory"``, ``"sqlite:///file.db"``, ``"postgresql://…"`` or a Storage."""
        self._storage = storage
        self._storage_options = options
        return self

    def with_activities(self, registry: ActivityRegistry) -> WorkflowEngineBuilder:
        """The activities workflows may call (merged with any given before)."""
        self._activities = self._activities.merge(registry) if len(self._activities) else registry
        return self

    def with_workflows(self, workflows: Iterable[WorkflowIR]) -> WorkflowEngineBuilder:
        """Definitions registered at start (what ``subworkflow`` refs resolve to)."""
        self._workflows.extend(workflows)
        return self

    def with_clock(self, clock: Clock) -> WorkflowEngineBuilder:
        """The time source (a :class:`~itonami.TestClock` in tests)."""
        self._clock = clock
        return self

    def with_snapshots(self, every: int, retention: int = 2) -> WorkflowEngineBuilder:
        """Snapshot each execution every ``every`` events, keeping ``retention``."""
        if every < 0 or retention < 1:
            raise ValueError("snapshot every must be >= 0 and retention >= 1")
        self._snapshot_every = every
        self._snapshot_retention = retention
        return self

    def with_max_payload(self, nbytes: int) -> WorkflowEngineBuilder:
        """Largest event payload (inputs, results) accepted, in bytes."""
        self._max_payload = nbytes
        return self

    def with_recovery(
        self, enabled: bool = True, *, only: Iterable[str] | None = None
    ) -> WorkflowEngineBuilder:
        """Whether ``start`` resumes the store's unfinished executions (default
        all; ``only`` limits it to those ids, as a tool inspecting one does)."""
        self._recover = False if not enabled else (True if only is None else frozenset(only))
        return self

    def with_parking(self, enabled: bool = True) -> WorkflowEngineBuilder:
        """Whether executions idle on a signal wait leave memory (default on)."""
        self._park = enabled
        return self

    def with_engine_error_policy(self, max_errors: int = 3) -> WorkflowEngineBuilder:
        """How often the engine's own code may fail running one execution
        before that execution fails with the error (each failure is recorded
        as an ``engine_error`` event and retried after a backoff)."""
        if max_errors < 1:
            raise ValueError("max_errors must be >= 1")
        self._max_engine_errors = max_errors
        return self

    def with_node_id(self, node_id: str) -> WorkflowEngineBuilder:
        """This process's identity in the store (default: host, pid and a
        random suffix). Give a restarted process the same id to let it take
        its executions back at once instead of after their leases expire;
        never run two live processes under one id."""
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty string")
        self._node_id = node_id
        return self

    def with_lease(self, seconds: float) -> WorkflowEngineBuilder:
        """How long this process's hold on an execution lasts unrenewed
        (default 8 s; renewed every third of it): about the time another
        process waits before taking over the executions of one that died."""
        if not seconds > 0:
            raise ValueError("lease seconds must be > 0")
        self._lease_seconds = float(seconds)
        return self

    def with_capacity(self, executions: int) -> WorkflowEngineBuilder:
        """How many executions this process runs at once at most (default
        1,000): it claims work from the store only up to its free capacity.
        Parked executions (waiting on a signal, event or timer) do not count."""
        if not isinstance(executions, int) or executions < 1:
            raise ValueError("capacity must be an integer >= 1")
        self._capacity = executions
        return self

    def with_node_health(self, *, suspect_after: float, dead_after: float) -> WorkflowEngineBuilder:
        """Heartbeat ages (s) after which a node counts as suspect, then dead
        (default: one and three lease lengths). Balancers skip nodes that are
        not healthy; cluster health reports each node's status."""
        if not 0 < suspect_after <= dead_after:
            raise ValueError("need 0 < suspect_after <= dead_after")
        self._health = (float(suspect_after), float(dead_after))
        return self

    def with_distributed_execution(
        self, balancer: Balancer | None = None, *, steal_after: float = 2.0
    ) -> WorkflowEngineBuilder:
        """Make the engine a node of a cluster (see
        :meth:`WorkflowEngine.enable_distributed_execution`)."""
        if steal_after < 0:
            raise ValueError("steal_after must be >= 0")
        self._balancer = balancer or LeastLoadedBalancer()
        self._steal_after = float(steal_after)
        return self

    def with_random_seed(self, seed: int) -> WorkflowEngineBuilder:
        """Seed the retry jitter (for reproducible tests)."""
        self._seed = seed
        return self

    def with_retention(
        self,
        finished_for: datetime.timedelta | float,
        *,
        every: datetime.timedelta | float = 3600.0,
    ) -> WorkflowEngineBuilder:
        """Delete executions (with their sub-workflows) once they have been
        finished for ``finished_for`` (a timedelta or seconds), checking every
        ``every`` on the engine clock while the engine runs. Unfinished
        executions are never deleted; see :meth:`WorkflowEngine.prune`."""
        kept = _seconds(finished_for)
        period = _seconds(every)
        if not kept >= 0 or not period > 0:
            raise ValueError("retention needs finished_for >= 0 and every > 0")
        self._retention = (kept, period)
        return self

    def with_metrics(self, registry: Any = None) -> WorkflowEngineBuilder:
        """Record Prometheus metrics (needs the metrics extra: ``itonami[metrics]``)
        into ``registry``, a ``prometheus_client.CollectorRegistry`` (default:
        the global one); docs/operations.md lists them."""
        self._metrics = (True, registry)
        return self

    def with_tracing(self, tracer_provider: Any = None) -> WorkflowEngineBuilder:
        """Make OpenTelemetry spans of runs and steps (needs the otel extra:
        ``itonami[otel]``) on ``tracer_provider`` (default: the global one);
        docs/operations.md describes them."""
        self._tracing = (True, tracer_provider)
        return self

    def build(self) -> WorkflowEngine:
        """The engine; it opens storage and resumes executions on first use."""
        storage = self._storage
        if storage is None:
            storage = default_storage_url()
        if isinstance(storage, str):
            storage = open_storage(storage, **self._storage_options)
        suspect_after, dead_after = self._health or (
            self._lease_seconds,
            3 * self._lease_seconds,
        )
        engine = WorkflowEngine(
            storage=storage,
            activities=self._activities,
            workflows=self._workflows,
            clock=self._clock,
            snapshot_every=self._snapshot_every,
            snapshot_retention=self._snapshot_retention,
            max_payload_bytes=self._max_payload,
            seed=self._seed,
            park_idle=self._park,
            recover=self._recover,
            max_engine_errors=self._max_engine_errors,
            node_id=self._node_id,
            lease_seconds=self._lease_seconds,
            capacity=self._capacity,
            suspect_after=suspect_after,
            dead_after=dead_after,
        )
        if self._balancer is not None:
            engine.enable_distributed_execution(
                balancer=self._balancer, steal_after=self._steal_after
            )
        if self._retention is not None:
            engine.enable_retention(*self._retention)
        if self._metrics[0]:
            engine.enable_metrics(self._metrics[1])
        if self._tracing[0]:
            engine.enable_tracing(self._tracing[1])
        return engine

    def build_sync(self) -> SyncWorkflowEngine:
        """A blocking facade over the engine, for scripts (see ``SyncWorkflowEngine``)."""
        from .sync import SyncWorkflowEngine

        return SyncWorkflowEngine(self.build())


class WorkflowEngine:
    """Runs declarative workflows durably. Use :meth:`builder` to make one.

    All methods are coroutines; ``async with engine:`` opens storage,
    resumes unfinished executions and closes cleanly.

    Each unfinished execution the engine holds is in one phase of its
    lifecycle (``engine/lifecycle.py``: resuming, live, parked, backoff,
    broken); :meth:`phase` tells which. Signals, external events, cancels
    and timers act on an execution in every one of them.
    """

    #: ``(finished_for, every)`` seconds when retention is on (:meth:`enable_retention`).
    _retention: tuple[float, float] | None = None
    #: What the engine reports to (:meth:`enable_metrics`); by default nothing.
    metrics: Recorder = NOOP
    #: Spans of runs and steps (:meth:`enable_tracing`); by default none.
    tracing: Tracing | None = None

    def __init__(
        self,
        *,
        storage: Storage,
        activities: ActivityRegistry,
        workflows: Sequence[WorkflowIR] = (),
        clock: Clock | None = None,
        snapshot_every: int = 0,
        snapshot_retention: int = 2,
        max_payload_bytes: int = 4 * 1024 * 1024,
        seed: int | None = None,
        park_idle: bool = True,
        recover: bool | frozenset[str] = True,
        max_engine_errors: int = 3,
        node_id: str | None = None,
        lease_seconds: float = 8.0,
        capacity: int = 1000,
        suspect_after: float | None = None,
        dead_after: float | None = None,
    ) -> None:
        self.storage = storage
        self.activities = activities
        self.clock: Clock = clock or SystemClock()
        self.snapshot_every = snapshot_every
        self.snapshot_retention = snapshot_retention
        self.rng = random.Random(seed)
        self.core = _core.VersionStore(max_payload_bytes=max_payload_bytes)
        self.park_idle = park_idle
        self.max_engine_errors = max_engine_errors
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        #: Most executions this node runs at once (claims stop at it).
        self.capacity = capacity
        self.suspect_after = lease_seconds if suspect_after is None else suspect_after
        self.dead_after = 3 * lease_seconds if dead_after is None else dead_after
        #: Set by enable_distributed_execution: where submitted executions go.
        self.balancer: Balancer | None = None
        self.steal_after = 2.0
        self._registered = False
        self._node_view: tuple[float, list[NodeInfo]] | None = None
        self._assigned: dict[str, int] = {}
        self._dispatch_task: asyncio.Task[None] | None = None
        # Executions run elsewhere that callers wait for: one poll for all.
        self._watched: dict[str, asyncio.Future[None]] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._consuming: set[str] = set()
        self._definitions: dict[tuple[str, str], WorkflowIR] = {}
        self._by_hash: dict[str, WorkflowIR] = {}
        # Definition content hash -> what running it needs (see _needs_of).
        self._needs_by_hash: dict[str, list[str]] = {}
        self._latest: dict[str, WorkflowIR] = {}
        # Definitions whose sub-workflow references are all loaded.
        self._expanded: set[str] = set()
        # Versions of executions just claimed, until they are loaded, and the
        # histories of the short ones, read for the whole claim at once.
        self._claimed_versions: dict[str, int] = {}
        self._prefetched: dict[str, list[StoredEvent]] = {}
        self._initial = list(workflows)
        self._table = ExecutionTable()
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        # Executions whose core copy starts at a snapshot (history queries
        # read the full durable history instead).
        self._partial: set[str] = set()
        # Wake times of parked executions: one heap, one task sleeping until
        # the earliest (on the engine clock).
        self._wake_heap: list[tuple[float, int, str]] = []
        self._wake_seq = itertools.count()
        self._timer_task: asyncio.Task[None] | None = None
        self._timer_changed = asyncio.Event()
        # Revivals, error records: kept so they are not collected mid-flight
        # and are stopped on close.
        self._background: set[asyncio.Task[Any]] = set()
        self._backoff_timers: dict[str, asyncio.TimerHandle] = {}
        self._recover_scope = recover

    def enable_metrics(self, registry: Any = None) -> None:
        """Record Prometheus metrics into ``registry`` (default: the global
        one); see :meth:`WorkflowEngineBuilder.with_metrics`. Before the first
        execution, so the gauges count every one."""
        if self._started:
            raise RuntimeError("enable metrics before the engine starts")
        from ..metrics import recorder_for

        self.metrics = self._table.metrics = recorder_for(registry)

    def enable_tracing(self, tracer_provider: Any = None) -> None:
        """Make OpenTelemetry spans (see :meth:`WorkflowEngineBuilder.with_tracing`)."""
        from ..tracing import Tracing

        self.tracing = Tracing(tracer_provider)

    async def _traceparent(self, entry: Entry) -> str | None:
        """The ``traceparent`` recorded in the execution's ``workflow_started``
        (read from the history once while the entry is held)."""
        if entry.traceparent is None:
            # One stored row, whatever the history's length: the chain was
            # verified when the execution was loaded, and a wrong value here
            # could only mislink a trace.
            first = await self.storage.read_events(entry.execution_id, 0, limit=1)
            data = None
            if first and first[0].kind == "workflow_started":
                data = _core.decode_history(_core.frame_history([first[0].encoded]))[0].data
            entry.traceparent = str((data or {}).get("traceparent") or "")
        return entry.traceparent or None

    @staticmethod
    def builder() -> WorkflowEngineBuilder:
        """Start configuring an engine."""
        return WorkflowEngineBuilder()

    # ------------------------------------------------------------ the host a run sees

    @property
    def may_park(self) -> bool:
        return self.park_idle and not self._closed

    @property
    def closing(self) -> bool:
        return self._closed

    def activity(self, name: str) -> Activity:
        return self.activities.get(name)

    def activity_defaults(self, name: str) -> tuple[RetryPolicy | None, float | None]:
        if name in self.activities:
            return self.activities.defaults_for(name)
        return None, None

    async def start_child(
        self, ir: WorkflowIR, inputs: dict[str, Any], child_id: str, parent: dict[str, Any]
    ) -> None:
        await self._start(ir, inputs, child_id, parent=parent)

    async def child_outcome(self, child_id: str) -> tuple[str, Any, Any]:
        return await self._await_terminal(child_id)

    async def cancel_child(self, child_id: str, reason: str) -> None:
        await self.cancel(child_id, reason=reason)

    # ------------------------------------------------------------ opening and closing

    async def __aenter__(self) -> WorkflowEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open storage, register definitions and resume unfinished executions."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.storage.open()
            self.core.advance_tx(await self.storage.max_tx())
            for ir in self._initial:
                await self._register(ir)
            self._started = True
            self._table.freed = asyncio.Event()
            if self._recover_scope is True:
                await self._register_node()
            await self._recover()
            await self._check_inbox()
            self._lease_task = asyncio.ensure_future(self._keep_leases())
            self._dispatch_task = asyncio.ensure_future(self._dispatch())
            self._start_retention()

    async def close(self) -> None:
        """Stop running executions (they resume on the next start) and close storage."""
        if self._closed:
            return
        self._closed = True
        if self._timer_task is not None:
            self._timer_task.cancel()
        for handle in self._backoff_timers.values():
            handle.cancel()
        self._backoff_timers.clear()
        held = self._held()  # before the runs stop and leave the table
        for loop_task in (self._lease_task, self._dispatch_task, self._watch_task):
            if loop_task is not None:
                loop_task.cancel()
        for waiter in self._watched.values():
            if not waiter.done():
                waiter.set_result(None)
        tasks = [r.task for r in self._table.live_runs() if r.task is not None]
        tasks += list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for entry in self._table.entries():
            self._table.finish(entry)  # waiters wake and see the execution unfinished
        if self._started:
            # Released as ready: another process takes them over at once. A
            # store that does not answer must not hold up a shutdown: the
            # leases then simply expire.
            await self._release_all(held)
            if self._registered:
                with contextlib.suppress(ItonamiError, TimeoutError):
                    await asyncio.wait_for(self.storage.deregister_node(self.node_id), 1.0)
            try:
                await self.storage.close()
            except StorageError as e:
                # Everything acknowledged is already durable; an unreachable
                # store must not turn a shutdown into a crash.
                log.warning("closing storage failed: %s", e)

    def capabilities(self) -> list[str]:
        """What this process can run, as the store matches it against an
        execution's needs (``activity:<name>`` per registered activity)."""
        return [f"activity:{name}" for name in self.activities.names()]

    async def _release_all(self, held: list[tuple[str, int]]) -> None:
        for eid, epoch in held:
            try:
                release = self.storage.release(eid, self.node_id, epoch, ready_at=READY_NOW)
                await asyncio.wait_for(release, timeout=1.0)
            except TimeoutError:
                # A store that does not answer must not hold up a shutdown:
                # the leases left simply expire.
                log.warning("the store does not answer: leases left to expire")
                return
            except ItonamiError as e:
                log.warning("could not release execution %s: %s", eid, e)

    async def _recover(self) -> None:
        """Take over the unfinished executions nobody else holds, and resume them.

        Its own (a restarted process with the same node id) at once; others
        whose lease expired, or that were released, through ``claim``, which
        gives each to one process only and only to a process that has its
        activities. All are admitted before any is revived, so a parent that
        resumes first finds its resuming children.
        """
        scope = self._recover_scope
        if scope is False:
            return
        claims: list[tuple[str, int]] = []
        candidates = await self.storage.unfinished_executions() if scope is True else sorted(scope)
        for eid in candidates:
            if eid in self._table:
                continue
            lease = await self.storage.get_lease(eid)
            if scope is not True or (lease is not None and lease.owner == self.node_id):
                got = await self.storage.acquire(
                    eid, self.node_id, lease_seconds=self.lease_seconds
                )
                if got is not None:
                    claims.append((eid, got.epoch))
        if scope is True:
            claims += await self._claim_ready(self.capacity - len(claims))
        entries = []
        for eid, epoch in claims:
            if eid not in self._table:
                entry = self._table.admit(eid)
                entry.epoch = epoch
                entries.append(entry)
        for entry in entries:
            await self._revive(entry, in_thread=False)

    async def _claim_ready(self, room: int) -> list[tuple[str, int]]:
        """Claim ready executions this process can run, up to ``room`` of them
        (bounded batches)."""
        out: list[tuple[str, int]] = []
        while room > 0:
            want = min(room, 500)
            batch = await self.storage.claim(
                self.node_id,
                capabilities=self.capabilities(),
                limit=want,
                lease_seconds=self.lease_seconds,
                steal_after=self.steal_after,
                history_upto=_SHORT_HISTORY,
            )
            out += [(c.execution_id, c.epoch) for c in batch]
            for c in batch:
                self._claimed_versions[c.execution_id] = c.version
            # An expired lease of an execution this engine still holds (its
            # renewals stalled) is not a takeover.
            self.metrics.lease_takeovers(
                sum(1 for c in batch if c.reassigned and c.execution_id not in self._table)
            )
            await self._prefetch(batch)
            room -= len(batch)
            if len(batch) < want:
                break
        return out

    async def _prefetch(self, claims: Sequence[Claim]) -> None:
        """Read the histories of the short claimed executions in one go: a
        claim of 64 costs one read instead of two per execution (none when
        the claim brought them, as PostgreSQL's does)."""
        heads = {}
        for c in claims:
            if not 0 < c.version <= _SHORT_HISTORY or self.core.contains(c.execution_id):
                continue
            if c.history is not None:
                self._prefetched[c.execution_id] = list(c.history)
            else:
                heads[c.execution_id] = c.version
        if not heads:
            return
        try:
            self._prefetched.update(await self.storage.read_histories(heads))
        except Exception as e:
            # The claims stand whatever went wrong here (they must be admitted,
            # not left to expire): each execution reads its own history instead.
            log.debug("reading the claimed executions' histories failed: %s", e)

    async def _register_node(self) -> None:
        """Enter the store's nodes table (discovery; health is heartbeat age)."""
        await self.storage.register_node(
            self.node_id,
            capacity=self.capacity,
            capabilities=self.capabilities(),
            versions={
                "itonami": getattr(_core, "__version__", "unknown"),
                "python": platform.python_version(),
            },
        )
        self._registered = True

    async def _dispatch(self) -> None:
        """Take work from the store: act on the inbox of executions this
        process owns, and claim ready executions up to its free capacity.

        Prompt on the store's wake hint (NOTIFY, data_version) and on
        capacity coming free; otherwise an adaptive poll, 50 ms while work
        keeps coming, doubling to 1 s when there is none (a hint can be
        missed; the poll catches it).
        """
        claiming = self._recover_scope is True
        freed = self._table.freed
        assert freed is not None
        loop = asyncio.get_running_loop()
        poll = _POLL_MIN
        last_empty = 0.0
        hint: asyncio.Task[bool] | None = None
        inbox: asyncio.Task[Any] | None = None
        # Hints that mean "claimable work" (PostgreSQL, memory) need no gap;
        # SQLite's come with every commit of another process.
        gap = 0.0 if self.storage.precise_hints else _CLAIM_GAP
        while not self._closed:
            try:
                if hint is None or hint.done():
                    hint = asyncio.ensure_future(self.storage.wait_for_work(poll))
                waits: set[asyncio.Future[Any]] = {hint}
                freed_wait = None
                if claiming and self._table.active >= self.capacity:
                    freed.clear()
                    freed_wait = asyncio.ensure_future(freed.wait())
                    waits.add(freed_wait)
                await asyncio.wait(waits, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
                if freed_wait is not None:
                    freed_wait.cancel()
                hinted = False
                if hint.done():
                    hinted, hint = hint.result(), None  # a failed wait raises here
                if hinted and (inbox is None or inbox.done()):
                    # Beside the claim, not before it: a dispatch waits for no read.
                    inbox = self._spawn(self._check_inbox_logged())
                if not claiming:
                    poll = _POLL_MAX
                    continue
                room = self.capacity - self._table.active
                if room <= 0:
                    continue
                since = loop.time() - last_empty
                if since < gap:
                    # After a claim found nothing, claim again only after a
                    # short gap.
                    await asyncio.sleep(gap - since)
                got = await self._claim_ready(min(room, 64))
                for eid, epoch in got:
                    if eid in self._table:
                        # Its lease expired while this engine still holds it
                        # (renewals stalled): the run here is fenced now. Drop
                        # it and give the new lease back, so the next claim
                        # runs it cleanly instead of the lease sitting idle.
                        self._claimed_versions.pop(eid, None)
                        self._prefetched.pop(eid, None)
                        self._lose(eid)
                        self._spawn(self._give_back(eid, epoch))
                        continue
                    entry = self._table.admit(eid)
                    entry.epoch = epoch
                    self._spawn(self._revive(entry))
                if got:
                    poll = _POLL_MIN
                    if len(got) == min(room, 64):
                        if hint is not None:
                            hint.cancel()  # more may be waiting: claim again at once
                        hint = None
                        await asyncio.sleep(0)
                else:
                    last_empty = loop.time()
                    poll = min(poll * 2, _POLL_MAX)
            except StorageError as e:
                log.warning("taking work from the store failed (%s); trying again", e)
                hint = None
                await asyncio.sleep(_POLL_MAX)
            except Exception:
                # The loop that feeds this node must outlive any one fault.
                log.exception("the dispatch loop failed; trying again")
                hint = None
                await asyncio.sleep(_POLL_MAX)
            finally:
                if self._closed and hint is not None:
                    hint.cancel()  # no wait on a closing store outlives the loop

    def _held(self) -> list[tuple[str, int]]:
        held = []
        for entry in self._table.entries():
            if entry.run is not None and entry.run.status in TERMINAL:
                continue  # the store dropped its lease with the terminal commit
            epoch = entry.run.journal.epoch if entry.run is not None else entry.epoch
            if epoch > 0 and not entry.lost:
                held.append((entry.execution_id, epoch))
        return held

    async def _keep_leases(self) -> None:
        """Renew this process's leases well inside their length (every third
        of it), drop the runs of leases lost (paused past them, partitioned),
        heartbeat in the nodes table, and look at the inbox (in case a hint
        was missed)."""
        interval = self.lease_seconds / 3
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                lost = await self.storage.renew(
                    self.node_id, self._held(), lease_seconds=self.lease_seconds
                )
                for eid in lost:
                    self._lose(eid)
                if self._registered and not await self.storage.heartbeat(
                    self.node_id, inflight=self._table.active
                ):
                    await self._register_node()  # removed meanwhile: register again
                await self._check_inbox()
            except StorageError as e:
                log.warning("lease upkeep failed (%s); trying again", e)
            except Exception:
                # Leases and heartbeats must outlive any one fault.
                log.exception("lease upkeep failed; trying again")

    async def _give_back(self, execution_id: str, epoch: int) -> None:
        with contextlib.suppress(ItonamiError):
            await self.storage.release(execution_id, self.node_id, epoch, ready_at=READY_NOW)

    async def _check_inbox_logged(self) -> None:
        try:
            await self._check_inbox()
        except StorageError as e:
            log.warning("reading the inbox failed (%s); trying again on the next hint", e)

    async def _check_inbox(self) -> None:
        """Act on messages other processes left for executions this one owns."""
        for eid in await self.storage.pending_messages(self.node_id):
            entry = self._table.get(eid)
            if entry is not None and eid not in self._consuming:
                self._consuming.add(eid)
                self._spawn(self._consume_inbox(entry))

    async def _consume_inbox(self, entry: Entry) -> None:
        """Record each message as the owner would have if it had been sent
        here; a signal's commit deletes its message (exactly once)."""
        eid = entry.execution_id
        try:
            for msg in await self.storage.read_messages(eid):
                try:
                    if msg.kind == "signal":
                        payload = orjson.loads(msg.payload) if msg.payload else None
                        await self._signal(eid, msg.name, payload, msg.seq)
                        self.metrics.signal_delivered()
                        continue
                    if msg.kind == "cancel":
                        await self.cancel(eid, reason=msg.name or "cancelled")
                        return  # the terminal commit drops the rest of the inbox
                    if msg.kind == "event":
                        payload = orjson.loads(msg.payload) if msg.payload else None
                        await self._offer_event(entry, msg.name, payload)
                except ExecutionNotRunningError:
                    return  # it ended: its inbox went with it
                except (orjson.JSONDecodeError, ItonamiError) as e:
                    log.warning("execution %s: inbox message %d not delivered: %s", eid, msg.seq, e)
                epoch = entry.run.journal.epoch if entry.run is not None else entry.epoch
                with contextlib.suppress(ItonamiError):
                    await self.storage.ack_messages(eid, msg.seq, Fence(self.node_id, epoch))
        except StorageError as e:
            log.warning("execution %s: reading its inbox failed: %s", eid, e)
        finally:
            self._consuming.discard(eid)

    def _lose(self, execution_id: str) -> None:
        """Another process holds the execution now: stop ours without writing."""
        entry = self._table.get(execution_id)
        if entry is None or (entry.run is not None and entry.run.status in TERMINAL):
            return
        entry.lost = True
        log.warning("execution %s: lease lost; another process runs it now", execution_id)
        run = entry.run
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
        elif entry.phase is not Phase.LIVE:
            self._forget(execution_id)
            self._table.finish(entry)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.start()

    # ------------------------------------------------------------ the lifecycle

    def phase(self, execution_id: str) -> str | None:
        """Where the execution is in this engine: ``"live"``, ``"parked"``,
        ``"resuming"``, ``"backoff"`` or ``"broken"``; ``None`` when the
        engine holds nothing of it (finished, or not loaded here)."""
        entry = self._table.get(execution_id)
        return None if entry is None else entry.phase.value

    def lifecycle_counts(self) -> dict[str, int]:
        """How many executions are in each phase, and transitions so far
        (``transitions.<phase>``): the numbers an operator (or a test proving
        an idle engine does nothing) reads."""
        out = {p.value: self._table.count(p) for p in Phase}
        out.update({f"transitions.{k}": v for k, v in self._table.transitions.items()})
        return out

    def blocked(self) -> dict[str, Blocked | None]:
        """Every unfinished execution held here, and what it waits for.

        A :class:`~itonami.engine.lifecycle.Blocked` names the signals,
        event types and earliest wake time an execution waits on with nothing
        of it in flight (an empty one: it waits only on a child). ``None``
        means it may still be working: resuming, backing off, broken, a
        commit or an activity in flight, a due time not acted on yet, or
        between two steps. The test kit (``itonami.testing``) reads this to
        know when every run has reached what blocks it.
        """
        now = self.clock.now()
        out: dict[str, Blocked | None] = {}
        for entry in self._table.entries():
            if entry.phase is Phase.PARKED and entry.blocked is not None:
                due = entry.wake_at is not None and entry.wake_at <= now
                out[entry.execution_id] = None if due else entry.blocked
            elif entry.phase is Phase.LIVE and entry.run is not None:
                out[entry.execution_id] = _live_blocked(entry.run, now)
            else:
                out[entry.execution_id] = None
        return out

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _journal(
        self,
        execution_id: str,
        version: int,
        first: tuple[str, str, str | None] | None = None,
        *,
        entry: Entry | None = None,
        needs: list[str] | None = None,
        owned: bool | None = None,
    ) -> Journal:
        """The journal of one execution: fenced with this engine's lease when
        it owns it (``entry`` held, or ``first``: it creates it, unless
        ``owned=False``: created for the cluster to claim)."""
        if owned is None:
            owned = first is not None or (entry is not None and entry.epoch > 0)
        return Journal(
            self.core,
            self.storage,
            self.clock,
            execution_id,
            version=version,
            first=first,
            snapshot_every=self.snapshot_every,
            snapshot_retention=self.snapshot_retention,
            on_broken=self._journal_broken,
            owner=self.node_id if owned else None,
            epoch=entry.epoch if entry is not None else 0,
            lease_seconds=self.lease_seconds,
            needs=needs,
            metrics=self.metrics,
        )

    def _journal_broken(self, journal: Journal) -> None:
        """A commit failed: the core's copy is ahead of the store. A live run
        writing through this journal stops (its entry backs off and revives
        from the store), even one that is idle on a wait."""
        eid = journal.execution_id
        self._forget(eid)
        entry = self._table.get(eid)
        if entry is not None and entry.run is not None and entry.run.journal is journal:
            task = entry.run.task
            if task is not None and not task.done():
                task.cancel()

    def _launch(self, entry: Entry, run: Run) -> None:
        """RESUMING → LIVE: the run's task starts driving it."""
        self._table.go_live(entry, run)
        run.task = asyncio.ensure_future(self._drive(entry, run))
        run.task.add_done_callback(lambda task: self._task_ended(entry, run, task))

    async def _drive(self, entry: Entry, run: Run) -> None:
        """The run's task: drive it, then take the transition its outcome asks for."""
        try:
            blocked = await run.drive()
        except asyncio.CancelledError:
            self._run_stopped(entry, run, None)
            raise
        except Exception as exc:
            self._run_stopped(entry, run, exc)
            return
        if blocked is not None:
            self._run_parked(entry, run, blocked)
        elif run.status in TERMINAL:
            self._forget_partial(entry.execution_id)
            self._table.finish(entry)
        else:
            self._run_stopped(
                entry, run, RuntimeError("the run stopped before the execution ended")
            )

    def _task_ended(self, entry: Entry, run: Run, task: asyncio.Task[None]) -> None:
        # A task cancelled before it ever ran skips _drive entirely: the
        # entry must not stay live with nobody driving it.
        if self._table.get(entry.execution_id) is entry and entry.run is run:
            self._run_stopped(entry, run, None)

    def _run_parked(self, entry: Entry, run: Run, blocked: Blocked) -> None:
        """LIVE → PARKED, unless what it waits for arrived while it unwound."""
        eid = entry.execution_id
        state = self.core.state(eid).to_dict()
        signals = state.get("signals") or {}
        cursor = state.get("signal_cursor") or {}
        arrived = any(len(signals.get(n) or []) > cursor.get(n, 0) for n in blocked.signals)
        quiet = run.journal.version == run.journal.durable_version
        if run.cancel_requested is not None:
            entry.cancel_reason = run.cancel_requested
        entry.epoch = run.journal.epoch
        self._forget(eid)
        self._table.park(entry, blocked)
        log.debug("execution %s parked on %s", eid, blocked.describe())
        if arrived or not quiet or entry.cancel_reason is not None:
            self._wake(entry)
        elif blocked.wake_at is not None:
            self._wake_at(entry, blocked.wake_at)

    def _run_stopped(self, entry: Entry, run: Run, exc: BaseException | None) -> None:
        """The run ended without a terminal event: the engine is closing
        (``exc`` None), the store failed, or the engine's own code did."""
        if self._table.get(entry.execution_id) is not entry or entry.run is not run:
            return
        eid = entry.execution_id
        self._forget(eid)
        if run.cancel_requested is not None:
            entry.cancel_reason = run.cancel_requested
        entry.epoch = max(entry.epoch, run.journal.epoch)
        if self._closed:
            self._table.finish(entry)
            return
        if (
            entry.lost
            or isinstance(exc, FencedError)
            or isinstance(run.journal.broken, FencedError)
        ):
            # Another process owns it now: this one writes nothing more.
            log.warning("execution %s: lease lost to another process; dropping its run", eid)
            self._table.finish(entry)
            return
        if run.journal.durable_version == 0:
            # Its start never committed (the caller of start_workflow was
            # told): nothing of it exists to resume.
            log.warning("execution %s did not start: %r", eid, exc)
            self._table.finish(entry)
            return
        if exc is None:
            exc = run.journal.broken or RuntimeError(
                "the run was cancelled from outside the engine"
            )
        delay = _backoff(entry.failures)
        if isinstance(exc, (StorageError, ConflictError)):
            # The store failed (a restarted database, a full disk): what it
            # holds is intact, so resume from it once it answers again.
            log.warning("execution %s stopped: %s; resuming in %.2fs", eid, exc, delay)
            self._table.break_off(entry, exc, self.clock.now() + delay)
            self._backoff(entry, delay)
            return
        log.error("engine error in execution %s: %r", eid, exc, exc_info=exc)
        self._table.break_off(entry, exc, self.clock.now() + delay)
        self._spawn(self._record_engine_error(entry, run.journal, exc, delay))

    async def _record_engine_error(
        self, entry: Entry, journal: Journal, exc: BaseException, delay: float
    ) -> None:
        """Record an engine error in the history; after ``max_engine_errors``
        of them, fail the execution with it (the documented policy)."""
        eid = entry.execution_id
        error = _engine_error(exc)
        failed = False
        async with entry.lock:
            # What the run had appended before the fault is valid (the core
            # accepted it): let it land, then build on what the store holds.
            await journal.settle()
            self._forget(eid)
            try:
                await self._load(eid)
                if self.core.state(eid).status in TERMINAL:
                    self._table.finish(entry)
                    return
                count = 1 + sum(1 for e in self.core.events(eid) if e.kind == "engine_error")
                journal = self._journal(eid, self.core.version(eid), entry=entry)
                journal.append("engine_error", "", 0, {"error": error, "attempt": count})
                if count >= self.max_engine_errors:
                    failed = True
                    journal.append(
                        "workflow_failed",
                        "",
                        0,
                        {
                            "error": {
                                "type": "EngineError",
                                "message": f"the engine failed {count} times running this "
                                f"execution; last: {error['type']}: {error['message']}",
                                "retryable": False,
                                "cause": error,
                            }
                        },
                    )
                await journal.flush()
                if failed:
                    self.metrics.workflow_ended(
                        self.core.state(eid).workflow_id or "", "failed", None
                    )
                children = _running_children(self.core.state(eid).to_dict())
            except FencedError:
                log.warning("execution %s: lease lost to another process", eid)
                self._table.finish(entry)
                return
            except StorageError as e:
                log.warning("could not record the engine error of %s: %s", eid, e)
                failed = False
                children = []
            except ItonamiError as e:
                log.error("execution %s cannot be loaded: %s", eid, e)
                self._forget(eid)
                if self._table.get(eid) is entry:
                    self._table.fail_to_load(entry, e)
                return
            finally:
                self._forget(eid)
        if failed:
            log.error("execution %s failed: the engine's own code kept failing", eid)
            for child in children:
                with contextlib.suppress(ItonamiError):
                    await self.cancel(child, reason="parent failed")
            if self._table.get(eid) is entry:
                self._table.finish(entry)
            return
        self._backoff(entry, delay)

    def _backoff(self, entry: Entry, delay: float) -> None:
        """Revive a BACKOFF entry after ``delay`` real seconds (engine and
        storage faults are not workflow time)."""
        eid = entry.execution_id
        if self._closed:
            return

        def due() -> None:
            self._backoff_timers.pop(eid, None)
            if self._table.get(eid) is entry and entry.phase is Phase.BACKOFF:
                self._wake(entry)

        old = self._backoff_timers.pop(eid, None)
        if old is not None:
            old.cancel()
        self._backoff_timers[eid] = asyncio.get_running_loop().call_later(delay, due)

    def _wake(self, entry: Entry, before_launch: Any = None) -> None:
        """PARKED/BACKOFF → RESUMING, and revive it."""
        if self._closed:
            return
        timer = self._backoff_timers.pop(entry.execution_id, None)
        if timer is not None:
            timer.cancel()
        self._table.wake(entry)
        self._spawn(self._revive(entry, before_launch=before_launch))

    async def _revive(
        self, entry: Entry, *, in_thread: bool = True, before_launch: Any = None
    ) -> None:
        """RESUMING → LIVE (or BACKOFF / BROKEN / gone): a run rebuilt from the
        stored state (snapshot + later events). ``before_launch(run)`` runs
        first (a signal delivered into the revived run); it gets ``None`` when
        no run came of the revival, so its caller can look again."""
        async with entry.lock:
            run = await self._rebuild(entry, in_thread=in_thread)
            if run is None:
                if before_launch is not None:
                    await before_launch(None)
                return
            if entry.cancel_reason is not None:
                run.request_cancel(entry.cancel_reason)
            try:
                if before_launch is not None:
                    await before_launch(run)
            finally:
                self._launch(entry, run)

    async def _rebuild(self, entry: Entry, *, in_thread: bool) -> Run | None:
        """The run of a RESUMING entry, from the store; None (and the entry
        moved to its next phase) when the execution ended or cannot load."""
        eid = entry.execution_id
        try:
            await self._load(eid, in_thread=in_thread)
            d = self.core.state(eid).to_dict()
            if d["status"] in TERMINAL:
                self._forget_partial(eid)
                self._table.finish(entry)
                return None
            ir = await self._definition_for(d)
        except StorageError as e:
            delay = _backoff(entry.failures)
            log.warning("cannot load execution %s: %s; retry in %.2fs", eid, e, delay)
            self._forget(eid)
            self._table.break_off(entry, e, self.clock.now() + delay)
            self._backoff(entry, delay)
            return None
        except ItonamiError as e:
            # Damage to one execution must not keep the others from resuming.
            log.error("cannot resume execution %s: %s", eid, e)
            self._forget(eid)
            self._table.fail_to_load(entry, e)
            return None
        except Exception as e:
            # A fault of the engine's own code: never leave it resuming for
            # good; back off and try again.
            delay = _backoff(entry.failures)
            log.exception("resuming execution %s failed; retry in %.2fs", eid, delay)
            self._forget(eid)
            self._table.break_off(entry, e, self.clock.now() + delay)
            self._backoff(entry, delay)
            return None
        run = Run(
            self,
            self._journal(eid, d["version"], entry=entry),
            ir,
            eid,
            d.get("inputs") or {},
            recorded=d,
            parent=d.get("parent"),
        )
        if self.tracing is not None:
            run.traceparent = await self._traceparent(entry)
        run.log(logging.DEBUG, "resumed at version %d", d["version"])
        return run

    def _wake_at(self, entry: Entry, when: float) -> None:
        """Revive a parked execution at ``when`` (engine clock).

        One task serves every parked execution: a heap of wake times and a
        sleep until the earliest. Entries whose execution moved on are
        skipped when they come up.
        """
        heapq.heappush(self._wake_heap, (when, next(self._wake_seq), entry.execution_id))
        if self._timer_task is None or self._timer_task.done():
            self._timer_task = asyncio.ensure_future(self._timer_loop())
        elif self._wake_heap[0][2] == entry.execution_id:
            self._timer_changed.set()  # a new earliest time

    async def _timer_loop(self) -> None:
        clock = self.clock
        while self._wake_heap and not self._closed:
            when = self._wake_heap[0][0]
            if when > clock.now():
                self._timer_changed.clear()
                sleeper = asyncio.ensure_future(clock.sleep_until(when))
                changed = asyncio.ensure_future(self._timer_changed.wait())
                try:
                    await asyncio.wait({sleeper, changed}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    changed.cancel()
                continue
            _, _, eid = heapq.heappop(self._wake_heap)
            entry = self._table.get(eid)
            if entry is not None and entry.phase is Phase.PARKED and entry.wake_at == when:
                self._wake(entry)

    def _forget(self, execution_id: str) -> None:
        """Drop the core's copy (it is ahead of, or disagrees with, storage)."""
        self.core.evict(execution_id)
        self._partial.discard(execution_id)

    def _forget_partial(self, execution_id: str) -> None:
        # A finished execution's copy stays for queries, but one that began
        # at a snapshot is reloaded in full by history queries anyway.
        if execution_id in self._partial:
            self._forget(execution_id)

    async def _definition_for(self, state: Mapping[str, Any]) -> WorkflowIR:
        h = state.get("definition_hash")
        ir = self._by_hash.get(h) if h else None
        if ir is None and h:
            doc = await self.storage.get_definition_by_hash(h)
            if doc is not None:
                ir = WorkflowIR.from_json(doc)
                self._remember(ir, stored=True)
        if ir is None:
            raise WorkflowNotFoundError(
                f"definition {state.get('workflow_id')!r} (hash {h}) of execution "
                f"{state.get('execution_id')!r} is not stored",
                workflow_id=str(state.get("workflow_id")),
                version=state.get("workflow_version"),
            )
        if ir.content_hash not in self._expanded:
            await self._load_referenced(ir)
        return ir

    # ------------------------------------------------------------ definitions

    def _remember(self, ir: WorkflowIR, *, stored: bool = False) -> None:
        self._definitions[(ir.id, ir.version)] = ir
        self._by_hash[ir.content_hash] = ir
        if not stored or ir.id not in self._latest:
            self._latest[ir.id] = ir

    async def _load_referenced(self, ir: WorkflowIR, depth: int = 0) -> None:
        """Bring the definitions ``ir``'s sub-workflows name from the store
        (any node runs any stored version, not only those it registered)."""
        refs: list[tuple[str, str | None]] = []

        def note(ref: str, version: str | None) -> bool:
            refs.append((ref, version))
            return True  # every reference "known": only collecting them

        ir.check(workflows=note)
        for ref, version in refs:
            if self._workflow_known(ref, version):
                continue
            doc = await self.storage.get_definition(ref, version)
            if doc is None:
                continue  # the step fails with WorkflowNotFoundError, as it says
            child = WorkflowIR.from_json(doc)
            if (child.id, child.version) not in self._definitions:
                self._remember(child, stored=True)
            if depth < 32:
                await self._load_referenced(child, depth + 1)
        self._expanded.add(ir.content_hash)

    async def _register(self, ir: WorkflowIR) -> None:
        # In a cluster the workers have the activities: a definition that
        # names one nobody has waits for such a worker, visibly.
        activities = None if self.balancer is not None else self.activities
        problems = ir.check(activities=activities, workflows=self._workflow_known)
        if problems:
            raise WorkflowDefinitionError(problems, source=f"{ir.id}@{ir.version}")
        known = self._definitions.get((ir.id, ir.version))
        if known is not None and known.content_hash != ir.content_hash:
            raise WorkflowDefinitionError(
                [
                    Problem(
                        "workflow.version",
                        f"{ir.id} version {ir.version} is already registered with "
                        "different content; give the changed definition a new version",
                    )
                ],
                source=f"{ir.id}@{ir.version}",
            )
        await self.storage.put_definition(ir.id, ir.version, ir.content_hash, _document(ir))
        self._remember(ir)

    def _workflow_known(self, workflow_id: str, version: str | None) -> bool:
        if version is None:
            return workflow_id in self._latest or any(ir.id == workflow_id for ir in self._initial)
        return (workflow_id, version) in self._definitions or any(
            ir.id == workflow_id and ir.version == version for ir in self._initial
        )

    async def register_workflow(self, ir: WorkflowIR) -> None:
        """Make a definition known by ``id`` and ``version`` (for sub-workflows)."""
        await self._ensure_started()
        await self._register(ir)

    def resolve_workflow(self, workflow_id: str, version: str | None = None) -> WorkflowIR:
        """The registered definition for a reference (newest when no version)."""
        ir = (
            self._latest.get(workflow_id)
            if version is None
            else self._definitions.get((workflow_id, version))
        )
        if ir is None:
            known = ", ".join(sorted(f"{i}@{v}" for i, v in self._definitions)) or "none"
            raise WorkflowNotFoundError(
                f"no workflow {workflow_id!r}"
                + (f" version {version!r}" if version else "")
                + f" is registered (known: {known})",
                workflow_id=workflow_id,
                version=version,
            )
        return ir

    # ------------------------------------------------------------ executions

    async def start_workflow(
        self,
        workflow: WorkflowIR | str,
        inputs: Mapping[str, Any] | None = None,
        execution_id: str | None = None,
        *,
        version: str | None = None,
    ) -> str:
        """Start an execution and return its id once ``workflow_started`` is durable.

        ``workflow`` is a definition or the id of a registered one. A given
        ``execution_id`` is an idempotency key: starting again with the same
        id returns it without starting anything.
        """
        await self._ensure_started()
        if isinstance(workflow, str):
            ir = self.resolve_workflow(workflow, version)
        else:
            ir = workflow
            if self._by_hash.get(ir.content_hash) is None:
                await self._register(ir)
        clean = ir.validate_inputs(to_recorded(dict(inputs or {}), "inputs"))
        start = self._submit if self.balancer is not None else self._start
        if execution_id is None:
            # A fresh id cannot exist yet: no lookup needed. Time-ordered, so
            # the rows of executions started together share index pages.
            eid = new_execution_id()
            await start(ir, clean, eid, parent=None, fresh=True)
            return eid
        await start(ir, clean, execution_id, parent=None)
        return execution_id

    def _needs_of(self, ir: WorkflowIR) -> list[str]:
        """:func:`_needs` of ``ir``, worked out once per definition (a walk of
        its whole tree, on every start before)."""
        needs = self._needs_by_hash.get(ir.content_hash)
        if needs is None:
            needs = self._needs_by_hash[ir.content_hash] = _needs(ir)
        return needs

    async def _submit(
        self,
        ir: WorkflowIR,
        inputs: dict[str, Any],
        execution_id: str,
        parent: dict[str, Any] | None,
        *,
        fresh: bool = False,
    ) -> None:
        """Start an execution for the cluster: its first commit leaves it
        unowned and ready, preferred for the node the balancer chose; that
        node (or, after ``steal_after``, any that can run it) claims it."""
        if not fresh and await self._exists(execution_id):
            return
        needs = self._needs_of(ir)
        journal = self._journal(
            execution_id,
            0,
            first=(ir.id, ir.version, (parent or {}).get("execution_id")),
            needs=needs,
            owned=False,
        )
        journal.preferred = await self._choose_node(needs)
        run = Run(self, journal, ir, execution_id, inputs, parent=parent)
        try:
            run.record_started()
            await journal.flush()
        except ConflictError as e:
            if e.expected != 0:
                raise
            # started concurrently by another engine: idempotent
        finally:
            run.end_span()
            self._forget(execution_id)  # the claiming node writes from now on

    async def _choose_node(self, needs: Sequence[str]) -> str | None:
        """The balancer's choice among the healthy nodes that can run ``needs``."""
        balancer = self.balancer
        if balancer is None:
            return None
        loop = asyncio.get_running_loop()
        view = self._node_view
        if view is None or loop.time() - view[0] > _NODE_VIEW_SECONDS:
            try:
                nodes = await self.storage.list_nodes(
                    suspect_after=self.suspect_after, dead_after=self.dead_after
                )
            except StorageError as e:
                log.warning("cannot read the nodes table (%s): no preferred node", e)
                return None
            view = self._node_view = (loop.time(), nodes)
            self._assigned.clear()
        want = set(needs)
        able = [
            dataclasses.replace(n, inflight=n.inflight + self._assigned.get(n.node_id, 0))
            for n in view[1]
            if n.status == "healthy" and want <= set(n.capabilities)
        ]
        chosen = balancer.choose(able, list(needs))
        if chosen is not None:
            self._assigned[chosen] = self._assigned.get(chosen, 0) + 1
        return chosen

    def enable_distributed_execution(
        self,
        node_id: str | None = None,
        balancer: Balancer | None = None,
        *,
        capacity: int | None = None,
        steal_after: float | None = None,
    ) -> None:
        """Make this engine a node of a cluster sharing its store.

        From now on :meth:`start_workflow` hands each new execution to the
        cluster (:meth:`submit_distributed_workflow`): ``balancer`` (default
        :class:`LeastLoadedBalancer`) names the node it should run on, and
        nodes claim work up to their ``capacity``. ``node_id`` (default: the
        engine's) is this node's identity in the nodes table; it can be
        given only before the engine starts. An engine built with recovery
        off submits work without running any (a pure client).
        """
        if node_id is not None and node_id != self.node_id:
            if self._started:
                raise RuntimeError("the node id cannot change once the engine has started")
            if not isinstance(node_id, str) or not node_id:
                raise ValueError("node_id must be a non-empty string")
            self.node_id = node_id
        if capacity is not None:
            if not isinstance(capacity, int) or capacity < 1:
                raise ValueError("capacity must be an integer >= 1")
            self.capacity = capacity
        if steal_after is not None:
            if steal_after < 0:
                raise ValueError("steal_after must be >= 0")
            self.steal_after = float(steal_after)
        self.balancer = balancer or LeastLoadedBalancer()
        if self._started and self._recover_scope is True:
            self._spawn(self._register_node())  # capacity may have changed

    async def submit_distributed_workflow(self, execution_id: str) -> str:
        """Hand an existing execution to the cluster; returns its task id
        (the execution id).

        An execution this engine holds but is not running (parked, backing
        off) is released for the balancer's node; one running here keeps
        running here (it is already the cluster's); an unowned one gets the
        balancer's node as its preferred one.
        """
        await self._ensure_started()
        entry = self._table.get(execution_id)
        if entry is not None and entry.phase in (Phase.LIVE, Phase.RESUMING):
            return execution_id
        record = await self.storage.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFoundError(
                f"no execution {execution_id!r}", execution_id=execution_id
            )
        if record.status in TERMINAL:
            raise ExecutionNotRunningError(
                f"execution {execution_id!r} has finished ({record.status})",
                execution_id=execution_id,
                status=record.status,
            )
        lease = await self.storage.get_lease(execution_id)
        needs = lease.needs if lease is not None else []
        preferred = await self._choose_node(needs)
        epoch = 0
        if entry is not None:
            epoch = entry.epoch
            async with entry.lock:
                if self._table.get(execution_id) is entry and entry.phase in (
                    Phase.PARKED,
                    Phase.BACKOFF,
                ):
                    timer = self._backoff_timers.pop(execution_id, None)
                    if timer is not None:
                        timer.cancel()
                    self._table.finish(entry)
                else:
                    return execution_id
        else:
            got = await self.storage.acquire(
                execution_id, self.node_id, lease_seconds=self.lease_seconds
            )
            if got is None:
                return execution_id  # another live node holds it: the cluster's already
            epoch = got.epoch
        await self.storage.release(
            execution_id, self.node_id, epoch, ready_at=READY_NOW, preferred=preferred
        )
        return execution_id

    async def get_cluster_health(self) -> ClusterHealth:
        """The cluster as the shared store sees it: nodes with status, load,
        capacity and capabilities; the ready queue's depth and oldest age;
        executions waiting for a capability no live node has; reassignments
        (failovers) and fenced writes."""
        await self._ensure_started()
        stats = await self.storage.cluster_stats(
            suspect_after=self.suspect_after, dead_after=self.dead_after
        )
        return ClusterHealth.of(self.node_id, stats)

    async def waiting_for(self, execution_id: str) -> str | None:
        """Why an execution is not running, when no live node can run it:
        e.g. ``"no worker with activity `pay_out`"``; None otherwise."""
        await self._ensure_started()
        lease = await self.storage.get_lease(execution_id)
        if lease is None or lease.owner is not None or not lease.needs:
            return None
        nodes = await self.storage.list_nodes(
            suspect_after=self.suspect_after, dead_after=self.dead_after
        )
        missing = missing_capabilities(nodes, [(execution_id, cap) for cap in lease.needs])
        return describe_missing(missing[execution_id]) if execution_id in missing else None

    async def _start(
        self,
        ir: WorkflowIR,
        inputs: dict[str, Any],
        execution_id: str,
        parent: dict[str, Any] | None,
        *,
        fresh: bool = False,
    ) -> None:
        if not fresh:
            if execution_id in self._table or await self._exists(execution_id):
                return
            if execution_id in self._table:  # started while we looked
                return
        journal = self._journal(
            execution_id,
            0,
            first=(ir.id, ir.version, (parent or {}).get("execution_id")),
            needs=self._needs_of(ir),
        )
        run = Run(self, journal, ir, execution_id, inputs, parent=parent)
        try:
            run.record_started()
        except BaseException:
            self.core.evict(execution_id)
            raise
        self._launch(self._table.admit(execution_id), run)
        # Let the run reach its first durability barrier, so that its first
        # commit carries workflow_started together with the first step.
        await asyncio.sleep(0)
        try:
            await journal.flush(upto=1)
        except ConflictError as e:
            if e.expected == 0:
                return  # started concurrently by another engine: idempotent
            raise

    async def _exists(self, execution_id: str) -> bool:
        if self.core.contains(execution_id):
            return True
        return await self.storage.get_execution(execution_id) is not None

    async def wait_for_completion(
        self, execution_id: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """The outputs of a completed execution; waits while it runs.

        Raises :class:`WorkflowFailedError` for any other terminal status
        (failed, cancelled, timed_out, compensated) and
        :class:`WaitTimeoutError` when ``timeout`` (real seconds) passes first.
        """
        await self._ensure_started()
        try:
            if timeout is None:
                status, outputs, error = await self._await_terminal(execution_id)
            else:
                status, outputs, error = await asyncio.wait_for(
                    self._await_terminal(execution_id), timeout
                )
        except TimeoutError:
            raise WaitTimeoutError(
                f"execution {execution_id!r} did not finish within {timeout} s",
                execution_id=execution_id,
            ) from None
        if status != "completed":
            message = (error or {}).get("message") if isinstance(error, dict) else error
            raise WorkflowFailedError(
                f"execution {execution_id!r} ended {status}: {message}",
                execution_id=execution_id,
                status=status,
                error=error,
            )
        return outputs if isinstance(outputs, dict) else {"result": outputs}

    async def _await_terminal(self, execution_id: str) -> tuple[str, Any, Any]:
        while True:
            entry = self._table.get(execution_id)
            if entry is None:
                break
            if entry.phase is Phase.BROKEN and entry.error is not None:
                raise entry.error
            await asyncio.shield(entry.changed)
        state = await self._state(execution_id)
        if state.status not in TERMINAL:
            lease = await self.storage.get_lease(execution_id)
            if lease is not None and (
                lease.owner not in (None, self.node_id)
                or (self.balancer is not None and lease.ready_at is not None)
            ):
                # Run by another process, or (in a cluster) ready for one to claim.
                return await self._await_elsewhere(execution_id)
            # It may have ended between the two reads (its end drops the lease).
            self._forget(execution_id)
            state = await self._state(execution_id)
            if state.status not in TERMINAL:
                raise ExecutionNotRunningError(
                    f"execution {execution_id!r} is {state.status} but not running here",
                    execution_id=execution_id,
                    status=state.status,
                )
        return state.status, state.outputs, state.error

    async def _await_elsewhere(self, execution_id: str) -> tuple[str, Any, Any]:
        """Wait for an execution another process runs to end (or to come
        here), then read its outcome from the store."""
        self._forget(execution_id)  # our copy is stale: the owner writes
        waiter = self._watched.get(execution_id)
        if waiter is None:
            waiter = self._watched[execution_id] = asyncio.get_running_loop().create_future()
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.ensure_future(self._watch())
        await asyncio.shield(waiter)
        if execution_id in self._table:
            return await self._await_terminal(execution_id)  # it came here
        self._forget(execution_id)
        state = await self._state(execution_id)
        return state.status, state.outputs, state.error

    async def _watch(self) -> None:
        """One poll for every execution waited on that runs elsewhere: their
        statuses in one query, every 10 ms while outcomes keep arriving,
        backing off to 250 ms while none do."""
        interval = _WATCH_MIN
        while self._watched and not self._closed:
            done: list[str] = [eid for eid in self._watched if eid in self._table]
            try:
                statuses = await self.storage.execution_statuses(list(self._watched))
            except StorageError as e:
                log.warning("reading the statuses of executions run elsewhere failed: %s", e)
                statuses = {}
            done += [eid for eid, status in statuses.items() if status in TERMINAL]
            done += [eid for eid in self._watched if eid not in statuses and statuses]
            for eid in done:
                waiter = self._watched.pop(eid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            interval = _WATCH_MIN if done else min(interval * 2, _WATCH_MAX)
            if self._watched:
                await asyncio.sleep(interval)

    async def _load(self, execution_id: str, *, in_thread: bool = True) -> None:
        """Bring an execution from storage into the core (verifying its chain)."""
        if self.core.contains(execution_id):
            return
        # A snapshot that is damaged or disagrees with the events is passed
        # over (logged): the events are the truth.
        # A claim told how long its history is: a short one loads from its
        # events without looking for a snapshot (one read less per claim).
        claimed = self._claimed_versions.pop(execution_id, None)
        short = claimed is not None and claimed <= _SHORT_HISTORY
        if await load_execution(
            self.core,
            self.storage,
            execution_id,
            in_thread=in_thread,
            short=short,
            events=self._prefetched.pop(execution_id, None),
        ):
            self._partial.add(execution_id)
        else:
            self._partial.discard(execution_id)

    async def _state(self, execution_id: str) -> Any:
        await self._ensure_started()
        await self._load(execution_id)
        return self.core.state(execution_id)

    async def get_execution(self, execution_id: str) -> Execution:
        """The execution's current view (any status)."""
        return Execution.from_state(await self._state(execution_id))

    async def query(self, execution_id: str) -> dict[str, Any]:
        """The whole current state (steps, timers, signals, …) as a dict."""
        state: dict[str, Any] = (await self._state(execution_id)).to_dict()
        return state

    async def list_executions(
        self,
        *,
        status: str | Sequence[str] | None = None,
        workflow_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
        workflow_version: str | None = None,
        created_after: int | None = None,
        created_before: int | None = None,
        id_contains: str | None = None,
        newest_first: bool = False,
    ) -> list[ExecutionRecord]:
        """Executions by status and/or workflow id, oldest first.

        Returns the store's index records (:class:`itonami.storage.ExecutionRecord`:
        id, workflow, status, parent, version; times in microseconds); use
        :meth:`get_execution` for an execution's inputs, outputs and error.
        The other filters are those of
        :meth:`itonami.storage.Storage.list_executions` (µs bounds on
        ``created_at``; ``newest_first`` reverses the order).
        """
        await self._ensure_started()
        return await self.storage.list_executions(
            status=status,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            created_after=created_after,
            created_before=created_before,
            id_contains=id_contains,
            newest_first=newest_first,
            limit=limit,
            offset=offset,
        )

    # ------------------------------------------------------------ messages

    async def signal(self, execution_id: str, name: str, payload: Any = None) -> None:
        """Deliver a signal; it is durable when this returns.

        Signals are kept per name in arrival order: a signal sent before the
        execution reaches its ``wait`` (or for a name it waits on only later)
        is consumed when such a wait starts. Raises
        :class:`ExecutionNotRunningError` once the execution has ended.
        """
        payload = to_recorded(payload, f"signal {name!r} payload")
        await self._ensure_started()
        await self._signal(execution_id, name, payload, None)
        self.metrics.signal_delivered()

    async def _signal(self, execution_id: str, name: str, payload: Any, ack: int | None) -> None:
        data = {"name": name, "payload": payload}
        while True:
            entry = self._table.get(execution_id)
            if entry is None:
                lease = await self.storage.get_lease(execution_id)
                if lease is not None and lease.owner not in (None, self.node_id):
                    # Another process owns it: the store's inbox carries the
                    # signal to it (it acts on the wake hint).
                    self._forget(execution_id)  # the owner writes: reread it
                    await self._state(execution_id)  # not found: raises
                    self._check_running(execution_id)
                    await self.storage.post_message(
                        execution_id, "signal", name, orjson.dumps(payload)
                    )
                    return
                # Nobody runs it: record it in its history; whoever runs it
                # next consumes it.
                await self._append_offline(execution_id, "signal_received", data)
                return
            if entry.phase is Phase.LIVE and entry.run is not None:
                run = entry.run
                if run.status in TERMINAL:
                    await asyncio.shield(entry.changed)
                    continue
                await run.deliver_signal(name, payload, ack)
                return
            if entry.phase is Phase.PARKED and entry.blocked and name in entry.blocked.signals:
                delivered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._wake(
                    entry,
                    before_launch=functools.partial(_deliver, delivered, name, payload, ack),
                )
                if await delivered:
                    return
                continue
            if entry.phase in (Phase.PARKED, Phase.BACKOFF):
                # Nothing of it waits for this name now: record it without
                # bringing the execution back.
                async with entry.lock:
                    if entry.phase in (Phase.PARKED, Phase.BACKOFF):
                        await self._append_offline(
                            execution_id, "signal_received", data, entry, ack
                        )
                        return
                continue
            if entry.phase is Phase.BROKEN and entry.error is not None:
                raise entry.error
            await asyncio.shield(entry.changed)  # resuming: ask again once live

    def _check_running(self, execution_id: str) -> None:
        state = self.core.state(execution_id)
        if state.status in TERMINAL:
            raise ExecutionNotRunningError(
                f"execution {execution_id!r} is {state.status}; it takes no more signals",
                execution_id=execution_id,
                status=state.status,
            )

    async def _append_offline(
        self,
        execution_id: str,
        kind: str,
        data: Any,
        entry: Entry | None = None,
        ack: int | None = None,
    ) -> None:
        """Append one event to an execution no run of this engine drives."""
        await self._load(execution_id)
        try:
            self._check_running(execution_id)
            journal = self._journal(execution_id, self.core.version(execution_id), entry=entry)
            journal.ack_inbox_upto = ack
            await journal.emit(kind, "", 0, data)
        finally:
            # A parked execution holds no memory; the next reader reloads it.
            self._forget(execution_id)

    async def send_event(self, event_type: str, payload: Any = None) -> list[str]:
        """Deliver an external event to every execution whose wait for
        ``event_type`` is open when it is sent and whose filter matches it;
        returns their ids (each delivery is durable on return). Executions
        another process runs get it through the store's inbox, and their
        owner applies the filter: their ids are returned as handed over.

        Events are not kept for waits that open later (unlike signals, which
        are addressed to one execution): a wait receives the events sent
        while it is open.
        """
        payload = to_recorded(payload, f"event {event_type!r} payload")
        await self._ensure_started()
        delivered: list[str] = []
        for entry in self._table.entries():
            if await self._offer_event(entry, event_type, payload):
                delivered.append(entry.execution_id)
        # Executions this process does not hold: the store knows who waits.
        data = orjson.dumps(payload)
        for eid in await self.storage.find_event_waiters(event_type):
            if eid in self._table or eid in delivered:
                continue
            with contextlib.suppress(StorageError):  # it ended meanwhile
                await self.storage.post_message(eid, "event", event_type, data)
                delivered.append(eid)
        return delivered

    async def _offer_event(self, entry: Entry, event_type: str, payload: Any) -> bool:
        while self._table.get(entry.execution_id) is entry:
            phase = entry.phase
            if phase is Phase.LIVE and entry.run is not None:
                run = entry.run
                taken = run.offer_event(event_type, payload)
                if not isinstance(taken, bool):
                    # Kept for a wait the resumed run has not walked back to yet.
                    taken = await taken
                if taken:
                    await run.flush()
                return taken
            if phase is Phase.PARKED:
                if entry.blocked is None or event_type not in entry.blocked.events:
                    return False
                # Handed to the revived run before it starts: it takes the
                # event when it walks back to its wait.
                handed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                self._wake(
                    entry, before_launch=functools.partial(_hand_event, handed, event_type, payload)
                )
                outcome = await handed
                if outcome is None:
                    continue  # no run came of the revival: look again
                taken, run = outcome
                if not isinstance(taken, bool):
                    taken = await taken
                if taken:
                    await run.flush()
                return bool(taken)
            if phase is not Phase.RESUMING:
                return False
            await asyncio.shield(entry.changed)
        return False

    async def cancel(self, execution_id: str, reason: str = "cancelled") -> bool:
        """Cancel an execution in any unfinished state, and its children.

        Returns once it has ended: True when it ended cancelled, False when it
        had already finished (or finished on its own first).
        """
        await self._ensure_started()
        requested = False
        while True:
            entry = self._table.get(execution_id)
            if entry is None:
                state = await self._state(execution_id)  # raises for an unknown id
                if state.status in TERMINAL:
                    return requested and state.status == "cancelled"
                # Unfinished but not held here: take it over to end it.
                got = await self.storage.acquire(
                    execution_id, self.node_id, lease_seconds=self.lease_seconds
                )
                if got is None:
                    # Another process runs it: ask it through the store's
                    # inbox, then wait for the ending it records.
                    await self.storage.post_message(execution_id, "cancel", reason)
                    status, _, _ = await self._await_elsewhere(execution_id)
                    return status == "cancelled"
                entry = self._table.admit(execution_id)
                entry.epoch = got.epoch
                entry.cancel_reason = reason
                requested = True
                self._spawn(self._revive(entry))
            elif entry.phase is Phase.LIVE and entry.run is not None:
                entry.run.request_cancel(reason)
                requested = True
            elif entry.phase is Phase.BROKEN:
                if entry.error is not None:
                    raise entry.error
                return False
            else:
                if entry.cancel_reason is None:
                    entry.cancel_reason = reason
                requested = True
                if entry.phase in (Phase.PARKED, Phase.BACKOFF):
                    self._wake(entry)
            await asyncio.shield(entry.changed)

    # ------------------------------------------------------------ history

    async def _full(self, execution_id: str) -> Any:
        """A version store holding the execution's whole history.

        Usually the engine's own; for an execution resumed from a snapshot,
        a scratch store loaded (and verified) from the full durable history.
        """
        await self._state(execution_id)
        if execution_id not in self._partial:
            return self.core
        entry = self._table.get(execution_id)
        if entry is not None and entry.run is not None:
            await entry.run.flush()
        scratch = _core.VersionStore()
        await load_history(scratch, self.storage, execution_id)
        return scratch

    async def get_event_history(self, execution_id: str) -> list[Any]:
        """Every event of the execution, in order (``itonami.Event`` objects)."""
        store = await self._full(execution_id)
        events: list[Any] = store.events(execution_id)
        return events

    async def rebuild_execution_from_events(self, execution_id: str) -> Execution:
        """Replay the stored history through the reducer (ignoring cached state).

        The result equals the live state; the chain is verified on the way.
        """
        await self._ensure_started()
        scratch = _core.VersionStore()
        await load_history(scratch, self.storage, execution_id)
        state = scratch.state(execution_id)
        return Execution.from_state(state)

    async def get_execution_at_tx(self, execution_id: str, tx: int) -> Execution:
        """The execution as it was at transaction ``tx`` (MVCC read)."""
        store = await self._full(execution_id)
        return Execution.from_state(store.state_at_tx(execution_id, tx))

    async def get_execution_history(self, execution_id: str) -> list[Any]:
        """Every version: ``(version, tx, timestamp, kind, hash)`` records."""
        store = await self._full(execution_id)
        history: list[Any] = store.history(execution_id)
        return history

    async def verify(self, execution_id: str) -> Any:
        """Recompute the Merkle chain of what is stored, and check the newest
        snapshot against it; raises ``IntegrityError`` naming the execution,
        the version and what is wrong."""
        await self._ensure_started()
        entry = self._table.get(execution_id)
        if entry is not None and entry.run is not None:
            await entry.run.flush()
        return await verify_execution(self.storage, execution_id)

    # ------------------------------------------------------------ listing and retention

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
        :meth:`list_executions` (µs bounds on ``created_at``)."""
        await self._ensure_started()
        return await self.storage.count_executions(
            status=status,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            created_after=created_after,
            created_before=created_before,
            id_contains=id_contains,
        )

    async def delete_execution(self, execution_id: str) -> bool:
        """Delete a finished execution and its sub-workflow executions from the store.

        Returns False when nothing is stored under the id. Raises
        :class:`ExecutionNotFinishedError` (deleting nothing) when it, one of
        its sub-workflows or its parent has not finished: cancel it first.
        Its history is gone afterwards; ``itonami export`` it first to keep a
        verifiable copy.
        """
        await self._ensure_started()
        record = await self.storage.get_execution(execution_id)
        if record is None:
            return False
        if record.status not in TERMINAL or self._table.get(execution_id) is not None:
            raise ExecutionNotFinishedError(
                f"execution {execution_id!r} is {record.status}: only finished executions "
                "are deleted (cancel it first)",
                execution_id=execution_id,
                status=record.status,
            )
        try:
            deleted = await self.storage.delete_execution(execution_id)
        except StorageError as e:
            if "not finished" not in str(e) and "is still" not in str(e):
                raise
            raise ExecutionNotFinishedError(
                str(e), execution_id=execution_id, status=record.status
            ) from None
        self._evict_tree(execution_id)
        return deleted

    async def prune(
        self,
        *,
        finished_before: datetime.datetime | float,
        workflow_id: str | None = None,
        batch: int = 500,
    ) -> list[str]:
        """Delete every execution that finished before ``finished_before``
        (a datetime, or seconds since the epoch as the engine clock counts),
        with its sub-workflows; return the deleted ids.

        Works in batches of at most ``batch`` executions, each one short
        transaction, yielding to the event loop between them so running
        work is not held up. Unfinished executions are never touched.
        """
        await self._ensure_started()
        if isinstance(finished_before, datetime.datetime):
            finished_before = finished_before.timestamp()
        cutoff = round(float(finished_before) * 1_000_000)
        deleted: list[str] = []
        while True:
            ids = await self.storage.prune(
                finished_before=cutoff, workflow_id=workflow_id, limit=batch
            )
            if not ids:
                return deleted
            for eid in ids:
                if self.core.version(eid):
                    self._forget(eid)
            deleted.extend(ids)
            await asyncio.sleep(0)

    def enable_retention(self, finished_for: float, every: float) -> None:
        """Prune executions finished more than ``finished_for`` seconds ago,
        every ``every`` seconds of the engine clock, from :meth:`start` to
        :meth:`close` (what :meth:`WorkflowEngineBuilder.with_retention` sets)."""
        if not finished_for >= 0 or not every > 0:
            raise ValueError("retention needs finished_for >= 0 and every > 0 seconds")
        first = self._retention is None
        self._retention = (float(finished_for), float(every))
        if first and self._started and not self._closed:
            self._spawn(self._retention_loop())

    def _start_retention(self) -> None:
        if self._retention is not None:
            self._spawn(self._retention_loop())

    async def _retention_loop(self) -> None:
        while self._retention is not None and not self._closed:
            finished_for, every = self._retention
            try:
                gone = await self.prune(finished_before=self.clock.now() - finished_for)
            except ItonamiError as e:  # the store failed: try again next round
                log.warning("retention: pruning failed: %s", e)
            else:
                if gone:
                    log.info("retention: deleted %d finished executions", len(gone))
            await self.clock.sleep_until(self.clock.now() + every)

    def _evict_tree(self, execution_id: str) -> None:
        """Drop the core's copies of a deleted execution and its sub-workflows."""
        todo = [execution_id]
        while todo:
            eid = todo.pop()
            if not self.core.version(eid):
                continue
            steps = self.core.state(eid).to_dict().get("steps") or {}
            todo.extend(
                s["child_execution_id"] for s in steps.values() if s.get("child_execution_id")
            )
            self._forget(eid)


async def _deliver(
    done: asyncio.Future[bool], name: str, payload: Any, ack: int | None, run: Run | None
) -> None:
    """Deliver a signal into a revived run before it starts (``done`` tells
    the sender: True delivered, False no run came of the revival)."""
    if run is None:
        done.set_result(False)
        return
    try:
        await run.deliver_signal(name, payload, ack)
    except Exception as exc:  # the sender gets it; the run still launches
        done.set_exception(exc)
    else:
        done.set_result(True)


async def _hand_event(
    done: asyncio.Future[Any], event_type: str, payload: Any, run: Run | None
) -> None:
    """Offer an external event to a revived run before it starts (``done``
    gets ``(taken, run)``, or None when no run came of the revival)."""
    done.set_result(None if run is None else (run.offer_event(event_type, payload), run))


def _seconds(value: datetime.timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)


def _document(ir: WorkflowIR) -> bytes:
    return ir.to_json()


def _needs(ir: WorkflowIR) -> list[str]:
    """What a process must have to run an execution of ``ir``: every activity
    it names (a process that lacks one never claims it)."""
    return [f"activity:{name}" for name in sorted(ir.activity_refs())]


def _backoff(failures: int) -> float:
    """Real seconds before reviving after the ``failures``-th fault in a row."""
    return float(min(0.05 * 2 ** min(failures, 10), 5.0))


def _engine_error(exc: BaseException) -> dict[str, Any]:
    """An engine fault as recorded: type, message and a short traceback,
    secrets redacted."""
    frames = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8)
    return {
        "type": type(exc).__name__,
        "message": redact(str(exc))[:2000],
        "traceback": redact("".join(frames))[-4000:],
    }


def _live_blocked(run: Run, now: float) -> Blocked | None:
    """What a live run waits for, read from its state; None while any part
    of it may be working (see :meth:`WorkflowEngine.blocked`)."""
    task = run.task
    if task is None or task.done() or run.journal.version != run.journal.durable_version:
        return None
    state = run.state()
    if state.get("status") != "running":
        return None
    steps: dict[str, Any] = state.get("steps") or {}
    waits: dict[str, Any] = state.get("waits") or {}
    times = [t / 1e6 for t in (state.get("timers") or {}).values()]
    times += [w["timeout_at"] / 1e6 for w in waits.values() if w.get("timeout_at") is not None]
    waits_on_child = False
    for step in steps.values():
        status = step.get("status")
        if step.get("child_execution_id") and status == "running":
            waits_on_child = True
        elif step.get("activity") and status in ("scheduled", "running"):
            return None  # an attempt is in flight
        elif status == "retrying" and step.get("retry_at") is not None:
            times.append(step["retry_at"] / 1e6)
    if not (waits or times or waits_on_child) or any(t <= now for t in times):
        return None
    return Blocked(
        signals=frozenset(w.get("name") or "" for w in waits.values() if w.get("kind") == "signal"),
        events=frozenset(
            w.get("event_type") or "" for w in waits.values() if w.get("kind") == "event"
        ),
        wake_at=min(times) if times else None,
    )


def _running_children(state: Mapping[str, Any]) -> list[str]:
    return sorted(
        s["child_execution_id"]
        for s in (state.get("steps") or {}).values()
        if s.get("child_execution_id") and s.get("status") == "running"
    )

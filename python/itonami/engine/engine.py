"""The workflow engine: definitions, executions, signals, events, queries.

``WorkflowEngine`` ties the layers together: the DSL gives it a validated
strategy tree, the activity registry gives it code to run, the Rust core's
``VersionStore`` applies every event through the one reducer (and hashes it
into the Merkle chain), and a storage backend makes each event durable before
the interpreter acts on it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _core
from ..activities import ActivityRegistry
from ..dsl import WorkflowIR
from ..errors import (
    ConflictError,
    ExecutionNotFoundError,
    ExecutionNotRunningError,
    ItonamiError,
    Problem,
    StorageError,
    WaitTimeoutError,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from ..retry import RetryPolicy
from ..storage import ExecutionRecord, Storage, default_storage_url, open_storage
from .clock import Clock, SystemClock
from .runtime import TERMINAL, EventWaiter, Run

__all__ = ["Execution", "WorkflowEngine", "WorkflowEngineBuilder"]

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
        self._recover: bool | frozenset[str] = True
        self._storage_options: dict[str, Any] = {}

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

    def with_random_seed(self, seed: int) -> WorkflowEngineBuilder:
        """Seed the retry jitter (for reproducible tests)."""
        self._seed = seed
        return self

    def build(self) -> WorkflowEngine:
        """The engine; it opens storage and resumes executions on first use."""
        storage = self._storage
        if storage is None:
            storage = default_storage_url()
        if isinstance(storage, str):
            storage = open_storage(storage, **self._storage_options)
        return WorkflowEngine(
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
        )

    def build_sync(self) -> Any:
        """A blocking facade over the engine, for scripts (see ``SyncWorkflowEngine``)."""
        from .sync import SyncWorkflowEngine

        return SyncWorkflowEngine(self.build())


class WorkflowEngine:
    """Runs declarative workflows durably. Use :meth:`builder` to make one.

    All methods are coroutines; ``async with engine:`` opens storage,
    resumes unfinished executions and closes cleanly.
    """

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
    ) -> None:
        self.storage = storage
        self.activities = activities
        self.clock: Clock = clock or SystemClock()
        self.snapshot_every = snapshot_every
        self.snapshot_retention = snapshot_retention
        self.rng = random.Random(seed)
        self.core = _core.VersionStore(max_payload_bytes=max_payload_bytes)
        self._definitions: dict[tuple[str, str], WorkflowIR] = {}
        self._by_hash: dict[str, WorkflowIR] = {}
        self._latest: dict[str, WorkflowIR] = {}
        self._initial = list(workflows)
        self._runs: dict[str, Run] = {}
        self._event_waiters: dict[str, list[EventWaiter]] = {}
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        # Executions whose core copy starts at a snapshot (history queries
        # read the full durable history instead).
        self._partial: set[str] = set()
        # Executions parked on a signal wait: no task, no Run, only their
        # stored state; and who waits for them to finish.
        self._parked: set[str] = set()
        self._wakeups: dict[str, asyncio.Future[None]] = {}
        self._resuming: dict[str, asyncio.Future[None]] = {}
        self._unparking: dict[str, asyncio.Future[None]] = {}
        self._wake_heap: list[tuple[float, int, str]] = []
        self._wake_seq = itertools.count()
        self._timer_task: asyncio.Task[None] | None = None
        self._timer_changed = asyncio.Event()
        self.park_idle = park_idle
        self._recover_scope = recover

    @staticmethod
    def builder() -> WorkflowEngineBuilder:
        """Start configuring an engine."""
        return WorkflowEngineBuilder()

    # ------------------------------------------------------------ lifecycle

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
            await self._recover()

    async def close(self) -> None:
        """Stop running executions (they resume on the next start) and close storage."""
        if self._closed:
            return
        self._closed = True
        for fut in list(self._resuming.values()):
            fut.cancel()
        if self._timer_task is not None:
            self._timer_task.cancel()
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._started:
            try:
                await self.storage.close()
            except StorageError as e:
                # Everything acknowledged is already durable; an unreachable
                # store must not turn a shutdown into a crash.
                log.warning("closing storage failed: %s", e)

    async def _recover(self) -> None:
        """Resume every unfinished execution: snapshot + later events, then run.

        All runs are registered before any is launched, so a parent that
        resumes first finds its resuming children.
        """
        runs: list[Run] = []
        scope = self._recover_scope
        if scope is False:
            return
        for eid in await self.storage.unfinished_executions():
            if eid in self._runs or (scope is not True and eid not in scope):
                continue
            try:
                runs.append(await self._revive(eid, in_thread=False))
            except ItonamiError as e:
                # Damage to one execution must not keep the others from resuming.
                log.error("cannot resume execution %s: %s", eid, e)
        for run in runs:
            self._launch(run)

    async def _revive(self, execution_id: str, *, in_thread: bool = True) -> Run:
        """A run rebuilt from stored state (snapshot + later events), registered
        but not launched."""
        await self._load(execution_id, in_thread=in_thread)
        d = self.core.state(execution_id).to_dict()
        ir = await self._definition_for(d)
        run = Run(
            self,
            ir,
            execution_id,
            d.get("inputs") or {},
            version=d["version"],
            recorded=d,
            parent=d.get("parent"),
        )
        run.status = d["status"]
        self._runs[execution_id] = run
        return run

    async def _definition_for(self, state: Mapping[str, Any]) -> WorkflowIR:
        h = state.get("definition_hash")
        ir = self._by_hash.get(h) if h else None
        if ir is None and h:
            doc = await self.storage.get_definition_by_hash(h)
            if doc is not None:
                ir = WorkflowIR.from_json(doc)
                self._remember(ir)
        if ir is None:
            raise WorkflowNotFoundError(
                f"definition {state.get('workflow_id')!r} (hash {h}) of execution "
                f"{state.get('execution_id')!r} is not stored",
                workflow_id=str(state.get("workflow_id")),
                version=state.get("workflow_version"),
            )
        return ir

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.start()

    # ------------------------------------------------------------ definitions

    def _remember(self, ir: WorkflowIR) -> None:
        self._definitions[(ir.id, ir.version)] = ir
        self._by_hash[ir.content_hash] = ir
        self._latest[ir.id] = ir

    async def _register(self, ir: WorkflowIR) -> None:
        problems = ir.check(activities=self.activities, workflows=self._workflow_known)
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

    def activity_defaults(self, name: str) -> tuple[RetryPolicy | None, float | None]:
        if name in self.activities:
            return self.activities.defaults_for(name)
        return None, None

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
        clean = ir.validate_inputs(dict(inputs or {}))
        if execution_id is None:
            # A fresh random id cannot exist yet: no lookup needed.
            eid = str(uuid.uuid4())
            await self._start(ir, clean, eid, parent=None, fresh=True)
            return eid
        await self._start(ir, clean, execution_id, parent=None)
        return execution_id

    async def _start(
        self,
        ir: WorkflowIR,
        inputs: dict[str, Any],
        execution_id: str,
        parent: dict[str, Any] | None,
        *,
        fresh: bool = False,
    ) -> None:
        if not fresh and (execution_id in self._runs or await self._exists(execution_id)):
            return
        run = Run(self, ir, execution_id, inputs, parent=parent)
        try:
            run.record_started()
        except BaseException:
            self.core.evict(execution_id)
            raise
        self._launch(run)
        # Let the run reach its first durability barrier, so that its first
        # commit carries workflow_started together with the first step.
        await asyncio.sleep(0)
        try:
            await run.flush(upto=1)
        except ConflictError as e:
            if e.expected == 0:
                return  # started concurrently by another engine: idempotent
            raise

    async def _exists(self, execution_id: str) -> bool:
        if self.core.contains(execution_id):
            return True
        return await self.storage.get_execution(execution_id) is not None

    def _launch(self, run: Run) -> None:
        self._runs[run.execution_id] = run
        run.task = asyncio.ensure_future(run.drive())

    def _park(self, run: Run, wake_at: float | None = None) -> None:
        """The run waits: keep its id (and wake time), drop everything else."""
        eid = run.execution_id
        self._parked.add(eid)
        if wake_at is not None:
            self._wake_at(eid, wake_at)
        # Every backend (memory included) holds the events: the core's copy
        # is rebuilt when a signal revives the run.
        self._forget(eid)
        if any(run.signal_buffer.values()):
            # A signal came in while the run was unwinding to park: resume.
            self._resuming[eid] = asyncio.ensure_future(self._resume_parked(eid))

    def _wake_at(self, execution_id: str, when: float) -> None:
        """Revive a parked execution at ``when`` (engine clock).

        One task serves every parked execution: a heap of wake times and a
        sleep until the earliest. An entry whose execution was revived
        meanwhile only causes a harmless extra walk back to its wait.
        """
        heapq.heappush(self._wake_heap, (when, next(self._wake_seq), execution_id))
        if self._timer_task is None or self._timer_task.done():
            self._timer_task = asyncio.ensure_future(self._timer_loop())
        elif self._wake_heap[0][2] == execution_id:
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
            if eid not in self._parked or eid in self._resuming:
                continue
            self._resuming[eid] = asyncio.ensure_future(self._resume_parked(eid))

    async def _resume_parked(self, execution_id: str) -> None:
        try:
            run = await self._unpark(execution_id)
            if run is not None:
                self._launch(run)
        finally:
            self._resuming.pop(execution_id, None)

    async def _unpark(self, execution_id: str) -> Run | None:
        """Bring a parked execution back as a live run (not yet launched).

        Returns None when it was not parked. A caller that arrives while
        another is reviving it waits for that, then finds the live run.
        """
        reviving = self._unparking.get(execution_id)
        if reviving is not None:
            await asyncio.shield(reviving)
            return None
        if execution_id not in self._parked:
            return None
        self._parked.discard(execution_id)
        done = self._unparking[execution_id] = asyncio.get_running_loop().create_future()
        try:
            run = await self._revive(execution_id)
        except BaseException:
            self._parked.add(execution_id)
            raise
        finally:
            del self._unparking[execution_id]
            done.set_result(None)
        wake = self._wakeups.pop(execution_id, None)
        if wake is not None and not wake.done():
            wake.set_result(None)
        return run

    def _forget(self, execution_id: str) -> None:
        """Drop the core's copy (it is ahead of, or disagrees with, storage)."""
        self.core.evict(execution_id)
        self._partial.discard(execution_id)

    def _run_finished(self, run: Run) -> None:
        if self._runs.get(run.execution_id) is run:
            del self._runs[run.execution_id]

    def _log_crash(self, run: Run, exc: BaseException) -> None:
        log.error("execution %s stopped: %r", run.execution_id, exc, exc_info=exc)
        if isinstance(exc, StorageError) and not self._closed:
            # The store failed (a restarted database, a full disk): what it
            # holds is intact, so resume from it once it answers again.
            eid = run.execution_id
            self._resuming[eid] = asyncio.ensure_future(self._resume_after_outage(eid))

    async def _resume_after_outage(self, execution_id: str) -> None:
        delay = 0.05
        try:
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    self._forget(execution_id)
                    run = await self._revive(execution_id)
                except StorageError as e:
                    delay = min(delay * 2, 5.0)
                    log.warning(
                        "storage still failing for %s (%s); retry in %.2fs", execution_id, e, delay
                    )
                    continue
                self._launch(run)
                return
        finally:
            self._resuming.pop(execution_id, None)

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
            run = self._runs.get(execution_id)
            if run is not None:
                await asyncio.shield(run.done)
                if run.crash is not None:
                    resuming = self._resuming.get(execution_id)
                    if resuming is None:
                        raise run.crash
                    await asyncio.shield(resuming)
                continue  # finished, parked or resumed: look again
            resuming = self._resuming.get(execution_id)
            if resuming is not None:
                await asyncio.shield(resuming)
                continue
            if execution_id in self._parked:
                wake = self._wakeups.get(execution_id)
                if wake is None:
                    wake = self._wakeups[execution_id] = asyncio.get_running_loop().create_future()
                await asyncio.shield(wake)
                continue
            break
        state = await self._state(execution_id)
        if state.status not in TERMINAL:
            raise ExecutionNotRunningError(
                f"execution {execution_id!r} is {state.status} but not running here",
                execution_id=execution_id,
                status=state.status,
            )
        return state.status, state.outputs, state.error

    async def _load(self, execution_id: str, *, in_thread: bool = True) -> None:
        """Bring an execution from storage into the core (verifying its chain)."""
        if self.core.contains(execution_id):
            return
        snap = await self.storage.load_snapshot(execution_id)
        base = snap[0] if snap else 0
        events = await self.storage.read_events(execution_id, from_version=base)
        if not events and snap is None:
            raise ExecutionNotFoundError(
                f"no execution {execution_id!r}", execution_id=execution_id
            )
        history = b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
        hashes = b"".join(e.hash for e in events)
        txs = [e.tx for e in events]
        args = (execution_id, history, hashes, txs, snap[1] if snap else None)
        if snap:
            self._partial.add(execution_id)
        else:
            self._partial.discard(execution_id)
        if in_thread and len(history) > 256 * 1024:
            # Long histories verify off the event loop (the core releases the GIL).
            await asyncio.to_thread(self.core.load, *args)
        else:
            self.core.load(*args)

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
    ) -> list[ExecutionRecord]:
        """Executions by status and/or workflow id, oldest first.

        Returns the store's index records (:class:`itonami.storage.ExecutionRecord`:
        id, workflow, status, parent, version; times in microseconds); use
        :meth:`get_execution` for an execution's inputs, outputs and error.
        """
        await self._ensure_started()
        return await self.storage.list_executions(
            status=status, workflow_id=workflow_id, limit=limit, offset=offset
        )

    async def signal(self, execution_id: str, name: str, payload: Any = None) -> None:
        """Deliver a signal; it is durable when this returns.

        A signal sent before the execution reaches its ``wait`` is kept and
        consumed when the wait starts.
        """
        parked = await self._unpark(execution_id)
        if parked is not None:
            # Record the signal first, then resume: the wait finds it buffered.
            await parked.deliver_signal(name, payload)
            self._launch(parked)
            return
        run = await self._live(execution_id)
        await run.deliver_signal(name, payload)

    async def _live(self, execution_id: str) -> Run:
        await self._ensure_started()
        run = self._runs.get(execution_id)
        if run is not None:
            return run
        state = await self._state(execution_id)
        raise ExecutionNotRunningError(
            f"execution {execution_id!r} is {state.status}; it takes no more signals",
            execution_id=execution_id,
            status=state.status,
        )

    async def send_event(self, event_type: str, payload: Any = None) -> list[str]:
        """Route an external event to every execution waiting for it whose filter
        matches; returns their ids (each delivery is durable on return)."""
        await self._ensure_started()
        delivered: list[str] = []
        for waiter in list(self._event_waiters.get(event_type, ())):
            if waiter.future.done():
                continue
            try:
                matched = waiter.matches(payload)
            except ItonamiError as e:
                log.warning("event filter at %s failed: %s", waiter.node.path, e)
                continue
            if not matched:
                continue
            self._remove_event_waiter(waiter)
            waiter.future.set_result((event_type, payload))
            try:
                await asyncio.shield(waiter.recorded)
            except Exception:
                continue  # the wait ended first (timeout, cancellation): not delivered
            delivered.append(waiter.run.execution_id)
        return delivered

    def _add_event_waiter(self, waiter: EventWaiter) -> None:
        self._event_waiters.setdefault(waiter.node.event_type or "", []).append(waiter)

    def _remove_event_waiter(self, waiter: EventWaiter) -> None:
        waiters = self._event_waiters.get(waiter.node.event_type or "", [])
        if waiter in waiters:
            waiters.remove(waiter)

    async def cancel(self, execution_id: str, reason: str = "cancelled") -> bool:
        """Cancel a running execution (and its children); False if it had finished."""
        await self._ensure_started()
        parked = await self._unpark(execution_id)
        if parked is not None:
            self._launch(parked)
            await asyncio.sleep(0)  # let it start, so the cancellation reaches its code
        run = self._runs.get(execution_id)
        if run is None or run.task is None:
            await self._state(execution_id)  # raises for an unknown id
            return False
        if run.cancel_requested is None:
            run.cancel_requested = reason
            run.task.cancel()
        await asyncio.shield(run.done)
        return True

    # ------------------------------------------------------------ history

    async def _full(self, execution_id: str) -> Any:
        """A version store holding the execution's whole history.

        Usually the engine's own; for an execution resumed from a snapshot,
        a scratch store loaded (and verified) from the full durable history.
        """
        await self._state(execution_id)
        if execution_id not in self._partial:
            return self.core
        run = self._runs.get(execution_id)
        if run is not None:
            await run.flush()
        events = await self.storage.read_events(execution_id)
        scratch = _core.VersionStore()
        history = b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
        await asyncio.to_thread(
            scratch.load,
            execution_id,
            history,
            b"".join(e.hash for e in events),
            [e.tx for e in events],
            None,
        )
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
        events = await self.storage.read_events(execution_id)
        if not events:
            raise ExecutionNotFoundError(
                f"no execution {execution_id!r}", execution_id=execution_id
            )
        history = b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
        hashes = b"".join(e.hash for e in events)
        state = await asyncio.to_thread(_core.replay_verified, execution_id, history, hashes)
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
        """Recompute the Merkle chain; raises ``IntegrityError`` at the first bad node."""
        store = await self._full(execution_id)
        return await asyncio.to_thread(store.verify, execution_id)


def _document(ir: WorkflowIR) -> bytes:
    return ir.to_json()

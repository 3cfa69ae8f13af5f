"""One live execution: the interpreter that walks a workflow's strategy tree.

Every state change is an event appended through the Rust core's reducer
(``VersionStore.append``) and made durable by the storage backend before the
interpreter acts on it. The interpreter itself keeps no state that cannot be
rebuilt from events: when an execution resumes after a crash, it walks the
tree again and every step that the recorded state shows as finished returns
its recorded outcome instead of running. That makes live execution and
recovery the same code path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from .._failpoints import hit
from ..activities import ActivityContext, describe_error, make_idempotency_key, run_activity
from ..dsl import (
    ActivityNode,
    DecisionNode,
    MapNode,
    Node,
    ParallelNode,
    SagaNode,
    SeqNode,
    SubworkflowNode,
    WaitNode,
)
from ..errors import (
    ActivityTimeoutError,
    ConflictError,
    ItonamiError,
    StorageError,
    UnknownActivityError,
)
from ..retry import DEFAULT_RETRY_POLICY
from ..storage import AppendRequest, StoredEvent
from .clock import DeadlineExceeded, race_deadline, to_micros

if TYPE_CHECKING:
    from ..dsl import WorkflowIR
    from .engine import WorkflowEngine

__all__ = ["TERMINAL", "Run", "StepFailure"]

TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out", "compensated"})


class StepFailure(Exception):
    """A step that failed for good; ``error`` is the recorded error dict."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "step failed"))
        self.error = error


class Compensated(StepFailure):
    """A saga that failed and was compensated; ``error`` is the original error."""


class Parked(Exception):
    """The run waits (for a signal, a time, or both) with nothing else to do:
    it leaves memory.

    What it waits for is durable; a signal (``WorkflowEngine.signal``) or the
    engine's timer service at ``wake_at`` resumes the execution from its
    recorded state, the same path as recovery after a crash.
    """

    def __init__(self, path: str, wake_at: float | None = None) -> None:
        super().__init__(path)
        self.wake_at = wake_at


class BranchCancelled(Exception):
    """A branch that a previous run of this execution recorded as cancelled."""


def _error(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, **extra}


class Scope:
    """What mappings and conditions see: inputs, step results, signals, item.

    A map iteration gets a child scope so that step ids inside the iteration
    name that iteration's results, while results outside stay visible.
    """

    __slots__ = ("index", "item", "parent", "run", "steps")

    def __init__(self, run: Run, parent: Scope | None = None, item: Any = None, index: int = -1):
        self.run = run
        self.parent = parent
        self.steps: dict[str, dict[str, Any]] = {}
        self.item = item
        self.index = index

    def all_steps(self) -> dict[str, dict[str, Any]]:
        if self.parent is None:
            return self.steps
        return {**self.parent.all_steps(), **self.steps}

    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "inputs": self.run.inputs,
            "steps": self.all_steps(),
            "signals": self.run.latest_signals,
        }
        scope: Scope | None = self
        while scope is not None:
            if scope.index >= 0:
                ctx["item"] = scope.item
                ctx["index"] = scope.index
                break
            scope = scope.parent
        return ctx

    def record(self, node: Node, status: str, output: Any = None, error: Any = None) -> None:
        if node.id:
            self.steps[node.id] = {"output": output, "status": status, "error": error}


class Run:
    """The interpreter of one execution, plus its durable append pipeline."""

    def __init__(
        self,
        engine: WorkflowEngine,
        ir: WorkflowIR,
        execution_id: str,
        inputs: dict[str, Any],
        *,
        version: int = 0,
        recorded: dict[str, Any] | None = None,
        parent: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.ir = ir
        self.execution_id = execution_id
        self.inputs = inputs
        self.parent = parent
        self.version = version  # newest version appended to the core
        self.durable_version = version  # newest version the storage holds
        self.status = "pending"
        self._pending: list[StoredEvent] = []
        self._timers_set: dict[str, int] = {}
        self._timers_cleared: list[str] = []
        self._flushing: asyncio.Future[None] | None = None
        self._flush_target = version
        self._broken: BaseException | None = None
        self._last_snapshot = version
        state = recorded or {}
        self.recorded_steps: dict[str, dict[str, Any]] = state.get("steps") or {}
        self.recorded_waits: dict[str, dict[str, Any]] = state.get("waits") or {}
        self.recorded_timers: dict[str, int] = state.get("timers") or {}
        self.recorded_compensations: dict[str, Any] = state.get("compensations") or {}
        self.started_at: float = (state.get("created_at") or 0) / 1e6 or engine.clock.now()
        signals = state.get("signals") or {}
        cursor = state.get("signal_cursor") or {}
        self.signal_buffer: dict[str, deque[Any]] = {
            name: deque(payloads[cursor.get(name, 0) :]) for name, payloads in signals.items()
        }
        self.latest_signals: dict[str, Any] = {
            name: payloads[-1] for name, payloads in signals.items() if payloads
        }
        self.signal_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.timer_paths: set[str] = set(self.recorded_timers)
        self.last_output: tuple[int, Any] = (-1, None)
        self.cancel_requested: str | None = None
        self.crash: BaseException | None = None
        self.children: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------ events

    def append_local(self, kind: str, step: str = "", attempt: int = 0, data: Any = None) -> Any:
        """Apply one event through the core's reducer; durable after :meth:`flush`."""
        if self._broken is not None:
            raise self._broken
        payload = orjson.dumps({} if data is None else data)
        a = self.engine.core.append(
            self.execution_id,
            self.version,
            kind,
            step,
            attempt,
            payload,
            to_micros(self.engine.clock.now()),
        )
        self.version = a.version
        self.status = a.status
        self._pending.append(StoredEvent(a.version, a.tx, a.timestamp, a.kind, a.hash, a.encoded))
        return a

    async def emit(self, kind: str, step: str = "", attempt: int = 0, data: Any = None) -> Any:
        """Append one event and return once it is durable."""
        a = self.append_local(kind, step, attempt, data)
        await self.flush()
        return a

    def set_timer(self, path: str, fire_at: float) -> None:
        self.timer_paths.add(path)
        self._timers_set[path] = to_micros(fire_at)

    def clear_timer(self, path: str) -> None:
        if path in self.timer_paths:
            self.timer_paths.discard(path)
            self._timers_set.pop(path, None)
            self._timers_cleared.append(path)

    async def flush(self, upto: int | None = None) -> None:
        """Return once every event appended so far (or up to version ``upto``)
        is durable.

        Events of one execution appended while a commit is in flight ride in
        the next commit together (group commit within the execution; the
        storage groups commits across executions). A waiter that is cancelled
        does not cancel the commit.
        """
        target = self.version if upto is None else upto
        while self.durable_version < target:
            if self._broken is not None:
                raise self._broken
            fut = self._flushing
            if fut is None:
                fut = self._submit()
            if fut.done():
                # Resolved, but its done-callback may still be queued (the
                # memory backend commits on the spot; SQLite resolves from its
                # thread): apply it here, or this loop would never yield.
                self._committed(fut)
                continue
            await asyncio.shield(fut)
        if upto is None and self._broken is not None:
            raise self._broken
        if self._snapshot_due():
            await self._snapshot()

    def _submit(self) -> asyncio.Future[None]:
        events, self._pending = self._pending, []
        timers_set, self._timers_set = self._timers_set, {}
        timers_cleared, self._timers_cleared = self._timers_cleared, []
        first = self.durable_version == 0
        req = AppendRequest(
            execution_id=self.execution_id,
            expected_version=self.durable_version,
            events=events,
            status=self.status,
            workflow_id=self.ir.id if first else None,
            workflow_version=self.ir.version if first else None,
            parent_id=(self.parent or {}).get("execution_id") if first else None,
            timers_set=timers_set,
            timers_cleared=timers_cleared,
        )
        self._flush_target = events[-1].version
        try:
            fut = self.engine.storage.submit(req)
        except BaseException as exc:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        self._flushing = fut
        if not fut.done():
            fut.add_done_callback(self._committed)
        return fut

    def _committed(self, fut: asyncio.Future[None]) -> None:
        if self._flushing is not fut:
            return
        self._flushing = None
        exc = (
            StorageError("the commit was cancelled (the store closed)")
            if fut.cancelled()
            else fut.exception()
        )
        if exc is not None:
            # The core holds events the store does not: forget them, so the
            # next reader reloads what is durable, and stop this run.
            self._broken = exc
            self.engine._forget(self.execution_id)
            return
        self.durable_version = self._flush_target

    def _snapshot_due(self) -> bool:
        every = self.engine.snapshot_every
        return bool(every) and self.durable_version - self._last_snapshot >= every

    async def _snapshot(self) -> None:
        # Only a durable version may be snapshotted: a snapshot that covered
        # events the log lacks would resurrect them after a crash.
        if self.status in TERMINAL or self.engine.core.version(self.execution_id) != (
            self.durable_version
        ):
            return
        data = self.engine.core.snapshot(self.execution_id)
        version = self.durable_version
        self._last_snapshot = version  # before any await: concurrent flushers skip it
        hit("snapshot.during")
        await self.engine.storage.save_snapshot(self.execution_id, version, data)
        await self.engine.storage.prune_snapshots(self.execution_id, self.engine.snapshot_retention)
        # Recorded in the history too; rides with the next commit.
        self.append_local("snapshot_taken", "", 0, {"version": version})

    # ------------------------------------------------------------------ driver

    def record_started(self) -> None:
        """Append ``workflow_started`` (durable with the run's first commit)."""
        self.append_local(
            "workflow_started",
            "",
            0,
            {
                "workflow_id": self.ir.id,
                "workflow_version": self.ir.version,
                "definition_hash": self.ir.content_hash,
                "inputs": self.inputs,
                "parent": self.parent,
            },
        )

    async def drive(self) -> None:
        """Run the execution to a terminal event (or until the engine stops)."""
        scope = Scope(self)
        try:
            deadline = self.started_at + self.ir.timeout if self.ir.timeout else None
            try:
                out = await race_deadline(
                    self.engine.clock, self.run_node(self.ir.strategy, scope), deadline
                )
                outputs = self.compute_outputs(scope, out)
                await self.finish("workflow_completed", {"outputs": outputs})
            except DeadlineExceeded:
                await self.cancel_children("workflow timed out")
                err = _error(
                    "WorkflowTimeout", f"workflow exceeded its timeout of {self.ir.timeout} s"
                )
                await self.finish("workflow_timed_out", {"error": err})
            except Compensated as c:
                await self.finish("workflow_compensated", {"error": c.error})
            except StepFailure as f:
                await self.finish("workflow_failed", {"error": f.error})
            except asyncio.CancelledError:
                if self.cancel_requested is None:
                    raise  # the engine is stopping: the execution resumes later
                await self.cancel_children(self.cancel_requested)
                await self.finish("workflow_cancelled", {"reason": self.cancel_requested})
            except (StorageError, ConflictError):
                raise  # not the workflow's failure: the store's (see below)
            except ItonamiError as e:
                await self.finish("workflow_failed", {"error": describe_error(e)})
        except Parked as parked:
            self.engine._park(self, parked.wake_at)
        except Exception as exc:
            # Storage failure or a bug: the execution stays unfinished in the
            # store and resumes when an engine next starts; waiters see why.
            self.crash = exc
            self.engine._log_crash(self, exc)
        finally:
            if not self.done.done():
                self.done.set_result(None)
            self.engine._run_finished(self)

    async def finish(self, kind: str, data: dict[str, Any]) -> None:
        for path in sorted(self.timer_paths):
            self.append_local("timer_cancelled", path, 0, {})
            self.clear_timer(path)
        await self.emit(kind, "", 0, data)

    def compute_outputs(self, scope: Scope, out: Any) -> dict[str, Any]:
        if not self.ir.outputs:
            return out if isinstance(out, dict) else {"result": out}
        ctx = scope.context()
        last = self.last_output[1]
        result: dict[str, Any] = {}
        for spec in self.ir.outputs:
            if spec.source is not None:
                result[spec.name] = spec.source.find_one(ctx)
            elif isinstance(last, dict):
                result[spec.name] = last.get(spec.name)
            else:
                result[spec.name] = None
        return result

    def note_output(self, version: int, output: Any) -> None:
        if version >= self.last_output[0]:
            self.last_output = (version, output)

    async def cancel_children(self, reason: str) -> None:
        for child in list(self.children):
            with contextlib.suppress(ItonamiError):
                await self.engine.cancel(child, reason=f"parent: {reason}")

    # ------------------------------------------------------------------ nodes

    async def run_node(self, node: Node, scope: Scope) -> Any:
        rec = self.recorded_steps.get(node.path)
        if rec is not None and rec.get("status") == "cancelled":
            raise BranchCancelled(node.path)
        if isinstance(node, ActivityNode):
            return await self._activity(node, scope, rec)
        if isinstance(node, SeqNode):
            out = None
            for child in node.strategies:
                out = await self.run_node(child, scope)
            scope.record(node, "completed", out)
            return out
        if isinstance(node, ParallelNode):
            return await self._parallel(node, scope)
        if isinstance(node, MapNode):
            return await self._map(node, scope)
        if isinstance(node, DecisionNode):
            return await self._decision(node, scope, rec)
        if isinstance(node, WaitNode):
            return await self._wait(node, scope, rec)
        if isinstance(node, SagaNode):
            return await self._saga(node, scope)
        if isinstance(node, SubworkflowNode):
            return await self._subworkflow(node, scope, rec)
        raise StepFailure(_error("UnknownOp", f"no interpreter for op {node.op!r} at {node.path}"))

    def _recorded_success(self, node: Node, scope: Scope, rec: dict[str, Any] | None) -> bool:
        if rec is None:
            return False
        status = rec.get("status")
        if status == "completed":
            out = rec.get("result")
            scope.record(node, "completed", out)
            self.note_output(rec.get("completed_version") or 0, out)
            return True
        if status == "failed":
            scope.record(node, "failed", error=rec.get("error"))
            raise StepFailure(rec.get("error") or _error("StepFailed", f"{node.path} failed"))
        return False

    async def _activity(self, node: ActivityNode, scope: Scope, rec: dict[str, Any] | None) -> Any:
        if self._recorded_success(node, scope, rec):
            return rec["result"]  # type: ignore[index]
        engine = self.engine
        clock = engine.clock
        reg_policy, reg_timeout = engine.activity_defaults(node.activity_ref)
        policy = node.retry_policy or reg_policy or self.ir.retry_policy or DEFAULT_RETRY_POLICY
        timeout = node.timeout if node.timeout is not None else reg_timeout
        attempt = 0
        if rec is not None:
            attempt = int(rec.get("attempts") or 0)
            if rec.get("status") == "retrying" and rec.get("retry_at"):
                await self._sleep_or_park(rec["retry_at"] / 1e6, node.path)
            elif rec.get("status") in ("scheduled", "running"):
                # The process running this attempt stopped before its outcome
                # was recorded: record that, then run the activity again
                # (at-least-once; the idempotency key stays the same).
                self.append_local(
                    "activity_retry_scheduled",
                    node.path,
                    attempt,
                    {
                        "error": _error(
                            "AttemptInterrupted",
                            f"the process running attempt {attempt} of {node.path} stopped",
                            retryable=True,
                        ),
                        "retry_at": to_micros(clock.now()),
                    },
                )
        input_ = rec["input"] if rec is not None and "input" in rec else None
        if input_ is None:
            input_ = node.input_mapping.evaluate(scope.context())
        first_at = (rec or {}).get("started_at")
        overall = None
        if node.schedule_to_close_timeout is not None:
            overall = (first_at / 1e6 if first_at else clock.now()) + node.schedule_to_close_timeout
        while True:
            attempt += 1
            self.append_local(
                "activity_scheduled",
                node.path,
                attempt,
                {"activity": node.activity_ref, "input": input_},
            )
            # The durability barrier before a side effect: everything recorded so
            # far (the previous step's result included) is committed first.
            await self.emit("activity_started", node.path, attempt, {})
            ok, outcome = await self._attempt(node, input_, attempt, timeout, overall)
            if ok:
                scope.record(node, "completed", outcome)
                return outcome
            error = outcome
            retryable = bool(error.get("retryable", True))
            retry_at = clock.now() + policy.delay(attempt, engine.rng)
            if policy.should_retry(attempt, str(error.get("type")), retryable) and (
                overall is None or retry_at < overall
            ):
                await self.emit(
                    "activity_retry_scheduled",
                    node.path,
                    attempt,
                    {"error": error, "retry_at": to_micros(retry_at)},
                )
                await self._sleep_or_park(retry_at, node.path)
                continue
            self.append_local("activity_failed", node.path, attempt, {"error": error})
            scope.record(node, "failed", error=error)
            raise StepFailure(error)

    async def _attempt(
        self,
        node: ActivityNode,
        input_: dict[str, Any],
        attempt: int,
        timeout: float | None,
        overall: float | None,
    ) -> tuple[bool, Any]:
        """Run one attempt: ``(True, result)`` once recorded, or ``(False, error)``."""
        engine = self.engine
        clock = engine.clock
        try:
            activity = engine.activities.get(node.activity_ref)
        except UnknownActivityError as e:
            return False, describe_error(e) | {"retryable": False}
        deadline = clock.now() + timeout if timeout is not None else None
        if overall is not None:
            deadline = overall if deadline is None else min(deadline, overall)
        ctx = ActivityContext(
            execution_id=self.execution_id,
            workflow_id=self.ir.id,
            step_path=node.path,
            activity=node.activity_ref,
            attempt=attempt,
            idempotency_key=make_idempotency_key(self.execution_id, node.path),
            deadline=None,
            info={"workflow_version": self.ir.version},
        )
        try:
            attempt_ = run_activity(activity, input_, ctx, None)
            result = await (
                attempt_ if deadline is None else race_deadline(clock, attempt_, deadline)
            )
        except DeadlineExceeded:
            which = "start-to-close" if deadline != overall else "schedule-to-close"
            return False, describe_error(
                ActivityTimeoutError(
                    f"activity {node.activity_ref!r} at {node.path} exceeded its {which} timeout",
                    activity=node.activity_ref,
                    retryable=which == "start-to-close",
                )
            )
        except ItonamiError as e:
            return False, describe_error(e)
        hit("activity.after_effect")
        try:
            # Not flushed here: the next side effect's barrier (or the
            # workflow's end) commits it, with whatever else was recorded.
            a = self.append_local("activity_completed", node.path, attempt, {"result": result})
        except (TypeError, orjson.JSONEncodeError) as e:
            return False, _error(
                "ResultNotSerializable",
                f"activity {node.activity_ref!r} returned a value that is not JSON: {e}",
                retryable=False,
            )
        except ItonamiError as e:  # e.g. PayloadTooLargeError from the core
            if self._broken is not None:
                raise
            return False, describe_error(e) | {"retryable": False}
        self.note_output(a.version, result)
        return True, result

    async def _gather_children(
        self,
        scope: Scope,
        jobs: list[tuple[Node, Scope]],
        need: int,
        limit: int | None,
    ) -> list[Any]:
        """Run child nodes concurrently until ``need`` succeed; cancel the rest.

        Results come back in job order, ``None`` for a job that did not finish.
        Fails (with the first failure) once ``need`` successes became impossible.
        """
        n = len(jobs)
        results: list[Any] = [None] * n
        sem = asyncio.Semaphore(limit) if limit else None

        async def one(i: int) -> Any:
            node, child_scope = jobs[i]
            if sem is None:
                return await self.run_node(node, child_scope)
            async with sem:
                return await self.run_node(node, child_scope)

        tasks = {asyncio.ensure_future(one(i)): i for i in range(n)}
        ok = lost = 0
        first_error: StepFailure | None = None
        try:
            pending = set(tasks)
            while pending and ok < need:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in sorted(done, key=tasks.__getitem__):
                    exc = t.exception()
                    if exc is None:
                        results[tasks[t]] = t.result()
                        ok += 1
                    elif isinstance(exc, BranchCancelled):
                        lost += 1
                    elif isinstance(exc, StepFailure):
                        lost += 1
                        first_error = first_error or exc
                    else:
                        raise exc
                if n - lost < need:
                    break
        finally:
            leftover = [t for t in tasks if not t.done()]
            for t in leftover:
                t.cancel()
            if leftover:
                await asyncio.gather(*leftover, return_exceptions=True)
            for t in tasks:  # finished after the decision: their outcome is moot
                if t.done() and not t.cancelled():
                    t.exception()
        if ok < need:
            await self._record_cancelled(leftover, tasks, jobs, "sibling failed")
            assert first_error is not None
            raise first_error
        await self._record_cancelled(leftover, tasks, jobs, "completion condition met")
        return results

    async def _record_cancelled(
        self,
        leftover: Iterable[asyncio.Task[Any]],
        tasks: dict[asyncio.Task[Any], int],
        jobs: list[tuple[Node, Scope]],
        reason: str,
    ) -> None:
        state = self.engine.core.state(self.execution_id)
        # A branch cancelled while its last event was being committed has
        # finished after all: it stays completed.
        paths = sorted(
            path
            for path in (jobs[tasks[t]][0].path for t in leftover)
            if state.step_status(path) not in ("completed", "failed", "cancelled")
        )
        for path in paths:
            self.append_local("step_cancelled", path, 0, {"reason": reason})
            for timer in [p for p in self.timer_paths if p == path or p.startswith(path + "/")]:
                self.append_local("timer_cancelled", timer, 0, {})
                self.clear_timer(timer)
        if paths:
            await self.flush()

    async def _parallel(self, node: ParallelNode, scope: Scope) -> Any:
        need = node.completion.n
        out = await self._gather_children(scope, [(b, scope) for b in node.branches], need, None)
        scope.record(node, "completed", out)
        return out

    async def _map(self, node: MapNode, scope: Scope) -> Any:
        items = node.items.find_one(scope.context())
        if not isinstance(items, list):
            error = _error(
                "MapItemsNotAList",
                f"map at {node.path}: {node.items.text} gave {type(items).__name__}, not a list",
            )
            scope.record(node, "failed", error=error)
            raise StepFailure(error)
        jobs = [
            (node.strategy.at(f"{node.path}/{k}"), Scope(self, scope, item, k))
            for k, item in enumerate(items)
        ]
        out = await self._gather_children(scope, jobs, len(jobs), node.max_concurrency)
        scope.record(node, "completed", out)
        return out

    async def _decision(self, node: DecisionNode, scope: Scope, rec: dict[str, Any] | None) -> Any:
        if rec is not None and "branch" in rec:
            branch = rec["branch"]
        else:
            ctx = scope.context()
            branch = None
            for i, (condition, _) in enumerate(node.conditions):
                try:
                    taken = condition.evaluate(ctx)
                except ItonamiError as e:
                    error = describe_error(e) | {"retryable": False}
                    await self.emit("step_failed", node.path, 0, {"error": error})
                    raise StepFailure(error) from e
                if taken:
                    branch = i
                    break
            if branch is None and node.default_branch is not None:
                branch = "default"
            await self.emit("decision_made", node.path, 0, {"branch": branch})
        if branch is None:
            chosen = None
        elif branch == "default":
            chosen = node.default_branch
        else:
            chosen = node.conditions[int(branch)][1]
        out = None if chosen is None else await self.run_node(chosen, scope)
        scope.record(node, "completed", out)
        return out

    async def _wait(self, node: WaitNode, scope: Scope, rec: dict[str, Any] | None) -> Any:
        if self._recorded_success(node, scope, rec):
            return rec["result"]  # type: ignore[index]
        clock = self.engine.clock
        if node.kind == "timer":
            fire_at_us = self.recorded_timers.get(node.path)
            if fire_at_us is None:
                fire_at = clock.now() + (node.duration or 0.0)
                self.set_timer(node.path, fire_at)
                await self.emit("timer_scheduled", node.path, 0, {"fire_at": to_micros(fire_at)})
            else:
                fire_at = fire_at_us / 1e6
            await self._sleep_or_park(fire_at, node.path)
            hit("timer.fire")
            self.clear_timer(node.path)
            self.append_local("timer_fired", node.path, 0, {})
            await self.emit("step_completed", node.path, 0, {"output": None})
            scope.record(node, "completed", None)
            return None

        opened = self.recorded_waits.get(node.path)
        if opened is None:
            data: dict[str, Any] = {"kind": node.kind}
            if node.kind == "signal":
                data["name"] = node.signal_name
            else:
                data["event_type"] = node.event_type
                data["filter"] = node.filter.text if node.filter is not None else None
            timeout_at = clock.now() + node.timeout if node.timeout is not None else None
            if timeout_at is not None:
                data["timeout_at"] = to_micros(timeout_at)
                self.set_timer(node.path, timeout_at)
            await self.emit("wait_started", node.path, 0, data)
        else:
            t = opened.get("timeout_at")
            timeout_at = t / 1e6 if t is not None else None
        if (
            node.kind == "signal"
            and timeout_at is not None
            and timeout_at > clock.now()
            and not self.signal_buffer.get(node.signal_name or "")
            and self._can_park()
        ):
            await self.flush()
            if not self.signal_buffer.get(node.signal_name or ""):
                raise Parked(node.path, wake_at=timeout_at)
        try:
            if node.kind == "signal":
                payload = await race_deadline(clock, self._next_signal(node), timeout_at)
            else:
                payload = await race_deadline(clock, self._next_event(node, scope), timeout_at)
        except DeadlineExceeded:
            self.clear_timer(node.path)
            what = (
                f"signal {node.signal_name!r}"
                if node.kind == "signal"
                else f"event {node.event_type!r}"
            )
            error = _error(
                "WaitTimeout", f"no {what} arrived at {node.path} within {node.timeout} s"
            )
            await self.emit("step_failed", node.path, 0, {"error": error})
            scope.record(node, "failed", error=error)
            raise StepFailure(error) from None
        scope.record(node, "completed", payload)
        return payload

    async def _next_signal(self, node: WaitNode) -> Any:
        name = node.signal_name or ""
        while True:
            buffered = self.signal_buffer.get(name)
            if buffered:
                payload = buffered.popleft()
                self.clear_timer(node.path)
                await self.emit(
                    "step_completed", node.path, 0, {"output": payload, "consume_signal": name}
                )
                return payload
            if node.timeout is None and self._can_park():
                await self.flush()
                if self.signal_buffer.get(name):
                    continue  # it arrived while the wait was being committed
                raise Parked(node.path)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.signal_waiters.setdefault(name, []).append(fut)
            try:
                await fut
            finally:
                waiters = self.signal_waiters.get(name, [])
                if fut in waiters:
                    waiters.remove(fut)

    def _can_park(self) -> bool:
        """Whether this run may leave memory now: only when the whole tree is
        this one wait (no concurrent branch, no child, no workflow deadline
        being raced), so nothing else of it is in flight."""
        return (
            self.engine.park_idle
            and not self.ir.timeout
            and not self.children
            and asyncio.current_task() is self.task
        )

    async def _sleep_or_park(self, when: float, path: str) -> None:
        """Wait until ``when`` on the engine clock: parked if the run may park
        (the durable fire time brings it back), else asleep in memory."""
        clock = self.engine.clock
        if when <= clock.now():
            return
        if self._can_park():
            await self.flush()
            raise Parked(path, wake_at=when)
        await clock.sleep_until(when)

    async def deliver_signal(self, name: str, payload: Any) -> None:
        """Record a signal, wake a wait on it (if any); durable on return.

        The signal is buffered before the first await, so a wait that is
        about to park sees it.
        """
        self.append_local("signal_received", "", 0, {"name": name, "payload": payload})
        self.signal_buffer.setdefault(name, deque()).append(payload)
        self.latest_signals[name] = payload
        for fut in self.signal_waiters.get(name, []):
            if not fut.done():
                fut.set_result(None)
                break
        await self.flush()

    async def _next_event(self, node: WaitNode, scope: Scope) -> Any:
        loop = asyncio.get_running_loop()
        waiter = EventWaiter(self, node, scope, loop.create_future(), loop.create_future())
        self.engine._add_event_waiter(waiter)
        try:
            event_type, payload = await waiter.future
            # Receipt and completion in one commit: a crash cannot separate
            # them, so a delivered event is never waited for again.
            self.append_local(
                "external_event_received",
                node.path,
                0,
                {"event_type": event_type, "payload": payload},
            )
            self.clear_timer(node.path)
            self.append_local("step_completed", node.path, 0, {"output": payload})
            await self.flush()
        except BaseException as exc:
            if not waiter.recorded.done():
                waiter.recorded.set_exception(
                    exc if isinstance(exc, Exception) else RuntimeError("wait ended")
                )
                waiter.recorded.exception()  # the sender reads it; never "unretrieved"
            raise
        finally:
            self.engine._remove_event_waiter(waiter)
        waiter.recorded.set_result(None)
        return payload

    async def _saga(self, node: SagaNode, scope: Scope) -> Any:
        comp_rec = self.recorded_compensations.get(node.path)
        if comp_rec is not None and comp_rec.get("status") == "completed":
            raise Compensated(comp_rec.get("error") or _error("SagaFailed", "saga failed"))
        if comp_rec is None:
            try:
                out = await self.run_node(node.main_flow, scope)
            except StepFailure as failure:
                # An inner saga that compensated its own part still leaves this
                # saga's other completed steps to undo.
                error = failure.error
                await self.emit("compensation_started", node.path, 0, {"error": error})
            else:
                scope.record(node, "completed", out)
                return out
        else:
            error = comp_rec.get("error") or _error("SagaFailed", "saga failed")
            if comp_rec.get("status") == "failed":
                raise StepFailure(
                    _error("CompensationFailed", "compensation failed", original=error)
                )
        await self._compensate(node, scope, error)
        scope.record(node, "compensated", error=error)
        raise Compensated(error)

    def _node_for(self, path: str) -> Node | None:
        """The node at ``path``, or None for paths the definition does not name
        (compensation steps, map iterations)."""
        if path.endswith("/comp") or "/comp/" in path:
            return None
        try:
            return self.ir.node_at(path)
        except (KeyError, ValueError, IndexError, ItonamiError):
            return None

    async def _compensate(self, node: SagaNode, scope: Scope, error: dict[str, Any]) -> None:
        state = self.engine.core.state(self.execution_id).to_dict()
        done = set(
            ((state.get("compensations") or {}).get(node.path) or {}).get("compensated") or []
        )
        prefix = node.main_flow.path + "/"
        completed = [
            (step.get("completed_version") or 0, path)
            for path, step in (state.get("steps") or {}).items()
            if (path == node.main_flow.path or path.startswith(prefix))
            and step.get("status") == "completed"
        ]
        for _, path in sorted(completed, reverse=True):
            target = self._node_for(path)
            if not isinstance(target, ActivityNode) or target.compensation is None:
                continue
            if path in done:
                continue
            step_ctx = scope.context()
            step_ctx["step"] = {
                "input": state["steps"][path].get("input"),
                "output": state["steps"][path].get("result"),
            }
            try:
                result = await self.run_node(
                    target.compensation, _FixedScope(self, scope, step_ctx)
                )
                hit("compensation.during")
            except StepFailure as f:
                await self.emit(
                    "compensation_failed", node.path, 0, {"error": f.error, "step": path}
                )
                raise StepFailure(
                    _error(
                        "CompensationFailed",
                        f"compensation of {path} failed: {f.error.get('message')}",
                        original=error,
                        compensation_error=f.error,
                    )
                ) from f
            await self.emit(
                "compensation_step_completed", path, 0, {"saga": node.path, "result": result}
            )
        if node.compensation is not None:
            try:
                await self.run_node(node.compensation, scope)
            except StepFailure as f:
                await self.emit(
                    "compensation_failed",
                    node.path,
                    0,
                    {"error": f.error, "step": node.compensation.path},
                )
                raise StepFailure(
                    _error(
                        "CompensationFailed",
                        f"compensation flow of the saga at {node.path} failed",
                        original=error,
                        compensation_error=f.error,
                    )
                ) from f
        await self.emit("compensation_completed", node.path, 0, {})

    async def _subworkflow(
        self, node: SubworkflowNode, scope: Scope, rec: dict[str, Any] | None
    ) -> Any:
        if self._recorded_success(node, scope, rec):
            return rec["result"]  # type: ignore[index]
        engine = self.engine
        child_id = (rec or {}).get("child_execution_id") or f"{self.execution_id}/{node.path}"
        child_ir = engine.resolve_workflow(node.workflow_ref, node.version)
        inputs = node.input_mapping.evaluate(scope.context())
        if rec is None or not rec.get("child_execution_id"):
            await self.emit(
                "child_workflow_started",
                node.path,
                0,
                {
                    "child_execution_id": child_id,
                    "workflow_id": child_ir.id,
                    "workflow_version": child_ir.version,
                },
            )
        self.children.add(child_id)
        try:
            await engine._start(
                child_ir,
                inputs,
                child_id,
                parent={"execution_id": self.execution_id, "step": node.path},
            )
            status, outputs, error = await engine._await_terminal(child_id)
        except asyncio.CancelledError:
            if not engine._closed:  # an engine shutting down leaves children to resume
                with contextlib.suppress(ItonamiError):
                    await asyncio.shield(engine.cancel(child_id, reason="parent step cancelled"))
            raise
        except (StorageError, ConflictError):
            raise
        except ItonamiError as e:
            status, outputs, error = "failed", None, describe_error(e)
        finally:
            self.children.discard(child_id)
        if status == "completed":
            a = await self.emit(
                "child_workflow_completed",
                node.path,
                0,
                {"child_execution_id": child_id, "outputs": outputs},
            )
            self.note_output(a.version, outputs)
            scope.record(node, "completed", outputs)
            return outputs
        error = {
            "type": "ChildWorkflowFailed",
            "message": f"child workflow {child_id} ended {status}: "
            f"{(error or {}).get('message', '')}",
            "status": status,
            "cause": error,
        }
        await self.emit(
            "child_workflow_failed", node.path, 0, {"child_execution_id": child_id, "error": error}
        )
        scope.record(node, "failed", error=error)
        raise StepFailure(error)


class _FixedScope(Scope):
    """A scope whose context is given (compensations see ``step.input/output``)."""

    __slots__ = ("_ctx",)

    def __init__(self, run: Run, parent: Scope, ctx: dict[str, Any]) -> None:
        super().__init__(run, parent)
        self._ctx = ctx

    def context(self) -> dict[str, Any]:
        return self._ctx


class EventWaiter:
    """An open ``wait`` for an external event, as the engine routes events to it.

    ``future`` hands the event to the waiting run; ``recorded`` tells the
    sender once the run has committed it (or why it could not).
    """

    __slots__ = ("future", "node", "recorded", "run", "scope")

    def __init__(
        self,
        run: Run,
        node: WaitNode,
        scope: Scope,
        future: asyncio.Future[Any],
        recorded: asyncio.Future[None],
    ):
        self.run = run
        self.node = node
        self.scope = scope
        self.future = future
        self.recorded = recorded

    def matches(self, payload: Any) -> bool:
        if self.node.filter is None:
            return True
        ctx = self.scope.context()
        ctx["event"] = payload
        return bool(self.node.filter.evaluate(ctx))

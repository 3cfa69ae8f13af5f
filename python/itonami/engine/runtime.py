"""One live execution: the interpreter that walks a workflow's strategy tree.

Every state change is an event appended through the execution's
:class:`~itonami.engine.journal.Journal` (the Rust core's reducer, then
storage) before the interpreter acts on it. The interpreter keeps no state
that cannot be rebuilt from events: when an execution resumes, it walks the
tree again and every step the recorded state shows as finished returns its
recorded outcome instead of running. Live execution and recovery are the
same code path.

The run talks to its engine through :class:`~itonami.engine.host.Host` only.
What reaches it from outside (a signal, an external event, a cancel) comes
through :meth:`Run.deliver_signal`, :meth:`Run.offer_event` and
:meth:`Run.request_cancel`; each either takes effect through the journal or
tells the caller to try again once the run's phase has moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from .._failpoints import hit
from ..activities import (
    ActivityContext,
    context_deadline,
    describe_error,
    redact,
    run_activity,
)
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
    DecodeError,
    IntegrityError,
    ItonamiError,
    PayloadError,
    StorageError,
    UnknownActivityError,
)
from ..payload import to_recorded
from ..retry import DEFAULT_RETRY_POLICY
from .clock import DeadlineExceeded, race_deadline, to_micros
from .lifecycle import Blocked

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from opentelemetry.trace import Span

    from ..dsl import WorkflowIR
    from .host import Host
    from .journal import Journal

__all__ = ["TERMINAL", "Run", "StepFailure"]

log = logging.getLogger("itonami.engine.run")


class RunLog:
    """Records about one execution, with the fields structured handlers read
    (``execution_id``, ``workflow_id``, ``version``, ``step``, ``attempt``)
    as ``extra``. INFO tells an operator what happened to the execution;
    DEBUG tells every step."""

    __slots__ = ("run",)

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(
        self,
        level: int,
        msg: str,
        *args: Any,
        node: Node | None = None,
        step: str = "",
        attempt: int = 0,
        exc_info: BaseException | None = None,
    ) -> None:
        if not log.isEnabledFor(level):
            return
        run = self.run
        where = step if node is None else (node.id or node.path)
        if exc_info is not None:
            # Formatted here, not by the handler, so that secrets an activity's
            # exception carries are redacted like everywhere else.
            tb = "".join(traceback.format_exception(exc_info, limit=-12))
            msg += "\n%s"
            args = (*args, redact(tb))
        log.log(
            level,
            "%s %s: " + msg,
            run.ir.id,
            run.execution_id,
            *args,
            extra={
                "execution_id": run.execution_id,
                "workflow_id": run.ir.id,
                "version": run.journal.version,
                "step": where,
                "attempt": attempt,
            },
        )


TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out", "compensated"})

#: Errors that are not the workflow's failure but the engine's or the
#: store's: they stop the run and the engine's error policy takes over.
ENGINE_FAULTS = (StorageError, ConflictError, DecodeError, IntegrityError)


class StepFailure(Exception):
    """A step that failed for good; ``error`` is the recorded error dict."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "step failed"))
        self.error = error


class Compensated(StepFailure):
    """A saga that failed and was compensated; ``error`` is the original error."""


class Parked(Exception):
    """The run waits with nothing else to do: it leaves memory.

    What it waits for is durable; ``blocked`` tells the engine what brings it
    back (a signal, an event, a time), through the same path as recovery.
    """

    def __init__(self, blocked: Blocked) -> None:
        super().__init__(blocked.describe())
        self.blocked = blocked


class BranchCancelled(Exception):
    """A branch that a previous run of this execution recorded as cancelled."""


class _NotStarted(Exception):
    """A map/parallel child that was never started: its siblings already decided."""


def _error(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "message": message, **extra}


_NOTHING = object()


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
            "signals": self.run.latest_signals(),
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


class _WaitSlot:
    """An open signal or event wait, as the run holds it in memory."""

    __slots__ = ("future", "node", "scope")

    def __init__(self, node: WaitNode, scope: Scope, future: asyncio.Future[Any]) -> None:
        self.node = node
        self.scope = scope
        self.future = future


class _Offer:
    """An external event kept for a wait the resumed run has not reached yet."""

    __slots__ = ("delivered", "event_type", "future", "payload")

    def __init__(self, event_type: str, payload: Any, future: asyncio.Future[bool]) -> None:
        self.event_type = event_type
        self.payload = payload
        self.future = future
        self.delivered = False


class Run:
    """The interpreter of one execution."""

    def __init__(
        self,
        host: Host,
        journal: Journal,
        ir: WorkflowIR,
        execution_id: str,
        inputs: dict[str, Any],
        *,
        recorded: dict[str, Any] | None = None,
        parent: dict[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.journal = journal
        self.ir = ir
        self.execution_id = execution_id
        self.inputs = inputs
        self.parent = parent
        state = recorded or {}
        self.recorded_steps: dict[str, dict[str, Any]] = state.get("steps") or {}
        self.recorded_waits: dict[str, dict[str, Any]] = state.get("waits") or {}
        self.recorded_timers: dict[str, int] = state.get("timers") or {}
        self.recorded_compensations: dict[str, Any] = state.get("compensations") or {}
        self.started_at: float = (state.get("created_at") or 0) / 1e6 or host.clock.now()
        self._signals_seen: dict[str, Any] | None = None
        self._signal_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._slots: dict[str, _WaitSlot] = {}
        self._offers: list[_Offer] = []
        self.last_output: tuple[int, Any] = (-1, None)
        self.cancel_requested: str | None = None
        self.started = False
        self.children: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.log = RunLog(self)
        self._last_exc: BaseException | None = None
        self.tracing = host.tracing
        #: The recorded trace context (``workflow_started``) a resumed run continues.
        self.traceparent: str | None = None
        # The first RunWorkflow span of a new execution, until it drives.
        self._span: Span | None = None

    # ------------------------------------------------------------ journal

    @property
    def status(self) -> str:
        return str(self.journal.status)

    def append(self, kind: str, step: str = "", attempt: int = 0, data: Any = None) -> Any:
        return self.journal.append(kind, step, attempt, data)

    async def emit(self, kind: str, step: str = "", attempt: int = 0, data: Any = None) -> Any:
        return await self.journal.emit(kind, step, attempt, data)

    async def flush(self, upto: int | None = None) -> None:
        await self.journal.flush(upto)

    def state(self) -> dict[str, Any]:
        """The execution's state now (pending events included), as a dict."""
        d: dict[str, Any] = self.journal.state().to_dict()
        return d

    def latest_signals(self) -> dict[str, Any]:
        """The newest payload of every signal name received (the ``signals`` variable)."""
        if self._signals_seen is None:
            self._signals_seen = self.journal.state().latest_signals()
        return self._signals_seen

    # ------------------------------------------------------------ from outside

    def record_started(self) -> None:
        """Append ``workflow_started`` (durable with the run's first commit).

        The engine flushes it after letting the run reach its first barrier,
        so no end-of-turn commit is scheduled for it: that commit would run
        before the run's first step and cost a commit of its own.
        """
        data = {
            "workflow_id": self.ir.id,
            "workflow_version": self.ir.version,
            "definition_hash": self.ir.content_hash,
            "inputs": self.inputs,
            "parent": self.parent,
        }
        if self.tracing is not None:
            # The reducer ignores the field; resumed runs read it back.
            self._span, self.traceparent = self.tracing.start_workflow(
                self.ir.id, self.execution_id
            )
            if self.traceparent:
                data["traceparent"] = self.traceparent
        self.journal.append("workflow_started", "", 0, data, flushed_by_caller=True)
        self.journal.metrics.workflow_started(self.ir.id)
        self.log(logging.INFO, "started")

    async def deliver_signal(self, name: str, payload: Any, ack: int | None = None) -> None:
        """Record a signal and wake a wait on it (if any); durable on return.

        The signal is applied before the first await, so a wait that is about
        to park sees it. ``ack``: the inbox message it comes from, deleted by
        the same commit.
        """
        self.append("signal_received", "", 0, {"name": name, "payload": payload})
        if ack is not None:
            self.journal.ack_inbox_upto = max(ack, self.journal.ack_inbox_upto or 0)
        self.log(logging.DEBUG, "signal %r received", name)
        self._signals_seen = None
        for fut in self._signal_waiters.get(name, []):
            if not fut.done():
                fut.set_result(None)
                break
        await self.flush()

    def offer_event(self, event_type: str, payload: Any) -> bool | asyncio.Future[bool]:
        """Hand an external event to this run's open waits for ``event_type``.

        True when a wait took it (receipt and completion are appended
        together; the caller flushes), False when no open wait's filter
        matches. When the state shows such a wait open that the resumed run
        has not walked back to yet, the offer is kept for it and a future
        tells the caller the outcome (by the time the run reaches the wait,
        parks or stops).
        """
        delivered = False
        for slot in list(self._slots.values()):
            delivered = self._try_slot(slot, event_type, payload) or delivered
        if delivered:
            return True
        if self.status != "running" or not self._unreached(event_type):
            return False
        offer = _Offer(event_type, payload, asyncio.get_running_loop().create_future())
        self._offers.append(offer)
        return offer.future

    def _try_slot(self, slot: _WaitSlot, event_type: str, payload: Any) -> bool:
        node = slot.node
        if node.kind != "event" or node.event_type != event_type or slot.future.done():
            return False
        if node.filter is not None:
            ctx = slot.scope.context()
            ctx["event"] = payload
            try:
                if not node.filter.evaluate(ctx):
                    return False
            except ItonamiError as e:
                # A filter that cannot be evaluated on this payload does not
                # match it; the wait stays open for the next event.
                log.warning("event filter at %s failed: %s", node.path, e)
                return False
        # Receipt and completion in one commit: a crash cannot separate them,
        # so a delivered event is never waited for again.
        self.append(
            "external_event_received", node.path, 0, {"event_type": event_type, "payload": payload}
        )
        self.append("step_completed", node.path, 0, {"output": payload})
        self.journal.metrics.event_delivered()
        self._slots.pop(node.path, None)
        slot.future.set_result(payload)
        return True

    def _unreached(self, event_type: str) -> bool:
        """Whether a wait for ``event_type`` that the recorded state shows open
        has not been reached by this run yet."""
        state = self.journal.state()
        return any(
            w.get("kind") == "event"
            and w.get("event_type") == event_type
            and p not in self._slots
            and state.step_status(p) == "waiting"
            for p, w in self.recorded_waits.items()
        )

    def _settle_offers(self, slot: _WaitSlot | None) -> None:
        """Give kept offers to a wait just reached; answer those no wait can take."""
        for offer in list(self._offers):
            if slot is not None and self._try_slot(slot, offer.event_type, offer.payload):
                offer.delivered = True
            if slot is None or not self._unreached(offer.event_type):
                self._offers.remove(offer)
                if not offer.future.done():
                    offer.future.set_result(offer.delivered)

    def request_cancel(self, reason: str) -> None:
        """Ask the run to end ``cancelled`` (children too); idempotent."""
        if self.cancel_requested is not None:
            return
        self.cancel_requested = reason
        # A run that has not started sees the request first thing; one that
        # runs is interrupted at its current await.
        if self.started and self.task is not None and not self.task.done():
            self.task.cancel()

    # ------------------------------------------------------------ driver

    async def drive(self) -> Blocked | None:
        """Run the execution to a terminal event; or return what it parks on.

        Raises for what is not the workflow's outcome (an engine fault, the
        engine stopping): the engine's error policy handles those.
        """
        if self.tracing is None:
            return await self._drive()
        span, self._span = self._span, None
        if span is None:
            span = self.tracing.resume_workflow(self.ir.id, self.execution_id, self.traceparent)
        with self.tracing.running(span, lambda: self.status):
            return await self._drive()

    def end_span(self) -> None:
        """End the first span of an execution this process only submitted."""
        if self._span is not None:
            self._span.end()
            self._span = None

    async def _traced(
        self, aw: Coroutine[Any, Any, Any], name: str, node: Node, attempt: int | None = None
    ) -> Any:
        """Await ``aw`` inside a step span (``tracing`` is on)."""
        assert self.tracing is not None
        with self.tracing.step(name, self.execution_id, self.ir.id, node.id or node.path, attempt):
            return await aw

    async def _drive(self) -> Blocked | None:
        self.started = True
        try:
            if self.cancel_requested is not None:
                await self._end_cancelled()
                return None
            await self._drive_tree()
            return None
        except Parked as parked:
            return parked.blocked
        finally:
            self._slots.clear()
            self._settle_offers(None)

    async def _drive_tree(self) -> None:
        scope = Scope(self)
        deadline = self.started_at + self.ir.timeout if self.ir.timeout else None
        try:
            if deadline is not None and deadline <= self.host.clock.now():
                raise DeadlineExceeded
            out = await race_deadline(
                self.host.clock, self.run_node(self.ir.strategy, scope), deadline
            )
            outputs = to_recorded(self.compute_outputs(scope, out), "workflow outputs")
            await self.finish("workflow_completed", {"outputs": outputs})
        except DeadlineExceeded:
            await self.cancel_children("workflow timed out")
            err = _error("WorkflowTimeout", f"workflow exceeded its timeout of {self.ir.timeout} s")
            await self.finish("workflow_timed_out", {"error": err})
        except Compensated as c:
            await self.finish("workflow_compensated", {"error": c.error})
        except StepFailure as f:
            await self.finish("workflow_failed", {"error": f.error})
        except asyncio.CancelledError:
            if self.cancel_requested is None:
                raise  # the engine is stopping: the execution resumes later
            await self._end_cancelled()
        except ENGINE_FAULTS:
            raise
        except ItonamiError as e:
            await self.finish("workflow_failed", {"error": describe_error(e)})

    async def _end_cancelled(self) -> None:
        if self.status in TERMINAL:
            await self.flush()  # it ended on its own while the cancel arrived
            return
        reason = self.cancel_requested or "cancelled"
        await self.cancel_children(reason)
        await self.finish("workflow_cancelled", {"reason": reason})

    async def finish(self, kind: str, data: dict[str, Any]) -> None:
        """Append the terminal event (cancelling pending timers) and commit."""
        if self.status in TERMINAL:
            await self.flush()
            return
        for path in sorted(path for path, _ in self.journal.state().pending_timers()):
            self.append("timer_cancelled", path, 0, {})
        await self.emit(kind, "", 0, data)
        status = kind.removeprefix("workflow_")
        self.journal.metrics.workflow_ended(
            self.ir.id, status, self.host.clock.now() - self.started_at
        )
        if status == "completed":
            self.log(logging.INFO, "completed")
        else:
            error = data.get("error") or {}
            reason = error.get("message") if isinstance(error, dict) else data.get("reason")
            self.log(logging.WARNING, "ended %s: %s", status, reason or data.get("reason"))

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

    def running_children(self) -> list[str]:
        """Child executions this run started that have not reported back:
        those being awaited now, and those the recorded state shows running."""
        kids = set(self.children)
        for step in (self.state().get("steps") or {}).values():
            child = step.get("child_execution_id")
            if child and step.get("status") == "running":
                kids.add(child)
        return sorted(kids)

    async def cancel_children(self, reason: str) -> None:
        for child in self.running_children():
            with contextlib.suppress(ItonamiError):
                await self.host.cancel_child(child, f"parent: {reason}")

    # ------------------------------------------------------------ nodes

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
        host = self.host
        clock = host.clock
        reg_policy, reg_timeout = host.activity_defaults(node.activity_ref)
        policy = node.retry_policy or reg_policy or self.ir.retry_policy or DEFAULT_RETRY_POLICY
        timeout = node.timeout if node.timeout is not None else reg_timeout
        attempt = 0
        if rec is not None:
            attempt = int(rec.get("attempts") or 0)
            if rec.get("status") == "retrying" and rec.get("retry_at"):
                await self._sleep_or_park(rec["retry_at"] / 1e6)
            elif rec.get("status") in ("scheduled", "running"):
                # The process running this attempt stopped before its outcome
                # was recorded: record that, then run the activity again
                # (at-least-once; the idempotency key stays the same).
                self.append(
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
            scheduled = time.perf_counter()
            self.journal.append_step(
                [
                    (
                        "activity_scheduled",
                        node.path,
                        attempt,
                        {"activity": node.activity_ref, "input": input_},
                    ),
                    ("activity_started", node.path, attempt, None),
                ],
                flushed_by_caller=True,
            )
            # The durability barrier before a side effect: everything recorded so
            # far (the previous step's result included) is committed first.
            await self.journal.flush()
            self.log(
                logging.DEBUG, "activity %r started", node.activity_ref, node=node, attempt=attempt
            )
            ok, outcome = await self._attempt(node, input_, attempt, timeout, overall, scheduled)
            if ok:
                self.log(
                    logging.DEBUG,
                    "activity %r completed",
                    node.activity_ref,
                    node=node,
                    attempt=attempt,
                )
                scope.record(node, "completed", outcome)
                return outcome
            error = outcome
            retryable = bool(error.get("retryable", True))
            retry_at = clock.now() + policy.delay(attempt, host.rng)
            if policy.should_retry(attempt, str(error.get("type")), retryable) and (
                overall is None or retry_at < overall
            ):
                await self.emit(
                    "activity_retry_scheduled",
                    node.path,
                    attempt,
                    {"error": error, "retry_at": to_micros(retry_at)},
                )
                self.journal.metrics.activity_retry(node.activity_ref)
                self.log(
                    logging.INFO,
                    "activity %r failed (%s: %s); retry in %.3gs",
                    node.activity_ref,
                    error.get("type"),
                    error.get("message"),
                    retry_at - clock.now(),
                    node=node,
                    attempt=attempt,
                    exc_info=self._last_exc,
                )
                await self._sleep_or_park(retry_at)
                continue
            self.append("activity_failed", node.path, attempt, {"error": error})
            self.log(
                logging.WARNING,
                "activity %r failed for good (%s: %s)",
                node.activity_ref,
                error.get("type"),
                error.get("message"),
                node=node,
                attempt=attempt,
                exc_info=self._last_exc,
            )
            scope.record(node, "failed", error=error)
            raise StepFailure(error)

    async def _attempt(
        self,
        node: ActivityNode,
        input_: dict[str, Any],
        attempt: int,
        timeout: float | None,
        overall: float | None,
        scheduled: float = 0.0,
    ) -> tuple[bool, Any]:
        """Run one attempt: ``(True, result)`` once recorded, or ``(False, error)``.

        ``scheduled``: when (``time.perf_counter``) the attempt was scheduled.
        """
        clock = self.host.clock
        self._last_exc = None
        try:
            activity = self.host.activity(node.activity_ref)
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
            # The activity's own budget (ActivityContext.remaining(), the HTTP
            # activity's time limit).
            deadline=context_deadline(clock.now(), deadline),
            info={"workflow_version": self.ir.version},
        )
        began = time.perf_counter()
        ok: bool | None = None  # stays None when the attempt is interrupted
        try:
            attempt_ = run_activity(activity, input_, ctx, None)
            if deadline is not None:
                attempt_ = race_deadline(clock, attempt_, deadline)
            if self.tracing is not None:
                attempt_ = self._traced(attempt_, f"RunActivity:{node.activity_ref}", node, attempt)
            result = await attempt_
            ok = True
        except DeadlineExceeded:
            ok = False
            which = "start-to-close" if deadline != overall else "schedule-to-close"
            return False, describe_error(
                ActivityTimeoutError(
                    f"activity {node.activity_ref!r} at {node.path} exceeded its {which} timeout",
                    activity=node.activity_ref,
                    retryable=which == "start-to-close",
                )
            )
        except ItonamiError as e:
            ok = False
            # Kept for the log record (the traceback of what the activity raised).
            self._last_exc = e.__cause__ or e
            return False, describe_error(e)
        finally:
            if ok is not None:
                self.journal.metrics.activity_attempt(
                    node.activity_ref, began - scheduled, time.perf_counter() - began, ok
                )
        hit("activity.after_effect")
        try:
            # The next step receives exactly what is recorded.
            result = to_recorded(result, f"result of activity {node.activity_ref!r} at {node.path}")
        except PayloadError as e:
            return False, _error("ResultNotSerializable", str(e), retryable=False)
        try:
            # Not flushed here: the next side effect's barrier (or the
            # workflow's end) commits it, with whatever else was recorded.
            a = self.append("activity_completed", node.path, attempt, {"result": result})
        except (TypeError, orjson.JSONEncodeError) as e:
            return False, _error(
                "ResultNotSerializable",
                f"activity {node.activity_ref!r} returned a value that is not JSON: {e}",
                retryable=False,
            )
        except ENGINE_FAULTS:
            raise
        except ItonamiError as e:  # e.g. PayloadTooLargeError from the core
            if self.journal.broken is not None:
                raise
            return False, describe_error(e) | {"retryable": False}
        self.note_output(a.version, result)
        return True, result

    async def _gather_children(
        self,
        jobs: list[tuple[Node, Scope]],
        need: int,
        limit: int | None,
    ) -> list[Any]:
        """Run child nodes concurrently until ``need`` succeed; cancel the rest.

        Results come back in job order, ``None`` for a job that did not finish.
        Fails (with the first failure) once ``need`` successes became
        impossible; from that moment no further child starts.
        """
        n = len(jobs)
        results: list[Any] = [None] * n
        sem = asyncio.Semaphore(limit) if limit else None
        tally = {"ok": 0, "lost": 0}

        def decided() -> bool:
            return tally["ok"] >= need or n - tally["lost"] < need

        async def run(i: int) -> Any:
            node, child_scope = jobs[i]
            try:
                out = await self.run_node(node, child_scope)
            except (StepFailure, BranchCancelled):
                # Counted before the semaphore lets the next child in, so a
                # failure stops the queue at once.
                tally["lost"] += 1
                raise
            tally["ok"] += 1
            return out

        async def one(i: int) -> Any:
            if sem is None:
                return await run(i)
            async with sem:
                if decided():
                    raise _NotStarted
                return await run(i)

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
                    elif isinstance(exc, (BranchCancelled, _NotStarted)):
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
        unfinished = [jobs[i][0].path for t, i in tasks.items() if t in leftover or _never_ran(t)]
        if ok < need:
            await self._record_cancelled(unfinished, "sibling failed")
            assert first_error is not None
            raise first_error
        await self._record_cancelled(unfinished, "completion condition met")
        return results

    async def _record_cancelled(self, branches: Iterable[str], reason: str) -> None:
        """Record branches that will not finish as cancelled, with everything
        still open inside them (waits, timers), so nothing outside sees them
        as pending."""
        state = self.state()
        steps = state.get("steps") or {}
        timers = state.get("timers") or {}
        waits = state.get("waits") or {}
        done = ("completed", "failed", "cancelled")
        wrote = False
        for branch in sorted(branches):
            prefix = branch + "/"
            # A branch cancelled while its last event was being committed has
            # finished after all: it stays completed.
            if (steps.get(branch) or {}).get("status") in done:
                continue
            for wait in sorted(p for p in waits if p.startswith(prefix)):
                if (steps.get(wait) or {}).get("status") not in done:
                    self.append("step_cancelled", wait, 0, {"reason": reason})
            self.append("step_cancelled", branch, 0, {"reason": reason})
            for timer in sorted(p for p in timers if p == branch or p.startswith(prefix)):
                self.append("timer_cancelled", timer, 0, {})
            wrote = True
        if wrote:
            await self.flush()

    async def _parallel(self, node: ParallelNode, scope: Scope) -> Any:
        need = node.completion.n
        out = await self._gather_children([(b, scope) for b in node.branches], need, None)
        scope.record(node, "completed", out)
        return out

    async def _map(self, node: MapNode, scope: Scope) -> Any:
        try:
            items = node.resolve_items(scope.context())
        except (ValueError, ItonamiError) as e:
            error = _error("MapItemsNotAList", f"map at {node.path}: {e}", retryable=False)
            if (self.recorded_steps.get(node.path) or {}).get("status") != "failed":
                await self.emit("step_failed", node.path, 0, {"error": error})
            scope.record(node, "failed", error=error)
            raise StepFailure(error) from None
        jobs = [(node.iteration(k), Scope(self, scope, item, k)) for k, item in enumerate(items)]
        out = await self._gather_children(jobs, len(jobs), node.max_concurrency)
        scope.record(node, "completed", out)
        return out

    async def _decision(self, node: DecisionNode, scope: Scope, rec: dict[str, Any] | None) -> Any:
        if rec is not None and "branch" in rec:
            branch = rec["branch"]
        else:
            try:
                branch = node.choose(scope.context())
            except ItonamiError as e:
                error = describe_error(e) | {"retryable": False}
                await self.emit("step_failed", node.path, 0, {"error": error})
                raise StepFailure(error) from e
            # Not a side effect, so no barrier of its own: the branch's first
            # side effect commits it (or the end of this turn does). A crash
            # before then leaves no trace of the choice, and the run decides
            # again from the same recorded context.
            self.append("decision_made", node.path, 0, {"branch": branch})
            self.log(logging.DEBUG, "decision took branch %r", branch, node=node)
        if branch is None:
            chosen = None
        elif branch == "default":
            chosen = node.default_branch
        else:
            chosen = node.conditions[int(branch)][1]
        out = None if chosen is None else await self.run_node(chosen, scope)
        scope.record(node, "completed", out)
        return out

    # ------------------------------------------------------------ waits

    async def _wait(self, node: WaitNode, scope: Scope, rec: dict[str, Any] | None) -> Any:
        if self._recorded_success(node, scope, rec):
            return rec["result"]  # type: ignore[index]
        clock = self.host.clock
        if node.kind == "timer":
            fire_at_us = self.recorded_timers.get(node.path)
            if fire_at_us is None:
                fire_at = clock.now() + (node.duration or 0.0)
                await self.emit("timer_scheduled", node.path, 0, {"fire_at": to_micros(fire_at)})
            else:
                fire_at = fire_at_us / 1e6
            await self._sleep_or_park(fire_at)
            hit("timer.fire")
            self.append("timer_fired", node.path, 0, {})
            self.journal.metrics.timer_fired()
            self.log(logging.DEBUG, "timer fired", node=node)
            # Like a decision, no barrier: the next side effect commits it.
            self.append("step_completed", node.path, 0, {"output": None})
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
                # The timeout is part of the open wait (``waits[path].timeout_at``):
                # no separate timer, so nothing to cancel when the wait ends early.
                data["timeout_at"] = to_micros(timeout_at)
            self.append("wait_started", node.path, 0, data)
        else:
            t = opened.get("timeout_at")
            timeout_at = t / 1e6 if t is not None else None
        try:
            if node.kind == "signal":
                payload = await self._next_signal(node, timeout_at)
            else:
                payload = await self._next_event(node, scope, timeout_at)
        except DeadlineExceeded:
            what = (
                f"signal {node.signal_name!r}"
                if node.kind == "signal"
                else f"event {node.event_type!r}"
            )
            error = _error(
                "WaitTimeout", f"no {what} arrived at {node.path} within {node.timeout} s"
            )
            await self.emit("step_failed", node.path, 0, {"error": error})
            self.log(logging.INFO, "%s", error["message"], node=node)
            scope.record(node, "failed", error=error)
            raise StepFailure(error) from None
        self.log(logging.DEBUG, "wait completed", node=node)
        scope.record(node, "completed", payload)
        return payload

    def _take_signal(self, node: WaitNode) -> Any:
        """Consume the oldest unconsumed signal of the wait's name, if any
        (appended at once: two waits on one name never take the same one)."""
        name = node.signal_name or ""
        state = self.state()
        payloads = (state.get("signals") or {}).get(name) or []
        cursor = (state.get("signal_cursor") or {}).get(name, 0)
        if cursor >= len(payloads):
            return _NOTHING
        payload = payloads[cursor]
        self.append("step_completed", node.path, 0, {"output": payload, "consume_signal": name})
        return payload

    async def _next_signal(self, node: WaitNode, timeout_at: float | None) -> Any:
        name = node.signal_name or ""
        clock = self.host.clock
        while True:
            payload = self._take_signal(node)
            if payload is not _NOTHING:
                await self.flush()
                return payload
            if timeout_at is not None and timeout_at <= clock.now():
                raise DeadlineExceeded
            if self._can_park():
                await self.flush()
                if not self._quiet():
                    continue  # something arrived while the wait was being committed
                payload = self._take_signal(node)
                if payload is _NOTHING:
                    raise Parked(Blocked(signals=frozenset({name}), wake_at=timeout_at))
                await self.flush()
                return payload
            if not self._quiet():
                # A wait is a durability barrier: what the state shows open is stored.
                await self.flush()
                continue
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._signal_waiters.setdefault(name, []).append(fut)
            try:
                await race_deadline(clock, fut, timeout_at)
            finally:
                waiters = self._signal_waiters.get(name, [])
                if fut in waiters:
                    waiters.remove(fut)

    async def _next_event(self, node: WaitNode, scope: Scope, timeout_at: float | None) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        slot = self._slots[node.path] = _WaitSlot(node, scope, fut)
        self._settle_offers(slot)
        try:
            await self.flush()  # wait_started is durable before anyone is told it is open
            while not fut.done():
                if timeout_at is not None and timeout_at <= self.host.clock.now():
                    raise DeadlineExceeded
                if self._can_park():
                    if not self._quiet():
                        await self.flush()
                        continue
                    # No await from here to the park: an event offered now
                    # finds the run without this wait and retries once it is
                    # parked, which revives it.
                    del self._slots[node.path]
                    raise Parked(
                        Blocked(events=frozenset({node.event_type or ""}), wake_at=timeout_at)
                    )
                await race_deadline(self.host.clock, asyncio.shield(fut), timeout_at)
            payload = fut.result()
            await self.flush()
            return payload
        finally:
            if self._slots.get(node.path) is slot:
                del self._slots[node.path]

    def _quiet(self) -> bool:
        """Whether everything appended is durable (nothing would be lost by leaving)."""
        return self.journal.version == self.journal.durable_version

    def _can_park(self) -> bool:
        """Whether this run may leave memory now: only when the whole tree is
        this one wait (no concurrent branch, no child, no workflow deadline
        being raced), so nothing else of it is in flight."""
        return (
            self.host.may_park
            and not self.ir.timeout
            and not self.children
            and self.cancel_requested is None
            and asyncio.current_task() is self.task
        )

    async def _sleep_or_park(self, when: float) -> None:
        """Wait until ``when`` on the engine clock: parked if the run may park
        (the durable wake time brings it back), else asleep in memory."""
        clock = self.host.clock
        if when <= clock.now():
            # Yield anyway: a zero-delay retry loop must not starve the event loop.
            await asyncio.sleep(0)
            return
        if self._can_park():
            await self.flush()
            if self._quiet():
                raise Parked(Blocked(wake_at=when))
        await clock.sleep_until(when)

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
                self.log(
                    logging.INFO, "saga failed (%s); compensating", error.get("message"), node=node
                )
            else:
                scope.record(node, "completed", out)
                return out
        else:
            error = comp_rec.get("error") or _error("SagaFailed", "saga failed")
            if comp_rec.get("status") == "failed":
                raise StepFailure(
                    _error("CompensationFailed", "compensation failed", original=error)
                )
        compensating = self._compensate(node, scope, error)
        if self.tracing is not None:
            compensating = self._traced(compensating, f"Compensate:{node.id or node.path}", node)
        await compensating
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
        state = self.state()
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
        self.log(logging.INFO, "saga compensated", node=node)

    async def _subworkflow(
        self, node: SubworkflowNode, scope: Scope, rec: dict[str, Any] | None
    ) -> Any:
        if self._recorded_success(node, scope, rec):
            return rec["result"]  # type: ignore[index]
        host = self.host
        child_id = (rec or {}).get("child_execution_id") or f"{self.execution_id}/{node.path}"
        child_ir = host.resolve_workflow(node.workflow_ref, node.version)
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
            starting = host.start_child(
                child_ir,
                inputs,
                child_id,
                {"execution_id": self.execution_id, "step": node.path},
            )
            if self.tracing is not None:
                # The child's RunWorkflow span is a child of this one.
                starting = self._traced(starting, f"StartChildWorkflow:{child_ir.id}", node)
            await starting
            status, outputs, error = await host.child_outcome(child_id)
        except asyncio.CancelledError:
            if not host.closing:  # an engine shutting down leaves children to resume
                with contextlib.suppress(ItonamiError):
                    await asyncio.shield(host.cancel_child(child_id, "parent step cancelled"))
            raise
        except ENGINE_FAULTS:
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


def _never_ran(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and isinstance(task.exception(), _NotStarted)

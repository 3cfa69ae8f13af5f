"""The workflow environment: an engine on memory (or a temporary SQLite) and a test clock."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..activities import ActivityRegistry
from ..dsl import WorkflowIR
from ..engine import Execution, TestClock, WorkflowEngine
from ..engine.lifecycle import Blocked
from ..storage import Storage

__all__ = ["BlockedForeverError", "HistoryItem", "NotSettledError", "WorkflowEnvironment"]

#: An expected history entry: an event kind, or ``(kind, step path)``.
HistoryItem = str | tuple[str, str]

Activities = ActivityRegistry | Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]]

# Consecutive checks that must find everything blocked and unchanged before
# the engine counts as settled: a woken task may take a few loop turns to put
# its next sleeper on the clock (the engine's timer task, a revival).
_STILL_ROUNDS = 5
# After this many bare yields without settling, something waits on a thread
# (a SQLite commit, a sync activity): poll with short real sleeps instead.
_SPIN_ROUNDS = 200
_POLL = 0.001


class NotSettledError(AssertionError):
    """Some executions never reached what blocks them within the time allowed.

    ``executions`` maps each such execution id to its phase in the engine.
    """

    def __init__(self, message: str, executions: Mapping[str, str | None]) -> None:
        super().__init__(message)
        self.executions = dict(executions)


class BlockedForeverError(AssertionError):
    """The execution waits for something only the test can send (a signal,
    an event), and no timer is pending that time skipping could reach.

    ``waiting`` maps each blocked execution id to a description of what it
    waits for.
    """

    def __init__(self, message: str, waiting: Mapping[str, str]) -> None:
        super().__init__(message)
        self.waiting = dict(waiting)


def _registry(activities: Activities | None) -> ActivityRegistry:
    if activities is None:
        return ActivityRegistry()
    if isinstance(activities, ActivityRegistry):
        return activities
    registry = ActivityRegistry()
    if isinstance(activities, Mapping):
        for name, fn in activities.items():
            registry.register(fn, name)
    else:
        for fn in activities:
            registry.register(fn)
    return registry


class WorkflowEnvironment:
    """An engine for tests, on memory or a temporary SQLite file, with a
    :class:`~itonami.TestClock` that moves only when the test says so.

    ::

        async with WorkflowEnvironment.start_local(activities=registry) as env:
            eid = await env.start(definition, {"orderId": "A-1"})
            await env.advance(61)              # past the 60 s timeout
            done = await env.wait_for_end(eid)
            assert done.status == "failed"

    Every method that moves time first lets the engine settle: each
    execution reaches what blocks it (:meth:`run_until_blocked`), so no
    sleep is needed between starting a run and advancing past its timer.
    :meth:`wait_for_completion` skips time by itself (to the next timer,
    retry or timeout) whenever everything is blocked, unless
    ``auto_time_skipping=False``.
    """

    def __init__(
        self,
        engine: WorkflowEngine,
        clock: TestClock,
        *,
        auto_time_skipping: bool = True,
        settle_timeout: float = 10.0,
        quiet_period: float = 0.2,
        cleanup: Path | None = None,
    ) -> None:
        """Wrap an engine built with ``clock`` (prefer :meth:`start_local`).

        ``settle_timeout`` (real seconds) bounds :meth:`run_until_blocked`;
        ``quiet_period`` (real seconds) is how long the clock waits for an
        execution that is working but not moving (an activity awaiting
        something that will never come) before it lets time pass anyway.
        """
        if engine.clock is not clock:
            raise ValueError("the engine must run on the environment's clock")
        self.engine = engine
        self.clock = clock
        self.auto_time_skipping = auto_time_skipping
        self.settle_timeout = settle_timeout
        self.quiet_period = quiet_period
        self._cleanup = cleanup
        self._previous_settle: Any = None

    @classmethod
    def start_local(
        cls,
        *,
        activities: Activities | None = None,
        workflows: Iterable[WorkflowIR] = (),
        storage: Literal["memory", "sqlite"] | str | Storage = "memory",
        clock: TestClock | None = None,
        seed: int = 0,
        auto_time_skipping: bool = True,
        settle_timeout: float = 10.0,
    ) -> WorkflowEnvironment:
        """An environment to use with ``async with``.

        ``activities``: a registry, a ``{name: function}`` mapping or
        functions (registered under their names); :attr:`activities` is the
        registry, so more can be registered later. ``storage``:
        ``"memory"`` (default), ``"sqlite"`` (a file in a temporary
        directory removed on exit), a storage URL or a
        :class:`~itonami.Storage`. ``seed`` fixes the retry jitter.
        """
        registry = _registry(activities)
        clock = clock or TestClock()
        cleanup = None
        if storage == "sqlite":
            cleanup = Path(tempfile.mkdtemp(prefix="itonami-test-"))
            storage = f"sqlite:///{cleanup / 'engine.db'}"
        engine = (
            WorkflowEngine.builder()
            .with_storage(storage)
            .with_activities(registry)
            .with_workflows(workflows)
            .with_clock(clock)
            .with_random_seed(seed)
            .build()
        )
        return cls(
            engine,
            clock,
            auto_time_skipping=auto_time_skipping,
            settle_timeout=settle_timeout,
            cleanup=cleanup,
        )

    # ------------------------------------------------------------ opening and closing

    async def __aenter__(self) -> WorkflowEnvironment:
        self._previous_settle = self.clock.settle_with(self._settle_for_clock)
        try:
            await self.engine.start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.engine.close()
        finally:
            self.clock.settle_with(self._previous_settle)
            if self._cleanup is not None:
                shutil.rmtree(self._cleanup, ignore_errors=True)
                self._cleanup = None

    @property
    def activities(self) -> ActivityRegistry:
        """The engine's activity registry (register more at any time)."""
        return self.engine.activities

    # ------------------------------------------------------------ driving

    async def start(
        self,
        workflow: WorkflowIR | str,
        inputs: Mapping[str, Any] | None = None,
        *,
        execution_id: str | None = None,
        version: str | None = None,
    ) -> str:
        """Start an execution (see :meth:`WorkflowEngine.start_workflow`)."""
        return await self.engine.start_workflow(
            workflow, inputs, execution_id=execution_id, version=version
        )

    async def signal(self, execution_id: str, name: str, payload: Any = None) -> None:
        """Send a signal (durable on return)."""
        await self.engine.signal(execution_id, name, payload)

    async def send_event(self, event_type: str, payload: Any = None) -> list[str]:
        """Send an external event to the waits open for it; returns who took it.

        Runs that have not reached their wait yet are let run first, so an
        event sent right after :meth:`start` reaches the wait it was meant for.
        """
        await self.run_until_blocked()
        return await self.engine.send_event(event_type, payload)

    async def cancel(self, execution_id: str, reason: str = "cancelled") -> bool:
        """Cancel an execution; returns once it ended (True if cancelled)."""
        return await self.engine.cancel(execution_id, reason)

    async def advance(self, seconds: float) -> None:
        """Let every run reach what blocks it, then move the clock forward by
        ``seconds``, waking timers, retries and timeouts in order (each
        woken run settles before the next time is reached)."""
        await self.clock.advance(seconds)

    async def advance_to(self, when: float) -> None:
        """Like :meth:`advance`, to the absolute time ``when`` (epoch seconds)."""
        await self.clock.set(when)

    async def run_until_blocked(self, timeout: float | None = None) -> None:
        """Return once every execution of the engine has ended or is blocked
        (on a signal, an event, a timer, a retry backoff or a child) and
        nothing moved across several turns of the event loop.

        Raises :class:`NotSettledError` naming the executions still working
        after ``timeout`` real seconds (default ``settle_timeout``).
        """
        await self._settle(strict=True, timeout=timeout)

    async def _settle_for_clock(self) -> None:
        # Time must be able to pass even while an activity hangs (its
        # timeout is what the test wants to see): after a quiet period with
        # nothing moving, the clock goes on.
        await self._settle(strict=False, timeout=None)

    async def _settle(self, *, strict: bool, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + (self.settle_timeout if timeout is None else timeout)
        last: Any = None
        still = 0
        rounds = 0
        quiet_since = start
        while True:
            report = self.engine.blocked()
            marker = self._marker(report)
            settled = all(
                b is not None or self.engine.phase(e) == "broken" for e, b in report.items()
            )
            now = loop.time()
            if marker == last:
                still += 1
            else:
                still, last, quiet_since = 0, marker, now
            if settled and still >= _STILL_ROUNDS:
                return
            if (
                not strict
                and still >= _STILL_ROUNDS
                and now - quiet_since >= self.quiet_period
                and self._only_attempts_in_flight(report)
            ):
                return
            if now > deadline:
                busy = {e: self.engine.phase(e) for e, b in report.items() if b is None}
                busy = {e: p for e, p in busy.items() if p != "broken"}
                listed = ", ".join(f"{e} ({p})" for e, p in sorted(busy.items(), key=str))
                raise NotSettledError(
                    f"these executions did not reach a wait within {now - start:.1f} s: {listed}",
                    busy,
                )
            rounds += 1
            await asyncio.sleep(0 if rounds < _SPIN_ROUNDS else _POLL)

    def _only_attempts_in_flight(self, report: Mapping[str, Blocked | None]) -> bool:
        """Whether every execution still working is a live run with an
        activity attempt under way (which may wait on the outside world, or
        for its own timeout), rather than a commit, a revival or a backoff
        the engine will finish by itself."""
        engine = self.engine
        for eid, b in report.items():
            if b is not None or engine.phase(eid) == "broken":
                continue
            if engine.phase(eid) != "live" or not engine.core.contains(eid):
                return False
            steps = (engine.core.state(eid).to_dict().get("steps") or {}).values()
            if not any(s.get("activity") and s.get("status") == "running" for s in steps):
                return False
        return True

    def _marker(self, report: Mapping[str, Blocked | None]) -> Any:
        """What changes whenever anything happens in the engine: appended
        events (transaction ids), lifecycle transitions, the clock's sleepers
        and what each execution waits for."""
        return (
            self.engine.core.last_tx,
            tuple(sorted(self.engine.lifecycle_counts().items())),
            self.clock.pending,
            self.clock.next_wakeup(),
            frozenset(report.items()),
        )

    def next_wakeup(self) -> float | None:
        """The earliest time anything of the engine waits for (a timer, a
        retry, a wait's timeout, an activity's deadline), if any."""
        times = [b.wake_at for b in self.engine.blocked().values() if b and b.wake_at is not None]
        clock_next = self.clock.next_wakeup()
        if clock_next is not None:
            times.append(clock_next)
        return min(times) if times else None

    async def wait_for_end(
        self, execution_id: str, *, skip_time: bool | None = None, timeout: float | None = None
    ) -> Execution:
        """Wait until the execution ends (any status) and return its final view.

        With time skipping (``skip_time``, default :attr:`auto_time_skipping`)
        the clock jumps to the next wake time whenever everything is blocked;
        :class:`BlockedForeverError` is raised when the execution waits on
        something no timer can bring (a signal nobody sends). Without it,
        this waits for ``timeout`` real seconds at most (default
        ``settle_timeout``).
        """
        skip = self.auto_time_skipping if skip_time is None else skip_time
        engine = self.engine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settle_timeout if timeout is None else timeout)
        while skip and engine.phase(execution_id) is not None:
            if engine.phase(execution_id) == "broken":
                break  # the engine's wait raises its error
            await self._settle(strict=False, timeout=None)
            if engine.phase(execution_id) is None:
                break
            when = self.next_wakeup()
            if when is None and engine.blocked().get(execution_id) is None:
                # Still working, and nothing on the clock would end it.
                await self.run_until_blocked(timeout=max(deadline - loop.time(), 0.0))
                continue
            if when is None:
                waiting = {
                    e: b.describe() if b.signals or b.events else "a child workflow"
                    for e, b in engine.blocked().items()
                    if b is not None
                }
                raise BlockedForeverError(
                    f"execution {execution_id!r} cannot finish by itself: "
                    + "; ".join(f"{e} waits for {w}" for e, w in sorted(waiting.items()))
                    + " (and no timer is pending)",
                    waiting,
                )
            if loop.time() > deadline:
                raise NotSettledError(
                    f"execution {execution_id!r} did not end within "
                    f"{self.settle_timeout if timeout is None else timeout} s of real time",
                    {execution_id: engine.phase(execution_id)},
                )
            await self.clock.set(max(when, self.clock.now()))
        remaining = max(deadline - loop.time(), 0.001) if not skip else None
        try:
            await engine.wait_for_completion(execution_id, timeout=remaining)
        except Exception as exc:
            from ..errors import WorkflowFailedError

            if not isinstance(exc, WorkflowFailedError):
                raise
        return await engine.get_execution(execution_id)

    async def wait_for_completion(
        self, execution_id: str, *, skip_time: bool | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The outputs of the execution once it completed (time skipped as in
        :meth:`wait_for_end`); :class:`~itonami.WorkflowFailedError` for any
        other ending."""
        await self.wait_for_end(execution_id, skip_time=skip_time, timeout=timeout)
        return await self.engine.wait_for_completion(execution_id)

    # ------------------------------------------------------------ reading

    async def query(self, execution_id: str) -> dict[str, Any]:
        """The whole current state (steps, waits, timers, signals, …)."""
        return await self.engine.query(execution_id)

    async def get_execution(self, execution_id: str) -> Execution:
        """The execution's current view (status, outputs, error, …)."""
        return await self.engine.get_execution(execution_id)

    async def history(self, execution_id: str) -> list[Any]:
        """Every event of the execution, in order (``itonami.Event`` objects)."""
        return await self.engine.get_event_history(execution_id)

    async def history_kinds(self, execution_id: str, *, step: str | None = None) -> list[str]:
        """The kinds of the execution's events in order (only those of
        ``step`` if given)."""
        events = await self.history(execution_id)
        return [e.kind for e in events if step is None or e.step == step]

    async def assert_history(
        self,
        execution_id: str,
        expected: Sequence[HistoryItem],
        *,
        mode: Literal["exact", "subsequence"] = "exact",
    ) -> None:
        """Assert the execution's events: their kinds in order (``"exact"``),
        or that ``expected`` appears among them in order with others between
        (``"subsequence"``). An item is a kind or ``(kind, step path)``."""
        events = [(e.kind, e.step) for e in await self.history(execution_id)]
        if mode not in ("exact", "subsequence"):
            raise ValueError(f"mode must be 'exact' or 'subsequence', not {mode!r}")

        def matches(item: HistoryItem, event: tuple[str, str]) -> bool:
            return item == event[0] if isinstance(item, str) else tuple(item) == event

        if mode == "exact":
            ok = len(events) == len(expected) and all(
                matches(i, e) for i, e in zip(expected, events, strict=True)
            )
        else:
            it = iter(events)
            ok = all(any(matches(item, e) for e in it) for item in expected)
        if not ok:
            shown = "\n".join(
                f"  {i:3d} {k}" + (f" @{s}" if s else "") for i, (k, s) in enumerate(events)
            )
            want = ", ".join(i if isinstance(i, str) else f"{i[0]}@{i[1]}" for i in expected)
            raise AssertionError(
                f"history of {execution_id} does not match ({mode}).\n"
                f"expected: {want}\nactual:\n{shown}"
            )

    async def export_history(self, execution_id: str, path: str | Path) -> Path:
        """Write the execution's stored history (events and node hashes) to
        ``path``, for :func:`itonami.testing.replay`; returns the path."""
        from ._replay import export_history

        return await export_history(self.engine, execution_id, path)

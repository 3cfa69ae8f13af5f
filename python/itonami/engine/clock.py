"""Time for the engine: the system clock, and a test clock that is advanced by hand.

Every timer, retry delay, activity timeout and workflow timeout goes through a
:class:`Clock`, so a test can run hours of workflow time in milliseconds.
Times are seconds since the Unix epoch as floats; events store microseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

__all__ = ["Clock", "DeadlineExceeded", "SystemClock", "TestClock", "race_deadline", "to_micros"]

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """Raised by :func:`race_deadline` when the clock reached the deadline first."""


def to_micros(seconds: float) -> int:
    """Seconds since the epoch as integer microseconds (what events record)."""
    return round(seconds * 1_000_000)


class Clock(Protocol):
    """A source of wall time that can also put a coroutine to sleep until a time."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once ``now() >= when``."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and the event loop's timers."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        # Re-check after waking: the wall clock may step while the loop's
        # monotonic timer runs, and a timer must never fire early.
        while True:
            delay = when - time.time()
            if delay <= 0:
                return
            await asyncio.sleep(delay)


class TestClock:
    """A clock that moves only when :meth:`advance` or :meth:`set` is called.

    Sleepers whose time has come are woken in order of their wake time, and
    after each wake-up :meth:`advance` lets the woken work run before it goes
    on, so tests read naturally::

        clock = TestClock()
        ...
        await clock.advance(3600)   # an hour passes

    How long "lets the woken work run" lasts is the clock's *settle* hook.
    The default yields to the event loop a fixed number of times, which is
    enough for work that only chains tasks and futures; work that waits on a
    thread (a SQLite commit, a sync activity) needs a hook that knows what to
    wait for. ``itonami.testing.WorkflowEnvironment`` installs one that waits
    until every execution of its engine has reached what blocks it, so
    ``advance`` right after ``start_workflow`` fires the run's timeout.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        start: float = 1_700_000_000.0,
        *,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._now = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._settle = settle

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._seq), fut))
        await fut

    @property
    def pending(self) -> int:
        """How many sleepers are waiting (cancelled ones excluded)."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    def next_wakeup(self) -> float | None:
        """The earliest time a sleeper waits for, if any."""
        live = [w for w, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    def settle_with(
        self, settle: Callable[[], Awaitable[None]] | None
    ) -> Callable[[], Awaitable[None]] | None:
        """Install the hook :meth:`advance` awaits before moving time and after
        each wake-up (``None``: the default bounded yields); returns the
        previous one."""
        old, self._settle = self._settle, settle
        return old

    async def settle(self) -> None:
        """Let pending work run (through the settle hook)."""
        if self._settle is not None:
            await self._settle()
        else:
            await yield_to_loop()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and let the woken coroutines run."""
        if seconds < 0:
            raise ValueError(f"a test clock cannot go backwards (advance({seconds}))")
        # Settle first: a run started just now must reach its wait (and put
        # its sleeper on this clock) before time passes, or it would see the
        # new time as its start and the wait would not time out.
        await self.settle()
        await self._move_to(self._now + seconds)

    async def set(self, when: float) -> None:
        """Move time forward to ``when``, waking sleepers one deadline at a time."""
        if when < self._now:
            raise ValueError(f"a test clock cannot go backwards ({when} < {self._now})")
        await self.settle()
        await self._move_to(when)

    async def _move_to(self, when: float) -> None:
        while True:
            # Sleepers added by woken work count too: re-read the heap each time.
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > when:
                break
            wake, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            fut.set_result(None)
            await self.settle()
        self._now = when
        await self.settle()


async def yield_to_loop(rounds: int = 50) -> None:
    """Yield to the event loop ``rounds`` times.

    The default settle of :class:`TestClock`: enough for work woken by a
    wake-up that chains through tasks and futures on this loop; it does not
    wait for threads or I/O (and reads nothing private of the loop).
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


async def race_deadline(clock: Clock, aw: Awaitable[T], when: float | None) -> T:
    """Await ``aw``; raise :class:`DeadlineExceeded` if ``clock`` reaches ``when`` first.

    A private exception type (not ``TimeoutError``) keeps the deadline apart
    from timeouts raised inside ``aw``.
    """
    if when is None:
        return await aw
    task = asyncio.ensure_future(aw)
    timer = asyncio.ensure_future(clock.sleep_until(when))
    try:
        done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        timer.cancel()
        raise
    if task in done:
        timer.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise DeadlineExceeded

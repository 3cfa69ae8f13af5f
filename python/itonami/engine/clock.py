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
from collections.abc import Awaitable
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
    :meth:`advance` yields to the event loop until the woken coroutines have
    had a chance to run, so tests read naturally::

        clock = TestClock()
        ...
        await clock.advance(3600)   # an hour passes
    """

    __test__ = False  # not a pytest test class

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

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

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and let the woken coroutines run."""
        await self.set(self._now + seconds)

    async def set(self, when: float) -> None:
        """Move time forward to ``when``, waking sleepers one deadline at a time."""
        if when < self._now:
            raise ValueError(f"a test clock cannot go backwards ({when} < {self._now})")
        while self._sleepers and self._sleepers[0][0] <= when:
            wake, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            if not fut.done():
                fut.set_result(None)
                await settle()
        self._now = when
        await settle()


async def settle(rounds: int = 50) -> None:
    """Yield to the event loop until ready callbacks stop appearing (bounded).

    Used by the test clock so that work triggered by a wake-up (which may
    chain through several tasks and futures) has run before ``advance``
    returns. Work waiting on threads or I/O is not waited for.
    """
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", None)
        if ready is not None and not ready:
            return


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

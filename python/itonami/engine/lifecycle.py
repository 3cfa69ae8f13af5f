"""The lifecycle of an execution inside one engine: one table, one state per entry.

Every unfinished execution this engine knows of has exactly one
:class:`Entry` in the :class:`ExecutionTable`, in exactly one
:class:`Phase`. Finished executions have none: the store is their truth.
The transitions (``docs/architecture.md`` draws them) are methods of the
table, and only they change an entry's phase::

    (none) ──admit──► RESUMING ──go_live──► LIVE ──park──► PARKED
                          ▲                  │  │            │
                          │                  │  └─finish──► (none)
                          │                  └──break_off─► BACKOFF
                          └──────────── wake ◄───────────────┘ (PARKED, BACKOFF)
    RESUMING ──fail_to_load──► BROKEN (damaged history, missing definition)

Whatever happens to an execution from outside — a signal, an external
event, a cancel, a timer coming due — is handled for every phase by
``WorkflowEngine``; an entry's ``changed`` future lets waiters sleep until
its phase moves instead of polling. A later lease (one owner per execution
across processes) adds a phase for "owned elsewhere" here; the metrics
recorder hears every transition in these methods.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..metrics import NOOP

if TYPE_CHECKING:
    from ..metrics import Recorder
    from .runtime import Run

__all__ = ["Blocked", "Entry", "ExecutionTable", "Phase"]


class Phase(enum.Enum):
    """Where an unfinished execution is, in this engine."""

    #: Being loaded from the store into a fresh ``Run`` (not yet driving).
    RESUMING = "resuming"
    #: A ``Run`` task is driving it.
    LIVE = "live"
    #: Blocked on what ``Entry.blocked`` names; nothing of it is in memory but this entry.
    PARKED = "parked"
    #: Its run stopped on an engine or storage error; it is revived at ``wake_at``.
    BACKOFF = "backoff"
    #: It cannot run here (damaged history, definition not stored); ``error`` says why.
    BROKEN = "broken"


@dataclass(frozen=True, slots=True)
class Blocked:
    """What a parked execution waits for: any of these revives it.

    ``signals`` maps a signal name to the wait that consumes it, ``events``
    an external event type to its wait; ``wake_at`` (engine-clock seconds) is
    the earliest recorded time (timer, retry, wait timeout).
    """

    signals: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()
    wake_at: float | None = None

    def describe(self) -> str:
        parts = [f"signal {n!r}" for n in sorted(self.signals)]
        parts += [f"event {t!r}" for t in sorted(self.events)]
        if self.wake_at is not None:
            parts.append(f"time {self.wake_at:.6f}")
        return ", ".join(parts) or "nothing"


_ACTIVE = frozenset({Phase.RESUMING, Phase.LIVE, Phase.BACKOFF})


@dataclass(slots=True, eq=False)
class Entry:
    """One unfinished execution's place in the lifecycle."""

    execution_id: str
    phase: Phase
    run: Run | None = None
    blocked: Blocked | None = None
    wake_at: float | None = None
    error: BaseException | None = None
    #: A cancel asked for while the execution was not live: acted on when it is.
    cancel_reason: str | None = None
    #: Serialises what touches a not-live execution's history (signals to it
    #: while parked, its revival), so two of them never race for one version.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Resolved (and replaced) on every transition.
    changed: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    #: Engine errors in a row (the backoff grows with it).
    failures: int = 0
    #: The fencing epoch of this engine's lease on it (0: not owned yet).
    epoch: int = 0
    #: The lease was lost to another process: nothing more may be written.
    lost: bool = False
    #: The trace context its history records ("" none; None not read yet).
    traceparent: str | None = None


class ExecutionTable:
    """The engine's unfinished executions, each in one phase; all transitions."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        #: Transitions so far, by target phase (and ``finish``): tests read
        #: them to prove an idle engine does no work; metrics will too.
        self.transitions: dict[str, int] = {}
        #: Entries in an active phase (resuming, live, backoff): what a node's
        #: capacity bounds. Parked and broken entries cost no capacity.
        self.active = 0
        #: Set whenever an entry leaves an active phase (capacity came free).
        self.freed: asyncio.Event | None = None
        #: Told every transition (the executions-by-phase gauge).
        self.metrics: Recorder = NOOP

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, execution_id: str) -> Entry | None:
        return self._entries.get(execution_id)

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def count(self, phase: Phase) -> int:
        return sum(1 for e in self._entries.values() if e.phase is phase)

    def _account(self, old: Phase, new: Phase | None) -> None:
        was, now = old in _ACTIVE, new in _ACTIVE
        if was and not now:
            self.active -= 1
            if self.freed is not None:
                self.freed.set()
        elif now and not was:
            self.active += 1

    def live_runs(self) -> list[Run]:
        return [e.run for e in self._entries.values() if e.run is not None]

    # ---------------------------------------------------------- transitions

    def _move(self, entry: Entry, phase: Phase) -> None:
        self._account(entry.phase, phase)
        self.metrics.phase(entry.phase.value, phase.value)
        entry.phase = phase
        self.transitions[phase.value] = self.transitions.get(phase.value, 0) + 1
        old, entry.changed = entry.changed, asyncio.get_running_loop().create_future()
        if not old.done():
            old.set_result(None)

    def admit(self, execution_id: str) -> Entry:
        """A new or stored execution enters (RESUMING): a run is being built."""
        if execution_id in self._entries:
            raise RuntimeError(f"execution {execution_id!r} is already in the table")
        entry = Entry(execution_id, Phase.RESUMING)
        self._entries[execution_id] = entry
        self.active += 1
        self.metrics.phase(None, Phase.RESUMING.value)
        self.transitions["admit"] = self.transitions.get("admit", 0) + 1
        return entry

    def wake(self, entry: Entry) -> None:
        """PARKED or BACKOFF → RESUMING: it is being brought back."""
        if entry.phase not in (Phase.PARKED, Phase.BACKOFF):
            raise RuntimeError(f"cannot wake an execution that is {entry.phase.value}")
        entry.blocked = None
        entry.wake_at = None
        self._move(entry, Phase.RESUMING)

    def go_live(self, entry: Entry, run: Run) -> None:
        """RESUMING → LIVE: ``run`` drives it."""
        if entry.phase is not Phase.RESUMING:
            raise RuntimeError(f"cannot launch an execution that is {entry.phase.value}")
        entry.run = run
        self._move(entry, Phase.LIVE)

    def park(self, entry: Entry, blocked: Blocked) -> None:
        """LIVE → PARKED: its run left memory; ``blocked`` names what revives it."""
        entry.run = None
        entry.blocked = blocked
        entry.wake_at = blocked.wake_at
        entry.failures = 0
        self._move(entry, Phase.PARKED)

    def break_off(self, entry: Entry, error: BaseException, wake_at: float) -> None:
        """LIVE or RESUMING → BACKOFF: revived at ``wake_at`` (engine clock)."""
        entry.run = None
        entry.error = error
        entry.wake_at = wake_at
        entry.failures += 1
        self._move(entry, Phase.BACKOFF)

    def fail_to_load(self, entry: Entry, error: BaseException) -> None:
        """RESUMING → BROKEN: it cannot run here until an operator acts."""
        entry.run = None
        entry.error = error
        self._move(entry, Phase.BROKEN)

    def finish(self, entry: Entry) -> None:
        """Terminal (or closed): the entry leaves the table; waiters wake."""
        if self._entries.pop(entry.execution_id, None) is entry:
            self._account(entry.phase, None)
            self.metrics.phase(entry.phase.value, None)
        entry.run = None
        self.transitions["finish"] = self.transitions.get("finish", 0) + 1
        if not entry.changed.done():
            entry.changed.set_result(None)

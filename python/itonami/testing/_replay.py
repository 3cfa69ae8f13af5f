"""History files and the replayer: does a stored history still run the same with today's code?

A history file holds one execution's stored events (the engine's
``encoded_history`` framing: each canonical event prefixed by its ``u32``
length) and their node hashes::

    b"ITNHIST\\0"  u8 format (= 1)
    u32 execution id length, execution id (UTF-8)
    u32 history length, history          (framed events)
    u32 hash count, count x 32 bytes      (node hash of each version)

A bare framed history (what ``tests/golden/*.history`` holds, with the
hashes in a ``.hashes`` file beside it and the file's stem as execution id)
is read too.

:func:`replay` checks such a history in two ways. First the stored data:
the events decode, the reducer accepts them and every node hash verifies
(a tampered file fails here). Then the code: a fresh engine on a test clock
runs the given definition again from the recorded inputs, each activity
answered with its recorded outcome, each signal, external event and cancel
delivered when the recorded run received it, and time skipped to each
recorded timer and retry; every step's events must come out as recorded (a
definition changed in a way that no longer fits the history fails here,
naming the first event that differs).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _core
from ..activities import ActivityContext, ActivityRegistry
from ..dsl import WorkflowIR
from ..engine import TestClock, WorkflowEngine
from ..errors import ActivityError, ItonamiError

__all__ = ["HistoryFile", "ReplayError", "export_history", "read_history_file", "replay"]

MAGIC = b"ITNHIST\0"
FORMAT = 1

# Kinds a re-execution cannot (and need not) reproduce: bookkeeping, and the
# engine's own faults (recorded, then retried as if they had not happened).
_IGNORED = frozenset({"snapshot_taken", "engine_error"})
# What comes from outside: delivered by the replayer, not produced by the run.
_INPUTS = frozenset({"signal_received", "external_event_received", "workflow_cancelled"})
# Times that follow from the clock and the retry jitter, not from the code.
_VOLATILE = frozenset({"retry_at", "fire_at", "timeout_at", "definition_hash", "parent"})
_TERMINAL = frozenset(
    {
        "workflow_completed",
        "workflow_failed",
        "workflow_cancelled",
        "workflow_timed_out",
        "workflow_compensated",
    }
)


class ReplayError(AssertionError):
    """A history that does not replay: damaged, or not what today's code does.

    ``index`` is the recorded event that differs (its position in the
    history), when the failure is about one event.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class HistoryFile:
    """One execution's stored history: framed events and node hashes."""

    execution_id: str
    history: bytes
    hashes: bytes | None

    def events(self) -> list[Any]:
        """The decoded events (``itonami.Event``)."""
        events: list[Any] = _core.decode_history(self.history)
        return events

    def to_bytes(self) -> bytes:
        """The file's bytes (the format in this module's docstring)."""
        eid = self.execution_id.encode()
        hashes = self.hashes or b""
        return b"".join(
            [
                MAGIC,
                bytes([FORMAT]),
                struct.pack("<I", len(eid)),
                eid,
                struct.pack("<I", len(self.history)),
                self.history,
                struct.pack("<I", len(hashes) // 32),
                hashes,
            ]
        )


def read_history_file(path: str | Path) -> HistoryFile:
    """Read a history file (or a bare framed history and its ``.hashes``)."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        hashes_path = path.with_suffix(".hashes")
        hashes = hashes_path.read_bytes() if hashes_path.exists() else None
        return HistoryFile(path.stem, data, hashes)
    try:
        if data[len(MAGIC)] != FORMAT:
            raise ReplayError(f"{path}: unknown history file format {data[len(MAGIC)]}")
        at = len(MAGIC) + 1
        (n,) = struct.unpack_from("<I", data, at)
        eid = data[at + 4 : at + 4 + n].decode()
        at += 4 + n
        (n,) = struct.unpack_from("<I", data, at)
        history = data[at + 4 : at + 4 + n]
        at += 4 + n
        (count,) = struct.unpack_from("<I", data, at)
        hashes = data[at + 4 : at + 4 + 32 * count]
        at += 4 + 32 * count
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise ReplayError(f"{path}: truncated or damaged history file ({e})") from None
    if at != len(data) or len(hashes) != 32 * count:
        raise ReplayError(f"{path}: truncated or damaged history file (length)")
    return HistoryFile(eid, history, hashes or None)


async def export_history(engine: WorkflowEngine, execution_id: str, path: str | Path) -> Path:
    """Write ``execution_id``'s stored history to ``path`` (verified first)."""
    await engine.verify(execution_id)  # also commits what a live run has pending
    events = await engine.storage.read_events(execution_id)
    history = b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
    out = Path(path)
    out.write_bytes(HistoryFile(execution_id, history, b"".join(e.hash for e in events)).to_bytes())
    return out


def _verify(hf: HistoryFile) -> list[Any]:
    try:
        events = hf.events()
        if hf.hashes is None:
            _core.replay(hf.execution_id, hf.history)
        else:
            store = _core.VersionStore()
            n = len(hf.hashes) // 32
            store.load(hf.execution_id, hf.history, hf.hashes, list(range(1, n + 1)), None)
            store.verify(hf.execution_id)
    except ItonamiError as e:
        raise ReplayError(f"history of {hf.execution_id} does not verify: {e}") from e
    if not events or events[0].kind != "workflow_started":
        raise ReplayError(f"history of {hf.execution_id} does not begin with workflow_started")
    return events


def _normal(event: Any) -> tuple[str, str, int, Any]:
    data = event.data
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in _VOLATILE}
        if event.kind == "workflow_started":
            data = {k: data.get(k) for k in ("workflow_id", "inputs")}
    return (event.kind, event.step, event.attempt, data)


class _Recorded:
    """The recorded outcome of every activity attempt, by (step path, attempt)."""

    def __init__(self, events: list[Any]) -> None:
        self.outcomes: dict[tuple[str, int], tuple[bool, Any]] = {}
        for e in events:
            if e.kind == "activity_completed":
                self.outcomes[(e.step, e.attempt)] = (True, e.data.get("result"))
            elif e.kind in ("activity_retry_scheduled", "activity_failed"):
                self.outcomes.setdefault((e.step, e.attempt), (False, e.data.get("error") or {}))


class _StubActivity:
    """Answers an attempt with what the recorded run got; an attempt the
    history does not know (or that timed out) never answers, so the run's
    own deadline (or the end of the replay) decides."""

    def __init__(self, name: str, recorded: _Recorded) -> None:
        self.name = name
        self._recorded = recorded

    async def execute(self, input: dict[str, Any], ctx: ActivityContext) -> Any:
        outcome = self._recorded.outcomes.get((ctx.step_path, ctx.attempt))
        if outcome is None or (not outcome[0] and outcome[1].get("type") == "ActivityTimeoutError"):
            await asyncio.get_running_loop().create_future()  # never resolved
        ok, value = outcome  # type: ignore[misc]
        if ok:
            return value
        raise ActivityError(
            str(value.get("message", "")),
            activity=value.get("activity"),
            error_type=str(value.get("type") or "ActivityError"),
            retryable=bool(value.get("retryable", True)),
            details=value.get("details"),
        )


def _by_step(events: list[tuple[int, Any]]) -> dict[str, list[tuple[int, Any]]]:
    out: dict[str, list[tuple[int, Any]]] = {}
    for i, e in events:
        out.setdefault(e.step, []).append((i, e))
    return out


def _check(
    recorded: Mapping[str, list[tuple[int, Any]]],
    produced: Mapping[str, list[tuple[int, Any]]],
    finished: bool,
    eid: str,
) -> int:
    """Compare step by step; returns how many recorded events were matched."""
    matched = 0
    for step in sorted(set(recorded) | set(produced)):
        want = recorded.get(step, [])
        got = produced.get(step, [])
        for (i, w), (_, g) in zip(want, got, strict=False):
            if _normal(w) != _normal(g):
                where = f"step {step!r}" if step else "the workflow"
                raise ReplayError(
                    f"history of {eid} diverges at event {i} ({where}): recorded "
                    f"{_show(w)}, today's code gives {_show(g)}",
                    index=i,
                )
        matched += min(len(want), len(got))
        if finished and len(got) > len(want):
            where = f"step {step!r}" if step else "the workflow"
            raise ReplayError(
                f"history of {eid}: today's code gives {_show(got[len(want)][1])} at {where}, "
                "which the recorded (finished) run never did",
                index=None,
            )
    return matched


def _show(e: Any) -> str:
    kind, _step, attempt, data = _normal(e)
    s = kind + (f" attempt {attempt}" if attempt else "")
    return s + f" {data}" if data else s


async def replay(
    history_file: str | Path | HistoryFile,
    definition: WorkflowIR,
    *,
    workflows: tuple[WorkflowIR, ...] = (),
    settle_timeout: float = 10.0,
) -> None:
    """Check that a stored history still verifies and replays with ``definition``.

    Raises :class:`ReplayError` when the file is damaged or tampered with
    (decoding, the reducer or a node hash rejects it), when it is not a
    history of ``definition``'s workflow, or when running ``definition``
    again against the recorded activity outcomes, signals, events and times
    gives different events for some step (the message names the first
    recorded event that differs). Passes silently otherwise.

    Events are compared per step path (so parallel branches may interleave
    differently), without the fields that follow from the clock or the
    retry jitter (``retry_at``, ``fire_at``, ``timeout_at``) or from the
    definition's bytes (``definition_hash``). Sub-workflow steps are not
    replayed (their children have histories of their own).
    """
    from ._env import NotSettledError, WorkflowEnvironment

    hf = history_file if isinstance(history_file, HistoryFile) else read_history_file(history_file)
    eid = hf.execution_id
    events = _verify(hf)
    started = events[0]
    if started.data.get("workflow_id") != definition.id:
        raise ReplayError(
            f"history of {eid} is of workflow {started.data.get('workflow_id')!r}, "
            f"not {definition.id!r}"
        )
    if any(e.kind == "child_workflow_started" for e in events):
        raise ReplayError(f"history of {eid} starts sub-workflows, which replay does not cover")
    relevant = [(i, e) for i, e in enumerate(events) if e.kind not in _IGNORED]
    recorded = _by_step([(i, e) for i, e in relevant])
    finished = any(e.kind in _TERMINAL for _, e in relevant)
    inputs = [(i, e) for i, e in relevant if e.kind in _INPUTS]
    total = len(relevant)

    outcomes = _Recorded(events)
    registry = ActivityRegistry()
    names = definition.activity_refs() | {
        e.data.get("activity") for e in events if e.kind == "activity_scheduled"
    }
    for name in sorted(n for n in names if isinstance(n, str)):
        registry.register(_StubActivity(name, outcomes), name)
    clock = TestClock(start=started.timestamp / 1e6)
    env = WorkflowEnvironment.start_local(
        activities=registry, workflows=workflows, clock=clock, settle_timeout=settle_timeout
    )
    async with env:
        engine = env.engine
        try:
            await env.start(definition, started.data.get("inputs") or {}, execution_id=eid)
        except ItonamiError as e:
            raise ReplayError(f"history of {eid}: today's definition cannot start it: {e}") from e
        delivered = 0
        for _ in range(4 * total + 16):
            try:
                await clock.settle()
            except NotSettledError as e:
                raise ReplayError(f"history of {eid}: the re-execution never settled: {e}") from e
            produced = [(i, e) for i, e in enumerate(await env.history(eid))]
            produced = [(i, e) for i, e in produced if e.kind not in _IGNORED]
            # Inputs are delivered by the replayer: they count as produced.
            matched = _check(recorded, _by_step(produced), finished, eid)
            if matched >= total:
                return
            done = {i for step in recorded.values() for i, _ in step[: _count(produced, step)]}
            if delivered < len(inputs):
                at, nxt = inputs[delivered]
                if all(i in done for i, e in relevant if i < at and e.kind not in _INPUTS):
                    when = nxt.timestamp / 1e6
                    if when > clock.now():
                        await env.advance_to(when)
                    await _deliver(env, eid, nxt)
                    delivered += 1
                    continue
            if engine.phase(eid) is None:
                break  # ended: what remains recorded was never produced
            when = env.next_wakeup()
            if when is None:
                break
            await env.advance_to(max(when, clock.now()))
        else:
            raise ReplayError(f"history of {eid}: the re-execution did not converge")
        produced = [(i, e) for i, e in enumerate(await env.history(eid)) if e.kind not in _IGNORED]
        missing = [(i, e) for step in recorded.values() for i, e in step[_count(produced, step) :]]
        i, first = min(missing, key=lambda p: p[0])
        state = await env.query(eid)
        raise ReplayError(
            f"history of {eid} diverges at event {i}: recorded {_show(first)}, but today's "
            f"code stops there (it is {state['status']}, waiting on "
            f"{sorted(state.get('waits') or {}) or 'nothing'})",
            index=i,
        )


def _count(produced: list[tuple[int, Any]], step: list[tuple[int, Any]]) -> int:
    """How many of one step's recorded events the re-execution has produced."""
    if not step:
        return 0
    path = step[0][1].step
    return min(len(step), sum(1 for _, e in produced if e.step == path))


async def _deliver(env: Any, eid: str, event: Any) -> None:
    data = event.data
    if event.kind == "signal_received":
        await env.signal(eid, data.get("name"), data.get("payload"))
    elif event.kind == "external_event_received":
        await env.send_event(data.get("event_type"), data.get("payload"))
    else:
        await env.cancel(eid, data.get("reason") or "cancelled")

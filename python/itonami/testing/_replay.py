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
is read too, and so is an *export* (what ``itonami export`` and
:func:`export_execution` write): one JSON object that carries the history
file above with the definition and the chain's head::

    {"format": "itonami-export", "format_version": 1,
     "execution_id": ..., "workflow_id": ..., "workflow_version": ...,
     "status": ..., "definition": {the normalised definition},
     "head": {"version": N, "hash": "<hex node hash of version N>"},
     "history_file": "<base64 of the history file's bytes>"}

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
import base64
import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .. import _core
from ..activities import ActivityContext, ActivityRegistry
from ..dsl import WorkflowIR
from ..engine import TestClock, WorkflowEngine
from ..errors import ActivityError, ExecutionNotFoundError, ItonamiError

__all__ = [
    "HistoryFile",
    "ReplayError",
    "export_execution",
    "export_history",
    "read_history_file",
    "replay",
    "verify_history",
]

MAGIC = b"ITNHIST\0"
FORMAT = 1
EXPORT_FORMAT = "itonami-export"
EXPORT_VERSION = 1

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
    #: The definition's document (JSON), when the file is an export.
    definition: bytes | None = None
    #: ``(version, node hash)`` of the chain's head, when the file is an export.
    head: tuple[int, bytes] | None = None

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
    if data.lstrip()[:1] == b"{":
        return _read_export(path, data)
    if not data.startswith(MAGIC):
        hashes_path = path.with_suffix(".hashes")
        hashes = hashes_path.read_bytes() if hashes_path.exists() else None
        return HistoryFile(path.stem, data, hashes)
    return _parse_history_file(path, data)


def _parse_history_file(path: Path, data: bytes) -> HistoryFile:
    if not data.startswith(MAGIC):
        raise ReplayError(f"{path}: not a history file")
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


def _read_export(path: Path, data: bytes) -> HistoryFile:
    try:
        doc = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
            raise ReplayError(f"{path}: not an itonami export (no format {EXPORT_FORMAT!r})")
        if doc.get("format_version") != EXPORT_VERSION:
            raise ReplayError(
                f"{path}: export format version {doc.get('format_version')!r} is not "
                f"{EXPORT_VERSION}, the one this itonami reads"
            )
        inner = _parse_history_file(path, base64.b64decode(doc["history_file"], validate=True))
        head = doc["head"]
        head_hash = bytes.fromhex(head["hash"])
        version = head["version"]
        if type(version) is not int or len(head_hash) != 32:
            raise ValueError("head must be a version and a 32-byte hash")
        definition = orjson.dumps(doc["definition"], option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
        raise ReplayError(f"{path}: damaged export ({e})") from None
    if inner.execution_id != doc.get("execution_id"):
        raise ReplayError(f"{path}: the export's execution id disagrees with its history")
    return HistoryFile(
        inner.execution_id, inner.history, inner.hashes, definition, (version, head_hash)
    )


async def export_execution(engine: WorkflowEngine, execution_id: str, path: str | Path) -> Path:
    """Write ``execution_id`` as an export (see the module docstring), verified first."""
    report = await engine.verify(execution_id)  # also commits what a live run has pending
    events = await engine.storage.read_events(execution_id)
    state = await engine.query(execution_id)
    document = await engine.storage.get_definition_by_hash(state.get("definition_hash") or "")
    if document is None:
        document = await engine.storage.get_definition(
            state["workflow_id"], state.get("workflow_version")
        )
    if document is None:
        raise ExecutionNotFoundError(
            f"execution {execution_id!r}: its definition is not stored", execution_id=execution_id
        )
    history = b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
    inner = HistoryFile(execution_id, history, b"".join(e.hash for e in events))
    doc = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "execution_id": execution_id,
        "workflow_id": state.get("workflow_id"),
        "workflow_version": state.get("workflow_version"),
        "status": state.get("status"),
        "definition": orjson.loads(document),
        "head": {"version": report.versions, "hash": report.head_hash.hex()},
        "history_file": base64.b64encode(inner.to_bytes()).decode(),
    }
    out = Path(path)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return out


def verify_history(hf: HistoryFile, *, head: bytes | None = None) -> int:
    """Verify a history file's chain offline; return its number of versions.

    The events must decode, fold through the reducer and match every node
    hash; an export's head (and ``head``, a hash known from elsewhere, e.g.
    printed by ``itonami verify`` before the execution was pruned) must be
    the hash of the last version. Raises :class:`ReplayError` otherwise.
    """
    events = _verify(hf)
    if hf.hashes is None:
        raise ReplayError(f"history of {hf.execution_id} carries no hashes to verify")
    last = hf.hashes[-32:]
    for what, want, version in (
        ("the export's head", hf.head[1] if hf.head else None, hf.head[0] if hf.head else None),
        ("the given head", head, None),
    ):
        if want is None:
            continue
        if last != want or (version is not None and version != len(events)):
            raise ReplayError(
                f"history of {hf.execution_id} does not end at {what}: its version "
                f"{len(events)} has hash {last.hex()}, the head is "
                f"{'' if version is None else f'version {version}, '}{want.hex()}"
            )
    return len(events)


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

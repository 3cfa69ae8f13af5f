"""Helpers for the core tests: valid event sequences built through the API."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from itonami import _core
from itonami.errors import DecodeError

EventTuple = tuple[str, str, int, bytes, int]

START: EventTuple = (
    "workflow_started",
    "",
    0,
    orjson.dumps(
        {"workflow_id": "wf", "workflow_version": "1", "definition_hash": "h", "inputs": {"n": 1}}
    ),
    1_000,
)

SAMPLE: list[EventTuple] = [
    START,
    ("step_started", "0", 0, b"{}", 1_001),
    ("activity_scheduled", "0/0", 1, b'{"activity":"a","input":{"x":1}}', 1_002),
    ("activity_started", "0/0", 1, b"{}", 1_003),
    ("activity_retry_scheduled", "0/0", 1, b'{"error":{"type":"E"},"retry_at":9}', 1_004),
    ("activity_scheduled", "0/0", 2, b'{"activity":"a","input":{"x":1}}', 1_005),
    ("activity_completed", "0/0", 2, b'{"result":{"y":2}}', 1_006),
    ("signal_received", "", 0, b'{"name":"go","payload":[1]}', 1_007),
    ("step_completed", "0", 0, b'{"output":{"y":2}}', 1_008),
    ("workflow_completed", "", 0, b'{"outputs":{"y":2}}', 1_009),
]

CANDIDATE_DATA = {
    "activity_scheduled": lambda v: {"activity": f"act{v % 3}", "input": {"v": v}},
    "activity_completed": lambda v: {"result": v},
    "activity_retry_scheduled": lambda v: {"error": {"type": "E"}, "retry_at": v},
    "activity_failed": lambda v: {"error": {"type": "E", "message": str(v)}},
    "activity_started": lambda v: {},
    "decision_made": lambda v: {"branch": v % 3},
    "timer_scheduled": lambda v: {"fire_at": v},
    "timer_fired": lambda v: {},
    "timer_cancelled": lambda v: {},
    "signal_received": lambda v: {"name": f"s{v % 2}", "payload": v},
    "wait_started": lambda v: {"kind": "signal", "name": "s0"},
    "external_event_received": lambda v: {"event_type": "t", "payload": v},
    "step_started": lambda v: {},
    "step_completed": lambda v: {"output": v} if v % 2 else {"output": v, "consume_signal": "s0"},
    "step_failed": lambda v: {"error": {"type": "E"}},
    "compensation_started": lambda v: {"error": {"type": "E"}},
    "compensation_step_completed": lambda v: {"saga": f"0/{v % 3}", "result": None},
    "compensation_completed": lambda v: {},
    "snapshot_taken": lambda v: {"version": 1},
    "workflow_completed": lambda v: {"outputs": v},
}

WORKFLOW_LEVEL = {"signal_received", "snapshot_taken", "workflow_completed"}


def valid_events(candidates: Iterable[tuple[str, int, int, int]]) -> list[EventTuple]:
    """Keeps the candidates (kind, path, attempt, value) that the reducer accepts."""
    store = _core.VersionStore()
    store.append("probe", 0, *START)
    out = [START]
    for i, (kind, path, attempt, value) in enumerate(candidates):
        step = "" if kind in WORKFLOW_LEVEL else f"0/{path}"
        event = (kind, step, attempt, orjson.dumps(CANDIDATE_DATA[kind](value)), 2_000 + i)
        try:
            store.append("probe", len(out), *event)
        except DecodeError:
            continue
        out.append(event)
    return out


def append_all(store: _core.VersionStore, execution_id: str, events: list[EventTuple]) -> bytes:
    """Appends each event; returns the concatenated node hashes."""
    hashes = b""
    for version, event in enumerate(events):
        hashes += store.append(execution_id, version, *event).hash
    return hashes


def history_of(events: list[EventTuple]) -> bytes:
    return _core.frame_history([_core.encode_event(*e) for e in events])

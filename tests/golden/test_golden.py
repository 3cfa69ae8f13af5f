"""Stored histories from an earlier build must keep replaying to the same
state and hashes; a tampered one must be rejected."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from itonami import IntegrityError, VersionStore, decode_history, replay

HERE = Path(__file__).parent
NAMES = ["order_completed", "order_compensated"]


def golden(name: str) -> tuple[bytes, bytes, dict]:
    return (
        (HERE / f"{name}.history").read_bytes(),
        (HERE / f"{name}.hashes").read_bytes(),
        orjson.loads((HERE / f"{name}.state.json").read_bytes()),
    )


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_replays_to_its_recorded_state(name: str) -> None:
    history, _hashes, state = golden(name)
    replayed = replay(name, history).to_dict()
    # A bare replay knows no transaction ids; everything else must match.
    assert replayed.pop("tx") == 0
    assert replayed == {k: v for k, v in state.items() if k != "tx"}
    events = decode_history(history)
    assert events[0].kind == "workflow_started"
    assert (
        events[-1].kind
        == {"completed": "workflow_completed", "compensated": "workflow_compensated"}[
            state["status"]
        ]
    )


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_loads_with_its_recorded_hashes(name: str) -> None:
    history, hashes, state = golden(name)
    store = VersionStore()
    store.load(name, history, hashes, list(range(1, len(hashes) // 32 + 1)), None)
    loaded = store.state(name).to_dict()
    assert {k: v for k, v in loaded.items() if k != "tx"} == {
        k: v for k, v in state.items() if k != "tx"
    }
    assert store.verify(name).head_hash == hashes[-32:]


@pytest.mark.parametrize("name", NAMES)
def test_tampered_golden_history_is_rejected(name: str) -> None:
    history, hashes, _ = golden(name)
    at = history.index(b"ORD-")  # inside the first event's inputs
    tampered = history[:at] + b"X" + history[at + 1 :]
    store = VersionStore()
    with pytest.raises(IntegrityError) as info:
        store.load(name, tampered, hashes, list(range(1, len(hashes) // 32 + 1)), None)
    assert info.value.version == 1

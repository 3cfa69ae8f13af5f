"""Stored histories from an earlier build must keep replaying to the same
state and hashes; a tampered one must be rejected.

Each run is stored twice: as hash revision 2 wrote it (``<run>.*``, every
version sealed) and as revision 3 does (``<run>.rev3.*``, one seal per
commit). The events and states are the same; the hashes differ."""

from __future__ import annotations

import struct
from pathlib import Path

import orjson
import pytest

from itonami import (
    InclusionProof,
    IntegrityError,
    VersionStore,
    decode_history,
    replay,
    verify_proof,
)

HERE = Path(__file__).parent
RUNS = ["order_completed", "order_compensated"]
# (file stem, hash revision)
REVISIONS = [(run, 2) for run in RUNS] + [(f"{run}.rev3", 3) for run in RUNS]
NAMES = [stem for stem, _ in REVISIONS]


def execution_id(name: str) -> str:
    """The id the run was recorded under (the file stem without its revision)."""
    return name.split(".")[0]


def golden(name: str) -> tuple[bytes, bytes, dict]:
    return (
        (HERE / f"{name}.history").read_bytes(),
        (HERE / f"{name}.hashes").read_bytes(),
        orjson.loads((HERE / f"{name}.state.json").read_bytes()),
    )


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_replays_to_its_recorded_state(name: str) -> None:
    history, _hashes, state = golden(name)
    eid = execution_id(name)
    replayed = replay(eid, history).to_dict()
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
    eid = execution_id(name)
    store = VersionStore()
    store.load(eid, history, hashes, list(range(1, len(hashes) // 32 + 1)), None)
    loaded = store.state(eid).to_dict()
    assert {k: v for k, v in loaded.items() if k != "tx"} == {
        k: v for k, v in state.items() if k != "tx"
    }
    assert store.verify(eid).head_hash == hashes[-32:]


@pytest.mark.parametrize("name", NAMES)
def test_tampered_golden_history_is_rejected(name: str) -> None:
    history, hashes, _ = golden(name)
    eid = execution_id(name)
    at = history.index(b"ORD-")  # inside the first event's inputs
    tampered = history[:at] + b"X" + history[at + 1 :]
    store = VersionStore()
    with pytest.raises(IntegrityError) as info:
        store.load(eid, tampered, hashes, list(range(1, len(hashes) // 32 + 1)), None)
    assert info.value.version == 1


@pytest.mark.parametrize(("name", "revision"), REVISIONS)
def test_golden_revision_is_recognised_and_proofs_check(name: str, revision: int) -> None:
    history, hashes, _ = golden(name)
    eid = execution_id(name)
    n = len(hashes) // 32
    store = VersionStore()
    store.load(eid, history, hashes, list(range(1, n + 1)), None)
    infos = store.history(eid)
    sealed = [i.version for i in infos if i.state_root is not None]
    if revision == 2:
        assert sealed == list(range(1, n + 1))
    else:
        # Revision 3 seals each commit's last version only; the head always.
        assert sealed[-1] == n
        assert len(sealed) < n
    head = hashes[-32:]
    for v in range(1, n + 1):
        proof = store.inclusion_proof(eid, v)
        raw = proof.to_bytes()
        assert raw[:9] == b"ITNPROOF" + bytes([revision - 1])
        assert verify_proof(InclusionProof.from_bytes(raw), head)


@pytest.mark.parametrize(("name", "revision"), REVISIONS)
def test_golden_execution_grows_in_its_own_revision(name: str, revision: int) -> None:
    """An appended event chains as the execution's revision defines; the
    longer chain reloads from its stored hashes and verifies."""
    history, hashes, _ = golden(name)
    eid = execution_id(name)
    n = len(hashes) // 32
    store = VersionStore()
    store.load(eid, history, hashes, list(range(1, n + 1)), None)
    added = store.append(eid, n, "snapshot_taken", "", 0, b'{"version":%d}' % n, 10**15)
    infos = store.history(eid)
    assert infos[-1].state_root == store.state(eid).root_hash
    grown = history + struct.pack("<I", len(added.encoded)) + added.encoded
    again = VersionStore()
    again.load(eid, grown, hashes + added.hash, list(range(1, n + 2)), None)
    assert again.verify(eid).head_hash == added.hash
    proof = again.inclusion_proof(eid, n + 1)
    assert proof.to_bytes()[8] == revision - 1
    # A stored hash that is not the new version's node is refused there.
    other = VersionStore()
    with pytest.raises(IntegrityError) as info:
        other.load(eid, grown, hashes + bytes(32), list(range(1, n + 2)), None)
    assert info.value.version == n + 1

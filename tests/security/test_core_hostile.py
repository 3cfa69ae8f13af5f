"""The core never panics on values from outside, and refuses them as itonami errors.

Values from outside are bytes read back from storage (histories, hashes,
snapshots, proofs) and numbers (versions, txs, attempts, timestamps). A
``PanicException`` derives from ``BaseException``: it escapes ``except
Exception`` and would take a worker down, so none may come out, and neither
may a bare ``OverflowError``.
"""

from __future__ import annotations

import os
import struct

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itonami import _core
from itonami.errors import (
    IntegrityError,
    InvalidArgumentError,
    ItonamiError,
    TxOutOfRangeError,
)

ID = "exec-h"
MAX_SEQUENCE = 2**63 - 1
START = (
    "workflow_started",
    "",
    0,
    orjson.dumps({"workflow_id": "wf", "workflow_version": "1", "inputs": {}}),
    1,
)


def scheduled(path: str) -> tuple[str, str, int, bytes, int]:
    return ("activity_scheduled", path, 1, b'{"activity":"a","input":{}}', 2)


def sample() -> tuple[_core.VersionStore, bytes, bytes, list[int]]:
    store = _core.VersionStore()
    appended = [
        store.append(ID, v, *e) for v, e in enumerate([START, scheduled("0"), scheduled("1")])
    ]
    history = b"".join(struct.pack("<I", len(a.encoded)) + a.encoded for a in appended)
    return store, history, b"".join(a.hash for a in appended), [a.tx for a in appended]


def proof_bytes(version: int, later: int = 0, proof_format: int = 1) -> bytes:
    """A proof in format 1 (hash revision 2) or 2 (revision 3, nothing sealed)."""
    event = _core.encode_event(*START)
    hashes, per_later = (bytes(64), 64) if proof_format == 1 else (bytes(33), 33)
    return (
        b"ITNPROOF"
        + bytes([proof_format])
        + struct.pack("<QI", version, len(event))
        + event
        + hashes
        + struct.pack("<I", later)
        + bytes(per_later * later)
    )


@pytest.mark.parametrize("proof_format", [1, 2])
@pytest.mark.parametrize(("version", "later"), [(2**64 - 1, 0), (0, 0), (MAX_SEQUENCE, 1)])
def test_a_proof_whose_head_version_cannot_exist_does_not_decode(
    version, later, proof_format
) -> None:
    with pytest.raises(ItonamiError, match="version"):
        _core.InclusionProof.from_bytes(proof_bytes(version, later, proof_format))


@pytest.mark.parametrize("proof_format", [1, 2])
def test_a_proof_at_the_largest_version_works(proof_format) -> None:
    proof = _core.InclusionProof.from_bytes(proof_bytes(MAX_SEQUENCE - 1, 1, proof_format))
    assert proof.head_version == MAX_SEQUENCE
    assert "head_version=9223372036854775807" in repr(proof)


def test_a_format_2_proof_with_a_sealed_flag_other_than_0_or_1_does_not_decode() -> None:
    raw = bytearray(proof_bytes(1, 0, 2))
    raw[-5] = 2  # the proven version's sealed flag, before the u32 count
    with pytest.raises(ItonamiError, match="sealed flag"):
        _core.InclusionProof.from_bytes(bytes(raw))


def test_advance_tx_beyond_the_sequence_is_refused_and_the_store_still_appends() -> None:
    store, *_ = sample()
    before = store.last_tx
    with pytest.raises(TxOutOfRangeError) as info:
        store.advance_tx(2**64 - 1)
    assert info.value.tx == 2**64 - 1 and info.value.execution_id is None
    with pytest.raises(InvalidArgumentError, match="-1"):
        store.advance_tx(-1)
    with pytest.raises(InvalidArgumentError):
        store.advance_tx(2**64)
    assert store.last_tx == before
    assert store.append(ID, 3, *scheduled("2")).tx == before + 1


def test_an_exhausted_tx_space_refuses_the_append_and_keeps_the_store_consistent() -> None:
    store, *_ = sample()
    head = store.head(ID)
    store.advance_tx(MAX_SEQUENCE)
    with pytest.raises(TxOutOfRangeError) as info:
        store.append(ID, 3, *scheduled("2"))
    assert info.value.execution_id == ID
    assert store.head(ID) == head
    assert store.verify(ID).versions == 3
    assert store.state(ID).version == 3


@pytest.mark.parametrize("bad", [2**64 - 1, MAX_SEQUENCE + 1])
def test_a_loaded_tx_beyond_the_sequence_is_an_integrity_error(bad) -> None:
    _, history, hashes, txs = sample()
    store = _core.VersionStore()
    with pytest.raises(IntegrityError) as info:
        store.load(ID, history, hashes, [*txs[:2], bad])
    assert (info.value.execution_id, info.value.version) == (ID, 3)
    assert not store.contains(ID)
    assert store.last_tx == 0


def test_a_negative_loaded_tx_is_an_itonami_error_not_overflow() -> None:
    _, history, hashes, txs = sample()
    with pytest.raises(InvalidArgumentError) as info:
        _core.VersionStore().load(ID, history, hashes, [txs[0], -5, txs[2]])
    assert any("txs" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.state_at_tx(ID, -1),
        lambda s: s.state_at_version(ID, 2**64),
        lambda s: s.events(ID, -3),
        lambda s: s.encoded_history(ID, -3),
        lambda s: s.inclusion_proof(ID, -1),
        lambda s: s.append(ID, -1, *START),
        lambda s: s.append(ID, 3, "activity_scheduled", "0", 2**32, b"{}", 1),
        lambda s: s.append(ID, 3, "activity_scheduled", "0", 1, b"{}", 2**63),
        lambda s: s.append_batch(ID, 3, [("activity_scheduled", "0", -1, b"{}", 1)]),
        lambda s: _core.encode_event("workflow_started", "", -1, b"{}", 1),
        lambda s: _core.VersionStore(snapshot_every=-1),
        lambda s: _core.VersionStore(max_payload_bytes=2**64),
    ],
)
def test_out_of_range_numbers_are_invalid_argument_errors(call) -> None:
    store, *_ = sample()
    with pytest.raises(InvalidArgumentError):
        call(store)
    assert store.verify(ID).versions == 3


EXAMPLES = int(os.environ.get("ITONAMI_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ints = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([0, 1, -1, MAX_SEQUENCE, MAX_SEQUENCE + 1, 2**63, 2**64 - 1, 2**64]),
)


def mutated(data: bytes):
    """``data`` with a few bytes flipped, cut short or extended."""
    return st.tuples(
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
        st.integers(0, len(data) + 8),
        st.binary(max_size=8),
    ).map(lambda t: _mutate(data, *t))


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
    out = bytearray(data)
    for at, xor in flips:
        if out:
            out[at % len(out)] ^= xor
    return bytes(out[:cut]) + (tail if cut >= len(data) else b"")


def only_itonami_errors(call, *args) -> object:
    """``call(*args)``, letting through nothing but itonami errors."""
    try:
        return call(*args)
    except ItonamiError:
        return None
    # Anything else (PanicException, OverflowError, ...) fails the test.


_, HISTORY, HASHES, TXS = sample()
SNAPSHOT = sample()[0].snapshot(ID)
PROOF = sample()[0].inclusion_proof(ID, 2).to_bytes()


@FUZZ
@given(history=st.one_of(st.binary(max_size=300), mutated(HISTORY)))
def test_fuzz_decode_and_replay(history: bytes) -> None:
    only_itonami_errors(_core.decode_history, history)
    only_itonami_errors(_core.replay, ID, history)
    only_itonami_errors(_core.replay_verified, ID, history, HASHES)


@FUZZ
@given(
    history=st.one_of(mutated(HISTORY), st.just(HISTORY)),
    hashes=st.one_of(mutated(HASHES), st.just(HASHES)),
    txs=st.one_of(st.just(TXS), st.lists(ints, max_size=4)),
    snapshot=st.one_of(st.none(), mutated(SNAPSHOT)),
    floor=ints,
)
def test_fuzz_load_then_use(history, hashes, txs, snapshot, floor) -> None:
    store = _core.VersionStore()
    only_itonami_errors(store.advance_tx, floor)
    if snapshot is not None:
        history, hashes, txs = b"", b"", []
    only_itonami_errors(store.load, ID, history, hashes, txs, snapshot)
    assert store.last_tx <= MAX_SEQUENCE
    if store.contains(ID):
        assert store.verify(ID).versions == store.version(ID)
        only_itonami_errors(store.append, ID, store.version(ID), *scheduled("9"))
        assert store.verify(ID).versions == store.version(ID)
        only_itonami_errors(store.snapshot, ID)
        only_itonami_errors(repr, store.state(ID))


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), mutated(PROOF)), head=st.binary(max_size=40))
def test_fuzz_proof(data: bytes, head: bytes) -> None:
    proof = only_itonami_errors(_core.InclusionProof.from_bytes, data)
    if isinstance(proof, _core.InclusionProof):
        repr(proof)
        assert proof.head_version <= MAX_SEQUENCE
        only_itonami_errors(lambda: proof.event)
        assert proof.to_bytes() == data
        _core.verify_proof(proof, head)


@FUZZ
@given(tx=ints, version=ints, expected=ints, attempt=ints, timestamp=ints)
def test_fuzz_numbers(tx, version, expected, attempt, timestamp) -> None:
    store, *_ = sample()
    only_itonami_errors(store.advance_tx, tx)
    only_itonami_errors(store.state_at_tx, ID, tx)
    only_itonami_errors(store.state_at_version, ID, version)
    only_itonami_errors(store.events, ID, version)
    only_itonami_errors(store.encoded_history, ID, version)
    only_itonami_errors(store.inclusion_proof, ID, version)
    event = ("activity_scheduled", "0/9", attempt, b'{"activity":"a","input":{}}', timestamp)
    only_itonami_errors(store.append, ID, expected, *event)
    only_itonami_errors(store.append_batch, ID, expected, [event])
    only_itonami_errors(_core.encode_event, *event)
    assert store.last_tx <= MAX_SEQUENCE
    assert store.verify(ID).versions == store.version(ID)


@FUZZ
@given(
    kind=st.one_of(st.sampled_from([k for _, k in _core.event_kinds()]), st.text(max_size=10)),
    step=st.text(max_size=20),
    data=st.one_of(
        st.binary(max_size=100),
        st.builds(
            orjson.dumps, st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1))
        ),
    ),
)
def test_fuzz_event_bytes(kind, step, data) -> None:
    store, *_ = sample()
    only_itonami_errors(store.append, ID, 3, kind, step, 1, data, 5)
    only_itonami_errors(_core.encode_event, kind, step, 1, data, 5)
    assert store.verify(ID).versions == store.version(ID)

"""The MVCC version store through Python: appends, reads, errors, integrity."""

from __future__ import annotations

import struct
import threading

import orjson
import pytest
from core_helpers import (
    CANDIDATE_DATA,
    SAMPLE,
    START,
    EventTuple,
    append_all,
    history_of,
    valid_events,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from itonami import _core
from itonami.errors import (
    ConflictError,
    DecodeError,
    ExecutionNotFoundError,
    IntegrityError,
    ItonamiError,
    PayloadTooLargeError,
    TxOutOfRangeError,
)

candidates = st.lists(
    st.tuples(
        st.sampled_from(sorted(CANDIDATE_DATA)),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 255),
    ),
    max_size=60,
)


def test_append_returns_what_storage_persists(sample_store) -> None:
    store, hashes = sample_store
    infos = store.history("e1")
    assert [i.version for i in infos] == list(range(1, len(SAMPLE) + 1))
    assert [i.kind for i in infos] == [e[0] for e in SAMPLE]
    txs = [i.tx for i in infos]
    assert txs == sorted(set(txs))
    assert b"".join(i.hash for i in infos) == hashes
    assert store.head("e1") == (len(SAMPLE), hashes[-32:])
    assert store.encoded_history("e1") == history_of(SAMPLE)
    assert store.last_tx == txs[-1]


def test_state_fields(sample_store) -> None:
    store, _ = sample_store
    state = store.state("e1")
    assert state.status == "completed"
    assert state.workflow_id == "wf"
    assert state.inputs == {"n": 1}
    assert state.outputs == {"y": 2}
    assert state.version == len(SAMPLE)
    assert state.tx == store.last_tx
    step = state.step("0/0")
    assert step is not None
    assert step["status"] == "completed"
    assert step["attempts"] == 2
    assert step["result"] == {"y": 2}
    assert step["completed_version"] == 7
    assert state.step("nope") is None
    whole = state.to_dict()
    assert whole == orjson.loads(state.to_json())
    assert whole["signals"] == {"go": [[1]]}
    assert state.root_hash == store.history("e1")[-1].state_root


def test_conflict_names_both_versions_and_changes_nothing(sample_store) -> None:
    store, _ = sample_store
    before = store.head("e1")
    with pytest.raises(ConflictError) as info:
        store.append("e1", 3, "signal_received", "", 0, b'{"name":"x"}', 5)
    assert (info.value.execution_id, info.value.expected, info.value.actual) == (
        "e1",
        3,
        len(SAMPLE),
    )
    assert store.head("e1") == before


def test_rejected_events_change_nothing() -> None:
    store = _core.VersionStore()
    with pytest.raises(DecodeError, match="first event"):
        store.append("x", 0, "step_started", "0", 0, b"{}", 1)
    assert not store.contains("x")
    append_all(store, "x", SAMPLE[:3])
    state = store.state("x").to_json()
    with pytest.raises(DecodeError, match="only once"):
        store.append("x", 3, *START)
    with pytest.raises(DecodeError) as info:
        store.append_batch("x", 3, [SAMPLE[3], ("activity_started", "0/0", 1, b"{}", 9)])
    assert info.value.index == 1
    with pytest.raises(DecodeError, match="unknown event kind") as info:
        store.append_batch("x", 3, [SAMPLE[3], ("bogus", "", 0, b"{}", 9)])
    assert info.value.index == 1
    assert store.state("x").to_json() == state
    assert store.version("x") == 3


def test_every_error_class_mapping(sample_store) -> None:
    store, _ = sample_store
    with pytest.raises(ExecutionNotFoundError) as nf:
        store.state("missing")
    assert nf.value.execution_id == "missing"
    assert isinstance(nf.value, KeyError)
    with pytest.raises(TxOutOfRangeError) as oor:
        store.state_at_tx("e1", store.last_tx + 10)
    assert (oor.value.execution_id, oor.value.tx) == ("e1", store.last_tx + 10)
    with pytest.raises(TxOutOfRangeError):
        store.state_at_version("e1", len(SAMPLE) + 1)
    small = _core.VersionStore(max_payload_bytes=64)
    with pytest.raises(PayloadTooLargeError) as big:
        small.append("p", 0, "workflow_started", "", 0, b'{"workflow_id":"' + b"x" * 100 + b'"}', 1)
    assert big.value.limit == 64
    assert big.value.size > 64
    assert big.value.what == "event data"
    assert not small.contains("p")
    with pytest.raises(DecodeError) as dec:
        store.load("z", b"\x05\x00\x00\x00\x01\x02")
    assert dec.value.index == 0
    with pytest.raises(IntegrityError) as integ:
        store.load("z", history_of(SAMPLE), b"\x00" * 32 * len(SAMPLE))
    assert (integ.value.execution_id, integ.value.version) == ("z", 1)
    assert integ.value.expected == "00" * 32
    assert isinstance(integ.value.actual, str)
    for err in (nf.value, oor.value, big.value, dec.value, integ.value):
        assert isinstance(err, ItonamiError)


def test_tx_floor_and_load_with_txs(sample_store) -> None:
    store, hashes = sample_store
    txs = [i.tx for i in store.history("e1")]
    other = _core.VersionStore()
    other.load("e1", store.encoded_history("e1"), hashes, [t + 100 for t in txs])
    assert other.last_tx == txs[-1] + 100
    assert [i.tx for i in other.history("e1")] == [t + 100 for t in txs]
    other.advance_tx(10_000)
    other.advance_tx(5)  # never lowers
    a = other.append("new", 0, *START)
    assert a.tx == 10_001
    with pytest.raises(IntegrityError, match="does not follow"):
        _core.VersionStore().load("e1", store.encoded_history("e1"), hashes, [1] * len(txs))


def test_every_single_byte_flip_is_detected(sample_store) -> None:
    store, hashes = sample_store
    history = store.encoded_history("e1")
    for i in range(len(history)):
        bad = bytearray(history)
        bad[i] ^= 0x01
        with pytest.raises((DecodeError, IntegrityError)):
            _core.VersionStore().load("e1", bytes(bad), hashes)


def test_drop_duplicate_swap_are_detected(sample_store) -> None:
    store, hashes = sample_store
    parts = [e.encoded for e in store.events("e1")]
    n = len(parts)
    variants = []
    for i in range(n):
        variants.append(parts[:i] + parts[i + 1 :])
        variants.append([*parts[:i], parts[i], *parts[i:]])
        for j in range(i + 1, n):
            swapped = list(parts)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            variants.append(swapped)
    for parts_variant in variants:
        with pytest.raises((DecodeError, IntegrityError)):
            _core.VersionStore().load("e1", _core.frame_history(parts_variant), hashes)


def assert_flipped_proofs_fail(raw: bytes, head: bytes, *, every: int, bit: int) -> None:
    """A proof with ``bit`` flipped in every ``every``-th byte does not decode or verify."""
    for i in range(0, len(raw), every):
        bad = bytearray(raw)
        bad[i] ^= bit
        try:
            tampered = _core.InclusionProof.from_bytes(bytes(bad))
        except DecodeError:
            continue
        assert not _core.verify_proof(tampered, head)


def test_verify_and_inclusion_proofs(sample_store) -> None:
    store, hashes = sample_store
    report = store.verify("e1")
    assert (report.execution_id, report.versions, report.head_hash) == (
        "e1",
        len(SAMPLE),
        hashes[-32:],
    )
    head = hashes[-32:]
    for v in range(1, len(SAMPLE) + 1):
        proof = store.inclusion_proof("e1", v)
        assert proof.version == v
        assert proof.head_version == len(SAMPLE)
        assert proof.event.kind == SAMPLE[v - 1][0]
        assert _core.verify_proof(proof, head)
        raw = proof.to_bytes()
        again = _core.InclusionProof.from_bytes(raw)
        assert _core.verify_proof(again, head)
        assert not _core.verify_proof(proof, hashes[:32] if v != 1 or len(SAMPLE) > 1 else b"")
        assert_flipped_proofs_fail(raw, head, every=7, bit=0x10)
    with pytest.raises(TxOutOfRangeError):
        store.inclusion_proof("e1", 0)


def test_proofs_of_a_batched_chain_name_their_seals_and_check_against_the_head() -> None:
    """Hash revision 3: one commit seals only its last version, and a proof
    (format 2) of any version checks against the head."""
    store = _core.VersionStore()
    half = len(SAMPLE) // 2
    store.append_batch("e1", 0, SAMPLE[:half])
    store.append_batch("e1", half, SAMPLE[half:])
    infos = store.history("e1")
    sealed = [i.version for i in infos if i.state_root is not None]
    assert sealed == [half, len(SAMPLE)]
    assert infos[-1].state_root == store.state("e1").root_hash
    head = store.head("e1")[1]
    assert store.verify("e1").head_hash == head
    for v in range(1, len(SAMPLE) + 1):
        raw = store.inclusion_proof("e1", v).to_bytes()
        assert raw[:9] == b"ITNPROOF\x02"
        proof = _core.InclusionProof.from_bytes(raw)
        assert _core.verify_proof(proof, head)
        assert_flipped_proofs_fail(raw, head, every=5, bit=0x01)


def test_snapshot_restore_is_identical(sample_store) -> None:
    store, hashes = sample_store
    for k in range(1, len(SAMPLE) + 1):
        partial = _core.VersionStore()
        append_all(partial, "e1", SAMPLE[:k])
        snap = partial.snapshot("e1")
        restored = _core.VersionStore()
        restored.load("e1", history_of(SAMPLE[k:]), hashes[32 * k :], snapshot=snap)
        assert restored.head("e1") == store.head("e1")
        assert restored.state("e1").to_json().replace(b'"tx":', b"").split(b"tx")[0] is not None
        a, b = restored.state("e1").to_dict(), store.state("e1").to_dict()
        a.pop("tx"), b.pop("tx")
        assert a == b
        assert restored.state("e1").root_hash == store.state("e1").root_hash
        assert restored.verify("e1").head_hash == hashes[-32:]
        with pytest.raises(TxOutOfRangeError):
            restored.state_at_version("e1", k - 1)
        bad = bytearray(snap)
        bad[len(bad) // 2] ^= 1
        with pytest.raises(DecodeError, match="checksum"):
            _core.VersionStore().load("e1", b"", snapshot=bytes(bad))
        with pytest.raises(IntegrityError):
            _core.VersionStore().load("other-id", b"", snapshot=snap)


@settings(max_examples=40, deadline=None)
@given(candidates)
def test_replay_equals_live_and_reads_are_folds(cands) -> None:
    events = valid_events(cands)
    store = _core.VersionStore(snapshot_every=4, snapshot_retention=0)
    hashes = append_all(store, "p", events)
    history = store.encoded_history("p")
    live = store.state("p").to_dict()
    replayed = _core.replay("p", history).to_dict()
    live.pop("tx"), replayed.pop("tx")
    assert live == replayed
    verified = _core.replay_verified("p", history, hashes)
    assert verified.root_hash == store.state("p").root_hash
    for info in store.history("p"):
        prefix = history_of(events[: info.version])
        expected = _core.replay("p", prefix)
        at_version = store.state_at_version("p", info.version)
        at_tx = store.state_at_tx("p", info.tx)
        assert at_version.to_json() == at_tx.to_json()
        assert at_tx.tx == info.tx
        got = at_tx.to_dict()
        want = expected.to_dict()
        got.pop("tx"), want.pop("tx")
        assert got == want
        assert at_version.root_hash == info.state_root


def test_concurrent_readers_see_whole_versions() -> None:
    store = _core.VersionStore()
    store.append("c", 0, *START)
    total = 400
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            state = store.state("c")
            version, head = store.head("c")
            d = state.to_dict()
            if len(d["signals"].get("s", [])) != d["version"] - 1:
                problems.append(f"torn state at version {d['version']}")
            if version < d["version"]:
                problems.append("head behind a state read before it")
            infos = store.history("c")
            if infos and len(infos) >= version and infos[version - 1].hash != head:
                problems.append("head hash not the stored node")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()

    def signal(v: int) -> tuple[str, str, int, bytes, int]:
        return ("signal_received", "", 0, orjson.dumps({"name": "s", "payload": v}), v)

    try:
        v = 1
        while v < total:
            if v % 50 == 0:
                store.append_batch("c", v, [signal(v), signal(v + 1)])
                v += 2
            else:
                store.append("c", v, *signal(v))
                v += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert problems == []
    assert store.version("c") == total
    store.verify("c")


def test_concurrent_writers_conflict_instead_of_interleaving() -> None:
    store = _core.VersionStore()
    store.append("w", 0, *START)
    wins: list[int] = []
    conflicts: list[int] = []
    barrier = threading.Barrier(4)

    def writer(n: int) -> None:
        barrier.wait()
        for _ in range(50):
            v = store.version("w")
            try:
                store.append(
                    "w", v, "signal_received", "", 0, orjson.dumps({"name": "s", "payload": n}), 1
                )
                wins.append(n)
            except ConflictError as exc:
                assert exc.actual != exc.expected
                conflicts.append(n)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.version("w") == 1 + len(wins)
    assert len(wins) + len(conflicts) == 200
    txs = [i.tx for i in store.history("w")]
    assert txs == sorted(set(txs))
    store.verify("w")


def test_evict_and_listing(sample_store) -> None:
    store, _ = sample_store
    store.append("b", 0, *START)
    assert store.execution_ids() == ["b", "e1"]
    assert "b" in store
    store.evict("b")
    assert not store.contains("b")
    assert store.version("b") == 0
    assert store.head("b") == (0, b"\x00" * 32)
    events = store.events("e1", 8)
    assert [e.kind for e in events] == ["step_completed", "workflow_completed"]
    assert store.encoded_history("e1", 8) == history_of(SAMPLE[8:])
    assert struct.unpack_from("<I", store.encoded_history("e1", 9))[0] == len(events[1].encoded)


_VIEW_DATA = {
    "wait_started": lambda v: (
        {"kind": "event", "event_type": f"t{v % 3}"}
        if v % 2
        else {"kind": "signal", "name": f"s{v % 2}"}
    ),
    "external_event_received": lambda v: {"event_type": f"t{v % 3}", "payload": v},
    "timer_scheduled": lambda v: {"fire_at": v},
    "timer_fired": lambda v: {},
    "timer_cancelled": lambda v: {},
    "signal_received": lambda v: {"name": f"s{v % 3}", "payload": [v]},
    "step_completed": lambda v: {"output": v},
    "step_started": lambda v: {},
}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(_VIEW_DATA)), st.integers(0, 4), st.integers(0, 50)),
        max_size=40,
    )
)
def test_direct_views_equal_the_whole_state(cands) -> None:
    """pending_timers, open_event_types and latest_signals say what to_dict says."""
    store = _core.VersionStore()
    store.append("v", 0, *START)
    version = 1
    for i, (kind, path, value) in enumerate(cands):
        step = "" if kind == "signal_received" else f"0/{path}"
        data = orjson.dumps(_VIEW_DATA[kind](value))
        try:
            store.append("v", version, kind, step, 0, data, 2_000 + i)
        except DecodeError:
            continue
        version += 1
        state = store.state("v")
        whole = state.to_dict()
        assert dict(state.pending_timers()) == whole["timers"]
        assert [p for p, _ in state.pending_timers()] == list(whole["timers"])
        waits = whole["waits"].values()
        assert state.open_event_types() == sorted(
            {w["event_type"] for w in waits if w.get("kind") == "event"}
        )
        assert state.latest_signals() == {n: p[-1] for n, p in whole["signals"].items() if p}


@settings(max_examples=40, deadline=None)
@given(candidates, st.lists(st.integers(1, 4), min_size=1, max_size=30))
def test_append_step_equals_per_event_appends(cands, sizes) -> None:
    """The coarse step call stores exactly what append_batch of the same events
    stores; one append per event stores the same but for the node hashes (hash
    revision 3 seals only the version that ends a commit)."""
    events = valid_events(cands)
    groups: list[list[EventTuple]] = []
    i = 0
    for n in sizes * (len(events) + 1):
        if i >= len(events):
            break
        # The events of one call share its timestamp (the group's first).
        ts = events[i][4]
        groups.append([(*e[:4], ts) for e in events[i : i + n]])
        i += n
    one = _core.VersionStore()
    per_event = [one.append("s", v, *e) for v, e in enumerate(e for g in groups for e in g)]
    batched = _core.VersionStore()
    per_batch = [a for g in groups for a in batched.append_batch("s", batched.version("s"), g)]
    many = _core.VersionStore()
    rows: list[tuple] = []
    status = ""
    for g in groups:
        got, status = many.append_step("s", len(rows), [e[:4] for e in g], g[0][4])
        rows.extend(got)
    assert rows == [(a.version, a.tx, a.timestamp, a.kind, a.hash, a.encoded) for a in per_batch]
    unhashed = [(a.version, a.tx, a.timestamp, a.kind, a.encoded) for a in per_event]
    assert [r[:4] + r[5:] for r in rows] == unhashed
    assert status == per_event[-1].status
    assert many.state("s").to_json() == one.state("s").to_json()
    assert many.head("s") == batched.head("s")
    if all(len(g) == 1 for g in groups):
        assert many.head("s") == one.head("s")


def test_append_step_is_all_or_nothing() -> None:
    store = _core.VersionStore()
    store.append("s", 0, *START)
    bad = [("step_started", "0", 0, b"{}"), ("activity_completed", "9/9", 1, b"{}")]
    with pytest.raises(DecodeError) as info:
        store.append_step("s", 1, bad, 5)
    assert info.value.index == 1
    assert store.version("s") == 1
    rows, status = store.append_step("s", 1, bad[:1], 5)
    assert [r[0] for r in rows] == [2]
    assert status == "running"

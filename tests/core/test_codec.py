"""The event codec through Python: canonical encoding, framing, decode errors."""

from __future__ import annotations

import struct

import orjson
import pytest
from core_helpers import SAMPLE, history_of
from hypothesis import given
from hypothesis import strategies as st

from itonami import _core
from itonami.errors import DecodeError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_kind_table_is_stable() -> None:
    kinds = dict(_core.event_kinds())
    assert kinds[1] == "workflow_started"
    assert kinds[23] == "snapshot_taken"
    assert kinds[30] == "wait_started"
    assert kinds[31] == "engine_error"
    assert sorted(kinds) == list(range(1, 32))


def test_encoding_layout() -> None:
    enc = _core.encode_event("step_started", "0/1", 2, b'{"b":1,"a":2}', -5)
    version, code, ts, attempt, step_len = struct.unpack_from("<BHqII", enc)
    assert (version, code, ts, attempt, step_len) == (1, 24, -5, 2, 3)
    assert enc[19:22] == b"0/1"
    (data_len,) = struct.unpack_from("<I", enc, 22)
    assert enc[26:] == b'{"a":2,"b":1}'
    assert data_len == len(enc) - 26


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_payload_is_canonicalised(data: dict) -> None:
    a = _core.encode_event("step_started", "0", 0, orjson.dumps(data), 1)
    b = _core.encode_event(
        "step_started", "0", 0, orjson.dumps(data, option=orjson.OPT_INDENT_2), 1
    )
    assert a == b
    (event,) = _core.decode_history(_core.frame_history([a]))
    assert event.data == data
    assert event.encoded == a


def test_decode_round_trip() -> None:
    history = history_of(SAMPLE)
    events = _core.decode_history(history)
    assert [(e.kind, e.step, e.attempt, e.timestamp) for e in events] == [
        (k, s, a, t) for k, s, a, _, t in SAMPLE
    ]
    assert [e.data for e in events] == [orjson.loads(d) for *_, d, _ in SAMPLE]


def offset_of(history: bytes, index: int) -> int:
    pos = 0
    for _ in range(index):
        (n,) = struct.unpack_from("<I", history, pos)
        pos += 4 + n
    return pos


def test_unknown_kind_code_names_offset_and_index() -> None:
    history = bytearray(history_of(SAMPLE))
    at = offset_of(bytes(history), 3) + 4 + 1
    history[at : at + 2] = struct.pack("<H", 999)
    with pytest.raises(DecodeError) as info:
        _core.decode_history(bytes(history))
    assert info.value.index == 3
    assert info.value.offset == at
    assert "999" in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda h: h[:-3], "truncated"),
        (lambda h: h + b"\x01", "truncated"),
        (lambda h: b"\x02" + h[1:], "truncated"),
    ],
)
def test_malformed_history(mutate, needle: str) -> None:
    with pytest.raises(DecodeError, match=needle):
        _core.decode_history(mutate(history_of(SAMPLE)))


def test_malformed_event_bytes() -> None:
    good = _core.encode_event("step_started", "0", 0, b"{}", 1)
    cases = {
        "format version": b"\x09" + good[1:],
        "not canonical": good[:-2] + b"{ }",
        "not valid JSON": good[:-2] + b"{]}",
        "UTF-8": good[:19] + b"\xff" + good[20:],
    }
    for needle, enc in cases.items():
        if needle in ("not canonical", "not valid JSON"):
            enc = enc[:20] + struct.pack("<I", 3) + enc[24:]
        with pytest.raises(DecodeError, match=needle) as info:
            _core.decode_history(_core.frame_history([enc]))
        assert info.value.index == 0
        assert info.value.offset is not None


def test_bad_payloads_and_kinds_on_encode() -> None:
    with pytest.raises(DecodeError, match="unknown event kind"):
        _core.encode_event("no_such_kind", "", 0, b"{}", 1)
    with pytest.raises(DecodeError, match="JSON object"):
        _core.encode_event("step_started", "0", 0, b"[1]", 1)
    with pytest.raises(DecodeError, match="valid JSON"):
        _core.encode_event("step_started", "0", 0, b"{", 1)


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        _core.decode_history(data)
    except DecodeError as exc:
        assert exc.index is not None
    with pytest.raises((DecodeError, ValueError)):
        _core.InclusionProof.from_bytes(data)

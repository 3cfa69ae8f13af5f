"""The Rust core's PostgreSQL binary arrays against psycopg's own dumper (no server)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from itonami import _core
from itonami.errors import InvalidArgumentError

psycopg = pytest.importorskip("psycopg")

from psycopg.adapt import PyFormat, Transformer  # noqa: E402
from psycopg.types.numeric import Int8  # noqa: E402

INT8_CASES: list[list[int | None]] = [
    [0],
    [1, None, -1],
    [-(2**63), 2**63 - 1, 0, None, 12345678901234],
    list(range(-150, 150)),
]
TEXT_CASES: list[list[str | None]] = [
    [""],
    ["a", None, "é", "日本語", "😀 emoji"],
    [f"exec-{i:06d}" for i in range(300)],
    ["x" * 100_000, None],
]
BYTEA_CASES: list[list[bytes | None]] = [
    [b""],
    [b"\x00\xff", None, bytes(range(256))],
    [bytes([i % 256]) * 32 for i in range(300)],
    [b"\x01" * 1_000_000, None],
]
BOOL_CASES: list[list[bool | None]] = [
    [True],
    [True, None, False],
    [i % 3 == 0 for i in range(300)],
]


def psycopg_binary(values: list[Any]) -> bytes:
    tx = Transformer()
    dumper = tx.get_dumper(values, PyFormat.BINARY)
    data = dumper.dump(values)
    assert data is not None
    return bytes(data)


@pytest.mark.parametrize("values", INT8_CASES)
def test_int8_equals_psycopg(values: list[int | None]) -> None:
    wrapped = [None if v is None else Int8(v) for v in values]  # else psycopg picks int2/int4
    assert _core.pg_array_int8(values) == psycopg_binary(wrapped)


@pytest.mark.parametrize("values", TEXT_CASES)
def test_text_equals_psycopg(values: list[str | None]) -> None:
    assert _core.pg_array_text(values) == psycopg_binary(values)


@pytest.mark.parametrize("values", BYTEA_CASES)
def test_bytea_equals_psycopg(values: list[bytes | None]) -> None:
    assert _core.pg_array_bytea(list(values)) == psycopg_binary(values)


def test_bytearray_is_bytea() -> None:
    assert _core.pg_array_bytea([bytearray(b"ab"), None]) == _core.pg_array_bytea([b"ab", None])


@pytest.mark.parametrize("values", BOOL_CASES)
def test_bool_equals_psycopg(values: list[bool | None]) -> None:
    assert _core.pg_array_bool(values) == psycopg_binary(values)


def header(has_nulls: int, oid: int, n: int) -> bytes:
    return struct.pack(">iiiii", 1, has_nulls, oid, n, 1)


def test_empty_and_all_null_layouts() -> None:
    # psycopg sends these in text (it cannot tell the element type): by hand.
    for fn, oid in (
        (_core.pg_array_int8, 20),
        (_core.pg_array_text, 25),
        (_core.pg_array_bytea, 17),
        (_core.pg_array_bool, 16),
    ):
        assert fn([]) == struct.pack(">iii", 0, 0, oid)
        assert fn([None, None]) == header(1, oid, 2) + struct.pack(">ii", -1, -1)


def test_small_layouts_by_hand() -> None:
    assert _core.pg_array_int8([-2]) == header(0, 20, 1) + struct.pack(">iq", 8, -2)
    assert _core.pg_array_text(["é"]) == header(0, 25, 1) + struct.pack(">i", 2) + b"\xc3\xa9"
    assert _core.pg_array_bool([False, True]) == header(0, 16, 2) + b"\0\0\0\1\0\0\0\0\1\1"


@pytest.mark.parametrize(
    ("fn", "values", "index"),
    [
        (_core.pg_array_int8, [1, None, "2"], 2),
        (_core.pg_array_int8, [1.0], 0),
        (_core.pg_array_int8, [0, True], 1),
        (_core.pg_array_text, ["a", b"b"], 1),
        (_core.pg_array_text, [None, 3], 1),
        (_core.pg_array_bytea, [b"", "text"], 1),
        (_core.pg_array_bytea, [memoryview(b"x")], 0),
        (_core.pg_array_bool, [True, 1], 1),
    ],
)
def test_a_wrong_element_type_names_its_index(fn: Any, values: list[Any], index: int) -> None:
    with pytest.raises(TypeError, match=f"element {index} is "):
        fn(values)


def test_not_a_list_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _core.pg_array_text(("a",))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**200])
def test_an_int_outside_int8_is_refused(value: int) -> None:
    with pytest.raises(InvalidArgumentError, match="element 1 "):
        _core.pg_array_int8([0, value])


def test_unencodable_text_is_an_error() -> None:
    with pytest.raises(UnicodeEncodeError):
        _core.pg_array_text(["\ud800"])

"""to_recorded: the value a later step receives is exactly the value recorded."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from itonami import _core
from itonami.errors import ItonamiError, PayloadError
from itonami.payload import MAX_DEPTH, to_recorded


class Colour(enum.StrEnum):
    RED = "red"


class Plain(enum.Enum):
    ONE = 1


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "field", "reason"),
    [
        ({"price": math.nan}, "inputs.price", "float"),
        ({"a": [1, math.inf]}, "inputs.a[1]", "float"),
        ({"x": {"-inf": -math.inf}}, "inputs.x['-inf']", "float"),
        ({"s": {1, 2}}, "inputs.s", "type"),
        ({"o": object()}, "inputs.o", "type"),
        ({"e": Plain.ONE}, "inputs.e", "type"),
        ({"k": {1: "one"}}, "inputs.k", "key"),
        ({"t": "\ud800"}, "inputs.t", "string"),
        ({"n": 2**64}, "inputs.n", "int"),
        ({"deep": nested(300)}, "inputs.deep" + "[0]" * (MAX_DEPTH - 1), "depth"),
    ],
)
def test_what_json_cannot_hold_is_refused_naming_the_field(value, field, reason) -> None:
    with pytest.raises(PayloadError) as info:
        to_recorded(value, "inputs")
    assert (info.value.field, info.value.reason) == (field, reason)
    assert field in str(info.value)
    assert isinstance(info.value, ItonamiError) and isinstance(info.value, TypeError)


def test_values_with_one_json_form_are_converted_once() -> None:
    when = dt.datetime(2026, 12, 1, 9, 30, 5, 123456, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "when": when,
        "day": dt.date(2026, 12, 1),
        "id": ident,
        "colour": Colour.RED,
        "pair": (1, 2),
        "flag": True,
    }
    out = to_recorded(value, "result")
    assert out == {
        "when": "2026-12-01T09:30:05.123456+00:00",
        "day": "2026-12-01",
        "id": str(ident),
        "colour": "red",
        "pair": [1, 2],
        "flag": True,
    }
    assert type(out["colour"]) is str
    assert to_recorded(out, "result") == out  # converting again changes nothing


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
anything = st.recursive(
    json_values
    | st.floats()
    | st.datetimes()
    | st.uuids()
    | st.sets(st.integers(), max_size=2)
    | st.integers(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.one_of(st.text(), st.integers()), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(json_values)
def test_plain_json_is_recorded_as_it_is(value: Any) -> None:
    assert to_recorded(value, "v") == value


def test_keys_come_out_in_the_order_a_resumed_run_sees() -> None:
    assert list(to_recorded({"b": 1, "a": {"z": 1, "é": 2, "": 3}}, "v")) == ["a", "b"]
    assert list(to_recorded({"z": 1, "é": 2, "": 3}, "v")) == ["", "z", "é"]


@given(anything)
def test_what_is_accepted_is_exactly_what_the_core_records(value: Any) -> None:
    try:
        recorded = to_recorded(value, "result")
    except PayloadError:
        return
    data = orjson.dumps({"result": recorded})
    event = _core.decode_history(
        _core.frame_history([_core.encode_event("activity_completed", "0", 1, data, 1)])
    )[0]
    # the same value and the same types (1.0 stays a float, -0.0 keeps its sign)
    assert orjson.dumps(event.data["result"]) == orjson.dumps(recorded)

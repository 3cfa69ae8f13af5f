"""JSONPath mappings, CEL conditions and durations over a workflow context."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itonami.dsl import (
    Condition,
    ExpressionError,
    InputMapping,
    JsonPath,
    format_duration,
    parse_duration,
)
from itonami.errors import ItonamiError

CONTEXT = {
    "inputs": {"orderId": "o-1", "amount": 1500, "items": [{"sku": "a"}, {"sku": "b"}]},
    "steps": {
        "validate": {"output": {"ok": True, "score": 0.3}, "status": "completed", "error": None},
        "pay": {"output": None, "status": "failed", "error": {"type": "CardDeclined"}},
    },
    "signals": {"approved": {"by": "ann"}},
    "item": {"sku": "z"},
    "index": 2,
}


def test_mapping_singular_queries_literals_and_nesting() -> None:
    mapping = InputMapping(
        {
            "order": "$.inputs.orderId",
            "missing": "$.inputs.nope",
            "whole": "$.steps.validate.output",
            "literal": "plain text",
            "escaped": "$$5 off",
            "number": 3,
            "nested": {"by": "$.signals.approved.by", "list": ["$.index", None, True]},
            "first": "$.inputs.items[0].sku",
            "item": "$.item.sku",
        }
    )
    assert mapping.evaluate(CONTEXT) == {
        "order": "o-1",
        "missing": None,
        "whole": {"ok": True, "score": 0.3},
        "literal": "plain text",
        "escaped": "$5 off",
        "number": 3,
        "nested": {"by": "ann", "list": [2, None, True]},
        "first": "a",
        "item": "z",
    }


def test_mapping_non_singular_queries_give_lists() -> None:
    mapping = InputMapping(
        {
            "skus": "$.inputs.items[*].sku",
            "one": "$.inputs.items[?@.sku == 'b'].sku",
            "none": "$.inputs.items[?@.sku == 'q']",
        }
    )
    assert mapping.evaluate(CONTEXT) == {"skus": ["a", "b"], "one": ["b"], "none": []}


def test_mapping_results_are_fresh_each_time() -> None:
    mapping = InputMapping({"fixed": {"list": [1]}})
    first = mapping.evaluate({})
    first["fixed"]["list"].append(2)
    assert mapping.evaluate({}) == {"fixed": {"list": [1]}}


def test_mapping_compares_by_content_and_lists_queries() -> None:
    a = InputMapping({"x": "$.a", "y": ["$.b", 1]})
    assert a == InputMapping({"y": ["$.b", 1], "x": "$.a"})
    assert hash(a) == hash(InputMapping({"y": ["$.b", 1], "x": "$.a"}))
    assert a != InputMapping({"x": "$.a"})
    assert [q.text for q in a.queries()] == ["$.a", "$.b"]
    with pytest.raises(ValueError, match=r"input_mapping\.y\[0\]"):
        InputMapping({"y": ["$[", 1]})


def test_jsonpath() -> None:
    path = JsonPath("$.inputs.items[*].sku")
    assert path.find_all(CONTEXT) == ["a", "b"]
    assert path.find_one(CONTEXT) == "a"
    assert not path.singular and JsonPath("$.inputs.orderId").singular
    assert JsonPath("$.nope").find_one(CONTEXT) is None
    with pytest.raises(ValueError, match=r"invalid JSONPath 'inputs\.x'"):
        JsonPath("inputs.x")


@pytest.mark.parametrize(
    ("text", "singular"),
    [
        ("$", True),
        ("$.inputs", True),
        ("$.inputs.items[0].sku", True),
        ("$['inputs']['items'][-1]", True),
        ('$["a]b"]["c == d"]', True),
        ("$.inputs.items[*]", False),
        ("$.inputs.items[*].sku", False),
        ("$..sku", False),
        ("$.inputs.items[0:1]", False),
        ("$['inputs','steps']", False),
        ("$.inputs.items[?@.sku == 'a'].sku", False),
        ("$.inputs.items[0,1]", False),
    ],
)
def test_jsonpath_singular_follows_rfc9535(text: str, singular: bool) -> None:
    # The rule is RFC 9535's singular-query grammar; it must hold on every
    # jsonpath-rfc9535 major the package allows (1.x on 3.11, 2.x on 3.12+).
    path = JsonPath(text)
    assert path.singular is singular
    value = path.resolve(CONTEXT)
    if singular:
        assert value == path.find_one(CONTEXT)
    else:
        assert isinstance(value, list) and value == path.find_all(CONTEXT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inputs.amount > 1000 && steps.validate.output.ok", True),
        ("inputs.amount > 1000.5", True),
        ("steps.pay.status == 'failed'", True),
        ("steps.pay.error.type in ['CardDeclined', 'Fraud']", True),
        ("has(steps.validate.output.ok)", True),
        ("has(steps.nothing)", False),
        ("signals.approved.by == 'ann' && index == 2", True),
        ("item.sku.startsWith('y')", False),
        ("inputs.items.exists(i, i.sku == 'b')", True),
        ("size(inputs.items) > 2", False),
    ],
)
def test_conditions(text, expected) -> None:
    assert Condition(text).evaluate(CONTEXT) is expected


def test_condition_compile_errors() -> None:
    with pytest.raises(ValueError, match=r"invalid CEL expression 'inputs\.amount >'"):
        Condition("inputs.amount >")
    with pytest.raises(ValueError, match="must not be empty"):
        Condition("  ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("steps.missing.output.ok", "missing key"),
        ("undefined_var > 1", "failed to evaluate"),
        ("inputs.amount / 0 > 1", "failed to evaluate"),
        ("inputs.amount + 1", "must give a boolean, got int"),
        ("inputs.orderId", "must give a boolean, got str"),
    ],
)
def test_condition_evaluation_errors_name_the_expression(text, fragment) -> None:
    with pytest.raises(ExpressionError) as info:
        Condition(text).evaluate(CONTEXT)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)
    assert info.value.expression == text
    assert isinstance(info.value, ItonamiError)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT30M", 1800.0),
        ("P1D", 86400.0),
        ("PT0.5S", 0.5),
        ("PT1,25S", 1.25),
        ("P1DT2H3M4.5S", 93784.5),
        ("P2W", 1209600.0),
        ("P0D", 0.0),
        (90, 90.0),
        (0.25, 0.25),
    ],
)
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["P1Y", "P1M", "-PT1S", "PT", "P", "soon", None, [], math.inf, -3])
def test_bad_durations(bad) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=999_999))
def test_formatted_durations_parse_back(whole: int, micros: int) -> None:
    seconds = whole + micros / 1_000_000
    text = format_duration(seconds)
    assert text.startswith("P")
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-6)


@given(
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=0, max_value=23),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=999),
)
def test_iso_components_match_seconds(
    days: int, hours: int, minutes: int, secs: int, ms: int
) -> None:
    text = f"P{days}DT{hours}H{minutes}M{secs}.{ms:03d}S"
    expected = days * 86400 + hours * 3600 + minutes * 60 + secs + ms / 1000
    assert parse_duration(text) == pytest.approx(expected, abs=1e-6)

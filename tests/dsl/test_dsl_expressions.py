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
    # The rule is RFC 9535's singular-query grammar.
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


# What the expressions give must not depend on the engine that runs them:
# each case below gives the same with the previous Python packages
# (jsonpath-rfc9535 and the cel bindings), except where a comment says
# otherwise.

DOC = {
    "inputs": {
        "big": 2**70,
        "n": [1, 2.5, 3, True, None, "4"],
        "é": {"ключ": "значение", "🙂": 1},
        "orders": [
            {"id": "a", "qty": 1, "tags": ["x"]},
            {"id": "b", "qty": 3, "tags": []},
            {"id": "c", "qty": 2.0, "tags": ["x", "y"]},
        ],
        "z": {"b": 1, "a": 2, "c": {"b": 3}},
    },
    "steps": {"s": {"output": {"b": 4}, "status": "completed", "error": None}},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$.inputs.big", 2**70),
        ("$.inputs.n[-1]", "4"),
        ("$.inputs.n[9]", None),
        ("$.inputs.é.ключ", "значение"),
        ("$['inputs']['é']['🙂']", 1),
        ('$["inputs"]["\\u00e9"]["\\u043a\\u043b\\u044e\\u0447"]', "значение"),
        ("$.inputs.orders[1].tags", []),
        ("$.inputs.orders.id", None),
        ("$.inputs.n.x", None),
        ("$.inputs.n[0][0]", None),
    ],
)
def test_singular_queries_walk_the_context(text: str, expected: object) -> None:
    path = JsonPath(text)
    assert path.singular
    value = path.resolve(DOC)
    assert value == expected and type(value) is type(expected)


def test_singular_queries_give_the_contexts_own_objects() -> None:
    assert JsonPath("$.inputs.orders").resolve(DOC) is DOC["inputs"]["orders"]
    assert JsonPath("$").resolve(DOC) is DOC
    assert JsonPath("$.inputs.orders[*]").find_all(DOC)[0] is DOC["inputs"]["orders"][0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$.inputs.orders[?@.qty > 1].id", ["b", "c"]),
        ("$.inputs.orders[?@.qty == 2].id", ["c"]),
        ("$.inputs.orders[?@.qty >= 1 && @.qty < 3].id", ["a", "c"]),
        ("$.inputs.orders[?!(@.qty > 1)].id", ["a"]),
        ("$.inputs.orders[?@.id == 'b' || @.id == 'c'].qty", [3, 2.0]),
        ("$.inputs.orders[?length(@.tags) > 0].id", ["a", "c"]),
        ("$.inputs.orders[?count(@.tags[*]) == 2].id", ["c"]),
        ("$.inputs.orders[?match(@.id, '[ab]')].id", ["a", "b"]),
        ("$.inputs.orders[?search(@.id, 'c')].id", ["c"]),
        ("$.inputs.orders[?@.tags[0] == 'x'].id", ["a", "c"]),
        ("$.inputs.orders[?@.qty > $.steps.s.output.b].id", []),
        ("$.inputs.orders[?@.qty < $.steps.s.output.b].id", ["a", "b", "c"]),
        ("$.inputs.n[?@ > 1]", [2.5, 3]),
        ("$.inputs.n[?@ == 1]", [1]),
        ("$.inputs.n[?@ == true]", [True]),
        ("$.inputs.n[?@ == null]", [None]),
        ("$.inputs.n[1:3]", [2.5, 3]),
        ("$.inputs.n[::-2]", ["4", True, 2.5]),
        ("$.inputs.n[-2:]", [None, "4"]),
        ("$.inputs.n[5:1]", []),
        ("$.inputs.orders[*].id", ["a", "b", "c"]),
        ("$.inputs.z.*", [1, 2, {"b": 3}]),
        ("$.inputs.z[*]", [1, 2, {"b": 3}]),
        ("$.inputs.z..b", [1, 3]),
        ("$..qty", [1, 3, 2.0]),
        ("$.inputs['z','n'][0]", [1]),
        ("$.inputs.z['c','a']", [{"b": 3}, 2]),
        ("$.inputs.nothing[*]", []),
        ("$.inputs.big[*]", []),
    ],
)
def test_non_singular_queries_select_in_document_order(text: str, expected: list[object]) -> None:
    path = JsonPath(text)
    assert not path.singular
    value = path.resolve(DOC)
    assert value == expected
    assert [type(v) for v in value] == [type(v) for v in expected]
    assert path.find_one(DOC) == (expected[0] if expected else None)


def test_big_ints_come_back_exactly_from_any_query() -> None:
    assert JsonPath("$.inputs[?@ > 1000]").find_all(DOC) == [2**70]
    assert JsonPath("$.inputs.big").find_one(DOC) == 2**70


@pytest.mark.parametrize(
    "text",
    [
        "$.a[?foo(@)]",
        "$.a[?in(@, [1])]",
        "$.a[?length(@) > ]",
        "$..",
        "$.a[0.5]",
        "$ a",
        "$.a b",
        "$.a ",
        " $.a",
        "$. a",
        "$[- 1]",
        "$[01]",
        "$[?length(@.*) > 1]",
        "$[?length(@.a)]",
        "$[?value(@.a)]",
        "$[?count(@.*)]",
    ],
)
def test_invalid_queries_are_refused_naming_them(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid JSONPath") as info:
        JsonPath(text)
    assert repr(text) in str(info.value)
    # One line, as every problem of a definition is listed one per line.
    assert "\n" not in str(info.value).replace(repr(text), "")


@pytest.mark.parametrize(
    ("text", "context", "expected"),
    [
        ("x > 1", {"x": 2**63}, True),
        ("x > 1.5", {"x": 2**70}, True),
        ("x == 1", {"x": 1.0}, True),
        ("x == 1", {"x": True}, False),
        ("x < 1.5", {"x": 1}, True),
        ("x['é'] == 'ü'", {"x": {"é": "ü"}}, True),
        # CEL's size() counts code points; the old bindings counted UTF-8 bytes.
        ("size(x) == 5", {"x": "héllo"}, True),
        ("x.matches('^h.l')", {"x": "hello"}, True),
        ("x == [1, 2]", {"x": (1, 2)}, True),
        ("x[1] == 'b'", {"x": {1: "b"}}, True),
        ("x == null", {"x": None}, True),
        ("has(x.a) && !has(x.b)", {"x": {"a": 1}}, True),
        ("x.all(i, i > 0)", {"x": [1, 2]}, True),
        ("timestamp(x) < timestamp('2030-01-01T00:00:00Z')", {"x": "2020-01-01T00:00:00Z"}, True),
        ("duration('1s') < duration('2m')", {}, True),
        ("string(x) == '1.5'", {"x": 1.5}, True),
    ],
)
def test_condition_values_keep_their_cel_types(text: str, context: dict, expected: bool) -> None:
    assert Condition(text).evaluate(context) is expected


@pytest.mark.parametrize(
    ("text", "context", "fragment"),
    [
        ("x + 1 > 0", {"x": 2**63 - 1}, "failed to evaluate"),
        ("x + 1.0 > 0.0", {"x": 1}, "failed to evaluate"),
        ("x > 0", {"x": True}, "failed to evaluate"),
        ("x.b.c", {"x": {"a": 1}}, "missing key 'b'"),
        ("x[3] == 1", {"x": [1]}, "failed to evaluate"),
        ("x", {"x": 1.5}, "must give a boolean, got float 1.5"),
        ("x", {"x": None}, "must give a boolean, got NoneType None"),
        ("x", {"x": [1, "a"]}, "must give a boolean, got list [1, 'a']"),
        ("x", {"x": 2**63}, f"must give a boolean, got int {2**63}"),
        ("{'a': 1}", {}, "must give a boolean, got dict {'a': 1}"),
        ("b'ab'", {}, "must give a boolean, got bytes b'ab'"),
        ("x > 1", {"x": object()}, "failed to evaluate"),
    ],
)
def test_condition_failures_name_the_expression(text: str, context: dict, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        Condition(text).evaluate(context)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_condition_variables_are_the_names_it_references() -> None:
    condition = Condition("steps.a.output.ok && inputs.items.exists(i, i.sku == item)")
    assert condition.variables == ["i", "inputs", "item", "steps"]


def test_a_condition_reads_only_the_variables_it_names() -> None:
    # Values of other names are never converted: one that no CEL type fits
    # does not break a condition that does not read it (the old bindings
    # converted the whole context and failed here).
    assert Condition("a == 1").evaluate({"a": 1, "b": object()}) is True


def test_deep_values_and_expressions_are_refused_not_crashed() -> None:
    # A bounded error where the old packages could hit Python's recursion limit.
    deep: list[object] = []
    cursor = deep
    for _ in range(2000):
        cursor.append([])
        cursor = cursor[0]  # type: ignore[assignment]
    with pytest.raises(ExpressionError):
        Condition("size(x) > 0").evaluate({"x": deep})
    with pytest.raises(ValueError):
        Condition("(" * 500 + "1" + ")" * 500 + " > 0")
    with pytest.raises(ValueError, match="levels deep"):
        JsonPath("$.x[*]").find_all({"x": deep})
    # A singular query walks only its own steps, however deep the value.
    assert JsonPath("$.x[0][0]").find_one({"x": deep}) is deep[0][0]

"""Every op and option compiles to the right node, with the contract's step paths."""

from __future__ import annotations

import pytest
from dsl_helpers import act, workflow

from itonami.dsl import (
    NO_DEFAULT,
    ActivityNode,
    Completion,
    Condition,
    DecisionNode,
    InputMapping,
    JsonPath,
    MapNode,
    ParallelNode,
    SagaNode,
    SeqNode,
    SubworkflowNode,
    WaitNode,
    WorkflowIR,
)
from itonami.retry import RetryPolicy


def load(strategy, **extra) -> WorkflowIR:
    return WorkflowIR.from_dict(workflow(strategy, **extra))


def test_activity_with_every_option() -> None:
    ir = load(
        act(
            "charge",
            id="charge",
            description="charge the card",
            input_mapping={"amount": "$.inputs.amount", "currency": "EUR", "n": [1, "$.index"]},
            timeout="PT10S",
            schedule_to_close_timeout=90,
            retry_policy={
                "initial_interval": "PT0.5S",
                "backoff_coefficient": 3,
                "maximum_interval": "PT1M",
                "maximum_attempts": 7,
                "non_retryable_errors": ["CardDeclined"],
                "jitter": 0.2,
            },
            compensation="refund",
        )
    )
    node = ir.strategy
    assert isinstance(node, ActivityNode)
    assert (node.path, node.id, node.description, node.op) == (
        "0",
        "charge",
        "charge the card",
        "activity",
    )
    assert node.activity_ref == "charge"
    assert node.timeout == 10.0 and node.schedule_to_close_timeout == 90.0
    assert node.retry_policy == RetryPolicy(
        initial_interval=0.5,
        backoff_coefficient=3.0,
        maximum_interval=60.0,
        maximum_attempts=7,
        non_retryable_errors=("CardDeclined",),
        jitter=0.2,
    )
    assert node.compensation == ActivityNode(path="0/comp", activity_ref="refund")
    assert node.input_mapping.evaluate({"inputs": {"amount": 5}, "index": 3}) == {
        "amount": 5,
        "currency": "EUR",
        "n": [1, 3],
    }


def test_activity_compensation_object_and_defaults() -> None:
    ir = load(act("a", compensation={"activity_ref": "undo_a", "id": "undo", "timeout": "PT1S"}))
    node = ir.strategy
    assert isinstance(node, ActivityNode)
    assert node.retry_policy is None and node.timeout is None
    assert node.input_mapping == InputMapping({})
    comp = node.compensation
    assert comp is not None
    assert (comp.path, comp.id, comp.activity_ref, comp.timeout) == (
        "0/comp",
        "undo",
        "undo_a",
        1.0,
    )
    assert ir.node_at("0/comp") == comp
    assert ir.activity_refs() == {"a", "undo_a"}


def test_seq_children_paths() -> None:
    ir = load({"op": "seq", "strategies": [act("a"), {"op": "seq", "strategies": [act("b")]}]})
    root = ir.strategy
    assert isinstance(root, SeqNode)
    assert [n.path for n in ir.nodes()] == ["0", "0/0", "0/1", "0/1/0"]
    assert ir.node_at("0/1/0").activity_ref == "b"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (None, Completion("all", 3)),
        ("all", Completion("all", 3)),
        ("any", Completion("any", 1)),
        ({"at_least": 2}, Completion("at_least", 2)),
        ({"at_least": 3}, Completion("at_least", 3)),
    ],
)
def test_parallel_completion(condition, expected) -> None:
    raw = {"op": "parallel", "branches": [act("a"), act("b"), act("c")]}
    if condition is not None:
        raw["completion_condition"] = condition
    node = load(raw).strategy
    assert isinstance(node, ParallelNode)
    assert node.completion == expected
    assert [b.path for b in node.branches] == ["0/0", "0/1", "0/2"]


def test_map_template_and_iterations() -> None:
    ir = load(
        {
            "op": "map",
            "id": "each",
            "items": "$.inputs.items",
            "max_concurrency": 3,
            "strategy": {"op": "seq", "strategies": [act("x", compensation="undo_x")]},
        }
    )
    node = ir.strategy
    assert isinstance(node, MapNode)
    assert node.items == JsonPath("$.inputs.items") and node.max_concurrency == 3
    assert node.strategy.path == "0/*"
    assert [n.path for n in ir.nodes()] == ["0", "0/*", "0/*/0", "0/*/0/comp"]
    it = node.iteration(7)
    assert node.path_for(7) == "0/7"
    assert [n.path for n in it.walk()] == ["0/7", "0/7/0", "0/7/0/comp"]
    assert ir.node_at("0/7/0/comp") == it.strategies[0].compensation  # type: ignore[attr-defined]
    assert node.resolve_items({"inputs": {"items": [1, 2]}}) == [1, 2]


ORDERS = {"inputs": {"orders": [{"id": "o1", "n": 2}, {"id": "o2", "n": 5}, {"id": "o3"}]}}


def map_over(items: str) -> MapNode:
    node = load(
        {"op": "seq", "strategies": [act("a"), {"op": "map", "items": items, "strategy": act("x")}]}
    ).strategy
    assert isinstance(node, SeqNode)
    mapped = node.strategies[1]
    assert isinstance(mapped, MapNode)
    return mapped


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        # non-singular: the list of the values matched, in document order
        ("$.inputs.orders[*].id", ["o1", "o2", "o3"]),
        ("$.inputs.orders[*]", ORDERS["inputs"]["orders"]),
        ("$.inputs.orders[?@.n > 1].id", ["o1", "o2"]),
        ("$..n", [2, 5]),
        ("$.inputs.orders[1:].id", ["o2", "o3"]),
        ("$.inputs.orders[0].id[*]", []),
        ("$.inputs.nothing[*]", []),
        # singular: the array it selects
        ("$.inputs.orders", ORDERS["inputs"]["orders"]),
        ("$['inputs']['orders']", ORDERS["inputs"]["orders"]),
    ],
)
def test_map_items_singular_array_or_list_of_matches(items: str, expected: list) -> None:
    node = map_over(items)
    assert node.resolve_items(ORDERS) == expected


def test_map_items_of_a_single_match_is_a_one_element_list() -> None:
    # a non-singular query that happens to match one array iterates once, over that array
    node = map_over("$..orders")
    assert node.resolve_items(ORDERS) == [ORDERS["inputs"]["orders"]]


@pytest.mark.parametrize(
    ("items", "got"),
    [
        ("$.inputs.orders[0]", "object"),
        ("$.inputs.orders[0].id", "string"),
        ("$.inputs.orders[1].n", "integer"),
        ("$.inputs.missing", "null"),
        ("$.inputs.orders[9]", "null"),
    ],
)
def test_map_items_singular_non_array_names_the_map_and_query(items: str, got: str) -> None:
    node = map_over(items)
    with pytest.raises(ValueError) as info:
        node.resolve_items(ORDERS)
    message = str(info.value)
    assert "map at '0/1'" in message and repr(items) in message
    assert message.endswith(f"must select an array, got {got}")


def test_decision_branches_and_default() -> None:
    ir = load(
        {
            "op": "decision",
            "conditions": [
                {"condition": "inputs.amount > 100", "branch": act("big")},
                {"condition": "inputs.amount > 10", "branch": act("medium")},
            ],
            "default_branch": act("small"),
        }
    )
    node = ir.strategy
    assert isinstance(node, DecisionNode)
    assert [c.text for c, _ in node.conditions] == ["inputs.amount > 100", "inputs.amount > 10"]
    assert [n.path for n in node.children()] == ["0/0", "0/1", "0/d"]
    assert node.choose({"inputs": {"amount": 500}}) == 0
    assert node.choose({"inputs": {"amount": 50}}) == 1
    assert node.choose({"inputs": {"amount": 5}}) == "default"


def test_decision_without_default_may_take_no_branch() -> None:
    node = load(
        {"op": "decision", "conditions": [{"condition": "inputs.go", "branch": act("a")}]}
    ).strategy
    assert isinstance(node, DecisionNode) and node.default_branch is None
    assert node.choose({"inputs": {"go": False}}) is None


def test_wait_kinds() -> None:
    timer = load({"op": "wait", "condition": {"type": "timer", "duration": "PT1.5S"}}).strategy
    assert timer == WaitNode(path="0", kind="timer", duration=1.5)
    signal = load(
        {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}, "timeout": "PT1H"}
    ).strategy
    assert signal == WaitNode(path="0", kind="signal", signal_name="go", timeout=3600.0)
    event = load(
        {
            "op": "wait",
            "condition": {"type": "event", "event_type": "paid", "filter": "event.id == inputs.id"},
        }
    ).strategy
    assert isinstance(event, WaitNode) and event.kind == "event" and event.event_type == "paid"
    assert event.filter == Condition("event.id == inputs.id")
    assert event.filter.evaluate({"inputs": {"id": 4}, "event": {"id": 4}}) is True


def test_saga_paths() -> None:
    ir = load(
        {"op": "saga", "main_flow": act("a", compensation="undo_a"), "compensation": act("b")}
    )
    node = ir.strategy
    assert isinstance(node, SagaNode)
    assert [n.path for n in ir.nodes()] == ["0", "0/m", "0/m/comp", "0/c"]
    no_comp = load({"op": "saga", "main_flow": act("a")}).strategy
    assert isinstance(no_comp, SagaNode) and no_comp.compensation is None


@pytest.mark.parametrize("op", ["subworkflow", "sub_workflow"])
def test_subworkflow_and_alias(op) -> None:
    ir = load(
        {"op": op, "workflow_ref": "child", "version": "2", "input_mapping": {"x": "$.inputs.x"}}
    )
    node = ir.strategy
    assert isinstance(node, SubworkflowNode) and node.op == "subworkflow"
    assert (node.workflow_ref, node.version) == ("child", "2")
    assert node.input_mapping.evaluate({"inputs": {"x": [1]}}) == {"x": [1]}
    assert ir.workflow_refs() == {("child", "2")}
    assert ir.to_dict()["workflow"]["strategy"]["op"] == "subworkflow"


def test_workflow_level_fields() -> None:
    ir = load(
        act("a"),
        description="d",
        timeout=60,
        retry_policy={"maximum_attempts": 1},
        inputs=[
            {"name": "a", "type": "integer", "required": True},
            {"name": "b", "type": "string", "default": "x", "description": "bee"},
            {"name": "c"},
        ],
        outputs=[{"name": "out", "type": "object", "source": "$.steps.s.output"}],
    )
    assert ir.description == "d" and ir.timeout == 60.0
    assert ir.retry_policy == RetryPolicy(maximum_attempts=1)
    a, b, c = ir.inputs
    assert (a.type, a.required, a.default, a.has_default) == ("integer", True, NO_DEFAULT, False)
    assert (b.default, b.description, b.has_default) == ("x", "bee", True)
    assert (c.type, c.required) == ("any", False)
    assert ir.outputs[0].source == JsonPath("$.steps.s.output")


def test_inner_document_and_wrapper_are_the_same_workflow() -> None:
    doc = workflow(act("a"))
    assert WorkflowIR.from_dict(doc) == WorkflowIR.from_dict(doc["workflow"])


def test_equivalent_sources_normalise_to_the_same_hash() -> None:
    one = load(act("a", timeout="PT1M", compensation="u"))
    two = load(act("a", timeout=60, compensation={"op": "activity", "activity_ref": "u"}))
    assert one == two and one.content_hash == two.content_hash
    three = load(act("a", timeout=61, compensation="u"))
    assert three.content_hash != one.content_hash
    assert len(one.content_hash) == 64


def test_node_at_rejects_unknown_paths() -> None:
    ir = load({"op": "seq", "strategies": [act("a")]})
    for bad in ["1", "0/1", "0/0/0", "0/m", ""]:
        with pytest.raises(KeyError):
            ir.node_at(bad)


def test_at_reroots_whole_subtree() -> None:
    ir = load(
        {
            "op": "saga",
            "main_flow": {
                "op": "decision",
                "conditions": [{"condition": "true", "branch": act("a")}],
                "default_branch": {"op": "parallel", "branches": [act("b")]},
            },
            "compensation": {"op": "map", "items": "$.x", "strategy": act("c")},
        }
    )
    moved = ir.strategy.at("5/3")
    assert [n.path for n in moved.walk()] == [
        "5/3",
        "5/3/m",
        "5/3/m/0",
        "5/3/m/d",
        "5/3/m/d/0",
        "5/3/c",
        "5/3/c/*",
    ]
    assert moved.at("0") == ir.strategy

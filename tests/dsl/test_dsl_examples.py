"""The sample workflows in examples/ load, and the seed's example compiles as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from dsl_helpers import EXAMPLES

from itonami.dsl import (
    ActivityNode,
    DecisionNode,
    MapNode,
    ParallelNode,
    SagaNode,
    SeqNode,
    SubworkflowNode,
    WaitNode,
    WorkflowIR,
)

SEED_ACTIVITIES = {
    "validate_order",
    "process_payment",
    "reserve_inventory",
    "send_confirmation",
    "cancel_payment",
    "release_inventory",
    "send_failure_notification",
}

# The seed's example, verbatim (no step ids).
SEED = (Path(__file__).parent.parent / "support" / "seed.kotoba").read_text()


def test_seed_example_compiles_as_written() -> None:
    ir = WorkflowIR.from_jsonnet_string(SEED, activities=SEED_ACTIVITIES)
    assert (ir.id, ir.name, ir.version, ir.timeout) == (
        "order_processing",
        "Order Processing Workflow",
        "1.0.0",
        1800.0,
    )
    assert [(i.name, i.type, i.required) for i in ir.inputs] == [
        ("orderId", "string", True),
        ("customerId", "string", True),
        ("amount", "number", True),
    ]
    assert [(o.name, o.type, o.source) for o in ir.outputs] == [
        ("processed", "boolean", None),
        ("confirmationId", "string", None),
    ]
    saga = ir.strategy
    assert isinstance(saga, SagaNode) and saga.path == "0"
    main = saga.main_flow
    assert isinstance(main, SeqNode) and main.path == "0/m"
    parallel = main.strategies[1]
    assert isinstance(parallel, ParallelNode) and parallel.path == "0/m/1"
    assert [b.path for b in parallel.branches] == ["0/m/1/0", "0/m/1/1"]
    assert parallel.completion.kind == "all" and parallel.completion.n == 2
    comp = saga.compensation
    assert isinstance(comp, SeqNode) and comp.path == "0/c"
    assert [n.activity_ref for n in comp.strategies] == [  # type: ignore[attr-defined]
        "cancel_payment",
        "release_inventory",
        "send_failure_notification",
    ]
    assert ir.activity_refs() == SEED_ACTIVITIES
    validate = main.strategies[0]
    assert isinstance(validate, ActivityNode)
    assert validate.input_mapping.evaluate(
        {"inputs": {"orderId": "o-1", "customerId": "c-9", "amount": 12.5}}
    ) == {"order_id": "o-1", "customer_id": "c-9"}


def test_order_processing_example_matches_the_seed_apart_from_ids() -> None:
    seed = WorkflowIR.from_jsonnet_string(SEED)
    example = WorkflowIR.from_jsonnet(EXAMPLES / "order_processing.kotoba")
    assert [n.path for n in example.nodes()] == [n.path for n in seed.nodes()]
    assert example.activity_refs() == SEED_ACTIVITIES
    assert example.step_ids().keys() == {"validate", "payment", "inventory", "confirm"}
    assert example.outputs[1].source is not None
    context = {"steps": {"confirm": {"output": {"confirmation_id": "CONF-1"}}}}
    assert example.outputs[1].source.find_one(context) == "CONF-1"


EXPECTED_ROOTS = {
    "activity": ActivityNode,
    "sequence": SeqNode,
    "parallel": ParallelNode,
    "map": MapNode,
    "decision": SeqNode,
    "wait_signal": SeqNode,
    "wait_timer": SeqNode,
    "wait_event": WaitNode,
    "saga": SagaNode,
    "subworkflow": MapNode,
    "order_processing": SagaNode,
}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.kotoba")), ids=lambda p: p.stem)
def test_every_example_loads(path) -> None:
    ir = WorkflowIR.from_jsonnet(path)
    assert ir.strategy.path == "0"
    assert isinstance(ir.strategy, EXPECTED_ROOTS[path.stem])
    # Loading is deterministic and the normalised document round-trips.
    again = WorkflowIR.from_dict(ir.to_dict())
    assert again == ir and again.content_hash == ir.content_hash


def test_every_pattern_has_an_example() -> None:
    stems = {p.stem for p in EXAMPLES.glob("*.kotoba")}
    assert set(EXPECTED_ROOTS) <= stems
    ops = set()
    for path in EXAMPLES.glob("*.kotoba"):
        ops |= {n.op for n in WorkflowIR.from_jsonnet(path).nodes()}
    assert ops == {"activity", "seq", "parallel", "map", "decision", "wait", "saga", "subworkflow"}


def test_examples_use_the_patterns_they_are_named_after() -> None:
    decision = WorkflowIR.from_jsonnet(EXAMPLES / "decision.kotoba").node_at("0/1")
    assert isinstance(decision, DecisionNode)
    signal = WorkflowIR.from_jsonnet(EXAMPLES / "wait_signal.kotoba").node_at("0/1")
    assert isinstance(signal, WaitNode) and signal.kind == "signal" and signal.timeout == 3 * 86400
    timer = WorkflowIR.from_jsonnet(EXAMPLES / "wait_timer.kotoba").node_at("0/0")
    assert isinstance(timer, WaitNode) and timer.kind == "timer" and timer.duration == 86400
    sub = WorkflowIR.from_jsonnet(EXAMPLES / "subworkflow.kotoba")
    assert sub.workflow_refs() == {("order_processing", "1.0.0")}
    assert isinstance(sub.node_at("0/3"), SubworkflowNode)

"""Every validation problem is reported, with its document path, all at once."""

from __future__ import annotations

import pytest
from dsl_helpers import act, problems_of, workflow

from itonami.dsl import MAX_DEPTH, MAX_NODES, WorkflowIR
from itonami.errors import InputValidationError, WorkflowDefinitionError

S = "workflow.strategy"


def check(strategy, **extra) -> dict[str, str]:
    return problems_of(lambda: WorkflowIR.from_dict(workflow(strategy, **extra)))


def test_unknown_op_with_suggestion() -> None:
    problems = check({"op": "paralel", "branches": [act()]})
    assert "did you mean 'parallel'" in problems[f"{S}.op"]


def test_unknown_key_with_suggestion() -> None:
    problems = check({"op": "activity", "activty_ref": "x"})
    assert "did you mean 'activity_ref'" in problems[f"{S}.activty_ref"]
    assert "is required" in problems[f"{S}.activity_ref"]


def test_unknown_workflow_key() -> None:
    problems = problems_of(lambda: WorkflowIR.from_dict(workflow(act(), timout="PT1S")))
    assert "did you mean 'timeout'" in problems["workflow.timout"]


def test_missing_and_mistyped_workflow_fields() -> None:
    problems = problems_of(lambda: WorkflowIR.from_dict({"workflow": {"version": 1}}))
    assert set(problems) == {"workflow.id", "workflow.name", "workflow.version", S}
    assert "expected a string, got integer" in problems["workflow.version"]


def test_not_an_object() -> None:
    assert "expected an object" in problems_of(lambda: WorkflowIR.from_dict([]))["workflow"]  # type: ignore[arg-type]
    assert "expected a strategy object" in check("activity")[S]
    assert "is required" in check({"id": "x"})[f"{S}.op"]


def test_every_problem_is_reported_with_its_path() -> None:
    strategy = {
        "op": "seq",
        "strategies": [
            act("a", id="dup", timeout="soon"),
            {
                "op": "parallel",
                "branches": [act(7), {"op": "nope"}],
                "completion_condition": {"at_least": 3},
            },
            act("b", id="dup"),
            {"op": "decision", "conditions": [{"condition": "inputs.x >", "branch": act("c")}]},
            {"op": "map", "items": "$.[", "strategy": act("d")},
        ],
    }
    problems = check(strategy)
    s = f"{S}.strategies"
    assert set(problems) == {
        f"{s}[0].timeout",
        f"{s}[1].branches[0].activity_ref",
        f"{s}[1].branches[1].op",
        f"{s}[1].completion_condition.at_least",
        f"{s}[2].id",
        f"{s}[3].conditions[0].condition",
        f"{s}[4].items",
    }
    assert "invalid ISO 8601 duration 'soon'" in problems[f"{s}[0].timeout"]
    assert "expected a string, got integer" in problems[f"{s}[1].branches[0].activity_ref"]
    assert "between 1 and the 2 branches" in problems[f"{s}[1].completion_condition.at_least"]
    assert "duplicate step id 'dup'" in problems[f"{s}[2].id"]
    assert f"{s}[0]" in problems[f"{s}[2].id"]
    assert "invalid CEL expression" in problems[f"{s}[3].conditions[0].condition"]
    assert "invalid JSONPath" in problems[f"{s}[4].items"]


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_dict(workflow({"op": "seq", "strategies": [act(1), act(2)]}))
    text = str(info.value)
    assert "2 problem(s)" in text
    assert f"{S}.strategies[0].activity_ref" in text and f"{S}.strategies[1].activity_ref" in text
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("step_id", "ok"),
    [("validate", True), ("_x1", True), ("1abc", False), ("has-dash", False), ("a.b", False)],
)
def test_step_ids_must_be_identifiers(step_id, ok) -> None:
    doc = workflow(act(id=step_id))
    if ok:
        assert WorkflowIR.from_dict(doc).strategy.id == step_id
    else:
        assert "identifier" in problems_of(lambda: WorkflowIR.from_dict(doc))[f"{S}.id"]


def test_duplicate_ids_across_compensation() -> None:
    problems = check(
        {"op": "seq", "strategies": [act(id="x", compensation={"activity_ref": "u", "id": "x"})]}
    )
    assert "duplicate step id 'x'" in problems[f"{S}.strategies[0].compensation.id"]


@pytest.mark.parametrize("key", ["strategies", "branches"])
def test_empty_children(key) -> None:
    op = "seq" if key == "strategies" else "parallel"
    assert "must not be empty" in check({"op": op, key: []})[f"{S}.{key}"]
    assert "is required" in check({"op": op})[f"{S}.{key}"]
    assert "expected an array" in check({"op": op, key: act()})[f"{S}.{key}"]


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ({"at_least": 0}, "between 1 and the 2 branches"),
        ({"at_least": 3}, "between 1 and the 2 branches"),
        ({"at_least": "1"}, "expected an integer"),
        ("some", "expected 'all', 'any'"),
    ],
)
def test_bad_completion_conditions(condition, fragment) -> None:
    problems = check(
        {"op": "parallel", "branches": [act(), act()], "completion_condition": condition}
    )
    assert any(fragment in message for message in problems.values()), problems


@pytest.mark.parametrize(
    ("policy", "path", "fragment"),
    [
        ({"backoff_coefficient": 0.5}, "retry_policy", "backoff_coefficient must be >= 1"),
        ({"jitter": 2}, "retry_policy", "jitter must be within [0, 1]"),
        ({"maximum_attempts": -1}, "retry_policy", "maximum_attempts must be >= 0"),
        (
            {"initial_interval": "PT10S", "maximum_interval": "PT1S"},
            "retry_policy",
            "maximum_interval (1.0) is below initial_interval (10.0)",
        ),
        ({"initial_interval": "ten"}, "retry_policy.initial_interval", "invalid ISO 8601"),
        ({"maximum_attempts": 2.5}, "retry_policy.maximum_attempts", "expected an integer"),
        ({"non_retryable_errors": "E"}, "retry_policy.non_retryable_errors", "array of strings"),
        ({"max_attempts": 2}, "retry_policy.max_attempts", "did you mean 'maximum_attempts'"),
    ],
)
def test_bad_retry_policies(policy, path, fragment) -> None:
    problems = check(act(retry_policy=policy))
    assert fragment in problems[f"{S}.{path}"]


def test_retry_policy_reports_each_inconsistency() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_dict(workflow(act(), retry_policy={"jitter": 3, "backoff_coefficient": 0}))
    messages = [p.message for p in info.value.problems if p.path == "workflow.retry_policy"]
    assert len(messages) == 2


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("P1M", "years or months"),
        ("-PT5S", "must not be negative"),
        (-1, "must not be negative"),
        (True, "boolean"),
        ("PT", "no components"),
        (0, "longer than zero"),
        ("5 minutes", "invalid ISO 8601 duration"),
    ],
)
def test_bad_durations(value, fragment) -> None:
    assert fragment in check(act(timeout=value))[f"{S}.timeout"]


def test_timer_wait_problems() -> None:
    problems = check({"op": "wait", "condition": {"type": "timer"}})
    assert "is required" in problems[f"{S}.condition.duration"]
    problems = check({"op": "wait", "condition": {"type": "timer", "duration": 1}, "timeout": 5})
    assert "takes no timeout" in problems[f"{S}.timeout"]
    problems = check({"op": "wait", "condition": {"type": "timr", "duration": 1}})
    assert "did you mean 'timer'" in problems[f"{S}.condition.type"]
    problems = check({"op": "wait", "condition": {"type": "signal", "name": "x"}})
    assert "did you mean 'signal_name'" in problems[f"{S}.condition.name"]
    assert "is required" in problems[f"{S}.condition.signal_name"]
    problems = check({"op": "wait"})
    assert "is required" in problems[f"{S}.condition"]
    problems = check(
        {"op": "wait", "condition": {"type": "event", "event_type": "e", "filter": "event."}}
    )
    assert "invalid CEL expression" in problems[f"{S}.condition.filter"]


def test_mapping_problems_have_paths() -> None:
    problems = check(act(input_mapping={"a": {"b": ["$.ok", "$.[bad"]}, "c": "$"}))
    assert set(problems) == {f"{S}.input_mapping.a.b[1]"}
    assert "'$$'" in problems[f"{S}.input_mapping.a.b[1]"]
    assert "expected an object" in check(act(input_mapping=["$.x"]))[f"{S}.input_mapping"]


def test_decision_needs_a_branch() -> None:
    problems = check({"op": "decision"})
    assert "at least one condition or a default_branch" in problems[f"{S}.conditions"]
    problems = check({"op": "decision", "conditions": [{"condition": "true"}]})
    assert "is required" in problems[f"{S}.conditions[0].branch"]
    problems = check({"op": "decision", "conditions": [{"branch": act(), "when": "x"}]})
    assert "is required" in problems[f"{S}.conditions[0].condition"]
    assert "unknown key" in problems[f"{S}.conditions[0].when"]


def test_map_problems() -> None:
    problems = check({"op": "map", "strategy": act(), "max_concurrency": 0})
    assert "is required" in problems[f"{S}.items"]
    assert "integer >= 1" in problems[f"{S}.max_concurrency"]
    assert "is required" in check({"op": "map", "items": "$.x"})[f"{S}.strategy"]


def test_compensation_must_be_an_activity() -> None:
    problems = check(act(compensation={"op": "seq", "strategies": [act()]}))
    assert "must be an activity" in problems[f"{S}.compensation.op"]
    assert "expected an activity ref" in check(act(compensation=3))[f"{S}.compensation"]


def test_bad_inputs_and_outputs() -> None:
    problems = problems_of(
        lambda: WorkflowIR.from_dict(
            workflow(
                act(),
                inputs=[
                    {"name": "a", "type": "strng"},
                    {"name": "a", "type": "string"},
                    {"name": "b", "type": "integer", "default": "x"},
                    {"name": "c", "required": "yes"},
                    "d",
                ],
                outputs=[{"name": "o", "source": "steps.x"}, {"type": "any"}],
            )
        )
    )
    assert "did you mean 'string'" in problems["workflow.inputs[0].type"]
    assert "duplicate input name 'a'" in problems["workflow.inputs[1].name"]
    assert "expected integer, got string" in problems["workflow.inputs[2].default"]
    assert "expected a boolean" in problems["workflow.inputs[3].required"]
    assert "expected an object" in problems["workflow.inputs[4]"]
    assert "invalid JSONPath" in problems["workflow.outputs[0].source"]
    assert "is required" in problems["workflow.outputs[1].name"]


def test_nesting_depth_limit() -> None:
    node = act()
    for _ in range(MAX_DEPTH):
        node = {"op": "seq", "strategies": [node]}
    problems = check(node)
    assert len(problems) == 1
    ((path, message),) = problems.items()
    assert f"deeper than the limit of {MAX_DEPTH}" in message
    assert path == S + ".strategies[0]" * MAX_DEPTH
    # One level less is fine.
    WorkflowIR.from_dict(workflow(node["strategies"][0]))


def test_node_count_limit() -> None:
    problems = check({"op": "parallel", "branches": [act() for _ in range(MAX_NODES)]})
    assert any(f"more than {MAX_NODES}" in m for m in problems.values())
    assert len(problems) == 1


def test_document_must_be_json() -> None:
    problems = problems_of(lambda: WorkflowIR.from_dict(workflow(act(input_mapping={"a": {1, 2}}))))
    assert "not a JSON document" in problems["workflow"]


def test_check_unknown_activities_and_workflows() -> None:
    doc = workflow(
        {
            "op": "seq",
            "strategies": [
                act("validate_order"),
                act("proces_payment", compensation="refund"),
                {"op": "subworkflow", "workflow_ref": "child", "version": "2"},
            ],
        }
    )
    ir = WorkflowIR.from_dict(doc)
    known = {"validate_order", "process_payment", "refund"}
    problems = ir.check(
        activities=known, workflows=lambda ref, version: ref == "child" and version == "1"
    )
    by_path = {p.path: p.message for p in problems}
    assert by_path == {
        f"{S}.strategies[1].activity_ref": "unknown activity 'proces_payment' "
        "(did you mean 'process_payment'?)",
        f"{S}.strategies[2].workflow_ref": "unknown workflow 'child' version '2'",
    }
    assert ir.check() == []
    assert ir.check(activities=known | {"proces_payment"}, workflows=lambda r, v: True) == []
    # The loaders run the same checks together with everything else.
    problems2 = problems_of(lambda: WorkflowIR.from_dict(doc, activities=known))
    assert set(problems2) == {f"{S}.strategies[1].activity_ref"}


def test_json_problems_carry_source_lines() -> None:
    text = """{
  "workflow": {
    "id": "wf",
    "name": "n",
    "version": "1",
    "strategy": {
      "op": "seq",
      "strategies": [
        {"op": "activity", "activity_ref": "a"},
        {"op": "activity",
         "activity_ref": "b",
         "timeout": "later"}
      ]
    },
    "bogus": 1
  }
}"""
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_json(text)
    lines = {p.path: p.line for p in info.value.problems}
    assert lines == {f"{S}.strategies[1].timeout": 12, "workflow.bogus": 15}
    ir = WorkflowIR.from_json(text.replace('"later"', '"PT1S"').replace(',\n    "bogus": 1', ""))
    problems = ir.check(activities={"a"})
    assert [(p.path, p.line) for p in problems] == [(f"{S}.strategies[1].activity_ref", 11)]


def test_invalid_json_reports_line() -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_json('{\n  "workflow": {\n    "id": ,\n  }\n}')
    assert info.value.problems[0].line == 3


def test_validate_inputs() -> None:
    ir = WorkflowIR.from_dict(
        workflow(
            act(),
            inputs=[
                {"name": "orderId", "type": "string", "required": True},
                {"name": "amount", "type": "number", "required": True},
                {"name": "count", "type": "integer", "default": 1},
                {"name": "tags", "type": "array"},
                {"name": "meta", "type": "object", "default": {"a": [1]}},
                {"name": "flag", "type": "boolean"},
                {"name": "anything"},
            ],
        )
    )
    out = ir.validate_inputs({"orderId": "o", "amount": 3, "count": 2.0, "flag": False})
    assert out == {
        "orderId": "o",
        "amount": 3,
        "count": 2,
        "tags": None,
        "meta": {"a": [1]},
        "flag": False,
        "anything": None,
    }
    assert isinstance(out["count"], int)
    out["meta"]["a"].append(2)
    assert ir.inputs[4].default == {"a": [1]}  # defaults are copied, never shared
    with pytest.raises(InputValidationError) as info:
        ir.validate_inputs({"amount": True, "count": 1.5, "tags": {}, "flag": 1, "orderid": "x"})
    problems = {p.path: p.message for p in info.value.problems}
    assert problems == {
        "inputs.orderId": "is required (string)",
        "inputs.amount": "expected number, got boolean",
        "inputs.count": "expected integer, got number",
        "inputs.tags": "expected array, got object",
        "inputs.flag": "expected boolean, got integer",
        "inputs.orderid": "is not a declared input (did you mean 'orderId'?)",
    }
    assert isinstance(info.value, ValueError)


def test_inner_json_document_lines() -> None:
    text = '{"id": "x", "name": "n", "version": "1",\n "strategy": {"op": "activty"}}'
    with pytest.raises(WorkflowDefinitionError) as info:
        WorkflowIR.from_json(text)
    (problem,) = info.value.problems
    assert (problem.path, problem.line) == (f"{S}.op", 2)
    assert "did you mean 'activity'" in problem.message

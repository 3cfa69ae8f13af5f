"""Invariants over generated workflows: normalisation round-trips, paths are consistent."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itonami.dsl import MapNode, WorkflowIR

names = st.sampled_from(["a", "b", "charge", "ship", "notify"])
durations = st.one_of(
    st.integers(min_value=1, max_value=10**6),
    st.sampled_from(["PT1S", "PT0.5S", "PT30M", "P1D", "P1DT2H"]),
)
literals = st.one_of(st.none(), st.booleans(), st.integers(-100, 100), st.text(max_size=5))
mapping_values = st.one_of(
    literals.filter(lambda v: not (isinstance(v, str) and v.startswith("$"))),
    st.sampled_from(["$.inputs.x", "$.steps.s.output", "$.item", "$.inputs.xs[*]", "$$lit"]),
)
mappings = st.dictionaries(st.sampled_from(["p", "q", "r"]), mapping_values, max_size=3)
retry = st.fixed_dictionaries(
    {},
    optional={
        "initial_interval": st.sampled_from(["PT1S", 0.5]),
        "backoff_coefficient": st.sampled_from([1, 1.5, 2]),
        "maximum_attempts": st.integers(0, 5),
        "non_retryable_errors": st.lists(st.sampled_from(["E1", "E2"]), max_size=2),
        "jitter": st.sampled_from([0, 0.5, 1]),
    },
)


def activity() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"op": st.just("activity"), "activity_ref": names},
        optional={
            "input_mapping": mappings,
            "timeout": durations,
            "schedule_to_close_timeout": durations,
            "retry_policy": retry,
            "compensation": st.one_of(names, st.fixed_dictionaries({"activity_ref": names})),
            "description": st.text(max_size=5),
        },
    )


leaves = st.one_of(
    activity(),
    st.builds(lambda d: {"op": "wait", "condition": {"type": "timer", "duration": d}}, durations),
    st.builds(
        lambda n, t: (
            {"op": "wait", "condition": {"type": "signal", "signal_name": n}}
            | ({} if t is None else {"timeout": t})
        ),
        names,
        st.none() | durations,
    ),
    st.builds(
        lambda e: {
            "op": "wait",
            "condition": {"type": "event", "event_type": e, "filter": "event.ok == true"},
        },
        names,
    ),
    st.builds(
        lambda ref, v, m: (
            {"op": "sub_workflow", "workflow_ref": ref, "input_mapping": m}
            | ({} if v is None else {"version": v})
        ),
        names,
        st.none() | st.just("2"),
        mappings,
    ),
)


def composites(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    kids = st.lists(children, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda k: {"op": "seq", "strategies": k}, kids),
        st.builds(
            lambda k, c: {"op": "parallel", "branches": k, "completion_condition": c},
            kids,
            st.sampled_from(["all", "any", {"at_least": 1}]),
        ),
        st.builds(
            lambda s, n: (
                {"op": "map", "items": "$.inputs.xs", "strategy": s}
                | ({} if n is None else {"max_concurrency": n})
            ),
            children,
            st.none() | st.integers(1, 4),
        ),
        st.builds(
            lambda k, d: (
                {
                    "op": "decision",
                    "conditions": [
                        {"condition": f"inputs.x == {i}", "branch": b} for i, b in enumerate(k)
                    ],
                }
                | ({} if d is None else {"default_branch": d})
            ),
            kids,
            st.none() | children,
        ),
        st.builds(
            lambda m, c: (
                {"op": "saga", "main_flow": m} | ({} if c is None else {"compensation": c})
            ),
            children,
            st.none() | children,
        ),
    )


strategies = st.recursive(leaves, composites, max_leaves=12)


def document(strategy: dict[str, Any], timeout: Any) -> dict[str, Any]:
    inner = {
        "id": "generated",
        "name": "Generated",
        "version": "1",
        "inputs": [{"name": "x", "type": "integer", "default": 0}, {"name": "xs", "type": "array"}],
        "strategy": strategy,
    }
    if timeout is not None:
        inner["timeout"] = timeout
    return {"workflow": inner}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies, st.none() | durations)
def test_normalised_document_round_trips(strategy: dict[str, Any], timeout: Any) -> None:
    ir = WorkflowIR.from_dict(document(strategy, timeout))
    again = WorkflowIR.from_dict(ir.to_dict())
    assert again == ir
    assert again.content_hash == ir.content_hash
    assert again.to_dict() == ir.to_dict()
    # The document is plain JSON and survives the JSON loader too.
    assert WorkflowIR.from_json(orjson.dumps(ir.document)) == ir


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies)
def test_paths_are_unique_and_addressable(strategy: dict[str, Any]) -> None:
    ir = WorkflowIR.from_dict(document(strategy, None))
    nodes = list(ir.nodes())
    paths = [n.path for n in nodes]
    assert len(paths) == len(set(paths))
    for node in nodes:
        assert ir.node_at(node.path) == node
        assert node.at(node.path) == node
        for child in node.children():
            assert child.path.rsplit("/", 1)[0] == node.path
        if isinstance(node, MapNode):
            iteration = node.iteration(3)
            assert all(n.path.startswith(f"{node.path}/3") for n in iteration.walk())
            assert ir.node_at(f"{node.path}/3") == iteration


@settings(max_examples=30, deadline=None)
@given(strategies, strategies)
def test_different_strategies_have_different_hashes(one: Any, two: Any) -> None:
    a = WorkflowIR.from_dict(document(one, None))
    b = WorkflowIR.from_dict(document(two, None))
    assert (a.content_hash == b.content_hash) == (a.document == b.document)

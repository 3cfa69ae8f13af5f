"""Property: for any workflow tree and any pattern of activity failures, the
engine ends in the outcome the tree's semantics give, and a fresh replay of
the stored history equals the live state and its Merkle head."""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import pytest
from engine_helpers import Harness, wf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itonami import NonRetryableError, WorkflowFailedError

# A tree is ("act", name, fails) | ("seq", [trees]) | ("par", [trees], need)
#           | ("dec", flag, tree_if, tree_else) | ("saga", tree)


def trees() -> st.SearchStrategy[Any]:
    counter = iter(range(10**9))
    leaf = st.builds(lambda fails: ("act", f"a{next(counter)}", fails), st.booleans())
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.builds(lambda ks: ("seq", ks), st.lists(kids, min_size=1, max_size=3)),
            st.lists(kids, min_size=1, max_size=3).flatmap(
                lambda ks: st.builds(lambda need: ("par", ks, need), st.integers(1, len(ks)))
            ),
            st.builds(lambda flag, a, b: ("dec", flag, a, b), st.booleans(), kids, kids),
            st.builds(lambda k: ("saga", k), kids),
        ),
        max_leaves=8,
    )


def to_strategy(tree: Any) -> dict[str, Any]:
    kind = tree[0]
    if kind == "act":
        return {
            "op": "activity",
            "activity_ref": "work",
            "input_mapping": {"name": tree[1], "fails": tree[2]},
            "retry_policy": {"maximum_attempts": 1},
            "compensation": {
                "op": "activity",
                "activity_ref": "undo",
                "input_mapping": {"name": tree[1]},
            },
        }
    if kind == "seq":
        return {"op": "seq", "strategies": [to_strategy(k) for k in tree[1]]}
    if kind == "par":
        return {
            "op": "parallel",
            "branches": [to_strategy(k) for k in tree[1]],
            "completion_condition": {"at_least": tree[2]},
        }
    if kind == "dec":
        return {
            "op": "decision",
            "conditions": [
                {
                    "condition": f"inputs.flag == {str(tree[1]).lower()}",
                    "branch": to_strategy(tree[2]),
                }
            ],
            "default_branch": to_strategy(tree[3]),
        }
    return {"op": "saga", "main_flow": to_strategy(tree[1])}


def outcomes(tree: Any, flag: bool) -> set[str]:
    """The statuses the tree may end with: ``completed``, ``failed`` or
    ``compensated`` (several only where parallel failures race)."""
    kind = tree[0]
    if kind == "act":
        return {"failed" if tree[2] else "completed"}
    if kind == "seq":
        for k in tree[1]:
            out = outcomes(k, flag)
            if out != {"completed"}:
                return out
        return {"completed"}
    if kind == "par":
        results = [outcomes(k, flag) for k in tree[1]]
        if sum(r == {"completed"} for r in results) >= tree[2]:
            return {"completed"}
        # the first failure to arrive decides which kind of failure it is
        return set().union(*(r for r in results if r != {"completed"}))
    if kind == "dec":
        return outcomes(tree[2] if flag == tree[1] else tree[3], flag)
    return {"completed"} if outcomes(tree[1], flag) == {"completed"} else {"compensated"}


@pytest.mark.parametrize("store", ["memory", "sqlite"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), flag=st.booleans(), writer=st.sampled_from(["loop", "thread"]))
def test_any_tree_ends_as_its_semantics_say_and_replays_identically(
    store: str, tree: Any, flag: bool, writer: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(store, tree, flag, writer, tmp))


async def scenario(store: str, tree: Any, flag: bool, writer: str, tmp: str) -> None:
    h = Harness() if store == "memory" else Harness(f"sqlite:///{tmp}/p.db", writer=writer)

    @h.registry.activity()
    async def work(name: str, fails: bool) -> dict:
        await asyncio.sleep(0)
        if fails:
            raise NonRetryableError(f"{name} failed")
        return {"name": name}

    @h.registry.activity()
    async def undo(name: str) -> dict:
        return {"undone": name}

    try:
        ir = wf(to_strategy(tree))
        eid = await h.engine.start_workflow(ir, {"flag": flag})
        try:
            await h.engine.wait_for_completion(eid, timeout=10)
            status = "completed"
        except WorkflowFailedError as e:
            status = e.status
        assert status in outcomes(tree, flag), (tree, flag, status)
        assert await h.check_replay() >= 1
    finally:
        await h.close()

"""The balancers' choices, and what cluster health says, as pure functions."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from itonami import Balancer, LeastLoadedBalancer, RoundRobinBalancer
from itonami.engine.cluster import describe_missing
from itonami.storage import NodeInfo


def node(name: str, inflight: int = 0, capacity: int = 10) -> NodeInfo:
    return NodeInfo(name, capacity, inflight, ["activity:a"], {}, 0.1, "healthy")


def test_round_robin_takes_each_node_in_turn() -> None:
    rr = RoundRobinBalancer()
    nodes = [node("a"), node("b"), node("c")]
    assert [rr.choose(nodes, []) for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert rr.choose([], []) is None


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 50)), min_size=1, max_size=8))
def test_least_loaded_picks_a_node_with_the_lowest_load(loads: list[tuple[int, int]]) -> None:
    nodes = [node(f"n{i}", inflight, cap) for i, (inflight, cap) in enumerate(loads)]
    chosen = LeastLoadedBalancer().choose(nodes, [])
    best = min(n.inflight / n.capacity for n in nodes)
    assert chosen is not None
    picked = next(n for n in nodes if n.node_id == chosen)
    assert picked.inflight / picked.capacity == best


def test_least_loaded_spreads_over_equal_nodes() -> None:
    ll = LeastLoadedBalancer()
    nodes = [node("a"), node("b"), node("c")]
    assert Counter(ll.choose(nodes, []) for _ in range(300)) == {"a": 100, "b": 100, "c": 100}
    assert ll.choose([], []) is None


def test_the_balancers_are_balancers() -> None:
    assert isinstance(RoundRobinBalancer(), Balancer)
    assert isinstance(LeastLoadedBalancer(), Balancer)


def test_missing_capabilities_read_as_a_sentence() -> None:
    assert describe_missing(["activity:pay_out"]) == "no worker with activity `pay_out`"
    assert describe_missing(["activity:a", "wf:h"]) == "no worker with activity `a` and wf `h`"
    assert describe_missing([]) == ""

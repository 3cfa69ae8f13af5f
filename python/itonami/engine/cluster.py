"""Distributed execution: balancers and what cluster health reports.

Nodes *pull* work: each claims ready executions from the store up to its
free capacity (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so no node ever
runs more than its capacity of claimed work, whatever the balancer says. A
balancer decides where a *submitted* execution should run: it names a
preferred node, which the store lets claim it at once; any other node that
can run it takes it only after it has waited ``steal_after`` seconds (a slow,
full or dead preferred node delays nothing for long).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..storage import ClusterStats, NodeInfo

__all__ = [
    "Balancer",
    "ClusterHealth",
    "LeastLoadedBalancer",
    "RoundRobinBalancer",
]


@runtime_checkable
class Balancer(Protocol):
    """Chooses the node a submitted execution should run on.

    ``nodes`` are the live (healthy) nodes that have every capability the
    execution needs, sorted by node id, each with ``inflight`` counting the
    executions it runs (from its last heartbeat) plus those this engine
    handed it since. Return one of their ids, or ``None`` for no preference
    (whichever node claims first).
    """

    def choose(self, nodes: Sequence[NodeInfo], needs: Sequence[str]) -> str | None:
        """The preferred node's id, or None."""
        ...


class RoundRobinBalancer:
    """Each submission goes to the next node in turn (by node id).

    With equal nodes that keep up, every node gets the same share; a node
    that falls behind (at capacity, slow, dead) loses what waits past
    ``steal_after`` to the others.
    """

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, nodes: Sequence[NodeInfo], needs: Sequence[str]) -> str | None:
        if not nodes:
            return None
        return nodes[next(self._turn) % len(nodes)].node_id


class LeastLoadedBalancer:
    """Each submission goes to the node with the lowest load (in-flight
    executions over capacity), the next in turn among equals.

    Load is what the nodes last reported plus what this engine handed them
    since; a node never runs more than its capacity either way (it claims
    only up to its free capacity).
    """

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, nodes: Sequence[NodeInfo], needs: Sequence[str]) -> str | None:
        if not nodes:
            return None
        turn = next(self._turn)
        n = len(nodes)

        def load(i: int) -> tuple[float, int]:
            node = nodes[i]
            used = node.inflight / node.capacity if node.capacity > 0 else float("inf")
            return used, (i - turn) % n

        return nodes[min(range(n), key=load)].node_id


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """What :meth:`WorkflowEngine.get_cluster_health` reports.

    ``nodes``: every registered node with its status (healthy, suspect or
    dead by heartbeat age), capacity, in-flight count and capabilities.
    ``ready``: executions with work to do now that no live lease holds, and
    ``oldest_ready_age`` (s) how long the oldest of them has waited.
    ``waiting_for``: ready executions that no live node can run, with the
    capabilities none has (``activity:<name>``). ``reassignments``: leases
    taken over after they expired (failovers); ``fenced_writes``: writes
    refused because their lease was lost.
    """

    node_id: str
    nodes: list[NodeInfo]
    ready: int
    oldest_ready_age: float
    waiting_for: dict[str, list[str]]
    reassignments: int
    fenced_writes: int

    @classmethod
    def of(cls, node_id: str, stats: ClusterStats) -> ClusterHealth:
        return cls(
            node_id=node_id,
            nodes=list(stats.nodes),
            ready=stats.ready,
            oldest_ready_age=stats.oldest_ready_age,
            waiting_for=dict(stats.waiting_for),
            reassignments=stats.reassignments,
            fenced_writes=stats.fenced_writes,
        )

    @property
    def healthy(self) -> bool:
        """Every node healthy and no execution waiting for a capability."""
        return all(n.status == "healthy" for n in self.nodes) and not self.waiting_for

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the CLI's and the web UI's)."""
        out = dataclasses.asdict(self)
        out["healthy"] = self.healthy
        return out


def describe_missing(missing: Sequence[str]) -> str:
    """``["activity:pay_out"]`` → ``no worker with activity `pay_out```."""
    names = []
    for cap in missing:
        kind, _, name = cap.partition(":")
        names.append(f"{kind} `{name}`" if name else f"`{cap}`")
    return "no worker with " + " and ".join(names) if names else ""

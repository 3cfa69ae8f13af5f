"""A worker node: an engine that runs whatever its cluster's store has for it.

``itonami worker --db postgresql://… --activities module`` runs one; so does
:func:`run_worker` from Python. A worker registers in the store's nodes
table, heartbeats, claims ready executions up to its capacity (those whose
activities it has), resumes what a dead node left once its leases expire,
and on SIGTERM or SIGINT stops taking work, releases what it holds (another
node takes it at once) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterable

from .activities import ActivityRegistry
from .dsl import WorkflowIR
from .engine import LeastLoadedBalancer, RoundRobinBalancer, WorkflowEngine
from .engine.cluster import Balancer
from .storage.base import redact_url

__all__ = ["BALANCERS", "run_worker"]

#: The balancers a worker can be started with, by command-line name.
BALANCERS: dict[str, Callable[[], Balancer]] = {
    "least-loaded": LeastLoadedBalancer,
    "round-robin": RoundRobinBalancer,
}


async def run_worker(
    storage: str,
    activities: ActivityRegistry,
    *,
    workflows: Iterable[WorkflowIR] = (),
    node_id: str | None = None,
    capacity: int = 1000,
    lease_seconds: float | None = None,
    balancer: str = "least-loaded",
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Run a worker node until ``stop`` is set (or SIGTERM / SIGINT arrives).

    ``balancer`` (``least-loaded`` or ``round-robin``) places the executions
    this node's own code submits; work reaches every node by claims.
    ``metrics_port`` serves the engine's Prometheus metrics on
    ``http://metrics_host:metrics_port/metrics`` (needs the metrics extra;
    0: a free port, announced).
    """
    if balancer not in BALANCERS:
        raise ValueError(f"unknown balancer {balancer!r}; use one of {', '.join(BALANCERS)}")
    builder = WorkflowEngine.builder().with_storage(storage).with_activities(activities)
    builder = builder.with_workflows(workflows).with_capacity(capacity)
    if node_id is not None:
        builder = builder.with_node_id(node_id)
    if lease_seconds is not None:
        builder = builder.with_lease(lease_seconds)
    if metrics_port is not None:
        builder = builder.with_metrics()
    engine = builder.with_distributed_execution(BALANCERS[balancer]()).build()
    server = None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        if metrics_port is not None:
            from prometheus_client import start_http_server

            server, _ = start_http_server(metrics_port, addr=metrics_host)
        async with engine:
            say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
            names = ", ".join(activities.names()) or "none"
            say(
                f"itonami worker {engine.node_id} on {redact_url(storage)}: "
                f"capacity {engine.capacity}, activities: {names}"
            )
            if server is not None:
                say(
                    f"itonami worker {engine.node_id}: metrics on "
                    f"http://{metrics_host}:{server.server_port}/metrics"
                )
            await stop.wait()
            say(f"itonami worker {engine.node_id}: stopping (releasing what it holds)")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if server is not None:
            server.shutdown()
            server.server_close()

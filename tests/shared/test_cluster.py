"""A cluster on PostgreSQL: real `itonami worker` processes, real kills, a
real server restart.

Each test gets a database of its own; workers run the console command
(`python -m itonami --db URL worker --activities cluster_app.py ...`) and a
client engine in the test process submits work with a balancer and runs
none itself (recovery off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import cluster_app
import pytest

from itonami import (
    ItonamiError,
    LeastLoadedBalancer,
    RoundRobinBalancer,
    WaitTimeoutError,
    WorkflowEngine,
    WorkflowFailedError,
)
from itonami.engine.cluster import Balancer

PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")
APP = Path(__file__).with_name("cluster_app.py")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="PostgreSQL tests need ITONAMI_TEST_POSTGRES_URL"),
]


@pytest.fixture
def db() -> Iterator[str]:
    """A fresh database on the test server (NOTIFY is per database, too)."""
    import psycopg

    name = f"itonami_cl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[call-overload]
    parts = urlsplit(PG_URL)
    yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[call-overload]


class Workers:
    """`itonami worker` processes on one store, and the ledger they write."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.ledger = tmp / "ledger.jsonl"
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.tmp = tmp

    def start(self, node: str, *, capacity: int = 100, lease: float = 2.0) -> None:
        env = {**os.environ, "ITONAMI_LEDGER": str(self.ledger), "ITONAMI_NODE": node}
        log = open(self.tmp / f"{node}.log", "a")  # noqa: SIM115 - closed with the process
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "itonami",
                "--db",
                self.url,
                "worker",
                "--activities",
                str(APP),
                "--node-id",
                node,
                "--capacity",
                str(capacity),
                "--lease",
                str(lease),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()

    def kill(self, node: str) -> None:
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for node, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"worker {node} did not stop on SIGTERM")

    def log(self, node: str) -> str:
        return (self.tmp / f"{node}.log").read_text()

    def calls(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines()]


@pytest.fixture
def workers(db: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(db, tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


@contextlib.asynccontextmanager
async def client(url: str, balancer: Balancer) -> AsyncIterator[WorkflowEngine]:
    """An engine that submits to the cluster and runs nothing itself."""
    engine = (
        WorkflowEngine.builder()
        .with_storage(url)
        .with_recovery(False)
        .with_distributed_execution(balancer)
        .build()
    )
    async with engine:
        yield engine


async def until_healthy(engine: WorkflowEngine, nodes: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health = await engine.get_cluster_health()
        if {n.node_id for n in health.nodes if n.status == "healthy"} >= nodes:
            return
        assert time.monotonic() < deadline, f"nodes never all healthy: {health}"
        await asyncio.sleep(0.1)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


async def test_round_robin_spreads_a_thousand_workflows_evenly(workers: Workers) -> None:
    names = {"w1", "w2", "w3"}
    for node in sorted(names):
        workers.start(node, capacity=200)
    async with client(workers.url, RoundRobinBalancer()) as engine:
        await until_healthy(engine, names)
        ir = cluster_app.one()
        ids = [await engine.start_workflow(ir, {}) for _ in range(1000)]
        for eid in ids:
            await engine.wait_for_completion(eid, timeout=120)
        health = await engine.get_cluster_health()
    ran = Counter(c["node"] for c in workers.calls())
    assert sum(ran.values()) == 1000
    # Within ±10 % of an equal share on three equal nodes.
    assert set(ran) == names and all(300 <= n <= 367 for n in ran.values()), ran
    assert health.ready == 0 and not health.waiting_for


async def test_least_loaded_never_runs_more_than_a_nodes_capacity(workers: Workers) -> None:
    names = {"w1", "w2", "w3"}
    for node in sorted(names):
        workers.start(node, capacity=3)
    async with client(workers.url, LeastLoadedBalancer()) as engine:
        await until_healthy(engine, names)
        ir = cluster_app.one(ms=40)
        ids = [await engine.start_workflow(ir, {}) for _ in range(90)]
        for eid in ids:
            await engine.wait_for_completion(eid, timeout=120)
    by_node: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in workers.calls():
        by_node[c["node"]].append((c["t0"], c["t1"]))
    assert sum(len(v) for v in by_node.values()) == 90
    assert set(by_node) == names  # the load went everywhere
    for node, spans in by_node.items():
        assert max_overlap(spans) <= 3, node


async def test_a_client_sees_what_waits_for_a_capability_no_worker_has(workers: Workers) -> None:
    workers.start("w1")
    async with client(workers.url, LeastLoadedBalancer()) as engine:
        await until_healthy(engine, {"w1"})
        lonely = cluster_app._wf("lonely", {"op": "activity", "id": "p", "activity_ref": "pay_out"})
        eid = await engine.start_workflow(lonely, {})
        assert await engine.waiting_for(eid) == "no worker with activity `pay_out`"
        health = await engine.get_cluster_health()
        assert health.waiting_for == {eid: ["activity:pay_out"]} and not health.healthy
        # Nobody fails it: it waits, visibly, for a worker that can run it.
        record = await engine.storage.get_execution(eid)
        assert record is not None and record.status == "running"


@pytest.mark.timeout(300)
async def test_a_mixed_workload_survives_a_kill_and_a_server_restart(
    workers: Workers, tmp_path: Path
) -> None:
    if not (os.environ.get("ITONAMI_PG_DIR") and os.environ.get("ITONAMI_PG_BIN")):
        pytest.skip("restarting PostgreSQL needs ITONAMI_PG_DIR and ITONAMI_PG_BIN")
    sys.path.insert(0, str(Path(__file__).parents[1] / "crash"))
    from crash_helpers import restart_postgres

    names = {"w1", "w2", "w3"}
    for node in sorted(names):
        workers.start(node, capacity=50)
    flows = cluster_app.mixed()
    kinds = ["seq", "parallel", "timer", "signal", "saga", "parent"] * 8
    async with client(workers.url, RoundRobinBalancer()) as engine:
        await engine.register_workflow(flows["child"])
        await until_healthy(engine, names)
        ids = {}
        for i, kind in enumerate(kinds):
            ids[f"{kind}{i}"] = await engine.start_workflow(flows[kind], {})
        # Kill one worker while work is in flight, restart the server, then
        # let the signals through.
        deadline = time.monotonic() + 30
        while len(workers.calls()) < 40:
            assert time.monotonic() < deadline, "the workload never got going"
            await asyncio.sleep(0.05)
        workers.kill("w2")
        restart_postgres()
        for key, eid in ids.items():
            if key.startswith("signal"):
                for _ in range(100):
                    try:
                        await engine.signal(eid, "go", {})
                        break
                    except ItonamiError:  # the server may still be coming back
                        await asyncio.sleep(0.2)
        outcomes: dict[str, str] = {}
        errors: dict[str, Any] = {}
        for key, eid in ids.items():
            try:
                await engine.wait_for_completion(eid, timeout=90)
                outcomes[key] = "completed"
            except WorkflowFailedError as e:
                outcomes[key] = e.status
                errors[key] = e.error
            except WaitTimeoutError:
                statuses = await engine.storage.execution_statuses(ids.values())
                stuck = {k: statuses.get(e) for k, e in ids.items() if k not in outcomes}
                leases = [await engine.storage.get_lease(ids[k]) for k in list(stuck)[:3]]
                pytest.fail(
                    f"{key} did not finish: {stuck}; {leases}; {await engine.get_cluster_health()}"
                )
        histories = {eid: await engine.get_event_history(eid) for eid in ids.values()}
        for eid in ids.values():
            report = await engine.verify(eid)  # raises on a broken chain
            assert report.versions == len(histories[eid])
    expected = {k: ("compensated" if k.startswith("saga") else "completed") for k in ids}
    assert outcomes == expected, {k: v for k, v in errors.items() if not k.startswith("saga")}
    # No step completed twice in any history; every step ran at most once
    # more than the crashes while it was in flight (one kill: at most twice).
    for eid, events in histories.items():
        done = Counter(e.step for e in events if e.kind == "step_completed")
        assert all(n == 1 for n in done.values()), (eid, done)
    runs = Counter((c["eid"], c["step"]) for c in workers.calls())
    assert max(runs.values()) <= 2, runs.most_common(3)
    assert "stopping" not in workers.log("w2")  # it really died

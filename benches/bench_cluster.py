"""Distributed execution on PostgreSQL, measured with real worker processes.

    bash .ci/postgres.sh run python benches/bench_cluster.py [--workflows N]

(`make bench-cluster` does this.) Each scenario gets a fresh database on the
server ITONAMI_TEST_POSTGRES_URL names; workers are `itonami worker`
processes; a client engine in this process submits and runs nothing.

Printed, in one run:

* the raw `FOR UPDATE SKIP LOCKED` claim rate of this database with 1, 2
  and 3 claiming processes (claim one row, mark it done, commit): the floor
  a queue on it can reach;
* 3-step workflows/s with 1, 2 and 3 workers, and each as a ratio of the
  claim rate with as many processes;
* dispatch latency: from the commit of a submission to a worker starting its
  first step (p50, p99);
* signal latency: from the commit of a signal (sent by a process running
  nothing) to the owner starting the step after the wait (p50, p99);
* failover: from a worker's kill -9 to its executions' steps starting on
  another worker, with the default lease.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from itonami import RoundRobinBalancer, WorkflowEngine, WorkflowIR

HERE = Path(__file__).parent
APP = HERE / "cluster_app.py"
BASE = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")


def _act(ref: str) -> dict[str, Any]:
    return {"op": "activity", "activity_ref": ref, "retry_policy": {"maximum_attempts": 3}}


def _wf(wid: str, steps: list[dict[str, Any]]) -> WorkflowIR:
    return WorkflowIR.from_dict(
        {
            "workflow": {
                "id": wid,
                "name": wid,
                "version": "1",
                "strategy": {"op": "seq", "strategies": steps},
            }
        }
    )


SEQ3 = _wf("seq3", [_act("noop"), _act("noop"), _act("noop")])
MARKED = _wf("marked", [_act("mark")])
SIGNALLED = _wf(
    "signalled",
    [
        {"op": "wait", "id": "go", "condition": {"type": "signal", "signal_name": "go"}},
        _act("mark"),
    ],
)
BLOCKED = _wf("blocked", [_act("block")])


@contextmanager
def database() -> Iterator[str]:
    name = f"itonami_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(BASE, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[call-overload]
    parts = urlsplit(BASE)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[call-overload]


_PROFILED = """
import cProfile, runpy, sys, time
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    runpy.run_module("itonami", run_name="__main__", alter_sys=True)
finally:
    profile.disable()
    profile.dump_stats({out!r})
"""


class Cluster:
    def __init__(
        self, url: str, tmp: Path, n: int, profile: Path | None = None, **env: str
    ) -> None:
        self.url = url
        self.marks = tmp / f"marks-{uuid.uuid4().hex[:6]}.jsonl"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i in range(1, n + 1):
            node = f"w{i}"
            environ = {**os.environ, "ITONAMI_NODE": node, "ITONAMI_BENCH_MARKS": str(self.marks)}
            environ.update(env)
            # --profile: each worker under cProfile timed by its CPU time (its
            # waits on the database are not its cost), written when it stops.
            start = ["-m", "itonami"]
            if profile is not None:
                start = ["-c", _PROFILED.format(out=str(profile / f"{node}.prof"))]
            self.procs[node] = subprocess.Popen(
                [sys.executable, *start, "--db", url, "worker",
                 "--activities", str(APP), "--node-id", node, "--capacity", "200"],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def marks_read(self) -> list[dict[str, Any]]:
        if not self.marks.exists():
            return []
        return [json.loads(line) for line in self.marks.read_text().splitlines()]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


async def client(url: str) -> WorkflowEngine:
    engine = (
        WorkflowEngine.builder()
        .with_storage(url)
        .with_recovery(False)
        .with_distributed_execution(RoundRobinBalancer())
        .build()
    )
    await engine.start()
    return engine


async def until_nodes(engine: WorkflowEngine, n: int) -> None:
    for _ in range(600):
        health = await engine.get_cluster_health()
        if sum(1 for node in health.nodes if node.status == "healthy") >= n:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the workers never registered")


async def until_completed(url: str, n: int) -> None:
    """Poll (one connection, every 20 ms) until ``n`` executions completed."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute("SELECT count(*) FROM executions WHERE status = 'completed'")
            row = await cur.fetchone()
            if row is not None and row[0] >= n:
                return
            await asyncio.sleep(0.02)


# ------------------------------------------------------------------ the floor

_CLAIMER = """
import sys, time, psycopg
url, n = sys.argv[1], int(sys.argv[2])
with psycopg.connect(url) as conn:
    done = 0
    while True:
        with conn.transaction():
            row = conn.execute(
                "SELECT id FROM q WHERE done = false ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                break
            conn.execute("UPDATE q SET done = true WHERE id = %s", row)
        done += 1
print(done)
"""


def skip_locked_rate(url: str, procs: int, rows: int) -> float:
    """Claims/s of `procs` processes draining `rows` with SKIP LOCKED."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS q")
        conn.execute("CREATE TABLE q (id bigint PRIMARY KEY, done boolean NOT NULL)")
        conn.execute("INSERT INTO q SELECT g, false FROM generate_series(1, %s) g", (rows,))
    t0 = time.perf_counter()
    ps = [
        subprocess.Popen([sys.executable, "-c", _CLAIMER, url, str(rows)], stdout=subprocess.PIPE)
        for _ in range(procs)
    ]
    total = sum(int(p.communicate()[0]) for p in ps)
    elapsed = time.perf_counter() - t0
    assert total == rows, (total, rows)
    return rows / elapsed


# ------------------------------------------------------------------ itonami


async def throughput(workers: int, n: int, tmp: Path, profile: Path | None = None) -> float:
    with database() as url:
        cluster = Cluster(url, tmp, workers, profile)
        try:
            engine = await client(url)
            await until_nodes(engine, workers)
            await engine.register_workflow(SEQ3)
            t0 = time.perf_counter()
            for i in range(0, n, 50):
                await asyncio.gather(
                    *(engine.start_workflow(SEQ3, {}) for _ in range(min(50, n - i)))
                )
            await until_completed(url, n)
            elapsed = time.perf_counter() - t0
            await engine.close()
        finally:
            cluster.stop()
    return n / elapsed


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def dispatch_latency(samples: int, tmp: Path) -> list[float]:
    with database() as url:
        cluster = Cluster(url, tmp, 1)
        try:
            engine = await client(url)
            await until_nodes(engine, 1)
            await engine.register_workflow(MARKED)
            committed: dict[str, float] = {}
            for _ in range(samples):
                eid = await engine.start_workflow(MARKED, {})
                committed[eid] = time.time()
                await engine.wait_for_completion(eid, timeout=30)
            await engine.close()
            marks = {m["eid"]: m["at"] for m in cluster.marks_read()}
        finally:
            cluster.stop()
    return [max(0.0, marks[e] - t) * 1000 for e, t in committed.items()]


async def signal_latency(samples: int, tmp: Path) -> list[float]:
    with database() as url:
        cluster = Cluster(url, tmp, 1)
        try:
            engine = await client(url)
            await until_nodes(engine, 1)
            await engine.register_workflow(SIGNALLED)
            ids = [await engine.start_workflow(SIGNALLED, {}) for _ in range(samples)]
            for eid in ids:  # every wait open (the worker parked them all)
                while not any(
                    e.kind == "wait_started" for e in await engine.storage.read_events(eid)
                ):
                    await asyncio.sleep(0.01)
            sent: dict[str, float] = {}
            for eid in ids:
                await engine.signal(eid, "go", {})
                sent[eid] = time.time()
                await engine.wait_for_completion(eid, timeout=30)
            await engine.close()
            marks = {m["eid"]: m["at"] for m in cluster.marks_read()}
        finally:
            cluster.stop()
    return [max(0.0, marks[e] - t) * 1000 for e, t in sent.items()]


async def failover(n: int, tmp: Path) -> tuple[float, float]:
    with database() as url:
        cluster = Cluster(url, tmp, 2, ITONAMI_BENCH_BLOCK_ON="w1")
        try:
            engine = await client(url)
            await until_nodes(engine, 2)
            await engine.register_workflow(BLOCKED)
            for _ in range(n):
                await engine.start_workflow(BLOCKED, {})
            while sum(1 for m in cluster.marks_read() if m["node"] == "w1") == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # let w1 take its share
            stuck = {m["eid"] for m in cluster.marks_read() if m["node"] == "w1"}
            killed = time.time()
            cluster.procs["w1"].send_signal(signal.SIGKILL)
            await until_completed(url, n)
            await engine.close()
            again = [
                m["at"] - killed
                for m in cluster.marks_read()
                if m["eid"] in stuck and m["node"] != "w1"
            ]
        finally:
            cluster.stop()
    return min(again), max(again)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workflows", type=int, default=2000)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument(
        "--profile",
        type=Path,
        help="only the throughput of one worker, run under cProfile: DIR/w1.prof, top functions",
    )
    args = p.parse_args()
    if not BASE:
        sys.exit("set ITONAMI_TEST_POSTGRES_URL (bash .ci/postgres.sh run python benches/...)")
    tmp = Path(tempfile.mkdtemp(prefix="itonami-bench-"))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        rate = await throughput(1, args.workflows, tmp, args.profile)
        print(f"1 worker under cProfile: {rate:,.0f} workflows/s")
        pstats.Stats(str(args.profile / "w1.prof")).sort_stats("tottime").print_stats(25)
        return
    print(f"{'':38} {'1 process':>12} {'2':>12} {'3':>12}")
    with database() as url:
        floor = [skip_locked_rate(url, k, 5000) for k in (1, 2, 3)]
    print(f"{'raw SKIP LOCKED claims/s':38} " + " ".join(f"{v:12,.0f}" for v in floor))
    rates = [await throughput(k, args.workflows, tmp) for k in (1, 2, 3)]
    print(f"{'itonami 3-step workflows/s':38} " + " ".join(f"{v:12,.0f}" for v in rates))
    ratios = [r / f for r, f in zip(rates, floor, strict=True)]
    print(f"{'  ratio to the claim rate':38} " + " ".join(f"{v:12.2f}" for v in ratios))
    d = await dispatch_latency(args.samples, tmp)
    print(f"dispatch latency (ms): p50 {pct(d, 50):.1f}, p99 {pct(d, 99):.1f} (n={len(d)})")
    s = await signal_latency(min(args.samples, 100), tmp)
    print(f"signal latency (ms):   p50 {pct(s, 50):.1f}, p99 {pct(s, 99):.1f} (n={len(s)})")
    first, last = await failover(20, tmp)
    print(f"failover (default lease 8 s): first step elsewhere {first:.1f} s, last {last:.1f} s")
    print(f"(median of the dispatch samples: {statistics.median(d):.1f} ms)")


if __name__ == "__main__":
    asyncio.run(main())

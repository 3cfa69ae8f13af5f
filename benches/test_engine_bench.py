"""Engine throughput and latency (run with ``make bench``).

Each benchmark runs a batch of workflows per round; ``extra_info`` carries the
derived figures (workflows/s, latency percentiles, bytes per execution) that
the summary table at the end prints and the README reports.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from itonami import ActivityRegistry, WorkflowEngine, WorkflowIR

N_SEQ = 2000


def registry() -> ActivityRegistry:
    reg = ActivityRegistry()

    @reg.activity()
    async def noop() -> dict:
        return {"ok": True}

    @reg.activity()
    async def take(order_id: str, amount: float, ok: bool | None, skus: list) -> dict:
        return {"ok": True, "order_id": order_id}

    return reg


def act() -> dict[str, Any]:
    return {"op": "activity", "activity_ref": "noop", "retry_policy": {"maximum_attempts": 1}}


SEQ3 = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "seq3",
            "name": "seq3",
            "version": "1",
            "strategy": {"op": "seq", "strategies": [act(), act(), act()]},
        }
    }
)
PAR = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "par",
            "name": "par",
            "version": "1",
            "strategy": {
                "op": "seq",
                "strategies": [act(), {"op": "parallel", "branches": [act(), act()]}, act()],
            },
        }
    }
)


def mapped(step_id: str, previous: str) -> dict[str, Any]:
    return {
        "op": "activity",
        "id": step_id,
        "activity_ref": "take",
        "retry_policy": {"maximum_attempts": 1},
        "input_mapping": {
            "order_id": "$.inputs.orderId",
            "amount": "$.inputs.amount",
            "ok": f"$.steps.{previous}.output.ok",
            "skus": "$.inputs.items[*].sku",
        },
    }


# SEQ3 with what real workflows carry: each step's input mapped from the
# inputs and the step before (three singular queries and one wildcard), and
# a decision (one CEL condition) before the last step.
SEQ3_MAPPED = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "seq3_mapped",
            "name": "seq3_mapped",
            "version": "1",
            "strategy": {
                "op": "seq",
                "strategies": [
                    mapped("a", "none"),
                    mapped("b", "a"),
                    {
                        "op": "decision",
                        "conditions": [
                            {
                                "condition": "steps.b.output.ok && inputs.amount > 10.0",
                                "branch": mapped("c", "b"),
                            }
                        ],
                    },
                ],
            },
        }
    }
)
MAPPED_INPUTS = {
    "orderId": "o-1",
    "amount": 12.5,
    "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
}

PARKED = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "parked",
            "name": "parked",
            "version": "1",
            "strategy": {"op": "wait", "condition": {"type": "signal", "signal_name": "go"}},
        }
    }
)


def engine(storage: str) -> WorkflowEngine:
    return WorkflowEngine.builder().with_storage(storage).with_activities(registry()).build()


async def run_batch(
    eng: WorkflowEngine,
    ir: WorkflowIR,
    n: int,
    in_flight: int,
    inputs: dict[str, Any] | None = None,
) -> list[float]:
    """Run ``n`` workflows with at most ``in_flight`` at once; per-workflow latencies."""
    latencies: list[float] = []
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            eid = await eng.start_workflow(ir, inputs or {})
            await eng.wait_for_completion(eid)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(n)))
    return latencies


def measure(
    benchmark: Any,
    make_engine: Callable[[], WorkflowEngine],
    ir: WorkflowIR,
    n: int,
    in_flight: int,
    rounds: int = 3,
) -> None:
    loop = asyncio.new_event_loop()
    eng = make_engine()
    loop.run_until_complete(eng.start())
    loop.run_until_complete(run_batch(eng, ir, 50, in_flight))  # warm up
    all_lat: list[float] = []

    def round_() -> None:
        all_lat.extend(loop.run_until_complete(run_batch(eng, ir, n, in_flight)))

    commits0 = eng.storage.commits
    benchmark.pedantic(round_, rounds=rounds, iterations=1)
    commits = eng.storage.commits - commits0
    loop.run_until_complete(eng.close())
    loop.close()
    all_lat.sort()
    benchmark.extra_info["workflows_per_s"] = round(n / benchmark.stats.stats.mean)
    benchmark.extra_info["p50_ms"] = round(statistics.median(all_lat) * 1e3, 3)
    benchmark.extra_info["p99_ms"] = round(all_lat[int(len(all_lat) * 0.99) - 1] * 1e3, 3)
    benchmark.extra_info["commits_per_workflow"] = round(commits / (n * rounds), 2)


@pytest.mark.parametrize("in_flight", [1, 50])
def test_memory_seq3(benchmark: Any, in_flight: int) -> None:
    measure(benchmark, lambda: engine("memory"), SEQ3, N_SEQ, in_flight)


@pytest.mark.parametrize("in_flight", [1, 50])
def test_memory_seq_with_parallel(benchmark: Any, in_flight: int) -> None:
    measure(benchmark, lambda: engine("memory"), PAR, N_SEQ, in_flight)


@pytest.mark.parametrize("in_flight", [1, 50])
def test_sqlite_seq3(benchmark: Any, in_flight: int, tmp_path: Path) -> None:
    counter = iter(range(1000))
    measure(
        benchmark,
        lambda: engine(f"sqlite:///{tmp_path}/b{next(counter)}.db"),
        SEQ3,
        500 if in_flight == 1 else 2000,
        in_flight,
    )


@pytest.mark.skipif(not os.environ.get("ITONAMI_TEST_POSTGRES_URL"), reason="no PostgreSQL")
@pytest.mark.parametrize("in_flight", [1, 50])
def test_postgres_seq3(benchmark: Any, in_flight: int) -> None:
    url = os.environ["ITONAMI_TEST_POSTGRES_URL"]
    measure(benchmark, lambda: engine(url), SEQ3, 300 if in_flight == 1 else 1000, in_flight)


def test_step_overhead(benchmark: Any) -> None:
    """Engine time per activity step: (time of a 21-step seq - a 1-step one) / 20."""
    long = WorkflowIR.from_dict(
        {
            "workflow": {
                "id": "seq21",
                "name": "s",
                "version": "1",
                "strategy": {"op": "seq", "strategies": [act() for _ in range(21)]},
            }
        }
    )
    short = WorkflowIR.from_dict(
        {"workflow": {"id": "seq1", "name": "s", "version": "1", "strategy": act()}}
    )
    loop = asyncio.new_event_loop()
    eng = engine("memory")
    loop.run_until_complete(eng.start())

    def timed(ir: WorkflowIR, n: int) -> float:
        t0 = time.perf_counter()
        loop.run_until_complete(run_batch(eng, ir, n, 1))
        return (time.perf_counter() - t0) / n

    timed(short, 100)
    timed(long, 100)
    benchmark.pedantic(lambda: timed(long, 200), rounds=3, iterations=1)
    per_step = (timed(long, 500) - timed(short, 500)) / 20
    loop.run_until_complete(eng.close())
    loop.close()
    benchmark.extra_info["us_per_step"] = round(per_step * 1e6, 1)


PARKED_CHILD = """
import asyncio, gc, os, sys
sys.path.insert(0, os.getcwd())
from test_engine_bench import PARKED, engine

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def main(n):
    eng = engine("memory")
    await eng.start()
    for _ in range(200):  # warm every code path and allocator pool first
        await eng.start_workflow(PARKED, {})
    gc.collect()
    before = rss()
    for _ in range(n):
        await eng.start_workflow(PARKED, {})
    while eng.lifecycle_counts()["parked"] < n + 200:
        await asyncio.sleep(0.01)
    gc.collect()
    print((rss() - before) / n)
    await eng.close()

asyncio.run(main(int(sys.argv[1])))
"""


def test_parked_rss(benchmark: Any) -> None:
    """Resident memory per execution parked on a signal wait (10,000 of them),
    measured in a fresh process so earlier benchmarks' freed memory cannot hide it."""
    n = 10_000
    out: list[float] = []

    def measure_once() -> None:
        done = subprocess.run(
            [sys.executable, "-c", PARKED_CHILD, str(n)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        out.append(float(done.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(measure_once, rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_parked_execution"] = round(out[0])


def test_recovery_10k(benchmark: Any, tmp_path: Path) -> None:
    """Time for a new engine to load and resume 10,000 unfinished executions."""
    n = 10_000
    url = f"sqlite:///{tmp_path}/recover.db"
    loop = asyncio.new_event_loop()
    eng = engine(url)

    async def fill() -> None:
        await eng.start()
        sem = asyncio.Semaphore(200)

        async def one() -> None:
            async with sem:
                await eng.start_workflow(PARKED, {})

        await asyncio.gather(*(one() for _ in range(n)))
        await eng.close()

    loop.run_until_complete(fill())

    def recover() -> None:
        e2 = engine(url)

        async def go() -> None:
            await e2.start()
            while e2.lifecycle_counts()["parked"] < n:  # every resumed run walks back to its wait
                await asyncio.sleep(0.01)
            await e2.close()

        loop.run_until_complete(go())

    benchmark.pedantic(recover, rounds=1, iterations=1)
    loop.close()
    benchmark.extra_info["executions"] = n

"""itonami side by side with the floor and its peers, in one run (``make bench-compare``).

The workload is the one every peer was measured with: a workflow of 3
sequential no-op activities. For each row the runners alternate, round after
round, each measurement in a fresh process (so none inherits another's heap
or event loop), and the table gives workflows/s as the median of the rounds
with its spread (min..max), and itonami's ratio to each neighbour computed per
round (the two ran seconds apart, so a slower machine slows both).

Beside itonami:

- memory, 50 in flight: SpiffWorkflow (in memory, no persistence), if installed;
- SQLite, one at a time: the floor, ``floor_sqlite.py``, doing as many durable
  commits per workflow as itonami did in that round (WAL, ``synchronous=FULL``);
- SQLite, 50 in flight: the floor grouping 50 workflows per commit, and DBOS
  Transact on SQLite, if installed;
- PostgreSQL, 50 in flight: DBOS Transact on PostgreSQL, if installed (the row
  needs ``ITONAMI_TEST_POSTGRES_URL``).

SpiffWorkflow and DBOS are optional (``pip install SpiffWorkflow dbos``);
nothing in the tests needs them. Absolute numbers on a shared machine drift
by up to 2x; the ratios are what the targets are judged by.

    python benches/bench_compare.py [--rounds 3] [--scale 1.0] [--only ROW]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# (row, store[+workload], in flight, workflows per measurement); the
# "mapped" workload is SEQ3 with input mappings and a decision
# (test_engine_bench.SEQ3_MAPPED), measured beside the plain one.
ROWS = [
    ("memory-50", "memory", 50, 4000),
    ("memory-50-mapped", "memory+mapped", 50, 4000),
    ("sqlite-1", "sqlite", 1, 500),
    ("sqlite-50", "sqlite", 50, 3000),
    ("postgres-50", "postgres", 50, 1500),
]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- runners (child side)


def run_itonami(store: str, in_flight: int, n: int, tmp: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from test_engine_bench import MAPPED_INPUTS, SEQ3, SEQ3_MAPPED, engine, run_batch

    store, _, workload = store.partition("+")
    ir, inputs = (SEQ3_MAPPED, MAPPED_INPUTS) if workload == "mapped" else (SEQ3, {})
    if store == "memory":
        url = "memory"
    elif store == "sqlite":
        url = f"sqlite:///{tmp}/itonami.db"
    else:
        url = os.environ["ITONAMI_TEST_POSTGRES_URL"]

    async def go() -> dict[str, Any]:
        eng = engine(url)
        await eng.start()
        await run_batch(eng, ir, min(100, n), in_flight, inputs)  # warm up
        c0 = eng.storage.commits
        t0 = time.perf_counter()
        await run_batch(eng, ir, n, in_flight, inputs)
        elapsed = time.perf_counter() - t0
        commits = eng.storage.commits - c0
        await eng.close()
        return {"wf_s": n / elapsed, "commits_per_wf": commits / n}

    return asyncio.run(go())


def run_floor(in_flight: int, n: int, tmp: str, commits: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from floor_sqlite import run_floor as floor

    return {"wf_s": floor(f"{tmp}/floor.db", n, commits, in_flight)}


def run_spiff(n: int) -> dict[str, Any]:
    from SpiffWorkflow.specs.Simple import Simple
    from SpiffWorkflow.specs.WorkflowSpec import WorkflowSpec
    from SpiffWorkflow.workflow import Workflow

    spec = WorkflowSpec(name="seq3", addstart=True)
    prev = spec.start
    for name in ("a", "b", "c"):
        task = Simple(spec, name)
        prev.connect(task)
        prev = task
    for _ in range(min(100, n)):
        Workflow(spec).run_all()
    t0 = time.perf_counter()
    for _ in range(n):
        wf = Workflow(spec)
        wf.run_all()
        if not wf.is_completed():
            raise RuntimeError("SpiffWorkflow did not complete the workflow")
    return {"wf_s": n / (time.perf_counter() - t0)}


def run_dbos(store: str, in_flight: int, n: int, tmp: str) -> dict[str, Any]:
    from dbos import DBOS

    if store == "sqlite":
        url = f"sqlite:///{tmp}/dbos.sqlite"
    else:
        base = os.environ["ITONAMI_TEST_POSTGRES_URL"]
        url = base.rsplit("/", 1)[0] + "/dbos_bench"
    DBOS(config={"name": "bench", "system_database_url": url, "run_admin_server": False})

    @DBOS.step()
    async def noop() -> dict[str, bool]:
        return {"ok": True}

    @DBOS.workflow()
    async def seq3() -> dict[str, bool]:
        await noop()
        await noop()
        return await noop()

    async def batch(count: int) -> None:
        sem = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with sem:
                handle = await DBOS.start_workflow_async(seq3)
                await handle.get_result()

        await asyncio.gather(*(one() for _ in range(count)))

    async def go() -> dict[str, Any]:
        DBOS.launch()
        await batch(min(50, n))
        t0 = time.perf_counter()
        await batch(n)
        rate = n / (time.perf_counter() - t0)
        DBOS.destroy()
        return {"wf_s": rate}

    return asyncio.run(go())


def child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.runner == "itonami":
            out = run_itonami(args.store, args.in_flight, args.n, tmp)
        elif args.runner == "floor":
            out = run_floor(args.in_flight, args.n, tmp, args.commits)
        elif args.runner == "spiff":
            out = run_spiff(args.n)
        elif args.runner == "dbos":
            out = run_dbos(args.store, args.in_flight, args.n, tmp)
        else:
            raise SystemExit(f"unknown runner {args.runner}")
    print("RESULT " + json.dumps(out))


# ---------------------------------------------------------------- driver


def measure(runner: str, store: str, in_flight: int, n: int, commits: int = 4) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        runner,
        "--store",
        store,
        "--in-flight",
        str(in_flight),
        "-n",
        str(n),
        "--commits",
        str(commits),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"{runner} on {store} failed:\n{done.stdout}\n{done.stderr}")


def neighbours(row: str, store: str) -> list[str]:
    out = []
    if store == "memory" and _has("SpiffWorkflow"):
        out.append("spiff")
    if store == "sqlite":
        out.append("floor")
    if store in ("sqlite", "postgres") and row.endswith("-50") and _has("dbos"):
        out.append("dbos")
    return out


def fmt(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}..{max(values):,.{digits}f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="multiply workflows per measurement")
    p.add_argument("--only", action="append", help="run only these rows (repeatable)")
    p.add_argument("--child", dest="runner", help=argparse.SUPPRESS)
    p.add_argument("--store", default="memory", help=argparse.SUPPRESS)
    p.add_argument("--in-flight", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("-n", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--commits", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.runner:
        child(args)
        return

    rows = [r for r in ROWS if not args.only or r[0] in args.only]
    if not os.environ.get("ITONAMI_TEST_POSTGRES_URL"):
        rows = [r for r in rows if r[1] != "postgres"]
        print("(no ITONAMI_TEST_POSTGRES_URL: the PostgreSQL row is skipped)")
    results: dict[str, dict[str, list[float]]] = {r[0]: {} for r in rows}
    ratios: dict[str, dict[str, list[float]]] = {r[0]: {} for r in rows}
    commits_seen: dict[str, list[float]] = {r[0]: [] for r in rows}
    for rnd in range(args.rounds):
        for row, store, in_flight, n in rows:
            n = max(50, int(n * args.scale))
            ours = measure("itonami", store, in_flight, n)
            results[row].setdefault("itonami", []).append(ours["wf_s"])
            commits_seen[row].append(ours["commits_per_wf"])
            # The floor makes as many durable commits per workflow as itonami
            # did (with 50 in flight: per group of 50 workflows).
            per_wf = max(1, round(ours["commits_per_wf"] * in_flight))
            for other in neighbours(row, store):
                theirs = measure(other, store, in_flight, n if other != "dbos" else n // 5, per_wf)
                results[row].setdefault(other, []).append(theirs["wf_s"])
                ratios[row].setdefault(other, []).append(ours["wf_s"] / theirs["wf_s"])
            print(
                f"round {rnd + 1}/{args.rounds} {row}: "
                + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in results[row].items()),
                flush=True,
            )

    print()
    print(f"3 sequential no-op activities per workflow; median (min..max) of {args.rounds} rounds")
    print()
    print("| row | runner | wf/s | itonami / it | itonami commits/wf |")
    print("|---|---|---:|---:|---:|")
    for row, *_ in rows:
        for runner, values in results[row].items():
            ratio = fmt(ratios[row][runner], 2) if runner in ratios[row] else ""
            commits = fmt(commits_seen[row], 2) if runner == "itonami" else ""
            print(f"| {row} | {runner} | {fmt(values)} | {ratio} | {commits} |")


if __name__ == "__main__":
    main()

"""How costs grow (docs/benchmarks.md, "Growth"): ``python benches/growth.py``.

1. Cost per workflow of a sequence of 3, 30 and 300 no-op activities
   (memory store, 10 in flight), and per step.
2. The core's append and load against the history's length (10 .. 100,000
   events): one more event appended to an execution of that length, and a
   load (decode, reduce, check every hash) of the whole history.
3. SQLite throughput of the 3-step workload (50 in flight) with 10,000
   executions parked in the store, against an empty store in the same run.

Every figure is a median over rounds; compare rows of one run, not runs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_engine_bench import PARKED, SEQ3, act, engine, run_batch

from itonami import WorkflowIR, _core


def seq(n: int) -> WorkflowIR:
    return WorkflowIR.from_dict(
        {
            "workflow": {
                "id": f"seq{n}",
                "name": "seq",
                "version": "1",
                "strategy": {"op": "seq", "strategies": [act() for _ in range(n)]},
            }
        }
    )


async def steps_table(rounds: int) -> list[tuple[int, float]]:
    eng = engine("memory")
    await eng.start()
    out = []
    for steps in (3, 30, 300):
        ir = seq(steps)
        count = max(10, 3000 // steps)
        await run_batch(eng, ir, 10, 10)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await run_batch(eng, ir, count, 10)
            times.append((time.perf_counter() - t0) / count)
        out.append((steps, statistics.median(times)))
    await eng.close()
    return out


_START = orjson.dumps(
    {"workflow_id": "wf", "workflow_version": "1", "definition_hash": "h", "inputs": {}}
)


def _history(length: int) -> tuple[_core.VersionStore, bytes, bytes]:
    store = _core.VersionStore(snapshot_every=1000, snapshot_retention=0)
    store.append("g", 0, "workflow_started", "", 0, _START, 1)
    v = 1
    while v < length:
        batch = []
        for i in range(min(1000, length - v)):
            n = v + i
            path = f"0/{((n - 1) // 2) % 100}"
            if n % 2:
                batch.append(("timer_scheduled", path, 0, orjson.dumps({"fire_at": n}), n))
            else:
                batch.append(("timer_fired", path, 0, b"{}", n))
        store.append_batch("g", v, batch)
        v += len(batch)
    hashes = b"".join(i.hash for i in store.history("g"))
    return store, store.encoded_history("g"), hashes


def history_table(rounds: int) -> list[tuple[int, float, float]]:
    out = []
    for length in (10, 100, 1_000, 10_000, 100_000):
        store, history, hashes = _history(length)
        v = store.version("g")
        appends = []
        for _ in range(rounds):
            kind = "timer_scheduled" if v % 2 else "timer_fired"
            data = orjson.dumps({"fire_at": v}) if v % 2 else b"{}"
            t0 = time.perf_counter()
            store.append("g", v, kind, f"0/{((v - 1) // 2) % 100}", 0, data, v)
            appends.append(time.perf_counter() - t0)
            v += 1
        loads = []
        for _ in range(rounds):
            other = _core.VersionStore()
            t0 = time.perf_counter()
            other.load("g", history, hashes)
            loads.append(time.perf_counter() - t0)
        out.append((length, statistics.median(appends), statistics.median(loads)))
    return out


async def parked_table(rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:

        async def rate(url: str, park: int) -> list[float]:
            eng = engine(url)
            await eng.start()
            sem = asyncio.Semaphore(200)

            async def one() -> None:
                async with sem:
                    await eng.start_workflow(PARKED, {})

            await asyncio.gather(*(one() for _ in range(park)))
            await run_batch(eng, SEQ3, 200, 50)
            out = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await run_batch(eng, SEQ3, 1500, 50)
                out.append(1500 / (time.perf_counter() - t0))
            await eng.close()
            return out

        empty, parked = [], []
        for i in range(rounds):
            # Alternate, so a slower minute slows both.
            empty += await rate(f"sqlite:///{tmp}/empty{i}.db", 0)
            parked += await rate(f"sqlite:///{tmp}/parked{i}.db", 10_000)
        return statistics.median(empty), statistics.median(parked)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print("| steps | µs per workflow | µs per step |")
    print("|---:|---:|---:|")
    for steps, t in asyncio.run(steps_table(rounds)):
        print(f"| {steps} | {t * 1e6:,.0f} | {t * 1e6 / steps:,.1f} |")
    print()
    print("| history length | append one more event (µs) | load whole history (ms) | µs/event |")
    print("|---:|---:|---:|---:|")
    for length, append, load in history_table(max(rounds, 5)):
        print(
            f"| {length:,} | {append * 1e6:.1f} | {load * 1e3:,.2f} | {load * 1e6 / length:.2f} |"
        )
    print()
    empty, parked = asyncio.run(parked_table(rounds))
    print("| SQLite store | seq3 wf/s, 50 in flight |")
    print("|---|---:|")
    print(f"| empty | {empty:,.0f} |")
    print(f"| 10,000 executions parked | {parked:,.0f} ({parked / empty:.2f} x empty) |")


if __name__ == "__main__":
    main()

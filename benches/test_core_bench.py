"""Benchmarks of the Rust core through Python (run with ``--benchmark-enable``).

Each benchmark prints the derived rate (events/s, bytes/version) it measures.
The 1,000,000-event history is built once per session.
"""

from __future__ import annotations

import itertools

import blake3
import orjson
import pytest

from itonami import _core

N = 1_000_000
START = (
    "workflow_started",
    "",
    0,
    orjson.dumps({"workflow_id": "wf", "workflow_version": "1", "inputs": {"n": 1}}),
    0,
)


def _tick(v: int) -> tuple[str, str, int, bytes, int]:
    """Event of version ``v`` (>= 1) of a long-running, bounded-state workflow: a
    timer scheduled then fired, over 100 rotating wait paths."""
    path = f"0/{((v - 1) // 2) % 100}"
    if v % 2:
        return ("timer_scheduled", path, 0, b'{"fire_at":%d}' % v, v)
    return ("timer_fired", path, 0, b"{}", v)


pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="session")
def big() -> tuple[_core.VersionStore, bytes, bytes]:
    """A store holding one 1,000,000-event execution, its history and hashes."""
    store = _core.VersionStore(snapshot_every=1000, snapshot_retention=0)
    store.append("big", 0, *START)
    batch = 10_000
    version = 1
    while version < N:
        n = min(batch, N - version)
        store.append_batch("big", version, [_tick(version + i) for i in range(n)])
        version += n
    hashes = b"".join(info.hash for info in store.history("big"))
    return store, store.encoded_history("big"), hashes


def test_replay_1m_from_bytes(benchmark, big) -> None:
    _, history, _ = big
    state = benchmark.pedantic(_core.replay, args=("big", history), rounds=3, iterations=1)
    assert state.version == N
    benchmark.extra_info["events_per_s"] = round(N / benchmark.stats.stats.mean)


def test_load_1m_with_hash_check(benchmark, big) -> None:
    _, history, hashes = big
    store = _core.VersionStore()
    benchmark.pedantic(store.load, args=("big", history, hashes), rounds=2, iterations=1)
    assert store.version("big") == N
    benchmark.extra_info["events_per_s"] = round(N / benchmark.stats.stats.mean)


def test_verify_1m_chain(benchmark, big) -> None:
    store, _, hashes = big
    report = benchmark.pedantic(store.verify, args=("big",), rounds=2, iterations=1)
    assert report.head_hash == hashes[-32:]
    benchmark.extra_info["events_per_s"] = round(N / benchmark.stats.stats.mean)
    benchmark.extra_info["seconds"] = round(benchmark.stats.stats.mean, 3)


def test_append_single(benchmark) -> None:
    store = _core.VersionStore()
    store.append("a", 0, *START)
    counter = itertools.count(1)

    def one() -> None:
        v = next(counter)
        store.append("a", v, *_tick(v))

    benchmark.pedantic(one, rounds=20_000, iterations=1, warmup_rounds=100)
    print(f"\nappend: {benchmark.stats.stats.mean * 1e6:.2f} us/event")


def test_append_activity_cycle(benchmark) -> None:
    """The engine's typical per-step events (scheduled, started, completed)."""
    store = _core.VersionStore()
    store.append("a", 0, *START)
    counter = itertools.count()

    def cycle() -> None:
        i = next(counter)
        v = 1 + 3 * i
        path = f"0/{i}"
        store.append("a", v, "activity_scheduled", path, 1, b'{"activity":"a","input":{}}', v)
        store.append("a", v + 1, "activity_started", path, 1, b"{}", v + 1)
        store.append("a", v + 2, "activity_completed", path, 1, b'{"result":{"ok":true}}', v + 2)

    benchmark.pedantic(cycle, rounds=5_000, iterations=1, warmup_rounds=10)
    print(f"\nactivity append: {benchmark.stats.stats.mean * 1e6 / 3:.2f} us/event")


def test_append_batched(benchmark) -> None:
    store = _core.VersionStore()
    store.append("b", 0, *START)
    size = 1000
    counter = itertools.count()

    def batch() -> None:
        v = 1 + size * next(counter)
        store.append_batch("b", v, [_tick(v + i) for i in range(size)])

    benchmark.pedantic(batch, rounds=50, iterations=1)
    print(f"\nappend_batch: {benchmark.stats.stats.mean * 1e6 / size:.2f} us/event")


def test_blake3_package_same_bytes(benchmark, big) -> None:
    """Baseline for ``verify``: the blake3 package hashing each event of the history once
    (no state roots, no chain). Compare with test_verify_1m_chain."""
    store, _, _ = big
    events = [e.encoded for e in store.events("big", N - 100_000)]

    def hash_all() -> bytes:
        last = b""
        for e in events:
            last = blake3.blake3(e).digest()
        return last

    assert len(benchmark.pedantic(hash_all, rounds=3, iterations=1)) == 32
    benchmark.extra_info["events_per_s"] = round(len(events) / benchmark.stats.stats.mean)


def test_state_at_tx_1m(benchmark, big) -> None:
    store, _, _ = big
    infos = store.history("big")
    txs = [infos[i].tx for i in (10, 250_123, 500_999, 999_998)]
    cycle = itertools.cycle(txs)
    state = benchmark(lambda: store.state_at_tx("big", next(cycle)))
    assert state.status == "running"
    print(f"\nstate_at_tx: {benchmark.stats.stats.mean * 1e6:.1f} us/read")


def test_memory_per_version(benchmark) -> None:
    """Resident-memory growth per stored version (Linux /proc; Rust heap included)."""
    import os

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def measure() -> tuple[float, float]:
        store = _core.VersionStore()
        store.append("m", 0, *START)
        before = rss()
        n = 200_000
        v = 1
        while v < n:
            store.append_batch("m", v, [_tick(v + i) for i in range(1000)])
            v += 1000
        after = rss()
        event_bytes = len(store.encoded_history("m")) / store.version("m") - 4
        return (after - before) / store.version("m"), event_bytes

    per_version, event_bytes = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_version"] = round(per_version)
    benchmark.extra_info["event_bytes"] = round(event_bytes)


_SMALL_EXECUTIONS = """
import gc, sys
import orjson
from itonami import _core

count = int(sys.argv[1])
page = __import__("os").sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

started = orjson.dumps(
    {"workflow_id": "wf", "workflow_version": "1", "definition_hash": "d" * 64, "inputs": {}}
)
ids = [f"exec-{i:08d}" for i in range(count)]
store = _core.VersionStore()
gc.collect()
before = rss()
for eid in ids:
    store.append(eid, 0, "workflow_started", "", 0, started, 1)
    store.append(eid, 1, "wait_started", "0", 0, b'{"kind":"signal","name":"go"}', 2)
gc.collect()
after = rss()
assert len(store.execution_ids()) == count
print((after - before) / count)
"""


def test_memory_per_small_execution(benchmark) -> None:
    """Resident memory of many idle executions of two small events each
    (workflow_started with a 64-char definition hash, then wait_started),
    measured in a fresh interpreter so memory freed by other benchmarks
    cannot hide the growth."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)

    def measure() -> float:
        out = subprocess.run(
            [sys.executable, "-c", _SMALL_EXECUTIONS, "20000"],
            capture_output=True,
            check=True,
            env=env,
            text=True,
        )
        return float(out.stdout.strip())

    per_execution = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info["bytes_per_execution"] = round(per_execution)
    print(f"\nmemory: ~{per_execution:.0f} bytes per small idle execution")

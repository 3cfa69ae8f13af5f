"""Real processes sharing one store (SQLite file or PostgreSQL schema).

The processes run ``storage_worker.py``; see its docstring for the roles.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_helpers import PG_SKIP, PG_URL, drop_pg_schema, new_pg_schema
from storage_worker import ev

from itonami.storage import READY_NOW, AppendRequest, Storage, open_storage

WORKER = str(Path(__file__).with_name("storage_worker.py"))
SHARED = ["sqlite", "postgres"]


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(url, schema)`` of a store several processes open ("-": no schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}", "-"
        return
    if not PG_URL:
        pytest.skip(PG_SKIP)
    schema = new_pg_schema()
    yield PG_URL, schema
    drop_pg_schema(schema)


def opened(url: str, schema: str) -> Storage:
    return open_storage(url, **({} if schema == "-" else {"schema": schema}))


def spawn(url: str, schema: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, url, schema, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


async def test_two_processes_append_concurrently(shared: tuple[str, str]) -> None:
    url, schema = shared
    store = opened(url, schema)
    await store.open()  # create the schema once, before the race
    await store.close()
    procs = [spawn(url, schema, "append", name, "30", "4") for name in ("p1", "p2")]
    results: dict[str, list[int]] = {}
    for proc in procs:
        lines = finish(proc).splitlines()
        assert lines[0] == "ok"
        results.update(json.loads(lines[1]))
    assert len(results) == 60
    every = [tx for txs in results.values() for tx in txs]
    assert len(every) == 60 * 5
    assert len(set(every)) == len(every)  # unique across both processes
    assert all(txs == sorted(txs) for txs in results.values())
    store = opened(url, schema)
    await store.open()
    try:
        for eid, txs in results.items():
            assert [e.tx for e in await store.read_events(eid)] == txs
        assert await store.integrity_check() == []
    finally:
        await store.close()


async def test_processes_claiming_concurrently_never_share(shared: tuple[str, str]) -> None:
    url, schema = shared
    store = opened(url, schema)
    await store.open()
    try:
        for i in range(80):
            req = AppendRequest(
                f"job-{i}", 0, [ev(f"job-{i}", 1)], "running", "wf", allocate_tx=True
            )
            req.ready_at = READY_NOW
            await store.commit(req)
    finally:
        await store.close()
    procs = [spawn(url, schema, "claim", f"node-{i}", "2") for i in range(4)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:  # all at once
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    claimed = [finish(p).split() for p in procs]
    every = [eid for ids in claimed for eid in ids]
    assert sum(1 for ids in claimed if ids) >= 2  # they did claim side by side
    assert sorted(every) == sorted(f"job-{i}" for i in range(80))
    assert len(set(every)) == len(every)
    store = opened(url, schema)
    await store.open()
    try:
        owners = {(await store.get_lease(f"job-{i}")).owner for i in range(80)}  # type: ignore[union-attr]
        assert owners <= {f"node-{i}" for i in range(4)}
    finally:
        await store.close()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
async def test_stopped_process_is_fenced_after_takeover(shared: tuple[str, str]) -> None:
    url, schema = shared
    lease = 0.5
    proc = spawn(url, schema, "hold", "slow", "job", str(lease))
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "started"
        os.kill(proc.pid, signal.SIGSTOP)
        store = opened(url, schema)
        await store.open()
        try:
            taken = []
            deadline = time.monotonic() + 30
            while not taken and time.monotonic() < deadline:
                taken = await store.claim("fast", capabilities=[], limit=1)
                if not taken:
                    await asyncio.sleep(0.05)
            assert [(c.execution_id, c.epoch, c.reassigned) for c in taken] == [("job", 2, True)]
            before = await store.read_events("job")
            os.kill(proc.pid, signal.SIGCONT)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out = finish(proc, timeout=60).splitlines()
            assert out == [
                "append: fenced by fast at epoch 2",
                "renew: lost ['job']",
                "release: False",
            ]
            assert await store.read_events("job") == before
            lease_now = await store.get_lease("job")
            assert lease_now is not None and (lease_now.owner, lease_now.epoch) == ("fast", 2)
            stats = await store.cluster_stats()
            assert (stats.reassignments, stats.fenced_writes) == (1, 2)
        finally:
            await store.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


async def test_sqlite_lock_wait_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = open_storage(f"sqlite:///{path}")
    await store.open()
    try:
        await store.commit(AppendRequest("e", 0, [ev("e", 1)], "running", "wf", allocate_tx=True))
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.readline()\n"
                "c.execute('COMMIT')\n",
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "locked"
        loop = asyncio.get_running_loop()
        commit = asyncio.ensure_future(
            store.commit(AppendRequest("e", 1, [ev("e", 2)], "running", allocate_tx=True))
        )
        # The loop keeps turning while the commit waits for the other process.
        stalls = []
        for _ in range(20):
            t0 = loop.time()
            await asyncio.sleep(0.01)
            stalls.append(loop.time() - t0)
        assert not commit.done()
        # Waiting on the loop would stall it for the whole busy_timeout (10 s).
        assert max(stalls) < 1.0, stalls
        holder.communicate("\n", timeout=30)
        assert holder.returncode == 0
        (tx,) = await asyncio.wait_for(commit, 30)
        assert [e.tx for e in await store.read_events("e")][-1] == tx
        assert store.lock_waits >= 1  # type: ignore[attr-defined]
    finally:
        await store.close()

"""Several processes on one store: real processes, real kills.

Each execution is run by one process at a time (a lease in the store, every
commit fenced); transaction ids come from the store; a process runs only
executions whose activities it has; a dead process's executions are taken
over once its leases expire.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("worker.py")


PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")


class Store:
    """One shared store and how a test reads it behind the engine's back."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.db = tmp / "shared.db"
            self.url, self.schema = f"sqlite:///{self.db}", None
        else:
            if not PG_URL:
                pytest.skip("PostgreSQL tests need ITONAMI_TEST_POSTGRES_URL")
            self.url, self.schema = PG_URL, f"itonami_sh_{uuid.uuid4().hex[:12]}"

    def args(self) -> list[str]:
        return ["--schema", self.schema] if self.schema else []

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.schema is None:
            with contextlib.closing(sqlite3.connect(self.db)) as conn:
                return list(conn.execute(sql))
        import psycopg

        with psycopg.connect(PG_URL) as conn:
            conn.execute(f'SET search_path TO "{self.schema}"')
            return list(conn.execute(sql))

    def statuses(self) -> Counter[str]:
        return Counter(s for (s,) in self.rows("SELECT status FROM executions"))

    def drop(self) -> None:
        if self.schema is not None:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(request.param, tmp_path)
    try:
        yield s
    finally:
        s.drop()


_SPAWNED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """A failed test leaves no worker running (it would fail the next one)."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        proc.wait(timeout=30)


def spawn(store: Store, *args: str, ledger: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "ITONAMI_LEDGER": str(ledger)}
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), store.url, *args, *store.args()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _SPAWNED.append(proc)
    return proc


def first_line(proc: subprocess.Popen[str]) -> str:
    """The first line a worker prints (an execution id); its stderr when it
    exits without one."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        _, stderr = proc.communicate(timeout=60)
        pytest.fail(f"the worker exited ({proc.returncode}) without printing: {stderr}")
    return line


def finish(
    proc: subprocess.Popen[str], timeout: float = 120, *, err: list[str] | None = None
) -> str:
    out, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr
    if err is not None:
        err.append(stderr)
    return out


def ran(ledger: Path) -> Counter[tuple[str, str]]:
    if not ledger.exists():
        return Counter()
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    return Counter((r["eid"], r["step"]) for r in lines)


def test_two_processes_each_run_thirty_workflows_on_one_store(store: Store, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    # Both open the fresh store at the same instant (its creation is serialised).
    procs = [spawn(store, "start", "30", ledger=ledger) for _ in range(2)]
    outs = [finish(p) for p in procs]
    assert all(json.loads(o.splitlines()[-1]) == {"completed": 30} for o in outs)
    assert store.statuses() == {"completed": 60}
    counts = ran(ledger)
    assert len(counts) == 60 * 3 and set(counts.values()) == {1}  # no step ran twice
    txs = [t for (t,) in store.rows("SELECT tx FROM events")]
    assert len(txs) == len(set(txs))


def test_a_process_without_an_activity_leaves_its_executions_to_one_that_has_it(
    store: Store, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    # Started by a process that is killed while `pay` runs.
    starter = spawn(store, "hang", "--lease", "1", ledger=ledger)
    assert starter.stdout is not None
    assert starter.stdout.readline().strip() == "HANGING"
    starter.send_signal(signal.SIGKILL)
    starter.communicate()
    # A process lacking `pay` outlives the lease and claims nothing.
    lacking = spawn(store, "serve", "3", "--without", "pay", "--lease", "1", ledger=ledger)
    phases = json.loads(finish(lacking).splitlines()[-1])["phases"]
    assert phases["live"] == phases["parked"] == 0
    assert store.statuses() == {"running": 1}
    kinds = [k for (k,) in store.rows("SELECT kind FROM events ORDER BY version")]
    assert "engine_error" not in kinds and "workflow_failed" not in kinds
    # Two processes that have it: the interrupted payment runs once more, not twice.
    procs = [spawn(store, "serve", "4", "--lease", "1", ledger=ledger) for _ in range(2)]
    for p in procs:
        finish(p)
    assert store.statuses() == {"completed": 1}
    counts = ran(ledger)
    pay = [n for (eid, step), n in counts.items() if step == "0/2"]
    assert pay == [2]  # the killed attempt and exactly one re-run
    assert sorted(n for (_, step), n in counts.items() if step != "0/2") == [1, 1]


def test_a_stopped_owner_past_its_lease_writes_nothing_when_it_wakes(
    store: Store, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    owner = spawn(store, "slow", "4", "--lease", "1", ledger=ledger)
    assert owner.stdout is not None and owner.stdout.readline().strip() == "PAYING"
    owner.send_signal(signal.SIGSTOP)
    try:
        # Another process takes over once the lease expired and finishes it.
        finish(spawn(store, "serve", "4", "--lease", "1", ledger=ledger))
        assert store.statuses() == {"completed": 1}
        before = store.rows("SELECT version, kind FROM events ORDER BY version")
    finally:
        owner.send_signal(signal.SIGCONT)
    err: list[str] = []
    out = json.loads(finish(owner, err=err).splitlines()[-1])
    # Its payment finished after the takeover: the fence refused the write and
    # the run was dropped instead of recording anything; waiting for it reads
    # the outcome the other process recorded.
    assert "lease lost" in err[0]
    assert out["outcome"] == "completed"
    after = store.rows("SELECT version, kind FROM events ORDER BY version")
    assert after == before
    assert [k for _, k in after].count("workflow_completed") == 1
    assert sum(1 for _, k in after if k == "activity_completed") == 3


def test_a_signal_and_a_cancel_from_another_process_reach_the_owner(
    store: Store, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    signalled = spawn(store, "waiter", ledger=ledger)
    cancelled = spawn(store, "waiter", ledger=ledger)
    one, two = first_line(signalled), first_line(cancelled)
    sent = json.loads(finish(spawn(store, "signal", one, ledger=ledger)))
    assert sent["sent"] is True
    assert json.loads(finish(signalled).splitlines()[-1])["outcome"] == "completed"
    # The owner acted (its next step started) within a second of the commit.
    acted = min(r["at"] for r in map(json.loads, ledger.read_text().splitlines())
                if r["eid"] == one)  # fmt: skip
    assert acted - sent["at"] < 1.0
    stop = json.loads(finish(spawn(store, "cancel", two, ledger=ledger)))
    assert stop["cancelled"] is True
    outcome = json.loads(finish(cancelled).splitlines()[-1])
    assert outcome["outcome"] == "cancelled" and outcome["at"] - stop["at"] < 1.0
    assert store.statuses() == {"completed": 1, "cancelled": 1}
    # The signal was recorded once, by its owner, from the inbox.
    assert store.rows("SELECT COUNT(*) FROM inbox") == [(0,)]


def test_the_cli_signals_and_cancels_an_execution_a_service_owns(
    store: Store, tmp_path: Path
) -> None:
    if store.schema is not None:
        pytest.skip("the CLI names a store by URL alone; PostgreSQL tests use a schema each")
    ledger = tmp_path / "ledger.jsonl"
    signalled = spawn(store, "waiter", ledger=ledger)
    cancelled = spawn(store, "waiter", ledger=ledger)
    one, two = first_line(signalled), first_line(cancelled)

    def cli(*args: str) -> float:
        began = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "itonami", "--db", store.url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return began

    began = cli("signal", one, "go", '{"by": "the cli"}', "--no-wait")
    assert json.loads(finish(signalled).splitlines()[-1])["outcome"] == "completed"
    acted = min(r["at"] for r in map(json.loads, ledger.read_text().splitlines())
                if r["eid"] == one)  # fmt: skip
    # From the command's start: Python and the CLI's imports, then its commit,
    # then the owner's reaction.
    assert acted - began < 5.0
    began = cli("cancel", two, "--reason", "from the cli")
    outcome = json.loads(finish(cancelled).splitlines()[-1])
    assert outcome["outcome"] == "cancelled" and outcome["at"] - began < 5.0
    assert store.rows("SELECT COUNT(*) FROM inbox") == [(0,)]


def test_an_event_from_another_process_reaches_the_waiting_owner(
    store: Store, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    owner = spawn(store, "waiter", "event", ledger=ledger)
    assert owner.stdout is not None
    eid = owner.stdout.readline().strip()
    sent = json.loads(finish(spawn(store, "event", "7", ledger=ledger)))
    assert sent == {"to": [eid]}
    assert json.loads(finish(owner).splitlines()[-1])["outcome"] == "completed"
    kinds = [k for (k,) in store.rows("SELECT kind FROM events ORDER BY version")]
    assert kinds.count("external_event_received") == 1
    assert store.rows("SELECT COUNT(*) FROM event_waits") == [(0,)]

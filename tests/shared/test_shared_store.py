"""Several processes on one store: real processes, real kills.

Each execution is run by one process at a time (a lease in the store, every
commit fenced); transaction ids come from the store; a process runs only
executions whose activities it has; a dead process's executions are taken
over once its leases expire.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


def spawn(url: str, *args: str, ledger: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "ITONAMI_LEDGER": str(ledger)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def ran(ledger: Path) -> Counter[tuple[str, str]]:
    if not ledger.exists():
        return Counter()
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    return Counter((r["eid"], r["step"]) for r in lines)


def statuses(db: Path) -> Counter[str]:
    with sqlite3.connect(db) as conn:
        return Counter(s for (s,) in conn.execute("SELECT status FROM executions"))


def test_two_processes_each_run_thirty_workflows_on_one_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    ledger = tmp_path / "ledger.jsonl"
    url = f"sqlite:///{db}"
    procs = [spawn(url, "start", "30", ledger=ledger) for _ in range(2)]
    outs = [finish(p) for p in procs]
    assert all(json.loads(o.splitlines()[-1]) == {"completed": 30} for o in outs)
    assert statuses(db) == {"completed": 60}
    counts = ran(ledger)
    assert len(counts) == 60 * 3 and set(counts.values()) == {1}  # no step ran twice
    with sqlite3.connect(db) as conn:
        txs = [t for (t,) in conn.execute("SELECT tx FROM events")]
    assert len(txs) == len(set(txs))


def test_a_process_without_an_activity_leaves_its_executions_to_one_that_has_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "caps.db"
    ledger = tmp_path / "ledger.jsonl"
    url = f"sqlite:///{db}"
    # Started by a process that is killed while `pay` runs.
    starter = spawn(url, "hang", "--lease", "1", ledger=ledger)
    assert starter.stdout is not None
    assert starter.stdout.readline().strip() == "HANGING"
    starter.send_signal(signal.SIGKILL)
    starter.communicate()
    # A process lacking `pay` outlives the lease and claims nothing.
    lacking = spawn(url, "serve", "3", "--without", "pay", "--lease", "1", ledger=ledger)
    phases = json.loads(finish(lacking).splitlines()[-1])["phases"]
    assert phases["live"] == phases["parked"] == 0
    assert statuses(db) == {"running": 1}
    with sqlite3.connect(db) as conn:
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events ORDER BY version")]
    assert "engine_error" not in kinds and "workflow_failed" not in kinds
    # Two processes that have it: the interrupted payment runs once more, not twice.
    procs = [spawn(url, "serve", "4", "--lease", "1", ledger=ledger) for _ in range(2)]
    for p in procs:
        finish(p)
    assert statuses(db) == {"completed": 1}
    counts = ran(ledger)
    pay = [n for (eid, step), n in counts.items() if step == "0/1"]
    assert pay == [2]  # the killed attempt and exactly one re-run
    assert sorted(n for (_, step), n in counts.items() if step != "0/1") == [1, 1]

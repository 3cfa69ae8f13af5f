"""The floor: a bare Python + sqlite3 loop doing a workflow's durable commits.

No engine, no events, no hashing: for each "workflow" it inserts one row per
commit the engine makes for the same workflow (``commits`` of them, each its
own transaction on a WAL database with ``synchronous=FULL``, so each costs
one fsync). Nothing durable can be cheaper than this on the same disk, so
``bench_compare.py`` reports itonami's SQLite throughput as a ratio of it.

With ``in_flight`` > 1 the loop groups that many workflows' commits of the
same step into one transaction, the best any group commit can do.

    python benches/floor_sqlite.py [WORKFLOWS] [COMMITS] [IN_FLIGHT]
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time

__all__ = ["run_floor"]


def run_floor(path: str, workflows: int, commits: int, in_flight: int = 1) -> float:
    """Workflows per second of the bare loop on a fresh database at ``path``."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS log (wf INTEGER, step INTEGER, body BLOB)")
    body = b"x" * 120  # about one encoded event
    t0 = time.perf_counter()
    done = 0
    while done < workflows:
        group = range(done, min(done + in_flight, workflows))
        for step in range(commits):
            db.execute("BEGIN")
            db.executemany("INSERT INTO log VALUES (?, ?, ?)", [(wf, step, body) for wf in group])
            db.execute("COMMIT")
        done += len(group)
    elapsed = time.perf_counter() - t0
    db.close()
    return workflows / elapsed


def main() -> None:
    workflows = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    commits = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    in_flight = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with tempfile.TemporaryDirectory() as tmp:
        rate = run_floor(os.path.join(tmp, "floor.db"), workflows, commits, in_flight)
    print(f"{rate:.0f} workflows/s ({commits} durable commits each, {in_flight} in flight)")


if __name__ == "__main__":
    main()

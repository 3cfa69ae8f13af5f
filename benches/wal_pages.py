"""Which B-trees a durable SQLite store's commits write, in WAL pages per workflow.

    python benches/wal_pages.py [WORKFLOWS]

Runs the 3-step workload one workflow at a time on a new SQLite file, with
the WAL's automatic checkpoints off, then reads the WAL back: every frame
names the page it holds, and SQLite's ``dbstat`` table names the B-tree
(table or index) of each page. Frames are what a commit writes and syncs, so
they are the cost the floor in ``bench_compare.py`` does not pay.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_engine_bench import SEQ3, engine, run_batch

WAL_HEADER = 32
FRAME_HEADER = 24


def frames(wal: bytes, page_size: int) -> list[list[int]]:
    """The page numbers of each committed transaction in ``wal``."""
    commits: list[list[int]] = []
    pages: list[int] = []
    at = WAL_HEADER
    while at + FRAME_HEADER + page_size <= len(wal):
        page, commit_size = struct.unpack(">II", wal[at : at + 8])
        pages.append(page)
        at += FRAME_HEADER + page_size
        if commit_size:  # the last frame of a transaction
            commits.append(pages)
            pages = []
    return commits


async def measure(workflows: int) -> None:
    path = Path(tempfile.mkdtemp()) / "itonami.db"
    eng = engine(f"sqlite:///{path}")
    await eng.start()
    await run_batch(eng, SEQ3, 100, 1, {})  # warm up: the tables have a few levels
    conn = eng.storage._wconn  # type: ignore[attr-defined]
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    await run_batch(eng, SEQ3, workflows, 1, {})
    wal = Path(f"{path}-wal").read_bytes()
    reader = sqlite3.connect(path)
    try:
        names = dict(reader.execute("SELECT pageno, name FROM dbstat").fetchall())
    finally:
        reader.close()
    await eng.close()
    commits = frames(wal, page_size)
    per_tree = collections.Counter(names.get(p, "(freed)") for c in commits for p in c)
    total = sum(len(c) for c in commits)
    print(
        f"{workflows} workflows: {len(commits) / workflows:.2f} commits and "
        f"{total / workflows:.1f} WAL pages per workflow, {total / len(commits):.2f} per commit"
    )
    for name, count in per_tree.most_common():
        print(f"  {name:32} {count / workflows:6.2f} pages per workflow")


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 300))

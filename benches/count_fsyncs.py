"""Count commits and fsyncs per workflow on the durable SQLite default.

    strace -f -c -e trace=fsync,fdatasync python benches/count_fsyncs.py [N] [IN_FLIGHT]

prints commits per workflow itself; strace's table gives the fsync calls
(divide by N). Used for docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from test_engine_bench import SEQ3, engine, run_batch


async def main(n: int, in_flight: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        eng = engine(f"sqlite:///{Path(tmp) / 'fsync.db'}")
        await eng.start()
        before = eng.storage.commits
        await run_batch(eng, SEQ3, n, in_flight)
        commits = eng.storage.commits - before
        await eng.close()
    print(f"{n} workflows, {in_flight} in flight: {commits / n:.2f} commits per workflow")


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 500,
            int(sys.argv[2]) if len(sys.argv) > 2 else 1,
        )
    )

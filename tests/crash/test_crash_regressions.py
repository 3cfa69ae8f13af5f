"""Minimal reproductions of engine bugs the crash harness found.

The flush reproduction runs in a child process with a time limit, because
the bug hangs the event loop (a synchronous busy loop that no asyncio timeout
can interrupt).
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from crash_helpers import Store, child_env, run_reference, sqlite_store

from itonami import decode_history
from itonami.storage import open_storage

pytestmark = pytest.mark.crash

# A commit's future resolves (set_result) and, in the same loop iteration,
# before the future's done-callback ``Run._committed`` has run, a second
# task of the same execution calls ``Run.flush``: ``flush`` finds
# ``_flushing`` set to a future that is already done, ``await
# asyncio.shield(fut)`` returns without yielding, and the ``while`` loop spins
# forever without ever letting ``_committed`` run. Parallel branches and map
# iterations of one execution flushing concurrently on the SQLite backend
# (whose writer thread resolves futures with ``call_soon_threadsafe``) hit it.
FLUSH_SPIN = """
import asyncio
from itonami import ActivityRegistry, WorkflowEngine, WorkflowIR
from itonami.storage import MemoryStorage


class HeldStorage(MemoryStorage):
    def __init__(self):
        super().__init__("memory")
        self.hold = False
        self.held = []

    def submit(self, req):
        fut = super().submit(req)
        if not self.hold:
            return fut
        pending = asyncio.get_running_loop().create_future()
        self.held.append(pending)
        return pending


async def main():
    gate = asyncio.Event()
    reg = ActivityRegistry()

    async def hold_open() -> dict:
        await gate.wait()
        return {"ok": True}

    reg.register(hold_open)
    ir = WorkflowIR.from_dict({"workflow": {
        "id": "w", "name": "w", "version": "1",
        "strategy": {"op": "activity", "activity_ref": "hold_open"},
    }})
    storage = HeldStorage()
    engine = WorkflowEngine.builder().with_storage(storage).with_activities(reg).build()
    async with engine:
        eid = await engine.start_workflow(ir, {})
        while engine.phase(eid) != "live" or engine._table.get(eid).run.journal.durable_version < 3:
            await asyncio.sleep(0.001)
        run = engine._table.get(eid).run  # its activity is running: the run stays live
        storage.hold = True
        run.append("signal_received", "", 0, {"name": "note", "payload": 1})
        first = asyncio.ensure_future(run.flush())
        while not storage.held:
            await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(storage.held[0].set_result, None)
        second = asyncio.ensure_future(run.flush())  # runs right after set_result
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        storage.hold = False
        gate.set()
        await engine.wait_for_completion(eid, timeout=5)


asyncio.run(main())
print("ok")
"""


def test_flush_does_not_spin_on_a_resolved_commit(tmp_path: Path) -> None:
    script = tmp_path / "flush_spin.py"
    script.write_text(textwrap.dedent(FLUSH_SPIN))
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            env=child_env(None),
            capture_output=True,
            text=True,
            timeout=8,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("Run.flush hung the event loop (busy loop, no timeout could fire)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def _duplicate_snapshot_events(store: Store) -> list[tuple[str, int]]:
    raw = open_storage(store.url)
    await raw.open()
    try:
        dups: list[tuple[str, int]] = []
        for rec in await raw.list_executions(limit=100_000):
            seen: Counter[int] = Counter()
            for e in await raw.read_events(rec.execution_id):
                if e.kind == "snapshot_taken":
                    seen[
                        decode_history(struct.pack("<I", len(e.encoded)) + e.encoded)[0].data[
                            "version"
                        ]
                    ] += 1
            dups += [(rec.execution_id, v) for v, n in seen.items() if n > 1]
        return dups
    finally:
        await raw.close()


def test_each_version_is_snapshotted_once_without_crashes(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    run_reference(store, tmp_path)
    assert asyncio.run(_duplicate_snapshot_events(store)) == []

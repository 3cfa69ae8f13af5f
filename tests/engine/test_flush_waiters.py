"""Flushers of one execution wait for the commit in flight without owning it.

``Journal.flush`` parks each flusher on a waiter of its own, which the
commit's done-callback wakes: cancelling one flusher must neither cancel the
commit nor strand the others, and a commit that fails must wake them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from itonami import ActivityRegistry, WorkflowEngine, WorkflowIR
from itonami.errors import StorageError
from itonami.storage import MemoryStorage
from itonami.storage.base import AppendRequest


class HeldStorage(MemoryStorage):
    """Commits at once, but hands the caller a future the test resolves."""

    def __init__(self) -> None:
        super().__init__("memory")
        self.hold = False
        self.held: list[tuple[asyncio.Future[list[int]], list[int]]] = []

    def submit(self, req: AppendRequest) -> asyncio.Future[list[int]]:
        fut = super().submit(req)
        if not self.hold:
            return fut
        pending: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self.held.append((pending, fut.result()))
        return pending


async def _live_run(engine: WorkflowEngine, storage: HeldStorage) -> tuple[str, Any]:
    ir = WorkflowIR.from_dict(
        {
            "workflow": {
                "id": "w",
                "name": "w",
                "version": "1",
                "strategy": {"op": "activity", "activity_ref": "hold_open"},
            }
        }
    )
    eid = await engine.start_workflow(ir, {})

    async def started() -> Any:
        while True:
            entry = engine._table.get(eid)
            run = entry.run if entry is not None else None
            if run is not None and run.journal.durable_version >= 3:
                return run
            await asyncio.sleep(0)

    run = await asyncio.wait_for(started(), 5)
    storage.hold = True
    run.append("signal_received", "", 0, {"name": "note", "payload": 1})
    return eid, run


def _engine(gate: asyncio.Event) -> tuple[WorkflowEngine, HeldStorage]:
    reg = ActivityRegistry()

    async def hold_open() -> dict[str, bool]:
        await gate.wait()
        return {"ok": True}

    reg.register(hold_open)
    storage = HeldStorage()
    return WorkflowEngine.builder().with_storage(storage).with_activities(reg).build(), storage


async def _held(storage: HeldStorage) -> tuple[asyncio.Future[list[int]], list[int]]:
    while not storage.held:
        await asyncio.sleep(0)
    return storage.held[0]


async def test_a_cancelled_flusher_leaves_the_commit_and_the_other_flushers_alone() -> None:
    gate = asyncio.Event()
    engine, storage = _engine(gate)
    async with engine:
        eid, run = await _live_run(engine, storage)
        target = run.journal.version
        first = asyncio.ensure_future(run.flush())
        second = asyncio.ensure_future(run.flush())
        commit, txs = await asyncio.wait_for(_held(storage), 5)
        first.cancel()
        await asyncio.sleep(0)
        assert first.cancelled()
        assert not commit.cancelled()
        assert not second.done()
        commit.set_result(txs)
        await asyncio.wait_for(second, 5)
        assert run.journal.durable_version == target
        assert run.journal.broken is None
        storage.hold = False
        gate.set()
        assert await engine.wait_for_completion(eid, timeout=5) == {"ok": True}


async def test_a_failed_commit_wakes_every_flusher_with_its_error() -> None:
    gate = asyncio.Event()
    engine, storage = _engine(gate)
    async with engine:
        _, run = await _live_run(engine, storage)
        flushers = [asyncio.ensure_future(run.flush()) for _ in range(3)]
        commit, _ = await asyncio.wait_for(_held(storage), 5)
        commit.set_exception(StorageError("disk on fire"))
        results = await asyncio.wait_for(asyncio.gather(*flushers, return_exceptions=True), 5)
        assert all(isinstance(r, StorageError) for r in results), results
        assert isinstance(run.journal.broken, StorageError)
        storage.hold = False
        gate.set()

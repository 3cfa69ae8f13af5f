"""``VersionStore.assign_txs``: the txs a store allocated replace the provisional ones.

Two cores stand for two processes sharing one store: each appends its own
executions, the store allocates the txs at commit, and each core records them.
MVCC reads by tx must then agree with reads by version, and a core that loads
the history from the store must hold the same txs.
"""

from __future__ import annotations

import asyncio

import pytest
from core_helpers import SAMPLE, START
from hypothesis import given, settings
from hypothesis import strategies as st

from itonami import _core
from itonami.errors import TxOutOfRangeError
from itonami.storage import AppendRequest, MemoryStorage, StoredEvent

SIGNALS = [
    ("signal_received", "", 0, f'{{"name":"s","payload":{i}}}'.encode(), 2_000 + i)
    for i in range(40)
]


def stored(appended: list[_core.Appended]) -> list[StoredEvent]:
    return [StoredEvent(a.version, a.tx, a.timestamp, a.kind, a.hash, a.encoded) for a in appended]


async def run_both(
    sizes: list[int], owners: list[int], pipelined: bool
) -> tuple[list[_core.VersionStore], MemoryStorage]:
    storage = MemoryStorage()
    await storage.open()
    cores = [_core.VersionStore(), _core.VersionStore()]
    version = {0: 0, 1: 0}
    events = [START, *SIGNALS]
    pending: dict[int, list[tuple[int, list[_core.Appended]]]] = {0: [], 1: []}
    for size, who in zip(sizes, owners, strict=False):
        core, eid = cores[who], f"exec-{who}"
        start = version[who]
        batch = events[start : start + size]
        if not batch:
            continue
        appended = core.append_batch(eid, start, batch)
        version[who] += len(batch)
        pending[who].append((start, appended))
        # With pipelining a core holds the next batch before this one committed.
        if pipelined and len(pending[who]) < 2:
            continue
        while pending[who]:
            first, done = pending[who].pop(0)
            req = AppendRequest(
                eid,
                first,
                stored(done),
                "running",
                workflow_id="wf" if first == 0 else None,
                allocate_tx=True,
            )
            txs = await storage.commit(req)
            core.assign_txs(eid, first + 1, txs)
    for who in (0, 1):
        for first, done in pending[who]:
            req = AppendRequest(
                f"exec-{who}",
                first,
                stored(done),
                "running",
                workflow_id="wf" if first == 0 else None,
                allocate_tx=True,
            )
            cores[who].assign_txs(f"exec-{who}", first + 1, await storage.commit(req))
    return cores, storage


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=20),
    owners=st.lists(st.integers(0, 1), min_size=20, max_size=20),
    pipelined=st.booleans(),
)
def test_assigned_txs_match_the_store_and_mvcc_reads(
    sizes: list[int], owners: list[int], pipelined: bool
) -> None:
    async def check() -> None:
        cores, storage = await run_both(sizes, owners, pipelined)
        for who, core in enumerate(cores):
            eid = f"exec-{who}"
            if eid not in core:
                continue
            held = [i.tx for i in core.history(eid)]
            durable = [e.tx for e in await storage.read_events(eid)]
            assert held == durable
            assert held == sorted(held) and len(set(held)) == len(held)
            for info in core.history(eid):
                by_tx = core.state_at_tx(eid, info.tx)
                assert by_tx.version == info.version
                assert by_tx.tx == info.tx
            # A core that loads the store's history holds the same txs.
            fresh = _core.VersionStore()
            events = await storage.read_events(eid)
            fresh.load(
                eid,
                _core.frame_history([e.encoded for e in events]),
                b"".join(e.hash for e in events),
                [e.tx for e in events],
            )
            assert [i.tx for i in fresh.history(eid)] == held
            assert core.head(eid) == fresh.head(eid)  # hashes do not cover txs

    asyncio.run(check())


def test_bad_assignments_are_refused_and_change_nothing() -> None:
    core = _core.VersionStore()
    core.append_batch("e", 0, SAMPLE[:4])
    before = [i.tx for i in core.history("e")]
    for first, txs in [(0, [100]), (4, [100, 101]), (9, [5]), (2, [7, 7]), (2, [9, 8])]:
        with pytest.raises(TxOutOfRangeError):
            core.assign_txs("e", first, txs)
        assert [i.tx for i in core.history("e")] == before
    core.assign_txs("e", 1, [50, 60])
    with pytest.raises(TxOutOfRangeError):
        core.assign_txs("e", 3, [55])  # not above version 2's tx
    # Versions 3 and 4 were provisional and below 60: renumbered above it.
    txs = [i.tx for i in core.history("e")]
    assert txs[:2] == [50, 60] and txs == sorted(txs) and txs[2] > 60
    assert core.last_tx >= txs[-1]
    with pytest.raises(Exception, match="nope"):
        core.assign_txs("nope", 1, [1])

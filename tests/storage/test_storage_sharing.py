"""Conformance of what lets processes share a store: txs, leases, inbox, nodes.

Every backend (memory, SQLite in both writer modes and in memory, PostgreSQL)
runs the same tests. Lease expiry is real time: leases here last a fraction
of a second and the tests wait until they ran out.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from storage_helpers import StoreFactory, event, request

from itonami.errors import ConflictError, FencedError, StorageError
from itonami.storage import READY_NOW, AppendRequest, Fence, Storage

SHORT = 0.5  # seconds: a lease the tests outlive, long enough to hold across two calls


def now_us() -> int:
    return time.time_ns() // 1000


def started(
    factory: StoreFactory,
    eid: str,
    *,
    owner: str | None = "n1",
    lease: float = 30.0,
    ready_at: int | None = READY_NOW,
    needs: list[str] | None = None,
    count: int = 1,
) -> AppendRequest:
    """The first append of an execution, owned by ``owner`` when given."""
    req = request(factory, eid, 0, count)
    req.allocate_tx = True
    req.fence = Fence(owner, 0) if owner else None
    req.lease_seconds = lease
    req.ready_at = ready_at
    req.needs = needs
    return req


def follow(
    factory: StoreFactory, eid: str, expected: int, fence: Fence | None, **extra: object
) -> AppendRequest:
    req = request(factory, eid, expected, 1, **extra)
    req.allocate_tx = True
    req.fence = fence
    return req


async def wait_expired(lease: float = SHORT) -> None:
    await asyncio.sleep(lease + 0.15)


# ---------------------------------------------------------------- transaction ids


async def test_store_allocates_increasing_txs(store: Storage, factory: StoreFactory) -> None:
    got = []
    for i in range(4):
        got.append(await store.commit(started(factory, f"a{i}", owner=None, count=3)))
    flat = [tx for txs in got for tx in txs]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    for i, txs in enumerate(got):
        assert [e.tx for e in await store.read_events(f"a{i}")] == txs
    assert await store.max_tx() == flat[-1]
    # Caller-given txs still work, and later allocations go above them.
    await store.append(AppendRequest("given", 0, [event("given", 1, 10_000)], "running", "wf"))
    (after,) = await store.commit(follow(factory, "a0", 3, None))
    assert after > 10_000
    # submit() resolves to the txs too, and an empty append has none.
    assert await store.submit(AppendRequest("a1", 3, [], "paused")) == []


async def test_txs_of_deleted_executions_are_never_allocated_again(
    store: Storage, factory: StoreFactory
) -> None:
    await store.commit(started(factory, "kept", owner=None))
    # The newest txs belong to executions that are then deleted and pruned.
    for eid in ("deleted", "pruned"):
        await store.commit(started(factory, eid, owner=None, count=2))
    gone = [e.tx for eid in ("deleted", "pruned") for e in await store.read_events(eid)]
    await store.commit(follow(factory, "deleted", 2, None, status="completed"))
    await store.commit(follow(factory, "pruned", 2, None, status="completed"))
    gone += [e.tx for eid in ("deleted", "pruned") for e in await store.read_events(eid)][-2:]
    assert await store.delete_execution("deleted")
    assert await store.prune(finished_before=1 << 60) == ["pruned"]
    (after,) = await store.commit(follow(factory, "kept", 1, None))
    assert after > max(gone)
    if factory.durable:  # and after reopening the store
        await store.close()
        again = factory.make()
        await again.open()
        try:
            (later,) = await again.commit(follow(factory, "kept", 2, None))
            assert later > after
        finally:
            await again.close()


async def test_concurrent_allocations_are_unique(store: Storage, factory: StoreFactory) -> None:
    async def drive(i: int) -> list[int]:
        txs = await store.commit(started(factory, f"c{i}", owner=None, count=2))
        for version in (2, 3, 4):
            txs += await store.commit(follow(factory, f"c{i}", version, None))
        return txs

    results = await asyncio.gather(*(drive(i) for i in range(20)))
    every = [tx for txs in results for tx in txs]
    assert len(set(every)) == len(every)
    for txs in results:
        assert txs == sorted(txs)


async def test_two_instances_allocate_unique_txs(factory: StoreFactory) -> None:
    if not factory.durable:
        pytest.skip(f"{factory.kind} data cannot be shared between instances")
    a, b = factory.make(), factory.make()
    await a.open()
    await b.open()
    try:

        async def drive(s: Storage, eid: str) -> list[int]:
            txs = await s.commit(started(factory, eid, owner=None))
            for version in range(1, 10):
                txs += await s.commit(follow(factory, eid, version, None))
            return txs

        results = await asyncio.gather(
            *(drive(a if i % 2 else b, f"x{i}") for i in range(8)), return_exceptions=False
        )
        every = [tx for txs in results for tx in txs]
        assert len(set(every)) == len(every)
        assert all(txs == sorted(txs) for txs in results)
        assert await a.integrity_check() == []
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- leases and fences


async def test_first_append_with_fence_takes_the_lease(
    store: Storage, factory: StoreFactory
) -> None:
    await store.commit(started(factory, "e"))
    lease = await store.get_lease("e")
    assert lease is not None
    assert (lease.owner, lease.epoch) == ("n1", 1)
    assert lease.expires_at is not None and lease.expires_at > now_us()
    await store.commit(follow(factory, "e", 1, Fence("n1", 1)))
    before = await store.read_events("e")
    for stale in (Fence("n2", 1), Fence("n1", 0), Fence("n1", 2)):
        with pytest.raises(FencedError) as info:
            await store.commit(follow(factory, "e", 2, stale, status="failed"))
        assert isinstance(info.value, ConflictError)
        assert (info.value.execution_id, info.value.owner, info.value.actual) == ("e", "n1", 1)
    assert await store.read_events("e") == before
    rec = await store.get_execution("e")
    assert rec is not None and (rec.status, rec.version) == ("running", 2)
    stats = await store.cluster_stats()
    assert stats.fenced_writes == 3
    with pytest.raises(StorageError, match="epoch 0"):
        await store.commit(
            AppendRequest("f", 0, [event("f", 1, 1)], "running", "wf", fence=Fence("n1", 3))
        )


async def test_fence_is_checked_before_the_version(store: Storage, factory: StoreFactory) -> None:
    await store.commit(started(factory, "e"))
    with pytest.raises(FencedError):
        await store.commit(follow(factory, "e", 7, Fence("n2", 1)))
    with pytest.raises(ConflictError) as info:
        await store.commit(follow(factory, "e", 7, Fence("n1", 1)))
    assert not isinstance(info.value, FencedError)


async def test_claim_takes_ready_executions_a_node_can_run(
    store: Storage, factory: StoreFactory
) -> None:
    await store.commit(started(factory, "plain", owner=None))
    await store.commit(started(factory, "pay", owner=None, needs=["activity:pay_out", "wf:h1"]))
    await store.commit(started(factory, "idle", owner=None, ready_at=None))
    await store.commit(started(factory, "later", owner=None, ready_at=now_us() + 60_000_000))
    await store.commit(started(factory, "owned", owner="n9"))
    await store.register_node("n1", capacity=10, capabilities=["wf:h1"])

    got = await store.claim("n1", capabilities=["wf:h1"], limit=10)
    assert [c.execution_id for c in got] == ["plain"]
    claim = got[0]
    assert (claim.epoch, claim.workflow_id, claim.version, claim.reassigned) == (
        1,
        "wf",
        1,
        False,
    )
    assert claim.lease_expires_at > now_us()
    assert await store.claim("n1", capabilities=["wf:h1"], limit=10) == []
    stats = await store.cluster_stats()
    assert stats.waiting_for == {"pay": ["activity:pay_out"]}
    assert stats.ready == 1 and stats.oldest_ready_age >= 0
    got = await store.claim("n2", capabilities=["activity:pay_out", "wf:h1", "x"], limit=10)
    assert [c.execution_id for c in got] == ["pay"]
    lease = await store.get_lease("pay")
    assert lease is not None and (lease.owner, lease.epoch) == ("n2", 1)
    assert lease.needs == ["activity:pay_out", "wf:h1"]
    assert (await store.cluster_stats()).ready == 0
    assert await store.claim("n3", capabilities=[], limit=0) == []


async def test_claim_respects_limit_and_order(store: Storage, factory: StoreFactory) -> None:
    base = now_us() - 10_000_000
    for i in range(6):
        await store.commit(started(factory, f"r{i}", owner=None, ready_at=base + (5 - i) * 1000))
    first = await store.claim("n1", capabilities=[], limit=4)
    assert [c.execution_id for c in first] == ["r5", "r4", "r3", "r2"]
    rest = await store.claim("n2", capabilities=[], limit=4)
    assert [c.execution_id for c in rest] == ["r1", "r0"]


async def test_a_claim_may_bring_the_short_histories(store: Storage, factory: StoreFactory) -> None:
    base = now_us() - 10_000_000
    for i, count in enumerate((3, 5, 2)):
        await store.commit(
            started(factory, f"h{i}", owner=None, ready_at=base + i * 1000, count=count)
        )
    got = await store.claim("n1", capabilities=[], limit=10, history_upto=3)
    assert [(c.execution_id, c.version) for c in got] == [("h0", 3), ("h1", 5), ("h2", 2)]
    if factory.kind.startswith("postgres"):
        # PostgreSQL reads them in the claim's statement; the others leave
        # them to the caller.
        assert [c.history is not None for c in got] == [True, False, True]
    for c in got:
        if c.history is not None:
            assert list(c.history) == await store.read_events(c.execution_id)
    for bad in (-1, "3", True, 2.0):
        with pytest.raises(StorageError, match="history_upto"):
            await store.claim("n1", capabilities=[], history_upto=bad)  # type: ignore[arg-type]


async def test_concurrent_claims_never_share(store: Storage, factory: StoreFactory) -> None:
    for i in range(30):
        await store.commit(started(factory, f"q{i}", owner=None))
    results = await asyncio.gather(
        *(store.claim(f"n{i}", capabilities=[], limit=4) for i in range(10))
    )
    ids = [c.execution_id for got in results for c in got]
    assert len(ids) == len(set(ids)) == 30


async def test_expired_lease_is_taken_over_and_the_old_owner_fenced(
    store: Storage, factory: StoreFactory
) -> None:
    await store.commit(started(factory, "e", lease=SHORT))
    assert await store.claim("n2", capabilities=[], limit=5) == []  # still n1's
    await wait_expired()
    (taken,) = await store.claim("n2", capabilities=[], limit=5)
    assert (taken.execution_id, taken.epoch, taken.reassigned) == ("e", 2, True)
    before = await store.read_events("e")
    with pytest.raises(FencedError) as info:
        await store.commit(follow(factory, "e", 1, Fence("n1", 1)))
    assert (info.value.owner, info.value.expected, info.value.actual) == ("n2", 1, 2)
    assert await store.read_events("e") == before
    assert await store.renew("n1", [("e", 1)]) == ["e"]
    assert await store.release("e", "n1", 1, ready_at=None) is False
    await store.commit(follow(factory, "e", 1, Fence("n2", 2)))
    stats = await store.cluster_stats()
    assert (stats.reassignments, stats.fenced_writes) == (1, 2)


async def test_an_expired_lease_nobody_took_still_writes(
    store: Storage, factory: StoreFactory
) -> None:
    # The epoch decides, not the clock: a slow owner that nobody replaced goes on.
    await store.commit(started(factory, "e", lease=SHORT))
    await wait_expired()
    await store.commit(follow(factory, "e", 1, Fence("n1", 1)))
    assert await store.renew("n1", [("e", 1)], lease_seconds=30) == []


async def test_renew_keeps_the_lease(store: Storage, factory: StoreFactory) -> None:
    await store.commit(started(factory, "a", lease=SHORT))
    await store.commit(started(factory, "b", lease=SHORT))
    assert await store.renew("n1", [("a", 1), ("b", 1), ("ghost", 1)], lease_seconds=30) == [
        "ghost"
    ]
    await wait_expired()
    assert await store.claim("n2", capabilities=[], limit=5) == []
    assert await store.renew("n2", [("a", 1)]) == ["a"]
    assert await store.renew("n1", []) == []


async def test_release_parks_until_a_message(store: Storage, factory: StoreFactory) -> None:
    await store.commit(started(factory, "e"))
    assert await store.release("e", "n1", 2, ready_at=None) is False  # wrong epoch
    assert await store.release("e", "n1", 1, ready_at=None, needs=["wf:h"]) is True
    lease = await store.get_lease("e")
    assert lease is not None
    assert (lease.owner, lease.epoch, lease.ready_at, lease.needs) == (None, 1, None, ["wf:h"])
    assert await store.claim("n2", capabilities=["wf:h"], limit=5) == []
    seq = await store.post_message("e", "signal", "approve", b'{"ok": true}')
    (claim,) = await store.claim("n2", capabilities=["wf:h"], limit=5)
    assert (claim.execution_id, claim.epoch, claim.reassigned) == ("e", 2, False)
    (msg,) = await store.read_messages("e")
    assert (msg.seq, msg.kind, msg.name, msg.payload) == (seq, "signal", "approve", b'{"ok": true}')


async def test_release_with_a_due_time(store: Storage, factory: StoreFactory) -> None:
    await store.commit(started(factory, "soon"))
    await store.commit(started(factory, "late"))
    assert await store.release("soon", "n1", 1, ready_at=now_us() - 1)
    assert await store.release("late", "n1", 1, ready_at=now_us() + 60_000_000)
    got = await store.claim("n2", capabilities=[], limit=5)
    assert [c.execution_id for c in got] == ["soon"]


async def test_acquire(store: Storage, factory: StoreFactory) -> None:
    assert await store.acquire("ghost", "n1") is None
    await store.commit(started(factory, "free", owner=None, ready_at=None))
    got = await store.acquire("free", "n1", lease_seconds=SHORT)
    assert got is not None and (got.epoch, got.reassigned) == (1, False)
    assert await store.acquire("free", "n2") is None  # n1's lease is live
    again = await store.acquire("free", "n1")
    assert again is not None and again.epoch == 1  # the same owner keeps its epoch
    await store.commit(started(factory, "brief", lease=SHORT))
    await wait_expired()
    taken = await store.acquire("brief", "n2")
    assert taken is not None and (taken.epoch, taken.reassigned) == (2, True)
    await store.commit(follow(factory, "brief", 1, Fence("n2", 2), status="completed"))
    assert await store.acquire("brief", "n2") is None  # finished


async def test_terminal_status_clears_ownership_and_indexes(
    store: Storage, factory: StoreFactory
) -> None:
    await store.commit(started(factory, "e", needs=["a"]))
    req = follow(factory, "e", 1, Fence("n1", 1), waits_set=["paid"])
    await store.commit(req)
    await store.post_message("e", "event", "paid", b"{}")
    await store.commit(follow(factory, "e", 2, Fence("n1", 1), status="completed"))
    lease = await store.get_lease("e")
    assert lease is not None
    assert (lease.owner, lease.ready_at, lease.needs) == (None, None, [])
    assert await store.find_event_waiters("paid") == []
    assert await store.read_messages("e") == []
    assert await store.claim("n2", capabilities=["a"], limit=5) == []
    with pytest.raises(StorageError, match="finished"):
        await store.post_message("e", "signal", "late")
    assert await store.integrity_check() == []


# ---------------------------------------------------------------- inbox and event waits


async def test_inbox_round_trip(store: Storage, factory: StoreFactory) -> None:
    with pytest.raises(StorageError, match="no execution"):
        await store.post_message("ghost", "signal", "s")
    await store.commit(started(factory, "e", ready_at=None))
    with pytest.raises(StorageError, match="kind"):
        await store.post_message("e", "telegram", "s")
    s1 = await store.post_message("e", "signal", "go", b"1")
    s2 = await store.post_message("e", "cancel", "", b"")
    s3 = await store.post_message("e", "event", "paid", b"3")
    assert s1 < s2 < s3
    assert [m.seq for m in await store.read_messages("e")] == [s1, s2, s3]
    assert [m.seq for m in await store.read_messages("e", after_seq=s1)] == [s2, s3]
    lease = await store.get_lease("e")
    assert lease is not None and lease.ready_at is not None and lease.ready_at <= now_us()
    # The owner records s1 and s2 as events and acknowledges them in the same append.
    req = follow(factory, "e", 1, Fence("n1", 1))
    req.ack_inbox_upto = s2
    await store.commit(req)
    assert [m.seq for m in await store.read_messages("e")] == [s3]
    with pytest.raises(FencedError):
        await store.ack_messages("e", s3, Fence("n2", 1))
    assert [m.seq for m in await store.read_messages("e")] == [s3]
    await store.ack_messages("e", s3, Fence("n1", 1))
    assert await store.read_messages("e") == []
    stale = follow(factory, "e", 2, Fence("n2", 1))
    stale.ack_inbox_upto = 10**9
    s4 = await store.post_message("e", "signal", "again")
    with pytest.raises(FencedError):
        await store.commit(stale)
    assert [m.seq for m in await store.read_messages("e")] == [s4]


async def test_event_waits(store: Storage, factory: StoreFactory) -> None:
    for eid in ("w1", "w2", "w3"):
        req = started(factory, eid, ready_at=None)
        req.waits_set = ["payment.received"] if eid != "w3" else ["other"]
        await store.commit(req)
    assert await store.find_event_waiters("payment.received") == ["w1", "w2"]
    assert await store.find_event_waiters("nothing") == []
    req = follow(factory, "w1", 1, Fence("n1", 1), waits_cleared=["payment.received"])
    await store.commit(req)
    assert await store.find_event_waiters("payment.received") == ["w2"]
    # send_event from anywhere: post to each waiter, which makes it ready.
    for eid in await store.find_event_waiters("payment.received"):
        await store.post_message(eid, "event", "payment.received", b"{}")
    assert [m.name for m in await store.read_messages("w2")] == ["payment.received"]


# ---------------------------------------------------------------- wake hints


async def test_wait_for_work_wakes_on_a_message(store: Storage, factory: StoreFactory) -> None:
    await store.commit(started(factory, "e", ready_at=None))
    await store.wait_for_work(0)  # forget what came before
    assert await store.wait_for_work(0.05) is False
    waiter = asyncio.ensure_future(store.wait_for_work(10))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await store.post_message("e", "signal", "go")
    assert await asyncio.wait_for(waiter, 10) is True
    assert time.monotonic() - t0 < 5


async def test_wait_for_work_wakes_on_another_instance(factory: StoreFactory) -> None:
    if not factory.durable:
        pytest.skip(f"{factory.kind} data cannot be shared between instances")
    a, b = factory.make(), factory.make()
    await a.open()
    await b.open()
    try:
        await a.commit(started(factory, "e", ready_at=None))
        await b.wait_for_work(0.2)  # starts listening; forgets what came before
        while await b.wait_for_work(0.05):
            pass
        waiter = asyncio.ensure_future(b.wait_for_work(10))
        await asyncio.sleep(0.05)
        await a.post_message("e", "signal", "go")
        assert await asyncio.wait_for(waiter, 10) is True
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- nodes


async def test_nodes_table(store: Storage, factory: StoreFactory) -> None:
    await store.register_node("n2", capacity=4, capabilities=["b", "a"], versions={"core": "1"})
    await store.register_node("n1", capacity=8, capabilities=["a"])
    assert await store.heartbeat("n1", inflight=3) is True
    assert await store.heartbeat("ghost", inflight=1) is False
    nodes = await store.list_nodes()
    assert [(n.node_id, n.capacity, n.inflight, n.capabilities, n.status) for n in nodes] == [
        ("n1", 8, 3, ["a"], "healthy"),
        ("n2", 4, 0, ["a", "b"], "healthy"),
    ]
    assert nodes[1].versions == {"core": "1"}
    assert all(0 <= n.heartbeat_age < 5 for n in nodes)
    await asyncio.sleep(0.05)
    old = await store.list_nodes(suspect_after=0.01, dead_after=60)
    assert {n.status for n in old} == {"suspect"}
    dead = await store.list_nodes(suspect_after=0.001, dead_after=0.01)
    assert {n.status for n in dead} == {"dead"}
    await store.register_node("n1", capacity=2, capabilities=["c"])  # re-registering replaces
    first = (await store.list_nodes())[0]
    assert (first.node_id, first.capacity, first.capabilities) == ("n1", 2, ["c"])
    await store.deregister_node("n2")
    assert [n.node_id for n in await store.list_nodes()] == ["n1"]
    with pytest.raises(StorageError):
        await store.register_node("", capacity=1, capabilities=[])


async def test_cluster_stats_names_missing_capabilities(
    store: Storage, factory: StoreFactory
) -> None:
    await store.register_node("n1", capacity=4, capabilities=["activity:a", "wf:h"])
    await store.commit(started(factory, "ok", owner=None, needs=["activity:a", "wf:h"]))
    await store.commit(started(factory, "stuck", owner=None, needs=["activity:pay_out", "wf:h"]))
    await store.commit(started(factory, "parked", owner=None, ready_at=None, needs=["zzz"]))
    stats = await store.cluster_stats()
    assert stats.waiting_for == {"stuck": ["activity:pay_out"]}
    assert stats.ready == 2
    assert [n.node_id for n in stats.nodes] == ["n1"]
    # A dead node's capabilities do not count.
    await asyncio.sleep(0.05)
    stale = await store.cluster_stats(suspect_after=0.001, dead_after=0.01)
    assert set(stale.waiting_for) == {"ok", "stuck"}


async def test_pending_messages_lists_what_an_owner_must_act_on(
    store: Storage, factory: StoreFactory
) -> None:
    await store.commit(started(factory, "mine"))
    await store.commit(started(factory, "other", owner="n2"))
    assert await store.pending_messages("n1") == []
    seq = await store.post_message("mine", "signal", "go", b"1")
    await store.post_message("other", "signal", "go", b"1")
    assert await store.pending_messages("n1") == ["mine"]
    assert await store.pending_messages("n2") == ["other"]
    await store.ack_messages("mine", seq, Fence("n1", 1))
    assert await store.pending_messages("n1") == []


# ---------------------------------------------------------------- balancing


async def test_a_preferred_execution_waits_for_its_node_then_anyone_steals_it(
    store: Storage, factory: StoreFactory
) -> None:
    req = started(factory, "pref", owner=None)
    req.preferred = "n2"
    await store.commit(req)
    lease = await store.get_lease("pref")
    assert lease is not None and lease.preferred == "n2" and lease.owner is None
    # Another node leaves it to its preferred node while it is fresh...
    assert await store.claim("n1", capabilities=[], steal_after=30) == []
    # ...and takes it once it has waited long enough (steal_after 0: at once).
    (got,) = await store.claim("n1", capabilities=[], steal_after=0)
    assert got.execution_id == "pref"
    lease = await store.get_lease("pref")
    assert lease is not None and lease.owner == "n1" and lease.preferred is None


async def test_the_preferred_node_claims_its_execution_at_once(
    store: Storage, factory: StoreFactory
) -> None:
    req = started(factory, "mine", owner=None)
    req.preferred = "n2"
    await store.commit(req)
    (got,) = await store.claim("n2", capabilities=[], steal_after=30)
    assert got.execution_id == "mine" and got.epoch == 1


async def test_release_names_the_preferred_node(store: Storage, factory: StoreFactory) -> None:
    await store.commit(started(factory, "r"))
    assert await store.release("r", "n1", 1, ready_at=READY_NOW, preferred="n3")
    lease = await store.get_lease("r")
    assert lease is not None and lease.owner is None and lease.preferred == "n3"
    assert await store.claim("n1", capabilities=[], steal_after=30) == []
    (got,) = await store.claim("n3", capabilities=[], steal_after=30)
    assert got.execution_id == "r"
    with pytest.raises(StorageError):
        await store.release("r", "n3", got.epoch, preferred="")


async def test_execution_statuses_reads_many_at_once(store: Storage, factory: StoreFactory) -> None:
    ids = [f"s{i:04d}" for i in range(1203)]
    for eid in ids[:3]:
        await store.commit(started(factory, eid, owner=None))
    done = request(factory, "s0001", 1, 1, status="completed")
    done.allocate_tx = True
    await store.commit(done)
    got = await store.execution_statuses(ids)  # 1,203 ids: more than one batch
    assert got == {"s0000": "running", "s0001": "completed", "s0002": "running"}
    assert await store.execution_statuses([]) == {}

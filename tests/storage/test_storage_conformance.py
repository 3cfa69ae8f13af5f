"""The conformance suite: every backend must behave the same."""

from __future__ import annotations

import asyncio

import pytest
from storage_helpers import StoreFactory, event, request

from itonami.errors import ConflictError, StorageError
from itonami.storage import AppendRequest, Storage


async def test_append_and_read_in_order(store: Storage, factory: StoreFactory) -> None:
    first = request(factory, "e1", 0, 3)
    await store.append(first)
    second = request(factory, "e1", 3, 2)
    await store.append(second)
    got = await store.read_events("e1")
    assert got == first.events + second.events
    assert [e.version for e in got] == [1, 2, 3, 4, 5]
    assert await store.read_events("e1", 3) == second.events
    assert await store.read_events("e1", 5) == []
    assert await store.read_events("nope") == []
    assert await store.get_execution("nope") is None


async def test_read_events_limit(store: Storage, factory: StoreFactory) -> None:
    req = request(factory, "e1", 0, 5)
    await store.append(req)
    assert await store.read_events("e1", 0, limit=1) == req.events[:1]
    assert await store.read_events("e1", 2, limit=2) == req.events[2:4]
    assert await store.read_events("e1", 3, limit=10) == req.events[3:]
    assert await store.read_events("e1", 0, limit=0) == []
    assert await store.read_events("nope", 0, limit=1) == []


async def test_read_histories(store: Storage, factory: StoreFactory) -> None:
    a = request(factory, "a", 0, 3)
    b = request(factory, "b", 0, 2)
    await store.append(a)
    await store.append(b)
    got = await store.read_histories({"a": 2, "b": 2, "ghost": 1})
    assert got == {"a": a.events[:2], "b": b.events}
    # A head beyond the stored rows (the executions row disagrees with the
    # events) leaves that execution out, not the others.
    assert await store.read_histories({"a": 3, "b": 5}) == {"a": a.events}
    assert await store.read_histories({}) == {}


async def test_execution_record(store: Storage, factory: StoreFactory) -> None:
    req = request(factory, "child", 0, 2, workflow_id="orders", parent_id="parent-1")
    req.workflow_version = "1.2"
    await store.append(req)
    rec = await store.get_execution("child")
    assert rec is not None
    assert (rec.workflow_id, rec.workflow_version, rec.parent_id) == ("orders", "1.2", "parent-1")
    assert (rec.status, rec.version) == ("running", 2)
    assert rec.created_at == req.events[0].timestamp
    assert rec.updated_at == req.events[-1].timestamp
    later = AppendRequest(
        "child", 2, [event("child", 3, factory.next_tx(), ts=9_000_000)], "completed"
    )
    await store.append(later)
    rec2 = await store.get_execution("child")
    assert rec2 is not None
    assert (rec2.status, rec2.version, rec2.updated_at) == ("completed", 3, 9_000_000)
    assert (rec2.created_at, rec2.workflow_id) == (rec.created_at, "orders")


@pytest.mark.parametrize("expected", [0, 1, 3, 7])
async def test_stale_version_conflicts_and_writes_nothing(
    store: Storage, factory: StoreFactory, expected: int
) -> None:
    await store.append(request(factory, "e", 0, 2, timers_set={"0/1": 50}))
    before = await store.read_events("e")
    stale = request(factory, "e", expected, 1, status="failed", timers_cleared=["0/1"])
    stale.workflow_id = "wf"
    with pytest.raises(ConflictError) as info:
        await store.append(stale)
    assert (info.value.execution_id, info.value.expected, info.value.actual) == ("e", expected, 2)
    assert await store.read_events("e") == before
    rec = await store.get_execution("e")
    assert rec is not None and (rec.status, rec.version) == ("running", 2)
    assert await store.all_timers() == [("e", "0/1", 50)]
    assert await store.max_tx() == max(e.tx for e in before)


async def test_append_to_unknown_execution_with_nonzero_expected_conflicts(
    store: Storage, factory: StoreFactory
) -> None:
    req = request(factory, "ghost", 4, 1)
    req.workflow_id = "wf"
    with pytest.raises(ConflictError) as info:
        await store.append(req)
    assert info.value.actual == 0
    assert await store.get_execution("ghost") is None
    assert await store.read_events("ghost") == []


async def test_malformed_requests_are_refused(store: Storage, factory: StoreFactory) -> None:
    no_workflow = request(factory, "e", 0, 1)
    no_workflow.workflow_id = None
    with pytest.raises(StorageError, match="workflow_id"):
        await store.append(no_workflow)
    gap = AppendRequest("e", 0, [event("e", 2, 99)], "running", workflow_id="wf")
    with pytest.raises(StorageError, match="version 2, expected 1"):
        await store.append(gap)
    assert await store.get_execution("e") is None


async def test_duplicate_tx_fails_only_its_own_request(
    store: Storage, factory: StoreFactory
) -> None:
    await store.append(request(factory, "a", 0, 1))
    used_tx = (await store.read_events("a"))[0].tx
    clash = AppendRequest("b", 0, [event("b", 1, used_tx)], "running", workflow_id="wf")
    fine = [request(factory, f"ok{i}", 0, 2) for i in range(5)]
    results = await asyncio.gather(
        *(store.append(r) for r in [*fine[:2], clash, *fine[2:]]), return_exceptions=True
    )
    assert isinstance(results[2], StorageError)
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 5
    assert await store.get_execution("b") is None
    for r in fine:
        assert await store.read_events(r.execution_id) == r.events


async def test_empty_append_updates_status_only(store: Storage, factory: StoreFactory) -> None:
    await store.append(request(factory, "e", 0, 1))
    await store.append(AppendRequest("e", 1, [], "paused"))
    rec = await store.get_execution("e")
    assert rec is not None and (rec.status, rec.version) == ("paused", 1)
    with pytest.raises(ConflictError):
        await store.append(AppendRequest("e", 0, [], "running", workflow_id="wf"))


async def test_concurrent_appends_all_land_and_are_group_committed(
    store: Storage, factory: StoreFactory
) -> None:
    executions, rounds = 40, 6

    async def drive(i: int) -> list[int]:
        version = 0
        for _ in range(rounds):
            req = request(factory, f"c{i}", version, 2)
            await store.append(req)
            version += 2
        return [version]

    commits0, appends0 = store.commits, store.appends
    await asyncio.gather(*(drive(i) for i in range(executions)))
    for i in range(executions):
        got = await store.read_events(f"c{i}")
        assert [e.version for e in got] == list(range(1, 2 * rounds + 1))
        rec = await store.get_execution(f"c{i}")
        assert rec is not None and rec.version == 2 * rounds
    appended = store.appends - appends0
    assert appended == executions * rounds
    if factory.kind != "memory":
        # Appends queued while a commit is in flight share the next commit.
        assert store.commits - commits0 < appended
    assert await store.integrity_check() == []


async def test_same_expected_version_exactly_one_wins(
    store: Storage, factory: StoreFactory
) -> None:
    await store.append(request(factory, "race", 0, 1))
    for base in (1, 2, 3):
        contenders = [request(factory, "race", base, 1) for _ in range(5)]
        results = await asyncio.gather(
            *(store.append(r) for r in contenders), return_exceptions=True
        )
        winners = [i for i, r in enumerate(results) if r is None]
        assert len(winners) == 1
        losers = [r for r in results if r is not None]
        assert all(isinstance(r, ConflictError) and r.actual == base + 1 for r in losers)
        assert (await store.read_events("race", base)) == contenders[winners[0]].events


async def test_new_execution_race_exactly_one_wins(store: Storage, factory: StoreFactory) -> None:
    contenders = [request(factory, "fresh", 0, 2) for _ in range(4)]
    results = await asyncio.gather(*(store.append(r) for r in contenders), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ConflictError) for r in results if r is not None)


async def test_snapshots(store: Storage, factory: StoreFactory) -> None:
    assert await store.load_snapshot("e") is None
    for v in (3, 1, 5, 2, 4):
        await store.save_snapshot("e", v, f"snap{v}".encode())
    await store.save_snapshot("other", 9, b"x")
    assert await store.load_snapshot("e") == (5, b"snap5")
    await store.save_snapshot("e", 5, b"snap5-again")
    assert await store.load_snapshot("e") == (5, b"snap5-again")
    assert await store.prune_snapshots("e", 2) == 3
    assert await store.load_snapshot("e") == (5, b"snap5-again")
    assert await store.prune_snapshots("e", 1) == 1
    assert await store.load_snapshot("e") == (5, b"snap5-again")
    assert await store.prune_snapshots("e", 0) == 1
    assert await store.load_snapshot("e") is None
    assert await store.load_snapshot("other") == (9, b"x")
    with pytest.raises(StorageError):
        await store.prune_snapshots("e", -1)


async def test_listing(store: Storage, factory: StoreFactory) -> None:
    specs = [
        ("x1", "alpha", "running", 100),
        ("x2", "beta", "completed", 200),
        ("x3", "alpha", "failed", 300),
        ("x4", "alpha", "running", 400),
        ("x5", "beta", "waiting", 500),
    ]
    for eid, wf, status, ts in specs:
        req = AppendRequest(eid, 0, [event(eid, 1, factory.next_tx(), ts=ts)], status, wf)
        await store.append(req)

    def ids(records: list) -> list[str]:
        return [r.execution_id for r in records]

    assert ids(await store.list_executions()) == ["x1", "x2", "x3", "x4", "x5"]
    assert ids(await store.list_executions(status="running")) == ["x1", "x4"]
    assert ids(await store.list_executions(status=["failed", "waiting"])) == ["x3", "x5"]
    assert ids(await store.list_executions(status=[])) == []
    assert ids(await store.list_executions(workflow_id="alpha")) == ["x1", "x3", "x4"]
    assert ids(await store.list_executions(status="running", workflow_id="beta")) == []
    assert ids(await store.list_executions(limit=2, offset=1)) == ["x2", "x3"]
    assert ids(await store.list_executions(limit=0)) == []
    assert await store.unfinished_executions() == ["x1", "x4", "x5"]
    with pytest.raises(StorageError):
        await store.list_executions(limit=-1)


async def _created(
    store: Storage, factory: StoreFactory, specs: list[tuple[str, str, str, str, int]]
) -> None:
    for eid, wf, version, status, ts in specs:
        req = AppendRequest(eid, 0, [event(eid, 1, factory.next_tx(), ts=ts)], status, wf, version)
        await store.append(req)


async def test_listing_filters_newest_first_and_counts(
    store: Storage, factory: StoreFactory
) -> None:
    await _created(
        store,
        factory,
        [
            ("a-1", "alpha", "1", "running", 100),
            ("a-2", "alpha", "2", "completed", 200),
            ("b-1", "beta", "1", "failed", 200),  # same created_at as a-2: id breaks the tie
            ("a-3", "alpha", "2", "completed", 300),
            ("B-2", "beta", "1", "running", 400),
        ],
    )

    def ids(records: list) -> list[str]:
        return [r.execution_id for r in records]

    everything = ["a-1", "a-2", "b-1", "a-3", "B-2"]
    assert ids(await store.list_executions()) == everything
    assert ids(await store.list_executions(newest_first=True)) == everything[::-1]
    assert ids(await store.list_executions(newest_first=True, limit=2, offset=1)) == ["a-3", "b-1"]
    assert ids(await store.list_executions(workflow_version="2")) == ["a-2", "a-3"]
    got = await store.list_executions(workflow_id="beta", workflow_version="1")
    assert ids(got) == ["b-1", "B-2"]
    # created_after is inclusive, created_before exclusive
    assert ids(await store.list_executions(created_after=200)) == ["a-2", "b-1", "a-3", "B-2"]
    assert ids(await store.list_executions(created_before=200)) == ["a-1"]
    assert ids(await store.list_executions(created_after=200, created_before=301)) == [
        "a-2",
        "b-1",
        "a-3",
    ]
    # a substring, case-sensitive
    assert ids(await store.list_executions(id_contains="-2")) == ["a-2", "B-2"]
    assert ids(await store.list_executions(id_contains="b")) == ["b-1"]
    assert ids(await store.list_executions(id_contains="B")) == ["B-2"]
    assert ids(await store.list_executions(id_contains="")) == everything

    assert await store.count_executions() == {"completed": 2, "failed": 1, "running": 2}
    assert await store.count_executions(workflow_id="alpha") == {"completed": 2, "running": 1}
    assert await store.count_executions(status=["running", "failed"], created_after=150) == {
        "failed": 1,
        "running": 1,
    }
    assert await store.count_executions(status=[]) == {}
    assert await store.count_executions(id_contains="zzz") == {}
    assert await store.count_executions(workflow_version="2", created_before=300) == {
        "completed": 1
    }
    with pytest.raises(StorageError):
        await store.list_executions(created_after="yesterday")  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        await store.count_executions(id_contains=5)  # type: ignore[arg-type]


async def test_id_contains_takes_like_metacharacters_literally(
    store: Storage, factory: StoreFactory
) -> None:
    names = ["50%_off", "50x_off", "500off", "a_b", "axb", "back!slash", "back\\slash", "it's"]
    await _created(store, factory, [(n, "w", "1", "running", 10 + i) for i, n in enumerate(names)])

    async def ids(needle: str) -> list[str]:
        return [r.execution_id for r in await store.list_executions(id_contains=needle)]

    assert await ids("%") == ["50%_off"]
    assert await ids("0%_") == ["50%_off"]
    assert await ids("_") == ["50%_off", "50x_off", "a_b"]
    assert await ids("a_b") == ["a_b"]
    assert await ids("!") == ["back!slash"]
    assert await ids("\\") == ["back\\slash"]
    assert await ids("'") == ["it's"]
    assert await ids("%' OR '1'='1") == []
    assert await store.count_executions(id_contains="_") == {"running": 3}


async def test_timers(store: Storage, factory: StoreFactory) -> None:
    await store.append(request(factory, "t1", 0, 1, timers_set={"0/1": 300, "0/2": 100}))
    await store.append(request(factory, "t2", 0, 1, timers_set={"0": 200}))
    assert await store.all_timers() == [("t1", "0/2", 100), ("t2", "0", 200), ("t1", "0/1", 300)]
    assert await store.due_timers(99) == []
    assert await store.due_timers(200) == [("t1", "0/2", 100), ("t2", "0", 200)]
    # move one, clear one (cleared applies before set within a request)
    await store.append(
        request(
            factory, "t1", 1, 1, timers_set={"0/1": 50, "0/3": 70}, timers_cleared=["0/2", "0/3"]
        )
    )
    assert await store.all_timers() == [
        ("t1", "0/1", 50),
        ("t1", "0/3", 70),
        ("t2", "0", 200),
    ]
    # a terminal status drops every timer of the execution
    await store.append(request(factory, "t1", 2, 1, status="completed"))
    assert await store.all_timers() == [("t2", "0", 200)]


async def test_definitions(store: Storage) -> None:
    assert await store.get_definition("wf") is None
    await store.put_definition("wf", "1", "h1", b"doc-1")
    await store.put_definition("wf", "1", "h1", b"doc-1")  # idempotent
    await store.put_definition("wf", "3", "h3", b"doc-3")
    await store.put_definition("wf", "2", "h2", b"doc-2")  # registered last = newest
    await store.put_definition("other", "1", "ho", b"doc-o")
    assert await store.get_definition("wf", "1") == b"doc-1"
    assert await store.get_definition("wf", "3") == b"doc-3"
    assert await store.get_definition("wf") == b"doc-2"
    assert await store.get_definition("wf", "9") is None
    assert await store.get_definition_by_hash("h3") == b"doc-3"
    assert await store.get_definition_by_hash("nope") is None
    assert await store.list_definitions() == [
        ("wf", "1", "h1"),
        ("wf", "3", "h3"),
        ("wf", "2", "h2"),
        ("other", "1", "ho"),
    ]
    with pytest.raises(StorageError, match=r"wf version 1 .*h1"):
        await store.put_definition("wf", "1", "other-hash", b"changed")
    assert await store.get_definition("wf", "1") == b"doc-1"


async def test_max_tx(store: Storage, factory: StoreFactory) -> None:
    assert await store.max_tx() == 0
    await store.append(
        AppendRequest("a", 0, [event("a", 1, 41), event("a", 2, 77)], "running", "w")
    )
    await store.append(AppendRequest("b", 0, [event("b", 1, 50)], "running", "w"))
    assert await store.max_tx() == 77


async def test_persists_across_close_and_reopen(factory: StoreFactory) -> None:
    if not factory.durable:
        pytest.skip(f"{factory.kind} keeps nothing across close")
    s = factory.make()
    await s.open()
    req = request(factory, "p", 0, 3, timers_set={"0": 123})
    await s.append(req)
    await s.save_snapshot("p", 2, b"snap")
    await s.put_definition("wf", "1", "h", b"doc")
    await s.close()
    again = factory.make()
    await again.open()
    try:
        assert await again.read_events("p") == req.events
        assert await again.load_snapshot("p") == (2, b"snap")
        assert await again.all_timers() == [("p", "0", 123)]
        assert await again.get_definition("wf") == b"doc"
        assert await again.max_tx() == req.events[-1].tx
        assert await again.unfinished_executions() == ["p"]
        with pytest.raises(ConflictError):
            await again.append(request(factory, "p", 2, 1))
        await again.append(request(factory, "p", 3, 1))
        assert await again.integrity_check() == []
    finally:
        await again.close()


async def test_closed_store_refuses_work(factory: StoreFactory) -> None:
    s = factory.make()
    await s.open()
    await s.close()
    await s.close()  # twice is fine
    with pytest.raises(StorageError, match="not open"):
        await s.read_events("e")
    with pytest.raises(StorageError, match="not open"):
        await s.append(request(factory, "e", 0, 1))


async def test_integrity_check_clean(store: Storage, factory: StoreFactory) -> None:
    assert await store.integrity_check() == []
    await store.append(request(factory, "e", 0, 4))
    await store.save_snapshot("e", 4, b"s")
    assert await store.integrity_check() == []


async def test_two_writers_on_the_same_data_cannot_both_win(factory: StoreFactory) -> None:
    """Separate store instances (separate connections, as separate processes would have)."""
    if not factory.durable:
        pytest.skip(f"{factory.kind} data cannot be shared between instances")
    a, b = factory.make(), factory.make()
    await a.open()
    await b.open()
    try:
        first = await asyncio.gather(
            a.append(request(factory, "shared", 0, 1)),
            b.append(request(factory, "shared", 0, 1)),
            return_exceptions=True,
        )
        assert sum(r is None for r in first) == 1
        for base in range(1, 8):
            results = await asyncio.gather(
                a.append(request(factory, "shared", base, 1)),
                b.append(request(factory, "shared", base, 1)),
                return_exceptions=True,
            )
            assert sum(r is None for r in results) == 1
            assert all(isinstance(r, ConflictError) for r in results if r is not None)
        assert [e.version for e in await b.read_events("shared")] == list(range(1, 9))
        assert await a.integrity_check() == []
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ retention


async def _tree_of_executions(store: Storage, factory: StoreFactory) -> None:
    """r1 (done at 100) > c1 > g1; r2 failed at 200; r3 running; r4 done at 300
    with a running child c4; o1 of another workflow done at 150."""
    specs = [
        ("r1", None, "wf", "completed", 100),
        ("c1", "r1", "wf", "completed", 90),
        ("g1", "c1", "wf", "completed", 80),
        ("r2", None, "wf", "failed", 200),
        ("r3", None, "wf", "running", 50),
        ("r4", None, "wf", "completed", 300),
        ("c4", "r4", "wf", "running", 290),
        ("o1", None, "other", "cancelled", 150),
    ]
    for eid, parent, wf, status, ts in specs:
        req = AppendRequest(
            eid, 0, [event(eid, 1, factory.next_tx(), ts=ts)], status, wf, "1", parent
        )
        await store.append(req)
    await store.save_snapshot("r1", 1, b"snap")
    await store.save_snapshot("c1", 1, b"snap")


async def _ids(store: Storage) -> list[str]:
    return sorted(r.execution_id for r in await store.list_executions())


async def test_prune_deletes_old_finished_trees_in_bounded_batches(
    store: Storage, factory: StoreFactory
) -> None:
    await _tree_of_executions(store, factory)
    assert await store.prune(finished_before=100) == []  # before is exclusive
    # one tree of 3 ids fits a limit of 2 (a tree is never split), then nothing more
    first = await store.prune(finished_before=10_000, workflow_id="wf", limit=2)
    assert sorted(first) == ["c1", "g1", "r1"]
    assert await store.read_events("c1") == [] and await store.load_snapshot("r1") is None
    assert await store.get_execution("g1") is None
    assert await store.prune(finished_before=10_000, workflow_id="wf", limit=2) == ["r2"]
    # r4 has a running child: it stays, as do r3 (running) and o1 (another workflow)
    assert await store.prune(finished_before=10_000, workflow_id="wf") == []
    assert await _ids(store) == ["c4", "o1", "r3", "r4"]
    assert await store.prune(finished_before=10_000) == ["o1"]
    assert await store.unfinished_executions() == ["r3", "c4"]
    assert await store.integrity_check() == []
    with pytest.raises(StorageError):
        await store.prune(finished_before=10_000, limit=0)
    with pytest.raises(StorageError):
        await store.prune(finished_before=1.5)  # type: ignore[arg-type]


async def test_delete_execution_takes_its_sub_workflows_and_never_unfinished_ones(
    store: Storage, factory: StoreFactory
) -> None:
    await _tree_of_executions(store, factory)
    assert await store.delete_execution("nope") is False
    with pytest.raises(StorageError, match="r3: it has not finished"):
        await store.delete_execution("r3")
    with pytest.raises(StorageError, match="c4 has not finished"):
        await store.delete_execution("r4")
    assert await store.delete_execution("c1") is True  # its parent r1 has finished
    assert await _ids(store) == ["c4", "o1", "r1", "r2", "r3", "r4"]
    assert await store.load_snapshot("c1") is None and await store.read_events("g1") == []
    assert await store.delete_execution("c1") is False
    # a parent whose child was deleted is still pruned as one tree of its own
    assert await store.prune(finished_before=150) == ["r1"]
    assert await store.integrity_check() == []


async def test_a_child_of_a_running_parent_is_not_deleted(
    store: Storage, factory: StoreFactory
) -> None:
    await store.append(request(factory, "p", 0, 1, status="running"))
    await store.append(request(factory, "k", 0, 1, status="completed", parent_id="p"))
    with pytest.raises(StorageError, match="parent execution is still running"):
        await store.delete_execution("k")
    assert await store.prune(finished_before=1 << 60) == []  # not top-level
    assert await _ids(store) == ["k", "p"]


async def test_prune_leaves_no_rows_behind(store: Storage, factory: StoreFactory) -> None:
    await store.append(
        request(
            factory, "x", 0, 2, status="waiting", timers_set={"0": 5}, waits_set=["paid"],
            needs=["activity:a"], ready_at=None,
        )
    )  # fmt: skip
    await store.post_message("x", "signal", "go", b"{}")
    assert await store.prune(finished_before=1 << 60) == []
    with pytest.raises(StorageError, match="has not finished"):
        await store.delete_execution("x")
    await store.append(request(factory, "x", 2, 1, status="completed"))
    await store.save_snapshot("x", 3, b"s")
    assert await store.prune(finished_before=1 << 60) == ["x"]
    assert await store.all_timers() == [] and await store.find_event_waiters("paid") == []
    assert await store.read_messages("x") == [] and await store.get_lease("x") is None
    assert await store.integrity_check() == []
    # the id can be used again from scratch
    await store.append(request(factory, "x", 0, 1))
    assert [e.version for e in await store.read_events("x")] == [1]

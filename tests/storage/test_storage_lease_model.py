"""The lease rules against a simple model, driven by a Hypothesis state machine.

Nodes claim, acquire, append under their fence, renew, release and post
messages while a fake clock moves on. After every step the store's leases
must equal the model's, and each fenced append must succeed exactly when the
model says the node holds the lease. Memory and SQLite (whose store clock is
this process's, so it can be faked) run it.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from itonami.errors import FencedError
from itonami.storage import READY_NOW, AppendRequest, Fence, MemoryStorage, Storage, StoredEvent
from itonami.storage.sqlite import SqliteStorage

NODES = ["n1", "n2", "n3"]
EXECS = ["e1", "e2", "e3"]
LEASE_US = 1_000_000
READY = st.sampled_from(["none", "now", "soon", "later"])


@dataclass
class Row:
    version: int = 1
    owner: str | None = None
    epoch: int = 0
    expires: int | None = None
    ready: int | None = None


def ev(eid: str, version: int) -> StoredEvent:
    ident = f"{eid}/{version}".encode()
    return StoredEvent(version, 1, version, "step", hashlib.sha256(ident).digest(), ident)


class LeaseMachine(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 10_000_000
        clock = lambda: self.now  # noqa: E731 - the store reads the fake time
        if self.backend == "memory":
            self.store: Storage = MemoryStorage(clock=clock)
        else:
            self.store = SqliteStorage(":memory:", clock=clock)
        self.run(self.store.open())
        self.rows: dict[str, Row] = {}
        self.known: dict[tuple[str, str], int] = {}  # (node, eid) -> epoch it believes
        self.reassignments = 0
        self.fenced = 0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def ready_at(self, choice: str) -> int | None:
        return {"none": None, "now": READY_NOW, "soon": self.now + 500_000, "later": 10**15}[choice]

    def model_ready(self, choice: str) -> int | None:
        value = self.ready_at(choice)
        return self.now if value == READY_NOW else value

    @initialize()
    def create(self) -> None:
        for eid in EXECS:
            req = AppendRequest(eid, 0, [ev(eid, 1)], "running", "wf", allocate_tx=True)
            req.ready_at = READY_NOW
            self.run(self.store.commit(req))
            self.rows[eid] = Row(ready=self.now)

    def free(self, row: Row) -> bool:
        return row.owner is None or (row.expires is not None and row.expires <= self.now)

    @rule(us=st.integers(0, 1_500_000))
    def tick(self, us: int) -> None:
        self.now += us

    @rule(node=st.sampled_from(NODES), limit=st.integers(0, 3))
    def claim(self, node: str, limit: int) -> None:
        got = self.run(self.store.claim(node, capabilities=[], limit=limit, lease_seconds=1))
        eligible = sorted(
            (row.ready, eid)
            for eid, row in self.rows.items()
            if row.ready is not None and row.ready <= self.now and self.free(row)
        )[:limit]
        assert [c.execution_id for c in got] == [eid for _, eid in eligible]
        for c in got:
            row = self.rows[c.execution_id]
            assert c.reassigned == (row.owner is not None)
            self.reassignments += c.reassigned
            row.owner, row.epoch, row.expires = node, row.epoch + 1, self.now + LEASE_US
            assert c.epoch == row.epoch
            self.known[(node, c.execution_id)] = c.epoch

    @rule(node=st.sampled_from(NODES), eid=st.sampled_from(EXECS))
    def acquire(self, node: str, eid: str) -> None:
        got = self.run(self.store.acquire(eid, node, lease_seconds=1))
        row = self.rows[eid]
        if not self.free(row) and row.owner != node:
            assert got is None
            return
        assert got is not None
        reassigned = row.owner is not None and row.owner != node
        assert got.reassigned == reassigned
        self.reassignments += reassigned
        if row.owner != node:
            row.epoch += 1
        row.owner, row.expires = node, self.now + LEASE_US
        assert got.epoch == row.epoch
        self.known[(node, eid)] = row.epoch

    @rule(node=st.sampled_from(NODES), eid=st.sampled_from(EXECS), ready=READY)
    def append(self, node: str, eid: str, ready: str) -> None:
        row = self.rows[eid]
        epoch = self.known.get((node, eid), 0)
        req = AppendRequest(eid, row.version, [ev(eid, row.version + 1)], "running")
        req.allocate_tx, req.fence, req.ready_at = True, Fence(node, epoch), self.ready_at(ready)
        holds = row.owner == node and row.epoch == epoch
        try:
            self.run(self.store.commit(req))
        except FencedError as exc:
            assert not holds
            assert (exc.owner, exc.actual) == (row.owner, row.epoch)
            self.fenced += 1
            return
        assert holds
        row.version += 1
        row.ready = self.model_ready(ready)

    @rule(node=st.sampled_from(NODES))
    def renew(self, node: str) -> None:
        leases = [(eid, epoch) for (n, eid), epoch in self.known.items() if n == node]
        lost = self.run(self.store.renew(node, leases, lease_seconds=1))
        expect = []
        for eid, epoch in sorted(leases):
            row = self.rows[eid]
            if row.owner == node and row.epoch == epoch:
                row.expires = self.now + LEASE_US
            else:
                expect.append(eid)
        assert lost == expect

    @rule(node=st.sampled_from(NODES), eid=st.sampled_from(EXECS), ready=READY)
    def release(self, node: str, eid: str, ready: str) -> None:
        row = self.rows[eid]
        epoch = self.known.get((node, eid), 0)
        done = self.run(self.store.release(eid, node, epoch, ready_at=self.ready_at(ready)))
        holds = row.owner == node and row.epoch == epoch
        assert done == holds
        if holds:
            row.owner = row.expires = None
            row.ready = self.model_ready(ready)
        else:
            self.fenced += 1

    @rule(eid=st.sampled_from(EXECS))
    def post(self, eid: str) -> None:
        self.run(self.store.post_message(eid, "signal", "s"))
        row = self.rows[eid]
        if row.ready is None or row.ready > self.now:
            row.ready = self.now

    @invariant()
    def leases_match(self) -> None:
        for eid, row in self.rows.items():
            lease = self.run(self.store.get_lease(eid))
            assert lease is not None
            assert (lease.owner, lease.epoch, lease.expires_at, lease.ready_at) == (
                row.owner,
                row.epoch,
                row.expires,
                row.ready,
            )
        stats = self.run(self.store.cluster_stats())
        assert (stats.reassignments, stats.fenced_writes) == (self.reassignments, self.fenced)


class SqliteLeaseMachine(LeaseMachine):
    backend = "sqlite"


SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("machine", [LeaseMachine, SqliteLeaseMachine], ids=["memory", "sqlite"])
def test_lease_rules_match_the_model(machine: type[LeaseMachine]) -> None:
    case = machine.TestCase
    case.settings = SETTINGS
    case("runTest").runTest()

"""Execution ids: RFC 9562 version 7, time-ordered, unique."""

from __future__ import annotations

import threading
import uuid

from engine_helpers import Harness, act, wf

from itonami.engine.ids import new_execution_id


def test_ids_are_uuid7_and_strictly_increasing_in_a_burst() -> None:
    # Far more than 4,096 in a millisecond: the counter borrows the next one.
    ids = [new_execution_id() for _ in range(50_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[::997]:
        u = uuid.UUID(text)
        assert str(u) == text
        assert u.version == 7
        assert u.variant == uuid.RFC_4122


def test_ids_from_threads_stay_distinct() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def make(bucket: list[str]) -> None:
        bucket.extend(new_execution_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for bucket in out for i in bucket]
    assert len(set(every)) == len(every)
    assert all(bucket == sorted(bucket) for bucket in out)


async def test_started_executions_get_time_ordered_ids() -> None:
    h = Harness()

    @h.registry.activity()
    async def noop() -> dict:
        return {}

    ir = wf(act("noop"))
    ids = [await h.engine.start_workflow(ir, {}) for _ in range(20)]
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)
    for eid in ids:
        await h.engine.wait_for_completion(eid, timeout=10)
    await h.engine.close()

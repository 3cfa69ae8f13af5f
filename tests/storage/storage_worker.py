"""A separate process on a shared store, driven by test_storage_processes.py.

    python storage_worker.py URL SCHEMA ROLE ARGS...

``SCHEMA`` is ``-`` for none. Roles:

* ``append NAME COUNT ROUNDS``: start COUNT executions ``NAME-i`` with
  store-allocated txs and append ROUNDS more events to each, concurrently;
  print ``ok`` and then each execution's txs as JSON.
* ``claim NODE LIMIT``: print ``ready``, wait for a line on stdin (so that
  all claimers start together), then claim until nothing is left; print
  each claimed id.
* ``hold NODE EID LEASE``: start EID owned by NODE with a LEASE-second
  lease, print ``started``, wait for a line on stdin, then try to append,
  renew and release with its old fence; print what each did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

from itonami.errors import FencedError
from itonami.storage import READY_NOW, AppendRequest, Fence, StoredEvent, open_storage


def ev(eid: str, version: int) -> StoredEvent:
    ident = f"{eid}/{version}".encode()
    return StoredEvent(version, 1, 1_000 + version, "step", hashlib.sha256(ident).digest(), ident)


def req(eid: str, expected: int, **extra: object) -> AppendRequest:
    return AppendRequest(
        eid,
        expected,
        [ev(eid, expected + 1)],
        "running",
        workflow_id="wf" if expected == 0 else None,
        allocate_tx=True,
        **extra,  # type: ignore[arg-type]
    )


async def main(url: str, schema: str, role: str, args: list[str]) -> None:
    options = {} if schema == "-" else {"schema": schema}
    store = open_storage(url, **options)
    await store.open()
    try:
        if role == "append":
            name, count, rounds = args[0], int(args[1]), int(args[2])

            async def drive(i: int) -> tuple[str, list[int]]:
                eid = f"{name}-{i}"
                txs = await store.commit(req(eid, 0))
                for version in range(1, rounds + 1):
                    txs += await store.commit(req(eid, version))
                return eid, txs

            results = await asyncio.gather(*(drive(i) for i in range(count)))
            print("ok", flush=True)
            print(json.dumps(dict(results)), flush=True)
        elif role == "claim":
            node, limit = args[0], int(args[1])
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            empty = 0
            while empty < 3:
                got = await store.claim(node, capabilities=[], limit=limit)
                for c in got:
                    print(c.execution_id, flush=True)
                empty = 0 if got else empty + 1
                # What a node does with its claims: run them (here: 10 ms).
                await asyncio.sleep(0.01)
        elif role == "hold":
            node, eid, lease = args[0], args[1], float(args[2])
            first = req(eid, 0, fence=Fence(node, 0), lease_seconds=lease, ready_at=READY_NOW)
            await store.commit(first)
            print("started", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            try:
                await store.commit(req(eid, 1, fence=Fence(node, 1)))
                print("append: written", flush=True)
            except FencedError as exc:
                print(f"append: fenced by {exc.owner} at epoch {exc.actual}", flush=True)
            lost = await store.renew(node, [(eid, 1)])
            print(f"renew: lost {lost}", flush=True)
            released = await store.release(eid, node, 1, ready_at=None)
            print(f"release: {released}", flush=True)
        else:
            raise SystemExit(f"unknown role {role}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))

"""Regenerate the golden histories (only when the format changes on purpose).

    PYTHONPATH=python python tests/golden/make_golden.py

Runs the seed's order-processing workflow (one run that completes, one that
is compensated) on a test clock with fixed ids and writes, per run, the
framed history (``.history``), the node hashes (``.hashes``) and the state a
replay must give (``.state.json``). ``test_golden.py`` replays them: a change
to the encoding, the reducer or the hashing that would break stored data
fails there first.

The files are named after the hash revision that wrote them: this build
writes revision 3 (``<run>.rev3.*``). The revision-2 files (``<run>.*``)
were written by an earlier build and are kept as they are: current builds
cannot write revision 2 for a new execution, and old stores hold exactly
such chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from pathlib import Path

import orjson

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from order_activities import registry  # noqa: E402

from itonami import TestClock, WorkflowEngine, WorkflowFailedError, WorkflowIR  # noqa: E402

# The hash revision new executions get (see docs/core-contract.md).
REVISION = "rev3"

RUNS = {
    "order_completed": {"orderId": "ORD-1", "customerId": "C-1", "amount": 100},
    "order_compensated": {"orderId": "ORD-2", "customerId": "C-2", "amount": 99999},
}


async def main() -> None:
    engine = (
        WorkflowEngine.builder()
        .with_storage("memory")
        .with_activities(registry)
        .with_clock(TestClock(start=1_750_000_000.0))
        .build()
    )
    ir = WorkflowIR.from_jsonnet(str(ROOT / "examples" / "order_processing.kotoba"))
    async with engine:
        for name, inputs in RUNS.items():
            eid = await engine.start_workflow(ir, inputs, execution_id=name)
            with contextlib.suppress(WorkflowFailedError):
                await engine.wait_for_completion(eid)
            events = await engine.storage.read_events(eid)
            (HERE / f"{name}.{REVISION}.history").write_bytes(
                b"".join(struct.pack("<I", len(e.encoded)) + e.encoded for e in events)
            )
            (HERE / f"{name}.{REVISION}.hashes").write_bytes(b"".join(e.hash for e in events))
            state = await engine.query(eid)
            (HERE / f"{name}.{REVISION}.state.json").write_bytes(
                orjson.dumps(state, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
            )
            print(f"{name}: {len(events)} events, status {state['status']}")


if __name__ == "__main__":
    asyncio.run(main())

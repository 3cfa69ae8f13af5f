"""One process of the shared-store tests: an engine on a store that other
processes use too.

    worker.py URL start N        start N workflows, wait for them all
    worker.py URL serve SECONDS  resume/claim what it can, for a while
    worker.py URL hang           start one workflow whose activity hangs
    worker.py URL slow SECONDS   start one whose payment takes SECONDS, then wait
    worker.py URL waiter event   the same with a wait for the event "paid"
    worker.py URL event AMOUNT   send_event("paid") from a process running nothing
    worker.py URL signal ID      send signal "go" to ID (no activities loaded)
    worker.py URL cancel ID      cancel ID (no activities loaded)
    worker.py URL waiter         start one that waits for signal "go", print its
                                 id, and serve until it ends

Activities append a line per call to $ITONAMI_LEDGER, so a test can count
how often each step ran across processes. ``--without pay`` leaves the pay
activity unregistered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from itonami import ActivityRegistry, WorkflowEngine, WorkflowIR, current_context


def workflow() -> WorkflowIR:
    return WorkflowIR.from_dict(
        {
            "workflow": {
                "id": "shared",
                "name": "shared",
                "version": "1",
                "inputs": [
                    {"name": "wait", "type": "boolean", "default": False},
                    {"name": "event", "type": "boolean", "default": False},
                ],
                "strategy": {
                    "op": "seq",
                    "strategies": [
                        {
                            "op": "decision",
                            "conditions": [
                                {
                                    "condition": "inputs.wait",
                                    "branch": {
                                        "op": "wait",
                                        "id": "go",
                                        "condition": {"type": "signal", "signal_name": "go"},
                                    },
                                },
                                {
                                    "condition": "inputs.event",
                                    "branch": {
                                        "op": "wait",
                                        "id": "paid",
                                        "condition": {"type": "event", "event_type": "paid"},
                                    },
                                },
                            ],
                        },
                        {"op": "activity", "activity_ref": "step", "id": "a"},
                        {"op": "activity", "activity_ref": "pay", "id": "pay"},
                        {"op": "activity", "activity_ref": "step", "id": "c"},
                    ],
                },
            }
        }
    )


def registry(without: set[str], hang: bool, pay_seconds: float) -> ActivityRegistry:
    reg = ActivityRegistry()
    ledger = os.environ["ITONAMI_LEDGER"]

    def note() -> None:
        ctx = current_context()
        with open(ledger, "a") as f:
            f.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "eid": ctx.execution_id,
                        "step": ctx.step_path,
                        "at": time.time(),
                    }
                )
                + "\n"
            )

    @reg.activity()
    async def step() -> dict[str, Any]:
        note()
        return {"ok": True}

    if "pay" not in without:

        @reg.activity()
        async def pay() -> dict[str, Any]:
            note()
            if hang:
                print("HANGING", flush=True)
                await asyncio.sleep(3600)
            if pay_seconds:
                print("PAYING", flush=True)
                await asyncio.sleep(pay_seconds)
            return {"paid": True}

    return reg


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument(
        "mode", choices=["start", "serve", "hang", "slow", "waiter", "signal", "cancel", "event"]
    )
    p.add_argument("n", nargs="?", default="1")
    p.add_argument("--without", action="append", default=[])
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--schema", default=None)
    args = p.parse_args()
    if args.mode in ("signal", "cancel", "event"):
        # A process like the CLI: no activities, no workflows, runs nothing.
        bare = (
            WorkflowEngine.builder()
            .with_storage(args.url, **({"schema": args.schema} if args.schema else {}))
            .with_recovery(False)
            .build()
        )
        async with bare:
            if args.mode == "signal":
                await bare.signal(args.n, "go", {"by": "another process"})
                print(json.dumps({"sent": True, "at": time.time()}))
            elif args.mode == "event":
                # Events reach waits open when they are sent: send again until
                # the waiting execution's wait is open (bounded).
                for _ in range(100):
                    to = await bare.send_event("paid", {"amount": args.n})
                    if to:
                        break
                    await asyncio.sleep(0.05)
                print(json.dumps({"to": to}))
            else:
                cancelled = await bare.cancel(args.n, "from afar")
                print(json.dumps({"cancelled": cancelled, "at": time.time()}))
        return 0
    engine = (
        WorkflowEngine.builder()
        .with_storage(args.url, **({"schema": args.schema} if args.schema else {}))
        .with_activities(
            registry(
                set(args.without), args.mode == "hang", float(args.n) if args.mode == "slow" else 0
            )
        )
        .with_workflows([] if args.without else [workflow()])
        .with_lease(args.lease)
        .build()
    )
    async with engine:
        if args.mode == "start":
            ids = [await engine.start_workflow("shared", {}) for _ in range(int(args.n))]
            for eid in ids:
                await engine.wait_for_completion(eid, timeout=120)
            print(json.dumps({"completed": len(ids)}))
        elif args.mode == "hang":
            await engine.start_workflow("shared", {})
            await asyncio.sleep(3600)
        elif args.mode == "waiter":
            # "1": wait for the signal "go"; "event": for the event "paid".
            inputs = {"event": True} if args.n == "event" else {"wait": True}
            eid = await engine.start_workflow("shared", inputs)
            print(eid, flush=True)
            try:
                await engine.wait_for_completion(eid, timeout=60)
                print(json.dumps({"outcome": "completed", "at": time.time()}))
            except Exception as e:
                outcome = getattr(e, "status", type(e).__name__)
                print(json.dumps({"outcome": outcome, "at": time.time()}))
        elif args.mode == "slow":
            eid = await engine.start_workflow("shared", {})
            # Its lease is lost while it is stopped: the run is dropped, and
            # waiting for it here reports that it is not running here.
            try:
                await engine.wait_for_completion(eid, timeout=60)
                print(json.dumps({"outcome": "completed"}))
            except Exception as e:
                print(json.dumps({"outcome": type(e).__name__}))
        else:
            await asyncio.sleep(float(args.n))
            print(json.dumps({"phases": engine.lifecycle_counts()}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The application of the cluster tests: activities for `itonami worker
--activities` and the workflows a client submits.

Every activity call appends one line to $ITONAMI_LEDGER (node, execution,
step, attempt, start and end times), so a test can count where and how often
each step ran, and how many ran at once on each node.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from itonami import ActivityRegistry, NonRetryableError, WorkflowIR, current_context

registry = ActivityRegistry()


def _note(t0: float) -> None:
    ctx = current_context()
    line = {
        "node": os.environ.get("ITONAMI_NODE", str(os.getpid())),
        "eid": ctx.execution_id,
        "step": ctx.step_path,
        "attempt": ctx.attempt,
        "t0": t0,
        "t1": time.time(),
    }
    with open(os.environ["ITONAMI_LEDGER"], "a") as f:
        f.write(json.dumps(line) + "\n")


@registry.activity()
async def step(ms: int = 0) -> dict[str, Any]:
    t0 = time.time()
    if ms:
        await asyncio.sleep(ms / 1000)
    _note(t0)
    return {"ok": True}


@registry.activity()
async def charge() -> dict[str, Any]:
    t0 = time.time()
    _note(t0)
    return {"charged": True}


@registry.activity()
async def refund() -> dict[str, Any]:
    t0 = time.time()
    _note(t0)
    return {"refunded": True}


@registry.activity()
async def ship() -> dict[str, Any]:
    t0 = time.time()
    _note(t0)
    raise NonRetryableError("the warehouse is closed")


def _act(sid: str, ms: int = 0, ref: str = "step") -> dict[str, Any]:
    node: dict[str, Any] = {"op": "activity", "id": sid, "activity_ref": ref}
    if ms:
        node["input_mapping"] = {"ms": ms}
    return node


def _wf(wid: str, strategy: dict[str, Any], inputs: list[Any] | None = None) -> WorkflowIR:
    return WorkflowIR.from_dict(
        {
            "workflow": {
                "id": wid,
                "name": wid,
                "version": "1",
                "inputs": inputs or [],
                "strategy": strategy,
            }
        }
    )


def one(ms: int = 0) -> WorkflowIR:
    """One activity (what the balancer tests count)."""
    return _wf(f"one_{ms}", _act("a", ms))


def mixed() -> dict[str, WorkflowIR]:
    """Every pattern the mixed-workload test runs, by name."""
    seq = _wf("seq3", {"op": "seq", "strategies": [_act("a", 20), _act("b", 20), _act("c", 20)]})
    return {
        "seq": seq,
        "parallel": _wf(
            "par3",
            {"op": "parallel", "branches": [_act("x", 30), _act("y", 30), _act("z", 30)]},
        ),
        "timer": _wf(
            "timer",
            {
                "op": "seq",
                "strategies": [
                    _act("before"),
                    {"op": "wait", "id": "nap", "condition": {"type": "timer", "duration": "PT1S"}},
                    _act("after"),
                ],
            },
        ),
        "signal": _wf(
            "signalled",
            {
                "op": "seq",
                "strategies": [
                    {
                        "op": "wait",
                        "id": "go",
                        "condition": {"type": "signal", "signal_name": "go"},
                    },
                    _act("went"),
                ],
            },
        ),
        "saga": _wf(
            "saga",
            {
                "op": "saga",
                "main_flow": {
                    "op": "seq",
                    "strategies": [
                        {
                            "op": "activity",
                            "id": "charge",
                            "activity_ref": "charge",
                            "compensation": {"activity_ref": "refund"},
                        },
                        _act("ship", ref="ship"),
                    ],
                },
            },
        ),
        "child": seq,
        "parent": _wf(
            "parent",
            {
                "op": "seq",
                "strategies": [
                    {"op": "subworkflow", "id": "kid", "workflow_ref": "seq3", "version": "1"},
                    _act("after_kid"),
                ],
            },
        ),
    }

"""The child program of the crash tests: a mixed workload that can be killed anywhere.

Run as ``python crash_workload.py --storage URL --ledger FILE --summary FILE``.
Every start submits the same executions under the same ids (``start_workflow``
is idempotent per id) and waits until each one is terminal; the engine's
``start()`` resumes whatever a killed predecessor left unfinished. On success
it writes a JSON summary (status, outputs, error type per execution) and exits
0. A storage failure (the database went away) exits with :data:`EXIT_STORAGE`
so that the parent can start it again, like a process supervisor would.

Activities append one JSON line to the ledger file before (``start``) and after
(``end``) their side effect, with one ``os.write`` on an ``O_APPEND`` file
descriptor per record, so records survive a SIGKILL whole or not at all.

The workload (definitions, plan, activities) is importable, so the parent can
reason about it.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import hashlib
import json
import os
import signal
import sys
from typing import Any

from itonami import (
    ActivityRegistry,
    ItonamiError,
    NonRetryableError,
    WorkflowEngine,
    WorkflowFailedError,
    WorkflowIR,
    current_context,
)

#: Exit status when storage failed under the engine (restart the process).
EXIT_STORAGE = 3
#: Activities whose runs are compensations.
COMPENSATION_ACTIVITIES = frozenset({"undo", "notify_failure"})
#: How long (seconds) an activity's side effect takes.
EFFECT_SECONDS = 0.002

_FAST_RETRY = {"initial_interval": "PT0.01S", "backoff_coefficient": 1.0, "maximum_attempts": 5}


def _act(ref: str, id: str | None = None, **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"op": "activity", "activity_ref": ref, **extra}
    if id is not None:
        node["id"] = id
    return node


def _work(id: str | None = None, x: str = "$.inputs.n", **extra: Any) -> dict[str, Any]:
    return _act("work", id, input_mapping={"x": x}, **extra)


def _timer(duration: str) -> dict[str, Any]:
    return {"op": "wait", "condition": {"type": "timer", "duration": duration}}


def _wf(
    wid: str, strategy: dict[str, Any], inputs: list[dict[str, Any]] | None = None
) -> WorkflowIR:
    doc: dict[str, Any] = {
        "id": wid,
        "name": f"crash workload {wid}",
        "version": "1",
        "strategy": strategy,
        "inputs": inputs if inputs is not None else [{"name": "n", "type": "integer"}],
    }
    return WorkflowIR.from_dict({"workflow": doc})


def _undo() -> dict[str, Any]:
    return _act("undo", input_mapping={"what": "$.step.output.v"})


def _saga(fail: bool) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        _work("reserve", compensation=_undo()),
        {
            "op": "parallel",
            "branches": [
                _work("charge", "$.steps.reserve.output.v", compensation=_undo()),
                _work("pack", compensation=_undo()),
            ],
        },
        _work("ship", "$.steps.charge.output.v", compensation=_undo()),
    ]
    if fail:
        steps.append(_act("boom", "fail", input_mapping={"x": "$.steps.ship.output.v"}))
    return {
        "op": "saga",
        "main_flow": {"op": "seq", "strategies": steps},
        "compensation": {
            "op": "seq",
            "strategies": [_act("notify_failure", input_mapping={"x": "$.inputs.n"})],
        },
    }


def definitions() -> list[WorkflowIR]:
    """Every workflow of the workload (sub-workflow targets included)."""
    return [
        _wf("leaf", {"op": "seq", "strategies": [_work("a"), _work("b", "$.steps.a.output.v")]}),
        _wf(
            "middle",
            {
                "op": "seq",
                "strategies": [
                    _work("m"),
                    {
                        "op": "subworkflow",
                        "id": "inner",
                        "workflow_ref": "leaf",
                        "input_mapping": {"n": "$.steps.m.output.v"},
                    },
                ],
            },
        ),
        _wf(
            "sequence",
            {
                "op": "seq",
                "strategies": [
                    _work("a"),
                    _work("b", "$.steps.a.output.v"),
                    _act(
                        "flaky",
                        "c",
                        input_mapping={"x": "$.steps.b.output.v"},
                        retry_policy=_FAST_RETRY,
                    ),
                    _work("d", "$.steps.c.output.v"),
                ],
            },
        ),
        _wf(
            "branches",
            {
                "op": "parallel",
                "branches": [
                    {"op": "seq", "strategies": [_work("p1"), _work("p2", "$.steps.p1.output.v")]},
                    _work("q"),
                    {"op": "seq", "strategies": [_timer("PT0.05S"), _work("r")]},
                ],
            },
        ),
        _wf(
            "decide",
            {
                "op": "seq",
                "strategies": [
                    _work("a"),
                    {
                        "op": "decision",
                        "conditions": [
                            {
                                "condition": "steps.a.output.v % 3 == 0",
                                "branch": _work("three", "$.steps.a.output.v"),
                            },
                            {
                                "condition": "steps.a.output.v > 50",
                                "branch": _work("big", "$.steps.a.output.v"),
                            },
                        ],
                        "default_branch": _work("other", "$.steps.a.output.v"),
                    },
                    _work("after"),
                ],
            },
        ),
        _wf(
            "timers",
            {
                "op": "seq",
                "strategies": [
                    _work("a"),
                    _timer("PT0.05S"),
                    _work("b", "$.steps.a.output.v"),
                    _timer("PT0.03S"),
                    _work("c", "$.steps.b.output.v"),
                ],
            },
        ),
        _wf("saga_ok", _saga(fail=False)),
        _wf("saga_fail", _saga(fail=True)),
        _wf(
            "nested",
            {
                "op": "seq",
                "strategies": [
                    _work("a"),
                    {
                        "op": "subworkflow",
                        "id": "mid",
                        "workflow_ref": "middle",
                        "input_mapping": {"n": "$.steps.a.output.v"},
                    },
                    _work("z", "$.steps.mid.output.v"),
                ],
            },
        ),
        _wf(
            "mapped",
            {
                "op": "map",
                "items": "$.inputs.items",
                "max_concurrency": 2,
                "strategy": {
                    "op": "seq",
                    "strategies": [_work("i1", "$.item"), _work("i2", "$.steps.i1.output.v")],
                },
            },
            inputs=[{"name": "items", "type": "array"}],
        ),
        _wf(
            "failing",
            {
                "op": "seq",
                "strategies": [_work("a"), _act("boom", input_mapping={"x": "$.inputs.n"})],
            },
        ),
    ]


def plan(copies: int = 4) -> list[tuple[str, str, dict[str, Any]]]:
    """``(execution_id, workflow_id, inputs)`` of every top-level execution."""
    top = ["sequence", "branches", "decide", "timers", "saga_ok", "saga_fail", "nested", "mapped"]
    out: list[tuple[str, str, dict[str, Any]]] = []
    for k in range(copies):
        for wid in top:
            n = 7 * k + len(wid)
            inputs: dict[str, Any] = (
                {"items": [n + i for i in range(5)]} if wid == "mapped" else {"n": n}
            )
            out.append((f"{wid}-{k}", wid, inputs))
    out.append(("failing-0", "failing", {"n": 1}))
    out.append(("failing-1", "failing", {"n": 2}))
    return out


def value_of(activity: str, step_path: str, payload: Any) -> int:
    """The deterministic result of an activity: a function of what it was given."""
    text = json.dumps([activity, step_path, payload], sort_keys=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little") % 100


class Ledger:
    """Appends one JSON line per record with a single ``os.write`` (O_APPEND)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.pid = os.getpid()

    def record(self, phase: str, **fields: Any) -> None:
        """Write one record (``phase`` = ``start`` | ``end``) about the running activity."""
        ctx = current_context()
        rec = {
            "pid": self.pid,
            "phase": phase,
            "eid": ctx.execution_id,
            "step": ctx.step_path,
            "attempt": ctx.attempt,
            "key": ctx.idempotency_key,
            "activity": ctx.activity,
            "comp": ctx.activity in COMPENSATION_ACTIVITIES,
            **fields,
        }
        os.write(self.fd, json.dumps(rec, sort_keys=True).encode() + b"\n")


def registry(ledger: Ledger) -> ActivityRegistry:
    """The workload's activities, each recording its side effect in ``ledger``."""
    reg = ActivityRegistry()

    async def effect(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        ctx = current_context()
        ledger.record("start")
        await asyncio.sleep(EFFECT_SECONDS)
        result = {"v": value_of(name, ctx.step_path, payload)}
        ledger.record("end", ok=True, result=result)
        return result

    async def work(x: int) -> dict[str, Any]:
        return await effect("work", {"x": x})

    async def undo(what: int) -> dict[str, Any]:
        return await effect("undo", {"what": what})

    async def notify_failure(x: int) -> dict[str, Any]:
        return await effect("notify_failure", {"x": x})

    async def flaky(x: int) -> dict[str, Any]:
        ctx = current_context()
        if ctx.attempt == 1:
            ledger.record("start")
            ledger.record("end", ok=False)
            raise ConnectionError("first attempts of flaky always fail")
        return await effect("flaky", {"x": x})

    async def boom(x: int) -> dict[str, Any]:
        ledger.record("start")
        ledger.record("end", ok=False)
        raise NonRetryableError(f"boom at {x}", error_type="Boom")

    for fn in (work, undo, notify_failure, flaky, boom):
        reg.register(fn)
    return reg


def _error_type(error: Any) -> str | None:
    return error.get("type") if isinstance(error, dict) else None


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def run(args: argparse.Namespace) -> int:
    """Submit the plan, wait for every execution, write the summary."""
    # A hung life is diagnosed by the parent: SIGUSR1 dumps the threads,
    # SIGUSR2 the event loop's tasks.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    ledger = Ledger(args.ledger)
    options: dict[str, Any] = {"schema": args.schema} if args.schema else {}
    engine = (
        WorkflowEngine.builder()
        .with_storage(args.storage, **options)
        .with_activities(registry(ledger))
        .with_workflows(definitions())
        .with_snapshots(every=5)
        .with_random_seed(11)
        # One workload process at a time: a restarted one takes its
        # executions back at once instead of waiting out the dead one's leases.
        .with_node_id("crash-workload")
        .build()
    )
    summary: dict[str, Any] = {}
    try:
        await engine.start()
        ids = plan(args.copies)
        for eid, wid, inputs in ids:
            await engine.start_workflow(wid, inputs, execution_id=eid)
        for eid, _, _ in ids:
            try:
                outputs = await engine.wait_for_completion(eid, timeout=args.timeout)
            except WorkflowFailedError as e:
                summary[eid] = {"status": e.status, "outputs": None, "error": _error_type(e.error)}
            else:
                summary[eid] = {"status": "completed", "outputs": outputs, "error": None}
    except ItonamiError as e:
        print(f"crash_workload: storage failed: {e!r}", file=sys.stderr)
        return EXIT_STORAGE
    finally:
        await engine.close()
    result: dict[str, Any] = {"executions": summary}
    if args.count_failpoints:
        from itonami import _failpoints

        result["failpoint_passes"] = {
            name: args.count_failpoints - left for name, left in _failpoints._points.items()
        }
    tmp = args.summary + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the workload once (one process life)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--storage", required=True)
    p.add_argument("--schema", default=None)
    p.add_argument("--ledger", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument(
        "--count-failpoints",
        type=int,
        default=0,
        help="ITONAMI_FAILPOINTS holds every point at this count: report passes",
    )
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

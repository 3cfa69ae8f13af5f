"""The ``itonami`` command line.

``itonami run FILE.kotoba --input JSON --activities MODULE`` runs a workflow on
the embedded durable store (a SQLite file, see ``--db``) and prints the
execution id and result. Other commands inspect stored executions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .activities import ActivityRegistry
from .dsl import WorkflowIR
from .engine import WorkflowEngine
from .errors import ItonamiError, WorkflowFailedError
from .storage import default_storage_url

__all__ = ["main"]


def _load_registry(spec: str) -> ActivityRegistry:
    """``package.module``, ``package.module:attr`` or ``path/to/file.py[:attr]``."""
    target, _, attr = spec.partition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise SystemExit(f"itonami: activities file not found: {target}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise SystemExit(f"itonami: cannot import {target}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        mod_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")
        module = importlib.import_module(target)
    names = [attr] if attr else ["registry", "activities"]
    for name in names:
        found = getattr(module, name, None)
        if isinstance(found, ActivityRegistry):
            return found
    raise SystemExit(
        f"itonami: {spec} has no ActivityRegistry named {' or '.join(names)!s}"
    )


def _parse_json(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise SystemExit(f"itonami: {what} is not valid JSON: {e}") from None


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _engine(args: argparse.Namespace, registry: ActivityRegistry | None = None) -> WorkflowEngine:
    builder = WorkflowEngine.builder().with_storage(args.db or default_storage_url())
    if registry is not None:
        builder = builder.with_activities(registry)
    return builder.build()


async def _run(args: argparse.Namespace) -> int:
    registry = ActivityRegistry()
    for spec in args.activities or []:
        registry = registry.merge(_load_registry(spec))
    ext_vars = dict(kv.split("=", 1) for kv in args.ext_var or [])
    path = Path(args.file)
    if path.suffix == ".json":
        ir = WorkflowIR.from_json(path.read_bytes())
    else:
        ir = WorkflowIR.from_jsonnet(str(path), ext_vars=ext_vars)
    inputs = _parse_json(args.input, "--input") if args.input else {}
    async with _engine(args, registry) as engine:
        eid = await engine.start_workflow(ir, inputs, execution_id=args.execution_id)
        print(f"execution_id: {eid}", flush=True)
        try:
            outputs = await engine.wait_for_completion(eid, timeout=args.timeout)
        except WorkflowFailedError as e:
            print(f"status: {e.status}")
            print(_dump({"error": e.error}))
            return 1
        print("status: completed")
        print(_dump(outputs))
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with _engine(args) as engine:
        if args.command == "status":
            print(_dump(await engine.query(args.execution_id)))
        elif args.command == "history":
            for e in await engine.get_event_history(args.execution_id):
                print(_dump({"kind": e.kind, "step": e.step, "attempt": e.attempt,
                             "timestamp": e.timestamp, "data": e.data}).replace("\n", " "))
        elif args.command == "verify":
            report = await engine.verify(args.execution_id)
            print(f"ok: {report.versions} versions, head {report.head_hash.hex()}")
        elif args.command == "list":
            for r in await engine.list_executions(status=args.status, workflow_id=args.workflow):
                print(f"{r.execution_id}\t{r.workflow_id}@{r.workflow_version}\t{r.status}")
        elif args.command == "signal":
            payload = _parse_json(args.payload, "payload") if args.payload else None
            await engine.signal(args.execution_id, args.name, payload)
            print("signalled")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itonami", description=__doc__.splitlines()[0])
    p.add_argument(
        "--db",
        help="storage URL or SQLite file (default: $ITONAMI_DB or the per-user data file)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow and print its result")
    run.add_argument("file", help="a .kotoba (Jsonnet) or .json workflow definition")
    run.add_argument("--input", help="workflow inputs as a JSON object")
    run.add_argument(
        "--activities",
        action="append",
        help="module (or file.py) with an ActivityRegistry named `registry`; repeatable",
    )
    run.add_argument("--ext-var", action="append", help="Jsonnet external variable k=v")
    run.add_argument("--execution-id", help="idempotency key for the execution")
    run.add_argument("--timeout", type=float, help="seconds to wait for the result")
    for name, text in [
        ("status", "print an execution's current state"),
        ("history", "print an execution's events"),
        ("verify", "verify an execution's Merkle chain"),
    ]:
        sp = sub.add_parser(name, help=text)
        sp.add_argument("execution_id")
    ls = sub.add_parser("list", help="list executions")
    ls.add_argument("--status")
    ls.add_argument("--workflow")
    sg = sub.add_parser("signal", help="send a signal to a running execution")
    sg.add_argument("execution_id")
    sg.add_argument("name")
    sg.add_argument("payload", nargs="?")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``itonami`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        return asyncio.run(_show(args))
    except ItonamiError as e:
        print(f"itonami: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

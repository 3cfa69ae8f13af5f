"""The ``itonami`` command line.

``itonami run FILE.kotoba --input JSON --activities MODULE`` runs a workflow on
the embedded durable store and prints the execution id, its status and its
outputs; ``status``, ``history``, ``verify`` and ``list`` read stored
executions back; ``resume``, ``signal`` and ``event`` continue an unfinished one.

The store is ``--db`` (a storage URL or a plain SQLite file path), else
``$ITONAMI_DB``, else a per-user SQLite file (see
:func:`itonami.storage.default_storage_url`).

A command only ever resumes the executions it names (and their children), so
inspecting or signalling one execution never runs another one's activities
in a process that may not have them.

Exit codes: 0 completed (or the command succeeded); 1 the execution ended
failed, compensated, cancelled or timed out, or ``verify`` found damage;
2 a usage error (bad arguments, JSON, file, definition, inputs, unknown
execution or activity module); 3 still running when ``--timeout`` passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from .activities import ActivityRegistry
from .dsl import WorkflowIR
from .engine import WorkflowEngine
from .errors import CorruptStorageError, IntegrityError, ItonamiError, WorkflowFailedError
from .integrity import verify_execution
from .storage import ExecutionRecord, default_storage_url, open_storage

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_RUNNING", "EXIT_USAGE", "main"]

#: The command succeeded (a run completed).
EXIT_OK = 0
#: The execution ended without completing, or ``verify`` found damage.
EXIT_FAILED = 1
#: Bad arguments, input, definition, file, module or execution id.
EXIT_USAGE = 2
#: The execution was still running when ``--timeout`` passed.
EXIT_RUNNING = 3

_TERMINAL = {"completed", "failed", "cancelled", "timed_out", "compensated"}


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


# ------------------------------------------------------------------ arguments


def storage_url(db: str | None) -> str:
    """The storage URL for ``--db``: a URL as is, a plain path as a SQLite file."""
    if not db:
        return default_storage_url()
    if db == "memory" or "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(os.path.expanduser(db))


def _json(text: str, what: str) -> Any:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{what}: cannot read {path}: {e.strerror}") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise UsageError(f"{what} is not valid JSON ({e}): {text[:60]!r}") from None


def _pairs(items: Iterable[str] | None, what: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` options; the value may be empty or absent (``NAME``)."""
    out = []
    for item in items or ():
        name, sep, value = item.partition("=")
        if not name:
            raise UsageError(f"{what} {item!r}: expected NAME=VALUE")
        out.append((name, value if sep else ""))
    return out


def _messages(items: Iterable[str] | None, what: str) -> list[tuple[str, Any]]:
    """``NAME=JSON`` (or just ``NAME``, payload null) for --signal / --event."""
    return [
        (name, _json(value, f"{what} {name!r} payload") if value else None)
        for name, value in _pairs(items, what)
    ]


def load_registry(spec: str) -> ActivityRegistry:
    """The ActivityRegistry named by ``module[:attr]`` or ``path/file.py[:attr]``.

    Without ``attr`` the module's ``registry`` (or ``activities``) is used. A
    file is imported with its folder on ``sys.path`` (as Python does for a
    script), so it can import its neighbours.
    """
    target, _, attr = spec.partition(":")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise UsageError(f"activities file not found: {target}")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise UsageError(f"cannot import activities file {target}")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[path.stem]
            raise UsageError(f"activities file {target} failed to import: {e!r}") from None
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise UsageError(f"cannot import activities module {target!r}: {e}") from None
        except Exception as e:
            raise UsageError(f"activities module {target!r} failed to import: {e!r}") from None
    names = [attr] if attr else ["registry", "activities"]
    for name in names:
        found = getattr(module, name, None)
        if isinstance(found, ActivityRegistry):
            return found
    raise UsageError(
        f"activities module {target!r} has no ActivityRegistry named {' or '.join(names)}"
    )


def _registry(specs: Iterable[str] | None) -> ActivityRegistry:
    registry = ActivityRegistry()
    for spec in specs or ():
        registry = registry.merge(load_registry(spec))
    return registry


def load_definition(
    file: str, *, ext_vars: dict[str, str] | None = None, tla: dict[str, str] | None = None
) -> WorkflowIR:
    """A workflow from a ``.kotoba`` (Jsonnet) or ``.json`` file."""
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"workflow file not found: {file}")
    if path.suffix == ".json":
        return WorkflowIR.from_json(path.read_bytes())
    return WorkflowIR.from_jsonnet(path, ext_vars=ext_vars, tla=tla)


async def plan_resume(
    url: str, roots: Iterable[str], registry: ActivityRegistry
) -> tuple[set[str], list[WorkflowIR]]:
    """What resuming ``roots`` involves: the unfinished executions among them
    and their descendants, and the stored definitions those need (children
    included). Raises UsageError when an activity they call is not in
    ``registry``, rather than letting the execution fail for want of it."""
    roots = set(roots)
    async with open_storage(url) as storage:
        parents: dict[str, str | None] = {}
        records: dict[str, ExecutionRecord] = {}
        for eid in await storage.unfinished_executions():
            rec = await storage.get_execution(eid)
            if rec is not None:
                records[eid] = rec
                parents[eid] = rec.parent_id
        scope = {eid for eid in records if _descends(eid, roots, parents)}
        definitions: dict[tuple[str, str | None], WorkflowIR] = {}
        todo: list[tuple[str, str | None]] = [
            (records[e].workflow_id, records[e].workflow_version) for e in sorted(scope)
        ]
        while todo:
            ref = todo.pop()
            if ref in definitions:
                continue
            doc = await storage.get_definition(*ref)
            if doc is None:
                raise UsageError(f"workflow {ref[0]} {ref[1] or ''} is not stored in this database")
            ir = definitions[ref] = WorkflowIR.from_json(doc)
            todo.extend(ir.workflow_refs())
    needed = set().union(*(ir.activity_refs() for ir in definitions.values()))
    missing = sorted(needed - set(registry.names()))
    if missing:
        raise UsageError(
            f"resuming {', '.join(sorted(roots & scope))} needs activities that were not "
            f"given: {', '.join(missing)} (pass --activities MODULE)"
        )
    return scope, list({ir.content_hash: ir for ir in definitions.values()}.values())


def _descends(eid: str, roots: set[str], parents: dict[str, str | None]) -> bool:
    seen: set[str] = set()
    current: str | None = eid
    while current is not None and current not in seen:
        if current in roots:
            return True
        seen.add(current)
        current = parents.get(current)
    return False


@contextlib.asynccontextmanager
async def _engine(
    url: str,
    registry: ActivityRegistry | None = None,
    workflows: Iterable[WorkflowIR] = (),
    resume: Iterable[str] = (),
) -> AsyncIterator[WorkflowEngine]:
    # Resume only what this command is about: other executions in the store
    # belong to other programs, with activities this process does not have.
    builder = WorkflowEngine.builder().with_storage(url).with_recovery(only=resume)
    if registry is not None:
        builder = builder.with_activities(registry)
    engine = builder.with_workflows(_unique(workflows)).build()
    try:
        await engine.start()
    except BaseException:
        # start() can fail after opening the storage (a definition that does
        # not register), and then close() leaves the storage open: close it
        # here so its connections do not leak.
        await engine.storage.close()
        raise
    try:
        yield engine
    finally:
        await engine.close()


def _unique(workflows: Iterable[WorkflowIR]) -> list[WorkflowIR]:
    return list({ir.content_hash: ir for ir in workflows}.values())


# ------------------------------------------------------------------ output


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _compact(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _when(micros: int | float | None) -> str:
    if not micros:
        return "-"
    moment = datetime.fromtimestamp(micros / 1e6, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "execution_id": state.get("execution_id"),
        "workflow_id": state.get("workflow_id"),
        "workflow_version": state.get("workflow_version"),
        "status": state.get("status"),
        "outputs": state.get("outputs"),
        "error": state.get("error"),
    }


def _print_result(
    state: dict[str, Any], as_json: bool, *, header: bool = True, hint: bool = True
) -> int:
    status = state.get("status")
    if as_json:
        print(_dump(_summary(state)))
    else:
        if header:
            print(f"execution: {state.get('execution_id')}")
        print(f"workflow:  {state.get('workflow_id')} {state.get('workflow_version')}")
        print(f"status:    {status}")
        if status == "completed":
            print("outputs:")
            print(_dump(state.get("outputs")))
        elif status in _TERMINAL:
            print("error:")
            print(_dump(state.get("error")))
    if status == "completed":
        return EXIT_OK
    if status in _TERMINAL:
        return EXIT_FAILED
    if hint:
        eid = state.get("execution_id")
        print(
            f"itonami: execution {eid} is still {status}; continue it with "
            f"`itonami resume {eid} --activities MODULE` (or `itonami signal {eid} NAME JSON "
            "--activities MODULE`)",
            file=sys.stderr,
        )
    return EXIT_RUNNING


# ------------------------------------------------------------------ driving


def _waits_for(irs: Iterable[WorkflowIR], kind: str) -> set[str]:
    names: set[str] = set()
    for ir in irs:
        for node in ir.nodes():
            if node.op == "wait" and getattr(node, "kind", None) == kind:
                name = getattr(node, "signal_name" if kind == "signal" else "event_type", None)
                if name:
                    names.add(name)
    return names


def _check_messages(
    irs: list[WorkflowIR], signals: list[tuple[str, Any]], events: list[tuple[str, Any]]
) -> None:
    for kind, given in (("signal", signals), ("event", events)):
        known = _waits_for(irs, kind)
        for name, _ in given:
            if name not in known:
                raise UsageError(
                    f"the workflow never waits for {kind} {name!r} "
                    f"(it waits for: {', '.join(sorted(known)) or 'no ' + kind + 's'})"
                )


async def _send_event(engine: WorkflowEngine, eid: str, event_type: str, payload: Any) -> None:
    """Send the event once the execution (or a child) is waiting for it."""
    while True:
        if await engine.send_event(event_type, payload):
            return
        if (await engine.get_execution(eid)).finished:
            return
        # The wait registers right after its wait_started event is durable.
        await asyncio.sleep(0.005)


async def _drive(
    engine: WorkflowEngine,
    eid: str,
    signals: list[tuple[str, Any]],
    events: list[tuple[str, Any]],
    timeout: float | None,
) -> dict[str, Any]:
    """Deliver the messages, wait for the end (or the timeout); the final state."""

    async def finish() -> None:
        for name, payload in signals:
            await engine.signal(eid, name, payload)
        for event_type, payload in events:
            await _send_event(engine, eid, event_type, payload)
        with contextlib.suppress(WorkflowFailedError):  # the state says how it ended
            await engine.wait_for_completion(eid)

    with contextlib.suppress(asyncio.TimeoutError):  # still running: reported as such
        await asyncio.wait_for(finish(), timeout)
    return await engine.query(eid)


# ------------------------------------------------------------------ commands


async def _cmd_run(args: argparse.Namespace) -> int:
    url = storage_url(args.db)
    registry = _registry(args.activities)
    ext_vars = dict(_pairs(args.ext_var, "--ext-var"))
    ir = load_definition(args.file, ext_vars=ext_vars, tla=dict(_pairs(args.tla, "--tla")))
    children = [load_definition(f, ext_vars=ext_vars) for f in args.workflow or ()]
    inputs = _json(args.input, "--input") if args.input else {}
    if not isinstance(inputs, dict):
        raise UsageError(f"--input must be a JSON object, got {type(inputs).__name__}")
    signals = _messages(args.signal, "--signal")
    events = _messages(args.event, "--event")
    _check_messages([ir, *children], signals, events)
    resume: set[str] = set()
    if args.execution_id:
        resume, stored = await plan_resume(url, {args.execution_id}, registry)
        children += stored
    if not len(registry) and ir.activity_refs():
        raise UsageError(
            f"{args.file} calls activities ({', '.join(sorted(ir.activity_refs()))}); "
            "pass --activities MODULE"
        )
    async with _engine(url, registry, [*children, ir], resume) as engine:
        eid = await engine.start_workflow(ir, inputs, execution_id=args.execution_id)
        if not args.json:
            print(f"execution: {eid}", flush=True)
        state = await _drive(engine, eid, signals, events, args.timeout)
    return _print_result(state, args.json, header=False)


async def _cmd_resume(args: argparse.Namespace) -> int:
    url = storage_url(args.db)
    registry = _registry(args.activities)
    children = [load_definition(f) for f in getattr(args, "workflow", None) or ()]
    signals = _messages(getattr(args, "signal", None), "--signal")
    events = _messages(getattr(args, "event", None), "--event")
    if args.command == "signal":
        signals = [(args.name, _json(args.payload, "signal payload") if args.payload else None)]
        if not args.activities:
            # Nothing to run it with here: deliver it through the store. The
            # process that owns the execution acts on it (through the store's
            # inbox); one that resumes it later finds it recorded.
            async with _engine(url) as engine:
                await engine.signal(args.execution_id, *signals[0])
            print(f"delivered to {args.execution_id}")
            return EXIT_OK
    elif args.command == "event":
        events = [(args.type, _json(args.payload, "event payload") if args.payload else None)]
    scope, stored = await plan_resume(url, {args.execution_id}, registry)
    if args.execution_id in scope and (signals or events):
        _check_messages(stored + children, signals, events)
    async with _engine(url, registry, [*stored, *children], scope) as engine:
        state = await engine.query(args.execution_id)
        if state["status"] in _TERMINAL:
            if signals or events:
                raise UsageError(
                    f"execution {args.execution_id} is {state['status']}; "
                    "it takes no more signals or events"
                )
        elif getattr(args, "no_wait", False):
            for name, payload in signals:
                await engine.signal(args.execution_id, name, payload)
            for event_type, payload in events:
                await _send_event(engine, args.execution_id, event_type, payload)
            print(f"delivered to {args.execution_id}")
            return EXIT_OK
        else:
            state = await _drive(engine, args.execution_id, signals, events, args.timeout)
    return _print_result(state, args.json)


async def _cmd_status(args: argparse.Namespace) -> int:
    async with _engine(storage_url(args.db)) as engine:
        state = await engine.query(args.execution_id)
    if args.json:
        print(_dump(state))
        return EXIT_OK
    _print_result(state, False, hint=False)
    print(f"version:   {state.get('version')}  (updated {_when(state.get('updated_at'))})")
    steps = state.get("steps") or {}
    if steps:
        print("steps:")
        for path, step in steps.items():
            what = step.get("activity") or ""
            tries = step.get("attempts") or 0
            extra = f" ({tries} attempt{'s' if tries != 1 else ''})" if what else ""
            print(f"  {path:<14} {step.get('status', ''):<12} {what}{extra}")
    return EXIT_OK


async def _cmd_history(args: argparse.Namespace) -> int:
    async with _engine(storage_url(args.db)) as engine:
        version = (await engine.get_execution(args.execution_id)).version
        events = await engine.get_event_history(args.execution_id)
    first = version - len(events) + 1
    for i, e in enumerate(events):
        record = {
            "version": first + i,
            "kind": e.kind,
            "step": e.step,
            "attempt": e.attempt,
            "timestamp": e.timestamp,
            "data": e.data,
        }
        if args.json:
            print(_compact(record))
        else:
            when, step = _when(e.timestamp), e.step or "-"
            print(f"{first + i:>4}  {when}  {e.kind:<28} {step:<12} {_compact(e.data)}")
    return EXIT_OK


async def _cmd_verify(args: argparse.Namespace) -> int:
    # Damage (exit 1) is anything wrong with what is stored; an unknown id or
    # an unusable --db stays a usage error (exit 2), raised past this.
    try:
        async with _engine(storage_url(args.db)) as engine:
            report = await verify_execution(engine.storage, args.execution_id)
    except (IntegrityError, CorruptStorageError) as e:
        print(f"itonami: {args.execution_id} does NOT verify: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"ok: {report.execution_id}: {report.versions} versions, head {report.head_hash.hex()}")
    return EXIT_OK


async def _cmd_list(args: argparse.Namespace) -> int:
    async with _engine(storage_url(args.db)) as engine:
        records = await engine.list_executions(
            status=args.status, workflow_id=args.workflow, limit=args.limit
        )
    for r in records:
        if args.json:
            print(
                _compact(
                    {
                        "execution_id": r.execution_id,
                        "workflow_id": r.workflow_id,
                        "workflow_version": r.workflow_version,
                        "status": r.status,
                        "parent_id": r.parent_id,
                        "created_at": r.created_at,
                        "updated_at": r.updated_at,
                    }
                )
            )
        else:
            print(
                f"{r.execution_id}  {r.status:<11}  {r.workflow_id} {r.workflow_version}"
                f"  {_when(r.updated_at)}"
            )
    return EXIT_OK


async def _cmd_validate(args: argparse.Namespace) -> int:
    registry = _registry(args.activities) if args.activities else None
    ext_vars = dict(_pairs(args.ext_var, "--ext-var"))
    ir = load_definition(args.file, ext_vars=ext_vars, tla=dict(_pairs(args.tla, "--tla")))
    children = [load_definition(f, ext_vars=ext_vars) for f in args.workflow or ()]
    known = {(c.id, c.version) for c in children}
    problems = ir.check(
        activities=registry,
        workflows=(
            (lambda wid, ver: any(i == wid and ver in (None, v) for i, v in known))
            if args.workflow
            else None
        ),
    )
    if problems:
        print(f"itonami: {args.file}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_USAGE
    print(f"ok: {ir.id} {ir.version} ({sum(1 for _ in ir.nodes())} steps, hash {ir.content_hash})")
    return EXIT_OK


_COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "signal": _cmd_resume,
    "event": _cmd_resume,
    "status": _cmd_status,
    "history": _cmd_history,
    "verify": _cmd_verify,
    "list": _cmd_list,
    "validate": _cmd_validate,
}


# ------------------------------------------------------------------ parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="itonami",
        description="Run durable, event-sourced workflows and inspect their executions.",
        epilog="exit codes: 0 completed, 1 failed/compensated/cancelled/timed out, "
        "2 usage or definition error, 3 still running after --timeout",
    )
    p.add_argument(
        "--db",
        metavar="URL|PATH",
        help="storage URL (sqlite:///f.db, postgresql://…, memory) or a SQLite file path "
        "(default: $ITONAMI_DB, else the per-user data file)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def json_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--json", action="store_true", help="print JSON instead of text")

    def activities(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--activities",
            action="append",
            metavar="MODULE[:ATTR]",
            help="module or file.py holding an ActivityRegistry (`registry`); repeatable",
        )

    def workflows(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--workflow", action="append", metavar="FILE", help=f"{what}; repeatable")

    def messages(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--signal",
            action="append",
            metavar="NAME[=JSON]",
            help="deliver this signal once started; repeatable, in order",
        )
        sp.add_argument(
            "--event",
            action="append",
            metavar="TYPE[=JSON]",
            help="send this external event once the execution waits for it; repeatable",
        )

    def timeout(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--timeout",
            type=float,
            metavar="S",
            help="stop waiting after S seconds (the execution stays resumable; exit 3)",
        )

    def jsonnet(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--ext-var", action="append", metavar="K=V", help="Jsonnet external variable"
        )
        sp.add_argument(
            "--tla", action="append", metavar="K=V", help="Jsonnet top-level argument (string)"
        )

    run = sub.add_parser("run", help="run a workflow to its end and print its result")
    run.add_argument("file", help="a .kotoba (Jsonnet) or .json workflow definition")
    run.add_argument("--input", metavar="JSON", help="inputs as a JSON object (or @file.json)")
    activities(run)
    workflows(run, "a definition sub-workflows may call")
    jsonnet(run)
    run.add_argument("--execution-id", metavar="ID", help="idempotency key for the execution")
    messages(run)
    timeout(run)
    json_flag(run)

    resume = sub.add_parser("resume", help="continue an unfinished execution to its end")
    resume.add_argument("execution_id")
    activities(resume)
    workflows(resume, "a definition sub-workflows may call (stored ones are found)")
    messages(resume)
    timeout(resume)
    json_flag(resume)

    for name, what, arg in (
        ("signal", "deliver a signal to an execution, then run it on", "name"),
        ("event", "send an external event to an execution, then run it on", "type"),
    ):
        sp = sub.add_parser(name, help=what)
        sp.add_argument("execution_id")
        sp.add_argument(arg, help=f"the {name} {arg}")
        sp.add_argument("payload", nargs="?", help="JSON payload (or @file.json)")
        activities(sp)
        workflows(sp, "a definition sub-workflows may call (stored ones are found)")
        sp.add_argument("--no-wait", action="store_true", help="record it and stop (resume later)")
        timeout(sp)
        json_flag(sp)

    for name, text in (
        ("status", "print an execution's status, outputs and steps"),
        ("history", "print an execution's events, one per line"),
        ("verify", "recompute an execution's Merkle chain"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("execution_id")
        if name != "verify":
            json_flag(sp)

    ls = sub.add_parser("list", help="list executions, oldest first")
    ls.add_argument("--status", help="only this status (running, completed, failed, …)")
    ls.add_argument("--workflow", help="only this workflow id")
    ls.add_argument("--limit", type=int, default=1000)
    json_flag(ls)

    serve = sub.add_parser("serve", help="run the web UI (needs the ui extra: itonami[ui])")
    serve.add_argument("--storage", metavar="URL|PATH", help="the store to show (default: --db)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--token",
        help="enables signal and cancel for requests that present it "
        "(default: $ITONAMI_UI_TOKEN; without one the UI is read-only)",
    )

    check = sub.add_parser("validate", help="check a definition without running it")
    check.add_argument("file")
    activities(check)
    workflows(check, "a definition sub-workflows may call")
    jsonnet(check)
    return p


def _serve(args: argparse.Namespace) -> int:
    try:
        from itonami.ui import serve
    except ImportError as e:
        print(
            f"itonami: the web UI needs the ui extra (pip install 'itonami[ui]'): {e}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    serve(storage_url(args.storage or args.db), host=args.host, port=args.port, token=args.token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``itonami`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except BrokenPipeError:
        # The reader went away (`itonami history ID | head`): stop quietly,
        # and keep Python from complaining while it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as e:
        print(f"itonami: {e}", file=sys.stderr)
    except ItonamiError as e:
        print(f"itonami: {e}", file=sys.stderr)
    except (ValueError, OSError) as e:  # e.g. an unsupported storage URL
        print(f"itonami: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("itonami: interrupted (the execution resumes with `itonami resume`)", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

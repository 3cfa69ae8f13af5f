"""The ``itonami`` command line (typer + rich).

``itonami run FILE.kotoba --input JSON --activities MODULE`` runs a workflow on
the embedded durable store and prints the execution id, its status and its
outputs; ``status``, ``state``, ``history``, ``verify``, ``list`` and
``export`` read stored executions back; ``resume``, ``signal``, ``event`` and
``cancel`` act on an unfinished one; ``prune`` deletes old finished ones.

The store is ``--db`` (``--storage``: a storage URL or a plain SQLite file
path), else ``$ITONAMI_DB``, else a per-user SQLite file (see
:func:`itonami.storage.default_storage_url`). Global options may stand before
or after the command. Commands that only read refuse a SQLite file that does
not exist instead of creating it.

A command only ever resumes the executions it names (and their children), so
inspecting or signalling one execution never runs another one's activities
in a process that may not have them.

Exit codes: 0 the command succeeded (a run completed); 1 what was checked is
bad: the execution ended failed, compensated, cancelled or timed out,
``verify`` found damage, the execution or the database file does not exist;
2 a usage error (bad arguments, JSON, file, definition, inputs, activity
module); 3 still running when ``--timeout`` passed; 130 interrupted.

``--json`` output (stable; keys sorted, µs timestamps):

- ``list``: one object per line ``{execution_id, workflow_id,
  workflow_version, status, parent_id, created_at, updated_at, version}``,
  newest first, then a last line ``{"total": N, "counts": {status: n},
  "limit", "offset"}`` (``counts`` under the filters, whatever the page).
- ``status``: ``{execution_id, workflow_id, workflow_version, status,
  outputs, error, version, updated_at, steps: [{name, path, status,
  activity, attempts}]}``.
- ``history``: one object per event and line ``{version, kind, step,
  attempt, timestamp, data}``.
- ``verify``: ``{ok, execution_id, versions, head, error}``.
- ``state``: ``{execution_id, workflow_id, workflow_version, status,
  inputs, outputs, error, version, tx, created_at, updated_at, parent}``.

New commands are ``@app.command()`` functions in :func:`build_app`.
"""

# No ``from __future__ import annotations``: typer reads the annotations of
# the commands, some of which are built in a closure.
import asyncio
import contextlib
import importlib
import importlib.util
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from .activities import ActivityRegistry
from .dsl import WorkflowIR
from .dsl.durations import parse_duration
from .engine import WorkflowEngine
from .errors import (
    CorruptStorageError,
    ExecutionNotFoundError,
    IntegrityError,
    ItonamiError,
    WorkflowFailedError,
)
from .integrity import verify_execution
from .steps import step_views
from .storage import ExecutionRecord, default_storage_url, open_storage
from .storage.base import TERMINAL_STATUSES

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUNNING",
    "EXIT_USAGE",
    "STATUSES",
    "build_app",
    "main",
]

#: The command succeeded (a run completed).
EXIT_OK = 0
#: What was checked is bad: the execution ended without completing, ``verify``
#: found damage, or the execution (or the database file) does not exist.
EXIT_FAILED = 1
#: Bad arguments, input, definition, file or activity module.
EXIT_USAGE = 2
#: The execution was still running when ``--timeout`` passed.
EXIT_RUNNING = 3
#: Interrupted (Ctrl-C).
EXIT_INTERRUPTED = 130

_TERMINAL = set(TERMINAL_STATUSES)
#: The statuses an execution can have in the store.
STATUSES: tuple[str, ...] = ("running", *sorted(TERMINAL_STATUSES))

_EXIT_CODES = (
    "Exit codes: 0 ok (a run completed); 1 the execution failed, was compensated, "
    "cancelled or timed out, verify found damage, or the execution or database "
    "does not exist; 2 usage error; 3 still running after --timeout; 130 interrupted."
)


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


class MissingActivitiesError(UsageError):
    """Resuming an execution needs activities that were not given."""


class NotFoundError(Exception):
    """What the command reads does not exist; printed as one line, exit code 1."""


# ------------------------------------------------------------------ arguments


def storage_url(db: str | None) -> str:
    """The storage URL for ``--db``: a URL as is, a plain path as a SQLite file."""
    if not db:
        return default_storage_url()
    if db == "memory" or "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(os.path.expanduser(db))


def read_url(db: str | None) -> str:
    """The storage URL of a command that only reads: a SQLite file must exist."""
    url = storage_url(db)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].partition("?")[0]
        if path != ":memory:" and not os.path.exists(path):
            raise NotFoundError(f"no database at {path} (--db, $ITONAMI_DB)")
    return url


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
        raise MissingActivitiesError(
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


# ------------------------------------------------------------------ times


_SHORT = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(text: str, what: str, *, now: float | None = None) -> int:
    """µs since the epoch for ``text``: an ISO 8601 timestamp (naive means
    UTC) or a duration ago (``90s``, ``15m``, ``1h``, ``2d``, ``1w``, ``P1D``)."""
    now = time.time() if now is None else now
    text = text.strip()
    match = _SHORT.match(text)
    if match:
        return round((now - float(match[1]) * _UNIT[match[2]]) * 1e6)
    if text[:1] in ("P", "p"):
        try:
            return round((now - parse_duration(text.upper())) * 1e6)
        except ValueError as e:
            raise UsageError(f"{what} {text!r}: {e}") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{what} {text!r}: expected an ISO 8601 timestamp (2026-01-31T12:00:00Z) or a "
            "duration ago (90s, 15m, 1h, 2d, 1w, P1D)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1e6)


# ------------------------------------------------------------------ progress


class _Progress:
    """Steps as they complete, on stderr (rich), while ``run`` drives an execution."""

    def __init__(self, engine: WorkflowEngine, eid: str, ir: WorkflowIR | None) -> None:
        from rich.console import Console

        self._engine, self._eid, self._ir = engine, eid, ir
        self._console = Console(stderr=True, highlight=False)
        self._shown: dict[str, str] = {}

    async def watch(self, interval: float = 0.1) -> None:
        status = None
        if self._console.is_terminal:
            status = self._console.status(f"running {self._eid}")
            status.start()
        try:
            while True:
                await self.show_new()
                await asyncio.sleep(interval)
        finally:
            if status is not None:
                status.stop()

    async def show_new(self) -> None:
        with contextlib.suppress(ItonamiError):
            state = await self._engine.query(self._eid)
            for view in step_views(self._ir, state):
                if view.status in ("running", "scheduled", "pending"):
                    continue
                if self._shown.get(view.path) == view.status:
                    continue
                self._shown[view.path] = view.status
                mark = {"completed": "✓", "waiting": "…", "retrying": "↻"}.get(view.status, "✗")
                what = f"  ({view.activity})" if view.activity else ""
                self._console.print(f"{mark} {view.name} {view.status}{what}", markup=False)


@contextlib.asynccontextmanager
async def _progress(
    enabled: bool, engine: WorkflowEngine, eid: str, ir: WorkflowIR | None
) -> AsyncIterator[None]:
    if not enabled:
        yield
        return
    progress = _Progress(engine, eid, ir)
    task = asyncio.ensure_future(progress.watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await progress.show_new()  # the last steps, after the end


def _progress_wanted(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


@contextlib.contextmanager
def _spinner(enabled: bool, text: str) -> Any:
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


# ------------------------------------------------------------------ commands


async def _run(
    db: str | None,
    file: str,
    input: str | None,
    activities: list[str] | None,
    workflow: list[str] | None,
    ext_var: list[str] | None,
    tla: list[str] | None,
    execution_id: str | None,
    signal: list[str] | None,
    event: list[str] | None,
    timeout: float | None,
    as_json: bool,
    progress: bool,
) -> int:
    url = storage_url(db)
    registry = _registry(activities)
    ext_vars = dict(_pairs(ext_var, "--ext-var"))
    ir = load_definition(file, ext_vars=ext_vars, tla=dict(_pairs(tla, "--tla")))
    children = [load_definition(f, ext_vars=ext_vars) for f in workflow or ()]
    inputs = _json(input, "--input") if input else {}
    if not isinstance(inputs, dict):
        raise UsageError(f"--input must be a JSON object, got {type(inputs).__name__}")
    signals = _messages(signal, "--signal")
    events = _messages(event, "--event")
    _check_messages([ir, *children], signals, events)
    resume: set[str] = set()
    if execution_id:
        resume, stored = await plan_resume(url, {execution_id}, registry)
        children += stored
    if not len(registry) and ir.activity_refs():
        raise UsageError(
            f"{file} calls activities ({', '.join(sorted(ir.activity_refs()))}); "
            "pass --activities MODULE"
        )
    async with _engine(url, registry, [*children, ir], resume) as engine:
        eid = await engine.start_workflow(ir, inputs, execution_id=execution_id)
        if not as_json:
            print(f"execution: {eid}", flush=True)
        async with _progress(progress, engine, eid, ir):
            state = await _drive(engine, eid, signals, events, timeout)
    return _print_result(state, as_json, header=False)


async def _resume(
    db: str | None,
    command: str,
    execution_id: str,
    activities: list[str] | None,
    workflow: list[str] | None,
    signals: list[tuple[str, Any]],
    events: list[tuple[str, Any]],
    timeout: float | None,
    as_json: bool,
    no_wait: bool = False,
) -> int:
    url = read_url(db)
    registry = _registry(activities)
    children = [load_definition(f) for f in workflow or ()]
    plan: tuple[set[str], list[WorkflowIR]] | None = None
    if command == "event" and not activities:
        # A workflow that needs no activities runs on here, as with them.
        with contextlib.suppress(MissingActivitiesError):
            plan = await plan_resume(url, {execution_id}, registry)
    if command in ("signal", "event") and not activities and plan is None:
        # Nothing to run it with here: deliver it through the store. The
        # process that owns the execution acts on it (through the store's
        # inbox); one that resumes it later finds it recorded.
        async with _engine(url) as engine:
            state = await engine.query(execution_id)
            if state["status"] in _TERMINAL:
                raise UsageError(
                    f"execution {execution_id} is {state['status']}; "
                    f"it takes no more signals or events"
                )
            for name, payload in signals:
                await engine.signal(execution_id, name, payload)
            for event_type, payload in events:
                await _send_event_once(engine, execution_id, event_type, payload)
        print(f"delivered to {execution_id}")
        return EXIT_OK
    scope, stored = plan or await plan_resume(url, {execution_id}, registry)
    if execution_id in scope and (signals or events):
        _check_messages(stored + children, signals, events)
    async with _engine(url, registry, [*stored, *children], scope) as engine:
        state = await engine.query(execution_id)
        if state["status"] in _TERMINAL:
            if signals or events:
                raise UsageError(
                    f"execution {execution_id} is {state['status']}; "
                    "it takes no more signals or events"
                )
        elif no_wait:
            for name, payload in signals:
                await engine.signal(execution_id, name, payload)
            for event_type, payload in events:
                await _send_event(engine, execution_id, event_type, payload)
            print(f"delivered to {execution_id}")
            return EXIT_OK
        else:
            state = await _drive(engine, execution_id, signals, events, timeout)
    return _print_result(state, as_json)


async def _send_event_once(engine: WorkflowEngine, eid: str, event_type: str, payload: Any) -> None:
    """Offer an event to the executions the store says wait for it (no run here)."""
    reached = await engine.send_event(event_type, payload)
    if eid not in reached:
        raise UsageError(
            f"execution {eid} does not wait for event {event_type!r} now "
            "(send it when it does, or pass --activities to run it until it does)"
        )


async def _cancel(
    db: str | None, execution_id: str, reason: str, activities: list[str] | None, as_json: bool
) -> int:
    url = read_url(db)
    registry = _registry(activities) if activities else None
    async with _engine(url, registry) as engine:
        state = await engine.query(execution_id)
        if state["status"] in _TERMINAL:
            raise UsageError(f"execution {execution_id} has already ended {state['status']}")
        await engine.cancel(execution_id, reason=reason)
        state = await engine.query(execution_id)
    code = _print_result(state, as_json, hint=False)
    return EXIT_OK if state.get("status") == "cancelled" else code


async def _definition_of(engine: WorkflowEngine, state: dict[str, Any]) -> WorkflowIR | None:
    storage = engine.storage
    doc = await storage.get_definition_by_hash(state.get("definition_hash") or "")
    if doc is None and state.get("workflow_id"):
        doc = await storage.get_definition(state["workflow_id"], state.get("workflow_version"))
    if doc is None:
        return None
    with contextlib.suppress(ItonamiError, ValueError):
        return WorkflowIR.from_json(doc)
    return None


async def _status(db: str | None, execution_id: str, as_json: bool) -> int:
    async with _engine(read_url(db)) as engine:
        state = await engine.query(execution_id)
        views = step_views(await _definition_of(engine, state), state)
    if as_json:
        print(_dump({**state, "step_views": [v.to_dict() for v in views]}))
        return EXIT_OK
    _print_result(state, False, hint=False)
    print(f"version:   {state.get('version')}  (updated {_when(state.get('updated_at'))})")
    if views:
        width = max(14, *(len(v.name) for v in views))
        print("steps:")
        for v in views:
            extra = f" ({v.attempts} attempt{'s' if v.attempts != 1 else ''})" if v.activity else ""
            print(f"  {v.name:<{width}} {v.status:<12} {v.activity or ''}{extra}".rstrip())
    return EXIT_OK


def _event_record(version: int, e: Any) -> dict[str, Any]:
    return {
        "version": version,
        "kind": e.kind,
        "step": e.step,
        "attempt": e.attempt,
        "timestamp": e.timestamp,
        "data": e.data,
    }


def _print_event(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(_compact(record), flush=True)
    else:
        when, step = _when(record["timestamp"]), record["step"] or "-"
        print(
            f"{record['version']:>4}  {when}  {record['kind']:<28} {step:<12} "
            f"{_compact(record['data'])}",
            flush=True,
        )


async def _history(
    db: str | None, execution_id: str, as_json: bool, follow: bool, interval: float
) -> int:
    from . import _core

    if not interval > 0:
        raise UsageError("--interval must be > 0")
    async with _engine(read_url(db)) as engine:
        version = (await engine.get_execution(execution_id)).version
        events = await engine.get_event_history(execution_id)
        first = version - len(events) + 1
        for i, e in enumerate(events):
            _print_event(_event_record(first + i, e), as_json)
        if not follow:
            return EXIT_OK
        # Poll the store (another process may be writing), backing off while
        # nothing happens, up to ``interval``; stop once it has ended.
        seen, pause = version, 0.02
        storage = engine.storage
        while True:
            record = await storage.get_execution(execution_id)
            stored = await storage.read_events(execution_id, seen)
            if stored:
                framed = b"".join(len(s.encoded).to_bytes(4, "little") + s.encoded for s in stored)
                for s, e in zip(stored, _core.decode_history(framed), strict=True):
                    _print_event(_event_record(s.version, e), as_json)
                seen, pause = stored[-1].version, 0.02
                continue
            if record is None or record.status in _TERMINAL:
                return EXIT_OK
            await asyncio.sleep(pause)
            pause = min(interval, pause * 2)


async def _verify(
    db: str | None,
    execution_id: str | None,
    file: str | None,
    head: str | None,
    as_json: bool,
    progress: bool,
) -> int:
    if (execution_id is None) == (file is None):
        raise UsageError("verify takes an execution id or --file FILE (one of them)")
    head_hash = None
    if head is not None:
        try:
            head_hash = bytes.fromhex(head)
        except ValueError:
            head_hash = b""
        if len(head_hash) != 32:
            raise UsageError(f"--head must be 64 hex digits, got {head!r}")
    what = execution_id or file or ""
    try:
        with _spinner(progress, f"verifying {what}"):
            if file is not None:
                eid, versions, last, note = await _verify_file(file, head_hash)
            else:
                assert execution_id is not None
                if head_hash is not None:
                    raise UsageError("--head goes with --file (a stored chain has its own head)")
                async with _engine(read_url(db)) as engine:
                    report = await verify_execution(engine.storage, execution_id)
                eid, versions, last, note = execution_id, report.versions, report.head_hash, ""
    except (IntegrityError, CorruptStorageError, _replay_error()) as e:
        if as_json:
            print(_dump({"ok": False, "execution_id": what, "error": str(e)}))
        else:
            print(f"itonami: {what} does NOT verify: {e}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        out = {"ok": True, "execution_id": eid, "versions": versions, "head": last.hex()}
        print(_dump({**out, "error": None, "note": note or None}))
    else:
        print(f"ok: {eid}: {versions} versions, head {last.hex()}{note}")
    return EXIT_OK


def _replay_error() -> type[Exception]:
    from .testing import ReplayError

    return ReplayError


async def _verify_file(file: str, head: bytes | None) -> tuple[str, int, bytes, str]:
    """Verify an export offline: its chain, its head, and a replay of its
    definition against the recorded history."""
    from .testing import ReplayError, read_history_file, replay, verify_history

    path = Path(file)
    if not path.is_file():
        raise NotFoundError(f"no such file: {file}")
    hf = read_history_file(path)
    versions = verify_history(hf, head=head)
    assert hf.hashes is not None  # verify_history refuses a file without them
    note = ""
    if hf.definition is None:
        note = " (no definition in the file: chain only, no replay)"
    elif any(e.kind == "child_workflow_started" for e in hf.events()):
        note = " (it starts sub-workflows: chain only, no replay)"
    else:
        try:
            definition = WorkflowIR.from_json(hf.definition)
        except ItonamiError as e:
            raise ReplayError(f"{file}: its definition does not load: {e}") from None
        await replay(hf, definition)
        note = ", replays"
    return hf.execution_id, versions, hf.hashes[-32:], note


def _execution_dict(x: Any) -> dict[str, Any]:
    return {
        "execution_id": x.execution_id,
        "workflow_id": x.workflow_id,
        "workflow_version": x.workflow_version,
        "status": x.status,
        "inputs": x.inputs,
        "outputs": x.outputs,
        "error": x.error,
        "version": x.version,
        "tx": x.tx,
        "created_at": round(x.created_at * 1e6),
        "updated_at": round(x.updated_at * 1e6),
        "parent": x.parent,
    }


async def _state(
    db: str | None, execution_id: str, at_tx: int | None, version: int | None, as_json: bool
) -> int:
    if at_tx is not None and version is not None:
        raise UsageError("give --at-tx or --version, not both")
    async with _engine(read_url(db)) as engine:
        if at_tx is None and version is None:
            found = await engine.get_execution(execution_id)
        else:
            versions = await engine.get_execution_history(execution_id)
            if version is not None:
                if not 1 <= version <= len(versions):
                    raise UsageError(
                        f"execution {execution_id} has versions 1..{len(versions)}, not {version}"
                    )
                at_tx = versions[version - 1].tx
            assert at_tx is not None
            if not versions or at_tx < versions[0].tx:
                first = versions[0].tx if versions else "-"
                raise UsageError(
                    f"execution {execution_id} did not exist at tx {at_tx} "
                    f"(its first tx is {first})"
                )
            found = await engine.get_execution_at_tx(execution_id, at_tx)
    state = _execution_dict(found)
    if as_json:
        print(_dump(state))
        return EXIT_OK
    print(f"execution: {state['execution_id']}")
    print(f"workflow:  {state['workflow_id']} {state['workflow_version']}")
    print(f"status:    {state['status']}")
    print(f"version:   {state['version']}  (tx {state['tx']}, {_when(state['updated_at'])})")
    for key in ("inputs", "outputs", "error"):
        if state[key] is not None:
            print(f"{key}:")
            print(_dump(state[key]))
    return EXIT_OK


def _statuses(given: list[str] | None) -> list[str] | None:
    if not given:
        return None
    out = [s.strip() for item in given for s in item.split(",") if s.strip()]
    bad = [s for s in out if s not in STATUSES]
    if bad:
        raise UsageError(
            f"unknown status {', '.join(map(repr, bad))}; the statuses are {', '.join(STATUSES)}"
        )
    return out


async def _list(
    db: str | None,
    status: list[str] | None,
    workflow: str | None,
    workflow_version: str | None,
    since: str | None,
    until: str | None,
    id_contains: str | None,
    limit: int,
    offset: int | None,
    page: int | None,
    oldest_first: bool,
    as_json: bool,
) -> int:
    if limit < 0 or (offset is not None and offset < 0) or (page is not None and page < 1):
        raise UsageError("--limit and --offset must be >= 0, --page >= 1")
    if offset is not None and page is not None:
        raise UsageError("give --offset or --page, not both")
    start = offset if offset is not None else ((page or 1) - 1) * limit
    filters: dict[str, Any] = {
        "status": _statuses(status),
        "workflow_id": workflow,
        "workflow_version": workflow_version,
        "created_after": parse_moment(since, "--since") if since else None,
        "created_before": parse_moment(until, "--until") if until else None,
        "id_contains": id_contains,
    }
    async with open_storage(read_url(db)) as storage:
        records = await storage.list_executions(
            **filters, newest_first=not oldest_first, limit=limit, offset=start
        )
        counts = await storage.count_executions(**filters)
    total = sum(counts.values())
    if as_json:
        page_doc = {
            "executions": [_record(r) for r in records],
            "total": total,
            "counts": counts,
            "limit": limit,
            "offset": start,
        }
        print(_dump(page_doc))
        return EXIT_OK
    for r in records:
        print(
            f"{r.execution_id}  {r.status:<11}  {r.workflow_id} {r.workflow_version}"
            f"  {_when(r.created_at)}"
        )
    shown = f"{start + 1}-{start + len(records)}" if records else "none"
    by_status = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"-- {total} execution{'s' if total != 1 else ''}" + (f" ({by_status})" if total else "")
          + f"; showing {shown}", file=sys.stderr)  # fmt: skip
    return EXIT_OK


def _record(r: ExecutionRecord) -> dict[str, Any]:
    return {
        "execution_id": r.execution_id,
        "workflow_id": r.workflow_id,
        "workflow_version": r.workflow_version,
        "status": r.status,
        "parent_id": r.parent_id,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "version": r.version,
    }


async def _validate(
    file: str,
    activities: list[str] | None,
    workflow: list[str] | None,
    ext_var: list[str] | None,
    tla: list[str] | None,
) -> int:
    registry = _registry(activities) if activities else None
    ext_vars = dict(_pairs(ext_var, "--ext-var"))
    ir = load_definition(file, ext_vars=ext_vars, tla=dict(_pairs(tla, "--tla")))
    children = [load_definition(f, ext_vars=ext_vars) for f in workflow or ()]
    known = {(c.id, c.version) for c in children}
    problems = ir.check(
        activities=registry,
        workflows=(
            (lambda wid, ver: any(i == wid and ver in (None, v) for i, v in known))
            if workflow
            else None
        ),
    )
    if problems:
        print(f"itonami: {file}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return EXIT_USAGE
    print(f"ok: {ir.id} {ir.version} ({sum(1 for _ in ir.nodes())} steps, hash {ir.content_hash})")
    return EXIT_OK


async def _prune(
    db: str | None, finished_before: str, workflow: str | None, dry_run: bool, as_json: bool
) -> int:
    cutoff = parse_moment(finished_before, "--finished-before")
    url = read_url(db)
    if dry_run:
        doomed = await _prunable(url, cutoff, workflow)
    else:
        async with _engine(url) as engine:
            doomed = await engine.prune(finished_before=cutoff / 1e6, workflow_id=workflow)
    if as_json:
        print(_dump({"dry_run": dry_run, "deleted": [] if dry_run else doomed,
                     "would_delete": doomed if dry_run else []}))  # fmt: skip
        return EXIT_OK
    for eid in doomed:
        print(eid)
    verb = "would delete" if dry_run else "deleted"
    note = " (and their sub-workflows)" if dry_run else ""
    print(f"-- {verb} {len(doomed)} execution(s){note}", file=sys.stderr)
    return EXIT_OK


async def _worker(
    db: str | None,
    activities: list[str] | None,
    workflow: list[str] | None,
    capacity: int,
    node_id: str | None,
    lease: float | None,
    balancer: str,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> int:
    from .worker import BALANCERS, run_worker

    if balancer not in BALANCERS:
        raise UsageError(f"--balancer must be one of {', '.join(BALANCERS)}, not {balancer!r}")
    if metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
        raise UsageError("--metrics-port needs the metrics extra (pip install 'itonami[metrics]')")
    await run_worker(
        storage_url(db),
        _registry(activities),
        workflows=[load_definition(f) for f in workflow or ()],
        node_id=node_id,
        capacity=capacity,
        lease_seconds=lease,
        balancer=balancer,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    return EXIT_OK


async def _prunable(url: str, cutoff: int, workflow: str | None) -> list[str]:
    """The top-level executions ``prune`` would take (a read: nothing changes)."""
    out: list[str] = []
    async with open_storage(url) as storage:
        offset = 0
        while True:
            page = await storage.list_executions(
                status=sorted(_TERMINAL), workflow_id=workflow, limit=1000, offset=offset
            )
            for r in page:
                if r.updated_at < cutoff and r.parent_id is None:
                    out.append(r.execution_id)
            if len(page) < 1000:
                return out
            offset += len(page)


async def _export(db: str | None, execution_id: str, output: str) -> int:
    from .testing import export_execution

    async with _engine(read_url(db)) as engine:
        path = await export_execution(engine, execution_id, output)
    print(f"exported {execution_id} to {path}")
    return EXIT_OK


# ------------------------------------------------------------------ the typer app

_Activities = Annotated[
    list[str] | None,
    typer.Option(
        "--activities",
        metavar="MODULE[:ATTR]",
        help="module or file.py holding an ActivityRegistry (`registry`); repeatable",
    ),
]
_Workflows = Annotated[
    list[str] | None,
    typer.Option(
        "--workflow", metavar="FILE", help="a definition sub-workflows may call; repeatable"
    ),
]
_Signals = Annotated[
    list[str] | None,
    typer.Option(
        "--signal", metavar="NAME[=JSON]", help="deliver this signal; repeatable, in order"
    ),
]
_Events = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        metavar="TYPE[=JSON]",
        help="send this external event once the execution waits for it; repeatable",
    ),
]
_Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="S",
        help="stop waiting after S seconds (the execution stays resumable; exit 3)",
    ),
]
_Json = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
_ExtVars = Annotated[
    list[str] | None, typer.Option("--ext-var", metavar="K=V", help="Jsonnet external variable")
]
_Tlas = Annotated[
    list[str] | None,
    typer.Option("--tla", metavar="K=V", help="Jsonnet top-level argument (string)"),
]
_ProgressFlag = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="show progress on stderr (default: when stderr is a terminal)",
    ),
]
_Id = Annotated[str, typer.Argument(metavar="EXECUTION_ID", help="the execution's id")]

_GLOBAL = ("--db", "--storage")


def _db(ctx: typer.Context) -> str | None:
    db: str | None = (ctx.obj or {}).get("db")
    return db


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"itonami {__version__}")
        raise typer.Exit(EXIT_OK)


def build_app() -> typer.Typer:
    """The ``itonami`` typer application (add commands with ``@app.command()``)."""
    app = typer.Typer(
        name="itonami",
        help="Run durable, event-sourced workflows and inspect their executions.\n\n" + _EXIT_CODES,
        epilog="Global options (--db, --storage) may also follow the command. " + _EXIT_CODES,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _globals(
        ctx: typer.Context,
        db: Annotated[
            str | None,
            typer.Option(
                "--db",
                "--storage",
                metavar="URL|PATH",
                help="storage URL (sqlite:///f.db, postgresql://…, memory) or a SQLite file "
                "path (default: $ITONAMI_DB, else the per-user data file)",
            ),
        ] = None,
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=_version, is_eager=True, help="print the version and exit"
            ),
        ] = False,
    ) -> None:
        ctx.obj = {"db": db}

    @app.command()
    def run(
        ctx: typer.Context,
        file: Annotated[
            str, typer.Argument(metavar="FILE", help="a .kotoba (Jsonnet) or .json definition")
        ],
        input: Annotated[
            str | None,
            typer.Option("--input", metavar="JSON", help="inputs as a JSON object (or @file.json)"),
        ] = None,
        activities: _Activities = None,
        workflow: _Workflows = None,
        ext_var: _ExtVars = None,
        tla: _Tlas = None,
        execution_id: Annotated[
            str | None,
            typer.Option("--execution-id", metavar="ID", help="idempotency key for the execution"),
        ] = None,
        signal: _Signals = None,
        event: _Events = None,
        timeout: _Timeout = None,
        json: _Json = False,
        progress: _ProgressFlag = None,
    ) -> None:
        """Run a workflow to its end and print its result."""
        _go(
            _run(
                _db(ctx), file, input, activities, workflow, ext_var, tla, execution_id,
                signal, event, timeout, json, _progress_wanted(progress) and not json,
            ),
            on_interrupt=_RESUMABLE,
        )  # fmt: skip

    @app.command()
    def resume(
        ctx: typer.Context,
        execution_id: _Id,
        activities: _Activities = None,
        workflow: _Workflows = None,
        signal: _Signals = None,
        event: _Events = None,
        timeout: _Timeout = None,
        json: _Json = False,
    ) -> None:
        """Continue an unfinished execution to its end."""
        _go(
            _later(lambda: _resume(_db(ctx), "resume", execution_id, activities, workflow,
                                   _messages(signal, "--signal"), _messages(event, "--event"),
                                   timeout, json)),
            on_interrupt=_RESUMABLE,
        )  # fmt: skip

    def message_command(kind: str, arg: str, text: str) -> None:
        def command(
            ctx: typer.Context,
            execution_id: _Id,
            name: Annotated[str, typer.Argument(metavar=arg.upper(), help=f"the {kind} {arg}")],
            payload: Annotated[
                str | None, typer.Argument(metavar="[JSON]", help="JSON payload (or @file.json)")
            ] = None,
            activities: _Activities = None,
            workflow: _Workflows = None,
            no_wait: Annotated[
                bool, typer.Option("--no-wait", help="record it and stop (resume later)")
            ] = False,
            timeout: _Timeout = None,
            json: _Json = False,
        ) -> None:
            def make() -> Coroutine[Any, Any, int]:
                message = [(name, _json(payload, f"{kind} payload") if payload else None)]
                signals, events = (message, []) if kind == "signal" else ([], message)
                return _resume(_db(ctx), kind, execution_id, activities, workflow, signals,
                               events, timeout, json, no_wait)  # fmt: skip

            _go(_later(make), on_interrupt=_RESUMABLE)

        command.__doc__ = text
        app.command(name=kind)(command)

    message_command(
        "signal",
        "name",
        "Deliver a signal to an execution (and run it on with --activities).\n\n"
        "Without --activities the signal is committed to the store for whoever runs it.",
    )
    message_command(
        "event",
        "type",
        "Send an external event to an execution (and run it on with --activities).\n\n"
        "Without --activities it goes to the executions the store says wait for it.",
    )

    @app.command()
    def cancel(
        ctx: typer.Context,
        execution_id: _Id,
        reason: Annotated[
            str, typer.Option("--reason", help="recorded in the cancellation")
        ] = "cancelled from the command line",
        activities: _Activities = None,
        json: _Json = False,
    ) -> None:
        """Cancel an unfinished execution (and its sub-workflows), wherever it runs.

        When another process runs it, the cancel goes through the store and this
        waits until that process records the end. Compensations of a saga run
        here when it is not held elsewhere: pass --activities for them.
        """
        _go(_cancel(_db(ctx), execution_id, reason, activities, json))

    @app.command()
    def status(ctx: typer.Context, execution_id: _Id, json: _Json = False) -> None:
        """Print an execution's status, outputs and steps (by name, with their end state)."""
        _go(_status(_db(ctx), execution_id, json))

    @app.command()
    def state(
        ctx: typer.Context,
        execution_id: _Id,
        at_tx: Annotated[
            int | None, typer.Option("--at-tx", metavar="TX", help="as of this transaction")
        ] = None,
        version: Annotated[
            int | None, typer.Option("--version", metavar="N", help="as of this version")
        ] = None,
        json: _Json = False,
    ) -> None:
        """Print an execution as it is now, or as it was at a transaction or version."""
        _go(_state(_db(ctx), execution_id, at_tx, version, json))

    @app.command()
    def history(
        ctx: typer.Context,
        execution_id: _Id,
        json: _Json = False,
        follow: Annotated[
            bool,
            typer.Option(
                "--follow", "-f", help="print new events as they are committed, until it ends"
            ),
        ] = False,
        interval: Annotated[
            float, typer.Option("--interval", metavar="S", help="longest pause between polls")
        ] = 1.0,
    ) -> None:
        """Print an execution's events, one per line."""
        # Ctrl-C is how a --follow stops: exit 130, nothing to say.
        _go(_history(_db(ctx), execution_id, json, follow, interval), on_interrupt=None)

    @app.command()
    def verify(
        ctx: typer.Context,
        execution_id: Annotated[
            str | None, typer.Argument(metavar="[EXECUTION_ID]", help="a stored execution")
        ] = None,
        file: Annotated[
            str | None,
            typer.Option("--file", metavar="FILE", help="an export (`itonami export`), offline"),
        ] = None,
        head: Annotated[
            str | None,
            typer.Option("--head", metavar="HEX", help="with --file: the head hash it must end at"),
        ] = None,
        json: _Json = False,
        progress: _ProgressFlag = None,
    ) -> None:
        """Recompute an execution's Merkle chain (exit 1 when it is damaged).

        With --file, check an export without any store: its chain, its head
        (and --head, a head known from elsewhere), and a replay of its
        definition against the recorded history.
        """
        _go(_verify(_db(ctx), execution_id, file, head, json, _progress_wanted(progress)))

    @app.command(name="list")
    def list_(
        ctx: typer.Context,
        status: Annotated[
            list[str] | None,
            typer.Option(
                "--status", metavar="STATUS", help=f"only these ({', '.join(STATUSES)}); repeatable"
            ),
        ] = None,
        workflow: Annotated[
            str | None, typer.Option("--workflow", metavar="ID", help="only this workflow id")
        ] = None,
        workflow_version: Annotated[
            str | None,
            typer.Option("--workflow-version", metavar="V", help="only this workflow version"),
        ] = None,
        since: Annotated[
            str | None,
            typer.Option(
                "--since", metavar="WHEN", help="created at or after (ISO 8601, or 1h, 2d, P1D ago)"
            ),
        ] = None,
        until: Annotated[
            str | None, typer.Option("--until", metavar="WHEN", help="created before WHEN")
        ] = None,
        id_contains: Annotated[
            str | None, typer.Option("--id", metavar="TEXT", help="ids containing TEXT")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", help="at most this many")] = 100,
        offset: Annotated[int | None, typer.Option("--offset", help="skip this many")] = None,
        page: Annotated[
            int | None, typer.Option("--page", help="page N (1-based) of --limit each")
        ] = None,
        oldest_first: Annotated[bool, typer.Option("--oldest-first")] = False,
        json: _Json = False,
    ) -> None:
        """List executions, newest first, with the totals by status under the filters."""
        _go(
            _list(_db(ctx), status, workflow, workflow_version, since, until, id_contains,
                  limit, offset, page, oldest_first, json)
        )  # fmt: skip

    @app.command()
    def worker(
        ctx: typer.Context,
        activities: _Activities = None,
        workflow: Annotated[
            list[str] | None,
            typer.Option("--workflow", metavar="FILE", help="a definition to register; repeatable"),
        ] = None,
        capacity: Annotated[
            int, typer.Option("--capacity", min=1, help="most executions run at once")
        ] = 1000,
        node_id: Annotated[
            str | None,
            typer.Option(
                "--node-id", metavar="ID", help="this node's id (default: host-pid-random)"
            ),
        ] = None,
        lease: Annotated[
            float | None, typer.Option("--lease", metavar="S", min=0.01, help="lease length (s)")
        ] = None,
        balancer: Annotated[
            str,
            typer.Option(
                "--balancer",
                help="where executions this node submits go: least-loaded or round-robin",
            ),
        ] = "least-loaded",
        metrics_port: Annotated[
            int | None,
            typer.Option(
                "--metrics-port",
                min=0,
                max=65535,
                metavar="PORT",
                help="serve this node's Prometheus metrics on /metrics (needs itonami[metrics])",
            ),
        ] = None,
        metrics_host: Annotated[
            str, typer.Option("--metrics-host", help="address the metrics server binds")
        ] = "127.0.0.1",
    ) -> None:
        """Run a worker node: claim and run the store's work until SIGTERM / Ctrl-C.

        It registers in the store's nodes table, heartbeats, claims ready
        executions it has the activities for up to --capacity, takes over
        those of dead nodes once their leases expire, and on stop releases
        what it holds for the other nodes.
        """
        _go(_worker(_db(ctx), activities, workflow, capacity, node_id, lease, balancer,
                    metrics_port, metrics_host),
            on_interrupt=None)  # fmt: skip

    @app.command()
    def validate(
        file: Annotated[
            str, typer.Argument(metavar="FILE", help="a .kotoba (Jsonnet) or .json definition")
        ],
        activities: _Activities = None,
        workflow: _Workflows = None,
        ext_var: _ExtVars = None,
        tla: _Tlas = None,
    ) -> None:
        """Check a definition without running it."""
        _go(_validate(file, activities, workflow, ext_var, tla))

    @app.command()
    def prune(
        ctx: typer.Context,
        finished_before: Annotated[
            str,
            typer.Option(
                "--finished-before",
                metavar="WHEN",
                help="finished longer ago than this (30d, P7D, 12h) or before an ISO 8601 time",
            ),
        ],
        workflow: Annotated[
            str | None, typer.Option("--workflow", metavar="ID", help="only this workflow id")
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="list what would be deleted; delete nothing")
        ] = False,
        json: _Json = False,
    ) -> None:
        """Delete finished executions (with their sub-workflows) and all their history.

        Unfinished executions are never touched. A pruned execution can no
        longer be verified from the store: export it first to keep a proof.
        """
        _go(_prune(_db(ctx), finished_before, workflow, dry_run, json))

    @app.command()
    def serve(
        ctx: typer.Context,
        host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8080,
        token: Annotated[
            str | None,
            typer.Option(
                "--token",
                envvar="ITONAMI_UI_TOKEN",
                show_envvar=True,
                help="enables signal and cancel for requests that present it "
                "(without one the UI is read-only)",
            ),
        ] = None,
        metrics: Annotated[
            bool | None,
            typer.Option(
                "--metrics/--no-metrics",
                help="serve /metrics for Prometheus (default: when the metrics extra is installed)",
            ),
        ] = None,
    ) -> None:
        """Run the web UI on the store (needs the ui extra: itonami[ui])."""
        _serve(_db(ctx), host, port, token, metrics)

    @app.command()
    def export(
        ctx: typer.Context,
        execution_id: _Id,
        output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="write here")],
    ) -> None:
        """Write an execution's definition, full history and Merkle head to one JSON file."""
        _go(_export(_db(ctx), execution_id, output))

    return app


def _hoist(argv: list[str]) -> list[str]:
    """Move global options that follow the command to the front (``--`` ends them)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if name in _GLOBAL:
            if "=" in arg:
                front.append(arg)
            else:
                front.extend(argv[i : i + 2])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def _serve(db: str | None, host: str, port: int, token: str | None, metrics: bool | None) -> None:
    try:
        from itonami.ui import serve
    except ImportError as e:
        print(
            f"itonami: the web UI needs the ui extra (pip install 'itonami[ui]'): {e}",
            file=sys.stderr,
        )
        raise typer.Exit(EXIT_USAGE) from None
    try:
        serve(storage_url(db), host=host, port=port, token=token, metrics=metrics)
    except ImportError as e:  # --metrics without the metrics extra
        print(f"itonami: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``itonami`` command; returns the exit code."""
    args = _hoist(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(build_app())
    try:
        # Standalone: typer reports usage errors itself (exit 2); each command
        # ends with typer.Exit(code), which arrives here as SystemExit.
        command.main(args=args, prog_name="itonami", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    return EXIT_OK


async def _later(make: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Await ``make()``: what it raises while building the call is handled too."""
    return await make()


_RESUMABLE = "interrupted (the execution resumes with `itonami resume`)"


def _go(coro: Coroutine[Any, Any, int], *, on_interrupt: str | None = "interrupted") -> None:
    """Run a command's coroutine and exit with its code; errors become one line."""
    code = EXIT_USAGE
    try:
        code = asyncio.run(coro)
    except BrokenPipeError:
        # The reader went away (`itonami history ID | head`): stop quietly,
        # and keep Python from complaining while it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    except (NotFoundError, ExecutionNotFoundError) as e:
        print(f"itonami: {_message(e)}", file=sys.stderr)
        code = EXIT_FAILED
    except (UsageError, ItonamiError) as e:
        print(f"itonami: {e}", file=sys.stderr)
    except (ValueError, OSError) as e:  # e.g. an unsupported storage URL
        print(f"itonami: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        if on_interrupt:
            print(f"itonami: {on_interrupt}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    raise typer.Exit(code)


def _message(e: Exception) -> str:
    # KeyError subclasses repr() their message; show it as written.
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


if __name__ == "__main__":
    sys.exit(main())

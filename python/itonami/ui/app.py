"""The Starlette application of the web UI: pages, their ``/api`` twins, live streams.

Reading goes through :class:`~itonami.ui.reader.StoreReader`; the two
actions (signal, cancel) go through a :class:`~itonami.WorkflowEngine` built
with no activities and recovery off, so the engine's delivery rules hold
(an execution another process owns gets the message through the store's
inbox). Actions need the operator's token; without one configured the
server is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from itonami.engine import WorkflowEngine
from itonami.errors import ExecutionNotFoundError, ItonamiError
from itonami.storage import Storage, open_storage
from itonami.ui.graph import graph_nodes, render_svg
from itonami.ui.reader import STATUSES, ExecutionQuery, NotFound, StoreReader, dumps

__all__ = ["TOKEN_ENV", "create_app"]

#: The environment variable ``itonami serve`` reads the action token from.
TOKEN_ENV = "ITONAMI_UI_TOKEN"

_HERE = Path(__file__).parent
PAGE_SIZE = 50
EVENTS_PAGE = 100
MAX_PAYLOAD = 1024 * 1024
_SIGNAL_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


class _Config:
    def __init__(
        self,
        storage: Storage,
        *,
        owned: bool,
        token: str | None,
        read_only: bool,
        poll_interval: float,
        action_timeout: float,
    ) -> None:
        self.storage = storage
        self.owned = owned
        self.token = token
        self.read_only = read_only
        self.poll_interval = poll_interval
        self.action_timeout = action_timeout
        self.reader = StoreReader(storage)
        self.engine: WorkflowEngine | None = None
        self.engine_lock = asyncio.Lock()
        self.closing = asyncio.Event()
        self.opened = False

    @property
    def actions_enabled(self) -> bool:
        return not self.read_only and self.token is not None

    async def get_engine(self) -> WorkflowEngine:
        async with self.engine_lock:
            if self.engine is None:
                engine = (
                    WorkflowEngine.builder().with_storage(self.storage).with_recovery(False).build()
                )
                await engine.start()
                self.engine = engine
            return self.engine

    async def ensure_open(self) -> None:
        if not self.opened:
            async with self.engine_lock:
                if not self.opened:
                    await self.storage.open()
                    self.opened = True

    async def close(self) -> None:
        self.closing.set()
        if self.engine is not None:
            await self.engine.close()  # closes the store too
            if not self.owned:
                await self.storage.open()  # the caller's store stays open for the caller
        elif self.owned:
            await self.storage.close()


def _cfg(request: Request) -> _Config:
    cfg: _Config = request.app.state.itonami
    return cfg


# ---------------------------------------------------------------- formatting


def _when(micros: Any) -> str:
    if not isinstance(micros, (int, float)) or micros <= 0:
        return "—"
    return datetime.fromtimestamp(micros / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _root(request: Request) -> str:
    """Where the app is mounted (``root_path``): every link starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _eid_url(prefix: str, execution_id: str, **query: Any) -> str:
    url = f"{prefix}/{quote(execution_id, safe='')}"
    params = {k: v for k, v in query.items() if v is not None and v != ""}
    return url + ("?" + urlencode(params) if params else "")


templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
        autoescape=True,  # every template, whatever its name
    )
)
templates.env.filters["when"] = _when
templates.env.filters["duration"] = _duration
templates.env.filters["pretty"] = dumps


@jinja2.pass_context
def _eid_url_in(ctx: Any, prefix: str, execution_id: str, **query: Any) -> str:
    return str(ctx.get("root", "")) + _eid_url(prefix, execution_id, **query)


templates.env.globals["eid_url"] = _eid_url_in
templates.env.globals["STATUSES"] = STATUSES
templates.env.globals["quote"] = lambda s: quote(str(s), safe="")


def _page(request: Request, name: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    cfg = _cfg(request)
    context.setdefault("actions_enabled", cfg.actions_enabled)
    context.setdefault("read_only", cfg.read_only)
    context.setdefault("root", _root(request))
    response: HTMLResponse = templates.TemplateResponse(
        request, name, context, status_code=status_code
    )
    return response


def _json(data: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status_code=status_code,
        media_type="application/json",
    )


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


# ---------------------------------------------------------------- parameters


def _int(request: Request, name: str, default: int | None, *, low: int = 0) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {raw!r}") from None
    if value < low:
        raise HTTPException(400, f"{name} must be >= {low}")
    return value


def _text(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    return raw.strip() or None if raw is not None else None


def _time(request: Request, name: str) -> int | None:
    """A time filter: µs since the epoch, or an ISO 8601 date/time (UTC if no zone)."""
    raw = _text(request, name)
    if raw is None:
        return None
    if raw.isdigit():
        return int(raw)
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an ISO 8601 time or µs, got {raw!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1_000_000)


def _filter(request: Request) -> ExecutionQuery:
    status = _text(request, "status")
    if status is not None and status not in STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    return ExecutionQuery(
        status=status,
        workflow_id=_text(request, "workflow_id"),
        workflow_version=_text(request, "workflow_version"),
        created_after=_time(request, "created_after"),
        created_before=_time(request, "created_before"),
        id_contains=_text(request, "q"),
    )


def _eid(request: Request) -> str:
    return str(request.path_params["execution_id"])


# ---------------------------------------------------------------- executions


async def _executions_data(request: Request) -> dict[str, Any]:
    flt = _filter(request)
    limit = _int(request, "limit", PAGE_SIZE, low=1) or PAGE_SIZE
    offset = _int(request, "offset", 0) or 0
    return await _cfg(request).reader.list_executions(flt, limit=min(limit, 1000), offset=offset)


def _list_links(request: Request, data: dict[str, Any]) -> dict[str, str | None]:
    params = {k: v for k, v in request.query_params.items() if k not in ("offset", "fragment")}
    off, lim = data["offset"], data["limit"]

    def at(offset: int) -> str:
        q = dict(params, offset=str(offset)) if offset else params
        return _root(request) + "/executions" + ("?" + urlencode(q) if q else "")

    return {
        "newer": at(max(off - lim, 0)) if off > 0 else None,
        "older": at(off + lim) if data["has_more"] else None,
        "self": at(off),
    }


async def executions_page(request: Request) -> Response:
    data = await _executions_data(request)
    context: dict[str, Any] = {
        "data": data,
        "links": _list_links(request, data),
        "query": dict(request.query_params),
    }
    if request.query_params.get("fragment") == "table":
        return _page(request, "_executions_table.html", **context)
    return _page(request, "executions.html", **context)


async def api_executions(request: Request) -> Response:
    return _json(await _executions_data(request))


async def _graph(
    request: Request, execution_id: str, version: int | None
) -> tuple[str | None, list[dict[str, Any]]]:
    ir, state = await _cfg(request).reader.graph_input(execution_id, version)
    if ir is None:
        return None, []
    steps = state.get("steps") or {}
    root = _root(request)

    def link(path: str, step: Any) -> str | None:
        child = step.get("child_execution_id") if step else None
        if child:
            return root + _eid_url("/executions", str(child))
        return root + _eid_url("/executions", execution_id, step=path) + "#timeline"

    comps = state.get("compensations") or {}
    svg = render_svg(ir.strategy, steps, link=link, compensations=comps)
    return svg, graph_nodes(ir.strategy, steps, comps)


async def _timeline(request: Request, execution_id: str) -> dict[str, Any]:
    return await _cfg(request).reader.events(
        execution_id,
        kind=_text(request, "kind"),
        step=_text(request, "step"),
        offset=_int(request, "offset", 0) or 0,
        limit=min(_int(request, "limit", EVENTS_PAGE, low=1) or EVENTS_PAGE, 1000),
    )


def _timeline_links(request: Request, execution_id: str, data: dict[str, Any]) -> dict[str, Any]:
    base = {k: data["filter"].get(k) for k in ("kind", "step")}
    off, lim, total = data["offset"], data["limit"], data["total"]

    def at(offset: int) -> str:
        url = _eid_url("/executions", execution_id, **base, offset=offset or None)
        return _root(request) + url + "#timeline"

    return {
        "prev": at(max(off - lim, 0)) if off > 0 else None,
        "next": at(off + lim) if off + lim < total else None,
        "first": at(0),
        "last": at(max((total - 1) // lim * lim, 0)),
    }


async def execution_page(request: Request) -> Response:
    eid = _eid(request)
    reader = _cfg(request).reader
    summary = await reader.execution(eid)
    svg, _ = await _graph(request, eid, None)
    timeline = await _timeline(request, eid)
    return _page(
        request,
        "execution.html",
        e=summary,
        svg=svg,
        timeline=timeline,
        tlinks=_timeline_links(request, eid, timeline),
    )


async def summary_fragment(request: Request) -> Response:
    summary = await _cfg(request).reader.execution(_eid(request))
    return _page(request, "_summary.html", e=summary)


async def graph_fragment(request: Request) -> Response:
    svg, _ = await _graph(request, _eid(request), _int(request, "version", None, low=1))
    return _page(request, "_graph.html", svg=svg)


async def timeline_fragment(request: Request) -> Response:
    eid = _eid(request)
    timeline = await _timeline(request, eid)
    summary = await _cfg(request).reader.execution(eid)
    return _page(
        request,
        "_timeline.html",
        e=summary,
        timeline=timeline,
        tlinks=_timeline_links(request, eid, timeline),
    )


async def state_fragment(request: Request) -> Response:
    eid = _eid(request)
    data = await _cfg(request).reader.state(eid, _int(request, "version", None, low=1))
    svg, _ = await _graph(request, eid, data["version"])
    return _page(request, "_state.html", s=data, svg=svg)


async def verify_fragment(request: Request) -> Response:
    report = await _cfg(request).reader.verify(_eid(request))
    return _page(request, "_verify.html", v=report)


async def api_execution(request: Request) -> Response:
    return _json(await _cfg(request).reader.execution(_eid(request)))


async def api_events(request: Request) -> Response:
    return _json(await _timeline(request, _eid(request)))


async def api_versions(request: Request) -> Response:
    eid = _eid(request)
    return _json({"execution_id": eid, "items": await _cfg(request).reader.versions(eid)})


async def api_state(request: Request) -> Response:
    reader = _cfg(request).reader
    eid = _eid(request)
    tx = _int(request, "tx", None, low=1)
    if tx is not None:
        return _json(await reader.state_at_tx(eid, tx))
    return _json(await reader.state(eid, _int(request, "version", None, low=1)))


async def api_graph(request: Request) -> Response:
    eid = _eid(request)
    svg, nodes = await _graph(request, eid, _int(request, "version", None, low=1))
    if request.query_params.get("format") == "svg":
        if svg is None:
            raise NotFound(f"the definition of execution {eid!r} is not stored")
        return Response(svg, media_type="image/svg+xml")
    return _json({"execution_id": eid, "definition_stored": svg is not None, "nodes": nodes})


async def api_verify(request: Request) -> Response:
    return _json(await _cfg(request).reader.verify(_eid(request)))


async def api_proof(request: Request) -> Response:
    eid = _eid(request)
    version = _int(request, "version", None, low=1)
    if version is None:
        raise HTTPException(400, "version is required")
    proof, head = await _cfg(request).reader.proof(eid, version)
    if request.query_params.get("format") == "json":
        return _json(
            {
                "execution_id": eid,
                "version": proof.version,
                "head_version": proof.head_version,
                "head_hash": head.hex(),
                "event": {"kind": proof.event.kind, "step": proof.event.step},
                "proof": proof.to_bytes().hex(),
            }
        )
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", eid)[:80]
    return Response(
        proof.to_bytes(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{safe}-v{version}.itnproof"',
            "X-Itonami-Head-Hash": head.hex(),
        },
    )


# ---------------------------------------------------------------- actions


def _supplied_token(request: Request, form: dict[str, Any] | None) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    header = request.headers.get("x-itonami-token")
    if header:
        return header.strip()
    if form is not None:
        value = form.get("token")
        if isinstance(value, str) and value:
            return value.strip()
    return None


def _authorize(request: Request, form: dict[str, Any] | None) -> None:
    cfg = _cfg(request)
    if cfg.read_only or cfg.token is None:
        raise HTTPException(
            403,
            "actions are disabled: this server is read-only "
            "(start it with a token, e.g. itonami serve --token …, to allow signal and cancel)",
        )
    supplied = _supplied_token(request, form)
    if supplied is None or not hmac.compare_digest(supplied.encode(), cfg.token.encode()):
        raise HTTPException(
            403,
            "a valid token is needed for this action "
            "(send it as 'Authorization: Bearer <token>', an X-Itonami-Token header "
            "or the form's token field)",
        )


async def _body(request: Request) -> tuple[dict[str, Any], bool]:
    """The request's fields and whether it came as a form."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_PAYLOAD + 4096:
        raise HTTPException(413, f"the request is larger than {MAX_PAYLOAD} bytes")
    raw = await request.body()
    if len(raw) > MAX_PAYLOAD + 4096:
        raise HTTPException(413, f"the request is larger than {MAX_PAYLOAD} bytes")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data, False
    if ctype.startswith("application/x-www-form-urlencoded") or not ctype:
        # Forms come URL-encoded (the pages' script sends them so too).
        try:
            pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise HTTPException(400, "the form is not UTF-8") from None
        return dict(pairs), True
    raise HTTPException(415, "send JSON (application/json) or a URL-encoded form")


def _signal_fields(fields: dict[str, Any], is_form: bool) -> tuple[str, Any]:
    name = fields.get("name")
    if not isinstance(name, str) or not _SIGNAL_NAME.match(name.strip()):
        raise HTTPException(400, "a signal needs a name (1 to 200 printable characters)")
    payload: Any = fields.get("payload")
    if is_form:
        text = (payload or "").strip() if isinstance(payload, str) else ""
        if len(text) > MAX_PAYLOAD:
            raise HTTPException(413, f"the payload is larger than {MAX_PAYLOAD} bytes")
        try:
            payload = orjson.loads(text) if text else None
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"the payload is not valid JSON: {exc}") from None
    return name.strip(), payload


async def _act(
    request: Request, what: Callable[[WorkflowEngine, dict[str, Any], bool], Awaitable[Any]]
) -> Response:
    fields, is_form = await _body(request)
    _authorize(request, fields if is_form else None)
    cfg = _cfg(request)
    eid = _eid(request)
    if await cfg.storage.get_execution(eid) is None:
        raise NotFound(f"no execution {eid!r}")
    engine = await cfg.get_engine()
    try:
        result = await what(engine, fields, is_form)
    except ItonamiError as exc:
        raise HTTPException(409, str(exc)) from None
    if is_form and not _wants_json(request):
        return _page(request, "_action_result.html", ok=True, message=result["message"])
    return _json(result)


async def signal_action(request: Request) -> Response:
    eid = _eid(request)

    async def do(engine: WorkflowEngine, fields: dict[str, Any], is_form: bool) -> Any:
        name, payload = _signal_fields(fields, is_form)
        await engine.signal(eid, name, payload)
        return {"ok": True, "execution_id": eid, "signal": name, "message": f"signal {name!r} sent"}

    return await _act(request, do)


async def cancel_action(request: Request) -> Response:
    eid = _eid(request)
    timeout = _cfg(request).action_timeout

    async def do(engine: WorkflowEngine, fields: dict[str, Any], is_form: bool) -> Any:
        reason = fields.get("reason")
        reason = reason.strip() if isinstance(reason, str) and reason.strip() else "cancelled"
        try:
            ended = await asyncio.wait_for(engine.cancel(eid, reason=reason[:500]), timeout)
        except TimeoutError:
            return {
                "ok": True,
                "execution_id": eid,
                "cancelled": None,
                "message": "cancel requested; the process running it has not recorded it yet",
            }
        message = "cancelled" if ended else "it had already ended"
        return {"ok": True, "execution_id": eid, "cancelled": ended, "message": message}

    return await _act(request, do)


# ---------------------------------------------------------------- workflows, cluster


async def workflows_page(request: Request) -> Response:
    items = await _cfg(request).reader.workflows()
    return _page(request, "workflows.html", items=items)


async def api_workflows(request: Request) -> Response:
    return _json({"items": await _cfg(request).reader.workflows()})


async def _workflow(request: Request) -> tuple[Any, dict[str, Any]]:
    return await _cfg(request).reader.workflow(
        str(request.path_params["workflow_id"]), str(request.path_params["version"])
    )


async def workflow_page(request: Request) -> Response:
    ir, data = await _workflow(request)
    return _page(
        request,
        "workflow.html",
        w=data,
        svg=render_svg(ir.strategy),
        source=dumps(data["document"]),
    )


async def api_workflow(request: Request) -> Response:
    ir, data = await _workflow(request)
    data["graph"] = graph_nodes(ir.strategy)
    return _json(data)


async def cluster_page(request: Request) -> Response:
    data = await _cfg(request).reader.cluster()
    name = "_cluster.html" if request.query_params.get("fragment") else "cluster.html"
    return _page(request, name, c=data)


async def api_cluster(request: Request) -> Response:
    return _json(await _cfg(request).reader.cluster())


# ---------------------------------------------------------------- live updates


async def api_stream(request: Request) -> Response:
    """Server-sent events: ``change`` when anything is committed (the store's
    max tx moves), or with ``?execution=ID`` an ``execution`` event when that
    execution's version moves. The first event tells the current value;
    ``max_events`` ends the stream after that many (for scripts and tests).
    The server ends a stream after ten minutes: ``EventSource`` reconnects."""
    cfg = _cfg(request)
    eid = _text(request, "execution")
    max_events = _int(request, "max_events", None, low=1)

    async def current() -> tuple[str, dict[str, Any]] | None:
        if eid is None:
            return "change", {"tx": await cfg.reader.change_marker()}
        record = await cfg.storage.get_execution(eid)
        if record is None:
            return None
        return "execution", {"version": record.version, "status": record.status}

    if eid is not None and await current() is None:
        raise NotFound(f"no execution {eid!r}")

    async def stream() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        ends = loop.time() + 600
        sent = 0
        last: Any = None
        yield b"retry: 2000\n\n"
        while not cfg.closing.is_set() and loop.time() < ends:
            got = await current()
            if got is not None and got[1] != last:
                last = got[1]
                sent += 1
                yield f"event: {got[0]}\ndata: ".encode() + orjson.dumps(got[1]) + b"\n\n"
                if max_events is not None and sent >= max_events:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cfg.closing.wait(), cfg.poll_interval)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------- errors and headers


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        code, detail = exc.status_code, str(exc.detail)
    elif isinstance(exc, (NotFound, ExecutionNotFoundError)):
        code, detail = 404, str(exc)
    else:  # pragma: no cover - registered only for the classes above
        code, detail = 500, "internal error"
    if _wants_json(request):
        return JSONResponse({"error": detail, "status": code}, status_code=code)
    if request.method == "POST" or request.url.path.startswith("/fragments/"):
        return _page(request, "_action_result.html", status_code=code, ok=False, message=detail)
    return _page(request, "error.html", status_code=code, code=code, message=detail)


_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _Front:
    """Opens the store on the first request (a mounted app's lifespan may
    never run) and adds the security headers to every response."""

    def __init__(self, app: ASGIApp, cfg: _Config) -> None:
        self.app = app
        self.cfg = cfg

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.cfg.ensure_open()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + _SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text: the store's gauges, read now, and this process's
    registry (the metrics of engines built ``with_metrics()`` here)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    from itonami.metrics import store_metrics

    body = await store_metrics(_cfg(request).storage) + generate_latest(REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _home(request: Request) -> Response:
    return RedirectResponse(_root(request) + "/executions", status_code=307)


def create_app(
    storage: str | Storage,
    *,
    token: str | None = None,
    read_only: bool | None = None,
    poll_interval: float = 0.5,
    action_timeout: float = 10.0,
    metrics: bool = False,
) -> Starlette:
    """The web UI as an ASGI application (mount it in your own app if you like).

    ``storage`` is a store URL (the app opens and closes it) or an opened or
    unopened :class:`~itonami.Storage` (the app opens it and leaves it open).
    ``token`` enables the actions (signal, cancel) for requests that present
    it; ``read_only`` (default: True when no token is given) disables them
    even then. ``poll_interval`` is how often live streams look for changes.
    ``metrics`` serves ``/metrics`` for Prometheus (needs the metrics extra).
    """
    if token is not None and not token:
        raise ValueError("token must be a non-empty string or None")
    if metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"/metrics needs the metrics extra (pip install 'itonami[metrics]'): {e}"
            ) from e
    owned = isinstance(storage, str)
    store = open_storage(storage) if isinstance(storage, str) else storage
    cfg = _Config(
        store,
        owned=owned,
        token=token,
        read_only=token is None if read_only is None else read_only,
        poll_interval=poll_interval,
        action_timeout=action_timeout,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await cfg.ensure_open()
        try:
            yield
        finally:
            await cfg.close()

    eid = "{execution_id:path}"
    routes = [
        Route("/", _home),
        Route("/executions", executions_page),
        Route(f"/executions/{eid}", execution_page),
        Route(f"/fragments/summary/{eid}", summary_fragment),
        Route(f"/fragments/graph/{eid}", graph_fragment),
        Route(f"/fragments/timeline/{eid}", timeline_fragment),
        Route(f"/fragments/state/{eid}", state_fragment),
        Route(f"/fragments/verify/{eid}", verify_fragment),
        Route(f"/actions/signal/{eid}", signal_action, methods=["POST"]),
        Route(f"/actions/cancel/{eid}", cancel_action, methods=["POST"]),
        Route("/workflows", workflows_page),
        Route("/workflows/{workflow_id}/{version}", workflow_page),
        Route("/cluster", cluster_page),
        Route("/api/executions", api_executions),
        Route(f"/api/executions/{eid}", api_execution),
        Route(f"/api/events/{eid}", api_events),
        Route(f"/api/versions/{eid}", api_versions),
        Route(f"/api/state/{eid}", api_state),
        Route(f"/api/graph/{eid}", api_graph),
        Route(f"/api/verify/{eid}", api_verify),
        Route(f"/api/proof/{eid}", api_proof),
        Route(f"/api/signal/{eid}", signal_action, methods=["POST"]),
        Route(f"/api/cancel/{eid}", cancel_action, methods=["POST"]),
        Route("/api/workflows", api_workflows),
        Route("/api/workflows/{workflow_id}/{version}", api_workflow),
        Route("/api/cluster", api_cluster),
        Route("/api/stream", api_stream),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    if metrics:
        routes.append(Route("/metrics", metrics_endpoint))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(_Front, cfg=cfg)],
        exception_handlers={
            HTTPException: _http_error,
            NotFound: _http_error,
            ExecutionNotFoundError: _http_error,
        },
    )
    app.state.itonami = cfg
    return app


def token_from_env() -> str | None:
    """The action token from ``$ITONAMI_UI_TOKEN`` (None when unset or empty)."""
    return os.environ.get(TOKEN_ENV) or None

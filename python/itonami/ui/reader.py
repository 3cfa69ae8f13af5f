"""What the UI shows, read from a store: plain JSON-ready dicts.

Every page and its ``/api`` twin are built from these functions, so the two
never disagree. The reader only reads: an execution is loaded (and its
Merkle chain checked on the way) from its stored events into a scratch
``VersionStore`` of the core, kept in a small cache while its stored version
does not move. Nothing here writes to the store; actions go through an
engine (see :mod:`itonami.ui.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from itonami import _core
from itonami.dsl import WorkflowIR
from itonami.errors import ExecutionNotFoundError, IntegrityError, ItonamiError
from itonami.integrity import load_history, verify_execution
from itonami.storage.base import TERMINAL_STATUSES, ExecutionRecord, Storage

__all__ = [
    "STATUSES",
    "ExecutionQuery",
    "NotFound",
    "StoreReader",
    "diff_states",
]

#: Every workflow status, in the order the UI lists them.
STATUSES: tuple[str, ...] = (
    "running",
    "pending",
    "completed",
    "failed",
    "compensated",
    "cancelled",
    "timed_out",
)


class NotFound(LookupError):
    """What the request names is not in the store (HTTP 404)."""


@dataclass(frozen=True, slots=True)
class ExecutionQuery:
    """The filters of the executions list (times in µs since the epoch)."""

    status: str | None = None
    workflow_id: str | None = None
    workflow_version: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    id_contains: str | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "workflow_id": self.workflow_id,
            "workflow_version": self.workflow_version,
            "created_after": self.created_after,
            "created_before": self.created_before,
            "id_contains": self.id_contains,
        }


def record_dict(r: ExecutionRecord) -> dict[str, Any]:
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


def _event_dict(version: int, info: Any, event: Any, *, payload: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": version,
        "tx": info.tx,
        "timestamp": event.timestamp,
        "kind": event.kind,
        "step": event.step,
        "attempt": event.attempt,
        "hash": info.hash.hex(),
    }
    if payload:
        out["data"] = event.data
    return out


def diff_states(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """What changed from ``before`` to ``after`` (JSON values), leaf by leaf.

    Each change is ``{path, op: added | removed | changed, before?, after?}``;
    object keys are followed (paths like ``steps.0/1.status``), anything else
    is compared whole.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                out.append({"path": sub, "op": "added", "after": after[key]})
            elif key not in after:
                out.append({"path": sub, "op": "removed", "before": before[key]})
            else:
                out.extend(diff_states(before[key], after[key], sub))
        return out
    if before == after:
        return []
    return [{"path": path, "op": "changed", "before": before, "after": after}]


class _Loaded:
    """One execution loaded into a scratch core store, at one stored version."""

    __slots__ = ("events", "history", "store", "version")

    def __init__(self, store: _core.VersionStore, execution_id: str) -> None:
        self.store = store
        self.version = store.version(execution_id)
        self.events: list[Any] = store.events(execution_id)
        self.history: list[Any] = store.history(execution_id)


class StoreReader:
    """Reads executions, definitions and cluster health for the UI."""

    def __init__(self, storage: Storage, *, cache_size: int = 16) -> None:
        self.storage = storage
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[str, asyncio.Lock] = {}
        self._definitions: dict[str, WorkflowIR] = {}

    # ------------------------------------------------------------ executions list

    async def list_executions(
        self, flt: ExecutionQuery, *, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """A page of executions, newest first, with counts by status."""
        kwargs = flt.as_kwargs()
        records = await self.storage.list_executions(
            **kwargs, newest_first=True, limit=limit + 1, offset=offset
        )
        counts = await self.storage.count_executions(**dict(kwargs, status=None))
        more = len(records) > limit
        items = [record_dict(r) for r in records[:limit]]
        by_status = {s: int(counts.get(s, 0)) for s in STATUSES}
        for s, n in counts.items():
            by_status.setdefault(s, int(n))
        total = sum(by_status.values()) if flt.status is None else by_status.get(flt.status, 0)
        return {
            "items": items,
            "offset": offset,
            "limit": limit,
            "has_more": more,
            "total": total,
            "counts": by_status,
            "filter": {k: v for k, v in flt.as_kwargs().items() if v is not None},
        }

    # ------------------------------------------------------------ one execution

    async def _load(self, execution_id: str) -> tuple[ExecutionRecord, _Loaded]:
        record = await self.storage.get_execution(execution_id)
        if record is None:
            raise NotFound(f"no execution {execution_id!r}")
        lock = self._locks.setdefault(execution_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(execution_id)
            if cached is not None and cached.version == record.version:
                self._cache.move_to_end(execution_id)
                return record, cached
            store = _core.VersionStore()
            try:
                await load_history(store, self.storage, execution_id)
            except ExecutionNotFoundError as exc:
                self._locks.pop(execution_id, None)
                raise NotFound(str(exc)) from exc
            loaded = await asyncio.to_thread(_Loaded, store, execution_id)
            self._cache[execution_id] = loaded
            self._cache.move_to_end(execution_id)
            while len(self._cache) > self._cache_size:
                old, _ = self._cache.popitem(last=False)
                self._locks.pop(old, None)
            return record, loaded

    async def execution(self, execution_id: str) -> dict[str, Any]:
        """The summary of one execution (its current state, children, timing)."""
        record, loaded = await self._load(execution_id)
        state = loaded.store.state(execution_id).to_dict()
        return self._summary(record, loaded, state)

    def _summary(
        self, record: ExecutionRecord, loaded: _Loaded, state: dict[str, Any]
    ) -> dict[str, Any]:
        steps = state.get("steps") or {}
        children = [
            {"step": path, "execution_id": s["child_execution_id"], "status": s.get("status")}
            for path, s in steps.items()
            if s.get("child_execution_id")
        ]
        created = state.get("created_at")
        updated = state.get("updated_at")
        finished = state.get("status") in TERMINAL_STATUSES
        head = loaded.history[-1].hash.hex() if loaded.history else None
        return {
            "execution_id": state.get("execution_id"),
            "workflow_id": state.get("workflow_id"),
            "workflow_version": state.get("workflow_version"),
            "definition_hash": state.get("definition_hash"),
            "status": state.get("status"),
            "version": state.get("version"),
            "tx": state.get("tx"),
            "created_at": created,
            "updated_at": updated,
            "finished": finished,
            "duration": (updated - created) / 1e6 if finished and created and updated else None,
            "inputs": state.get("inputs"),
            "outputs": state.get("outputs"),
            "error": state.get("error"),
            "parent": state.get("parent")
            or ({"execution_id": record.parent_id} if record.parent_id else None),
            "children": children,
            "head_hash": head,
            "waits": state.get("waits") or {},
            "timers": state.get("timers") or {},
            "signals": sorted((state.get("signals") or {}).keys()),
        }

    async def state(self, execution_id: str, version: int | None = None) -> dict[str, Any]:
        """The state at ``version`` (default: the newest) and its diff from the one before."""
        _, loaded = await self._load(execution_id)
        last = loaded.version
        if version is None:
            version = last
        if not 1 <= version <= last:
            raise NotFound(f"execution {execution_id!r} has versions 1..{last}, not {version}")
        store = loaded.store
        at = store.state_at_version(execution_id, version)
        now = at.to_dict()
        before = store.state_at_version(execution_id, version - 1).to_dict() if version > 1 else {}
        info = loaded.history[version - 1]
        event = loaded.events[version - 1]
        return {
            "execution_id": execution_id,
            "version": version,
            "versions": last,
            "tx": info.tx,
            "timestamp": info.timestamp,
            "event": _event_dict(version, info, event, payload=True),
            "hash": info.hash.hex(),
            # An unsealed version (hash revision 3) has no stored root; the
            # root of its state is still well defined.
            "state_root": (info.state_root or at.root_hash).hex(),
            "sealed": info.state_root is not None,
            "state": now,
            "diff": diff_states(before, now),
        }

    async def state_at_tx(self, execution_id: str, tx: int) -> dict[str, Any]:
        """The state as of store transaction ``tx`` (the newest version with a tx <= it)."""
        _, loaded = await self._load(execution_id)
        version = 0
        for info in loaded.history:
            if info.tx > tx:
                break
            version = info.version
        if version == 0:
            raise NotFound(f"execution {execution_id!r} did not exist at tx {tx}")
        return await self.state(execution_id, version)

    async def events(
        self,
        execution_id: str,
        *,
        kind: str | None = None,
        step: str | None = None,
        offset: int = 0,
        limit: int = 100,
        payload: bool = True,
    ) -> dict[str, Any]:
        """A page of the event timeline, oldest first, filtered by kind and step.

        ``step`` matches the step and everything under it (``0/1`` matches
        ``0/1/comp``).
        """
        _, loaded = await self._load(execution_id)
        events, history = loaded.events, loaded.history
        if kind is None and step is None:
            indices: Sequence[int] = range(len(events))
        else:
            prefix = None if step is None else step.rstrip("/") + "/"
            indices = [
                i
                for i, e in enumerate(events)
                if (kind is None or e.kind == kind)
                and (step is None or e.step == step or e.step.startswith(prefix or ""))
            ]
        page = indices[offset : offset + limit]
        kinds = sorted({e.kind for e in events})
        return {
            "execution_id": execution_id,
            "total": len(indices),
            "versions": len(events),
            "offset": offset,
            "limit": limit,
            "kinds": kinds,
            "filter": {k: v for k, v in (("kind", kind), ("step", step)) if v is not None},
            "items": [_event_dict(i + 1, history[i], events[i], payload=payload) for i in page],
        }

    async def versions(self, execution_id: str) -> list[dict[str, Any]]:
        """Every version's metadata: version, tx, timestamp, kind, node hash, state root."""
        _, loaded = await self._load(execution_id)
        return [
            {
                "version": v.version,
                "tx": v.tx,
                "timestamp": v.timestamp,
                "kind": v.kind,
                "hash": v.hash.hex(),
                "state_root": v.state_root.hex() if v.state_root is not None else None,
            }
            for v in loaded.history
        ]

    async def verify(self, execution_id: str) -> dict[str, Any]:
        """Recompute the Merkle chain of what is stored (and check its snapshot)."""
        if await self.storage.get_execution(execution_id) is None:
            raise NotFound(f"no execution {execution_id!r}")
        try:
            report = await verify_execution(self.storage, execution_id)
        except IntegrityError as exc:
            return {
                "execution_id": execution_id,
                "ok": False,
                "error": str(exc),
                "version": exc.version,
            }
        return {
            "execution_id": execution_id,
            "ok": True,
            "versions": report.versions,
            "head_hash": report.head_hash.hex(),
        }

    async def proof(self, execution_id: str, version: int) -> tuple[Any, bytes]:
        """The inclusion proof of event ``version`` in the chain up to the current head."""
        _, loaded = await self._load(execution_id)
        if not 1 <= version <= loaded.version:
            raise NotFound(
                f"execution {execution_id!r} has versions 1..{loaded.version}, not {version}"
            )
        proof = loaded.store.inclusion_proof(execution_id, version)
        head = proof.head_hash()
        if not _core.verify_proof(proof, head):  # the core's own check, before we hand it out
            raise IntegrityError(f"execution {execution_id!r}: the proof does not verify")
        return proof, head

    async def graph_input(
        self, execution_id: str, version: int | None = None
    ) -> tuple[WorkflowIR | None, dict[str, Any]]:
        """The execution's definition (None if not stored) and its state at ``version``."""
        _, loaded = await self._load(execution_id)
        store = loaded.store
        if version is None or version >= loaded.version:
            state = store.state(execution_id).to_dict()
        else:
            state = store.state_at_version(execution_id, max(version, 1)).to_dict()
        ir = await self.definition_by_hash(state.get("definition_hash"))
        return ir, state

    # ------------------------------------------------------------ definitions

    async def definition_by_hash(self, content_hash: str | None) -> WorkflowIR | None:
        if not content_hash:
            return None
        ir = self._definitions.get(content_hash)
        if ir is None:
            doc = await self.storage.get_definition_by_hash(content_hash)
            if doc is None:
                return None
            ir = WorkflowIR.from_json(doc)
            self._definitions[content_hash] = ir
        return ir

    async def workflows(self) -> list[dict[str, Any]]:
        """Registered definitions, grouped by workflow id, newest registration last."""
        out = []
        for wid, version, content_hash in await self.storage.list_definitions():
            ir = await self.definition_by_hash(content_hash)
            out.append(
                {
                    "workflow_id": wid,
                    "version": version,
                    "content_hash": content_hash,
                    "name": ir.name if ir else None,
                    "description": ir.description if ir else None,
                }
            )
        return out

    async def workflow(self, workflow_id: str, version: str) -> tuple[WorkflowIR, dict[str, Any]]:
        doc = await self.storage.get_definition(workflow_id, version)
        if doc is None:
            raise NotFound(f"no workflow {workflow_id!r} version {version!r}")
        ir = WorkflowIR.from_json(doc)
        self._definitions.setdefault(ir.content_hash, ir)
        running = await self.list_executions(
            ExecutionQuery(workflow_id=workflow_id, workflow_version=version, status="running"),
            limit=100,
        )
        counts = await self.list_executions(
            ExecutionQuery(workflow_id=workflow_id, workflow_version=version), limit=0
        )
        return ir, {
            "workflow_id": workflow_id,
            "version": version,
            "name": ir.name,
            "description": ir.description,
            "content_hash": ir.content_hash,
            "document": ir.document,
            "inputs": [i.to_dict() for i in ir.inputs],
            "outputs": [o.to_dict() for o in ir.outputs],
            "counts": counts["counts"],
            "running": running["items"],
        }

    # ------------------------------------------------------------ cluster

    async def cluster(self) -> dict[str, Any]:
        stats = await self.storage.cluster_stats()
        return {
            "ready": stats.ready,
            "oldest_ready_age": stats.oldest_ready_age,
            "waiting_for": stats.waiting_for,
            "reassignments": stats.reassignments,
            "fenced_writes": stats.fenced_writes,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "status": n.status,
                    "heartbeat_age": n.heartbeat_age,
                    "capacity": n.capacity,
                    "inflight": n.inflight,
                    "load": (n.inflight / n.capacity) if n.capacity else None,
                    "capabilities": list(n.capabilities),
                    "versions": dict(n.versions),
                }
                for n in stats.nodes
            ],
        }

    async def change_marker(self) -> int:
        """A number that moves whenever anything is committed (the store's max tx)."""
        with contextlib.suppress(ItonamiError):
            return await self.storage.max_tx()
        return -1


def dumps(value: Any) -> str:
    """Pretty JSON for display."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()

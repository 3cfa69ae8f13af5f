"""Steps as people read them: names instead of step paths, and final states.

The core's state keys steps by their *path* (``0/m/2/0/0``: positions in
the strategy tree), which is stable but unreadable. :func:`step_names` turns
paths into names built from the definition: a step's ``id`` (``validate``),
a map iteration as ``payments[2]``, an unnamed activity as its activity
(``route.auto_approve`` inside the decision ``route``); the path is the
fallback for what the definition does not name.

:func:`step_views` adds each step's status as it should read. A decision
records its choice when it makes it and nothing when its branch ends, so
its recorded status stays ``running``; here it takes its branch's status.
A step still shown running when the execution has ended takes the
execution's ending (``cancelled``, ``failed``…).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from itonami.dsl import WorkflowIR
from itonami.dsl.ir import ActivityNode, MapNode, Node

__all__ = ["StepView", "step_names", "step_views"]

_TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out", "compensated"})
_UNFINISHED = frozenset({"pending", "scheduled", "running", "retrying", "waiting"})


@dataclass(frozen=True, slots=True)
class StepView:
    """One step: readable ``name``, its ``path``, the status it ends (or
    stands) in, its activity and attempts (activities only)."""

    name: str
    path: str
    status: str
    activity: str | None
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        """The view as plain JSON values."""
        return {
            "name": self.name,
            "path": self.path,
            "status": self.status,
            "activity": self.activity,
            "attempts": self.attempts,
        }


def _name(ir: WorkflowIR, path: str) -> str | None:
    segments = path.split("/")
    name: str | None = None
    scope: str | None = None  # the enclosing map iteration's name
    parent: Node | None = None
    for i in range(1, len(segments) + 1):
        node = ir.node_at("/".join(segments[:i]))
        segment = segments[i - 1]
        if isinstance(parent, MapNode) and segment.isdigit():
            name = scope = f"{name or parent.op}[{segment}]"
            if node.id is not None:
                name = f"{scope}.{node.id}"
        elif node.id is not None:
            name = f"{scope}.{node.id}" if scope else node.id
        elif isinstance(node, ActivityNode):
            name = f"{name}.{node.activity_ref}" if name else node.activity_ref
        parent = node
    return name


def step_names(ir: WorkflowIR | None, paths: Iterable[str]) -> dict[str, str]:
    """A readable, unique name for each step path (the path where none fits)."""
    paths = list(paths)
    named: dict[str, str] = {}
    for path in paths:
        try:
            named[path] = (_name(ir, path) if ir is not None else None) or path
        except KeyError:  # a path today's definition does not have
            named[path] = path
    seen: dict[str, int] = {}
    for name in named.values():
        seen[name] = seen.get(name, 0) + 1
    return {p: (n if seen[n] == 1 or n == p else f"{n} ({p})") for p, n in named.items()}


def step_views(ir: WorkflowIR | None, state: Mapping[str, Any]) -> list[StepView]:
    """Every recorded step of ``state`` (a ``query()`` dict), in path order."""
    steps: Mapping[str, Mapping[str, Any]] = state.get("steps") or {}
    names = step_names(ir, steps)
    ended = state.get("status") in _TERMINAL
    out = []
    for path in sorted(steps, key=_path_key):
        out.append(
            StepView(
                name=names[path],
                path=path,
                status=_status(path, steps, ended, str(state.get("status"))),
                activity=steps[path].get("activity"),
                attempts=int(steps[path].get("attempts") or 0),
            )
        )
    return out


def _status(path: str, steps: Mapping[str, Mapping[str, Any]], ended: bool, ending: str) -> str:
    step = steps[path]
    status = str(step.get("status") or "pending")
    branch = step.get("branch")
    if status == "running" and branch is not None and step.get("activity") is None:
        chosen = f"{path}/{'d' if branch == 'default' else branch}"
        inner = [p for p in steps if p == chosen or p.startswith(chosen + "/")]
        statuses = [_status(p, steps, ended, ending) for p in inner]
        if statuses and all(s == "completed" for s in statuses):
            status = "completed"
        elif any(s in _TERMINAL - {"completed"} for s in statuses):
            status = next(s for s in statuses if s in _TERMINAL - {"completed"})
        elif not inner and ended:
            status = "completed" if ending == "completed" else ending
    if ended and status in _UNFINISHED:
        return ending
    return status


def _path_key(path: str) -> list[tuple[int, int | str]]:
    return [(0, int(s)) if s.isdigit() else (1, s) for s in path.split("/")]

"""The strategy tree of a workflow as an SVG drawn on the server.

A sequence stacks its steps top to bottom; parallel branches, decision
branches, a map's template and a saga's two flows sit side by side in a
framed box. Each step is coloured by its status in the execution's state
(``st-<status>`` classes, styled by ``static/style.css``): a decision's
branch taken is highlighted and the others are faded, an activity's
compensation hangs off it on a dashed edge, a map's template shows how its
iterations went. Every text is escaped; the drawing needs no script.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from itonami.dsl.ir import (
    ActivityNode,
    DecisionNode,
    MapNode,
    Node,
    ParallelNode,
    SagaNode,
    SeqNode,
    SubworkflowNode,
    WaitNode,
)

__all__ = ["graph_nodes", "render_svg"]

NODE_W = 210
NODE_H = 48
COMP_W = 170
GAP_X = 24
GAP_Y = 28
PAD = 14
HEADER = 26
LABEL = 22
CHAR_W = 7.0  # average advance of the 12 px system font

# When several steps under a frame differ, the frame shows the most telling.
_PRIORITY = (
    "failed",
    "retrying",
    "running",
    "waiting",
    "scheduled",
    "compensated",
    "cancelled",
    "completed",
)


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _clip(text: str, width: float) -> str:
    room = max(int(width / CHAR_W), 4)
    return text if len(text) <= room else text[: room - 1] + "\u2026"


@dataclass
class _Ctx:
    steps: Mapping[str, Any]
    link: Callable[[str, Mapping[str, Any] | None], str | None]
    compensations: Mapping[str, Any] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)

    def own(self, path: str) -> Mapping[str, Any] | None:
        step = self.steps.get(path)
        return step if isinstance(step, Mapping) else None

    def status(self, path: str, *, deep: bool) -> str | None:
        """The step's own status; for a template path (``p/*``) or, with
        ``deep``, a composite without its own record, the most telling status
        of what ran under it."""
        if "*" not in path:
            step = self.own(path)
            if step is not None and step.get("status"):
                return str(step["status"])
            if not deep:
                return None
            prefix = path + "/"
            found = {
                str(s.get("status"))
                for p, s in self.steps.items()
                if p.startswith(prefix) and isinstance(s, Mapping)
            }
        else:
            pattern = re.compile(
                "^"
                + "/".join("[0-9]+" if seg == "*" else re.escape(seg) for seg in path.split("/"))
                + ("(/.*)?$" if deep else "$")
            )
            found = {
                str(s.get("status"))
                for p, s in self.steps.items()
                if pattern.match(p) and isinstance(s, Mapping)
            }
        for status in _PRIORITY:
            if status in found:
                return status
        return None


class _Box:
    """A laid-out piece of the drawing: its size and how to draw it at (x, y)."""

    def __init__(
        self,
        w: float,
        h: float,
        draw: Callable[[float, float, list[str]], None],
        anchor: float | None = None,
    ):
        self.w = w
        self.h = h
        self.draw = draw
        #: Where edges meet the box, from its left side.
        self.anchor = w / 2 if anchor is None else anchor


def _leaf(node: Node, ctx: _Ctx, title: str, kind: str, *, faded: bool = False) -> _Box:
    status = ctx.status(node.path, deep="*" in node.path)
    step = ctx.own(node.path)
    attempts = int(step.get("attempts") or 0) if step else 0
    comp = node.compensation if isinstance(node, ActivityNode) else None
    comp_status = ctx.status(comp.path, deep=False) if comp is not None else None
    ctx.nodes.append(
        {"path": node.path, "op": node.op, "label": title, "status": status or "not_started"}
    )
    if comp is not None:
        ctx.nodes.append(
            {
                "path": comp.path,
                "op": "compensation",
                "label": comp.id or comp.activity_ref,
                "status": comp_status or "not_started",
            }
        )
    width = NODE_W + (GAP_X + COMP_W if comp is not None else 0)

    def draw(x: float, y: float, out: list[str]) -> None:
        cls = f"node op-{node.op} st-{status or 'none'}" + (" faded" if faded else "")
        href = ctx.link(node.path, step)
        out.append(
            f'<g class="{cls}" data-path="{_esc(node.path)}" data-status="{_esc(status or "")}">'
        )
        if href:
            out.append(f'<a href="{_esc(href)}">')
        tip = f"{node.path} · {kind} {title}" + (f" · {status}" if status else "")
        out.append(f"<title>{_esc(tip)}</title>")
        rx = 22 if isinstance(node, WaitNode) else 8
        out.append(
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="{rx}" class="box"/>'
        )
        if isinstance(node, SubworkflowNode):
            out.append(
                f'<rect x="{x + 4}" y="{y + 4}" width="{NODE_W - 8}" height="{NODE_H - 8}"'
                ' rx="5" class="inner"/>'
            )
        label = _esc(_clip(title, NODE_W - 60))
        out.append(f'<text x="{x + 12}" y="{y + 20}" class="label">{label}</text>')
        sub = kind
        out.append(
            f'<text x="{x + 12}" y="{y + 37}" class="sub">{_esc(_clip(sub, NODE_W - 24))}</text>'
        )
        if attempts > 1:
            out.append(
                f'<text x="{x + NODE_W - 10}" y="{y + 20}" class="badge" text-anchor="end">'
                f"\u00d7{attempts}</text>"
            )
        if href:
            out.append("</a>")
        out.append("</g>")
        if comp is not None:
            cx = x + NODE_W + GAP_X
            cy = y + 6
            ch = NODE_H - 12
            out.append(
                f'<line x1="{x + NODE_W}" y1="{y + NODE_H / 2}" x2="{cx}" y2="{y + NODE_H / 2}"'
                ' class="edge comp"/>'
            )
            ccls = f"node op-compensation st-{comp_status or 'none'}"
            out.append(
                f'<g class="{ccls}" data-path="{_esc(comp.path)}"'
                f' data-status="{_esc(comp_status or "")}">'
            )
            label = comp.id or comp.activity_ref
            out.append(f"<title>{_esc(f'{comp.path} · compensation {label}')}</title>")
            out.append(
                f'<rect x="{cx}" y="{cy}" width="{COMP_W}" height="{ch}" rx="6" class="box"/>'
            )
            out.append(
                f'<text x="{cx + 10}" y="{cy + 22}" class="sub">'
                f"{_esc(_clip('undo · ' + label, COMP_W - 20))}</text>"
            )
            out.append("</g>")

    return _Box(width, NODE_H, draw, NODE_W / 2)


def _seq(kids: list[_Box]) -> _Box:
    left = max((k.anchor for k in kids), default=NODE_W / 2)
    right = max((k.w - k.anchor for k in kids), default=NODE_W / 2)
    w = left + right
    h = sum(k.h for k in kids) + GAP_Y * max(len(kids) - 1, 0)

    def draw(x: float, y: float, out: list[str]) -> None:
        cy = y
        mid = x + left
        prev_bottom: float | None = None
        for k in kids:
            kx = mid - k.anchor
            if prev_bottom is not None:
                out.append(
                    f'<line x1="{mid}" y1="{prev_bottom}" x2="{mid}" y2="{cy - 3}"'
                    ' class="edge" marker-end="url(#arrow)"/>'
                )
            k.draw(kx, cy, out)
            prev_bottom = cy + k.h
            cy += k.h + GAP_Y

    return _Box(w, h, draw, left)


def _frame(
    node: Node,
    ctx: _Ctx,
    header: str,
    columns: list[tuple[str | None, _Box, str]],
    *,
    faded: bool = False,
) -> _Box:
    """A framed box with ``columns`` side by side, each with an optional label
    and a class (``taken``, ``skipped``, ``compensation``)."""
    status = ctx.status(node.path, deep=True)
    comp = ctx.compensations.get(node.path) if isinstance(node, SagaNode) else None
    if isinstance(comp, Mapping) and comp.get("status") == "completed":
        status = "compensated"
    ctx.nodes.append(
        {"path": node.path, "op": node.op, "label": header, "status": status or "not_started"}
    )
    labelled = any(label for label, _, _ in columns)
    inner_w = sum(b.w for _, b, _ in columns) + GAP_X * max(len(columns) - 1, 0)
    col_pad = 10
    inner_w += 2 * col_pad * len(columns)
    inner_h = max((b.h for _, b, _ in columns), default=0) + (LABEL if labelled else 0)
    w = max(inner_w + 2 * PAD, NODE_W)
    h = HEADER + inner_h + PAD + 2 * col_pad

    def draw(x: float, y: float, out: list[str]) -> None:
        cls = f"frame op-{node.op} st-{status or 'none'}" + (" faded" if faded else "")
        out.append(
            f'<g class="{cls}" data-path="{_esc(node.path)}" data-status="{_esc(status or "")}">'
        )
        out.append(f"<title>{_esc(f'{node.path} · {header}')}</title>")
        out.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="10" class="box"/>')
        out.append(
            f'<text x="{x + 12}" y="{y + 18}" class="head">{_esc(_clip(header, w - 24))}</text>'
        )
        out.append("</g>")
        cx = x + PAD
        for label, box, kind in columns:
            top = y + HEADER
            col_w = box.w + 2 * col_pad
            col_h = inner_h + 2 * col_pad
            if kind:
                out.append(
                    f'<rect x="{cx}" y="{top}" width="{col_w}" height="{col_h}" rx="8"'
                    f' class="col {kind}"/>'
                )
            if label:
                out.append(
                    f'<text x="{cx + col_pad}" y="{top + 16}" class="cond {kind}">'
                    f"{_esc(_clip(label, col_w - 2 * col_pad))}</text>"
                )
            box.draw(cx + col_pad, top + col_pad + (LABEL if labelled else 0), out)
            cx += col_w + GAP_X

    return _Box(w, h, draw)


_Column = tuple[str | None, _Box, str]


def _layout(node: Node, ctx: _Ctx, *, faded: bool = False) -> _Box:
    if isinstance(node, ActivityNode):
        return _leaf(
            node, ctx, node.id or node.activity_ref, f"activity {node.activity_ref}", faded=faded
        )
    if isinstance(node, WaitNode):
        what = {
            "timer": f"timer {node.duration:g}s" if node.duration is not None else "timer",
            "signal": f"signal {node.signal_name}",
            "event": f"event {node.event_type}",
        }[node.kind]
        return _leaf(node, ctx, node.id or f"wait for {what}", f"wait {what}", faded=faded)
    if isinstance(node, SubworkflowNode):
        ref = node.workflow_ref + (f" v{node.version}" if node.version else "")
        return _leaf(node, ctx, node.id or ref, f"sub-workflow {ref}", faded=faded)
    if isinstance(node, SeqNode):
        return _seq([_layout(k, ctx, faded=faded) for k in node.strategies])
    if isinstance(node, ParallelNode):
        cols: list[_Column] = [(None, _layout(b, ctx, faded=faded), "") for b in node.branches]
        c = node.completion
        how = f"at least {c.n}" if c.kind == "at_least" else str(c.kind)
        return _frame(node, ctx, _title(node, f"parallel · {how}"), cols, faded=faded)
    if isinstance(node, DecisionNode):
        step = ctx.own(node.path)
        decided = step is not None and step.get("status") is not None
        taken = step.get("branch") if step is not None else None
        options: list[_Column] = []
        for i, (cond, branch) in enumerate(node.conditions):
            hit = decided and taken == i
            kind = "taken" if hit else ("skipped" if decided else "")
            box = _layout(branch, ctx, faded=faded or (decided and not hit))
            options.append(((("\u2713 " if hit else "") + f"if {cond.text}"), box, kind))
        if node.default_branch is not None:
            hit = decided and taken == "default"
            kind = "taken" if hit else ("skipped" if decided else "")
            box = _layout(node.default_branch, ctx, faded=faded or (decided and not hit))
            options.append((("\u2713 " if hit else "") + "default", box, kind))
        return _frame(node, ctx, _title(node, "decision"), options, faded=faded)
    if isinstance(node, MapNode):
        prefix = node.path + "/"
        runs = {
            p[len(prefix) :].split("/", 1)[0]
            for p in ctx.steps
            if p.startswith(prefix) and p[len(prefix) :].split("/", 1)[0].isdigit()
        }
        counted = f" · {len(runs)} iteration{'s' if len(runs) != 1 else ''}" if runs else ""
        header = _title(node, f"map over {node.items.text}{counted}")
        each: list[_Column] = [("each item", _layout(node.strategy, ctx, faded=faded), "")]
        return _frame(node, ctx, header, each, faded=faded)
    if isinstance(node, SagaNode):
        flows: list[_Column] = [("main flow", _layout(node.main_flow, ctx, faded=faded), "")]
        if node.compensation is not None:
            flows.append(
                ("compensation", _layout(node.compensation, ctx, faded=faded), "compensation")
            )
        return _frame(node, ctx, _title(node, "saga"), flows, faded=faded)
    return _leaf(node, ctx, node.id or node.op, node.op, faded=faded)


def _title(node: Node, what: str) -> str:
    return f"{node.id} · {what}" if node.id else what


def _default_link(path: str, step: Mapping[str, Any] | None) -> str | None:
    return None


def render_svg(
    root: Node,
    steps: Mapping[str, Any] | None = None,
    *,
    link: Callable[[str, Mapping[str, Any] | None], str | None] | None = None,
    compensations: Mapping[str, Any] | None = None,
) -> str:
    """The tree under ``root`` as an ``<svg>`` element, coloured by ``steps``
    (the state's ``steps``: path → record) and ``compensations`` (saga path →
    record). ``link(path, step)`` gives the URL a step's box leads to, or None."""
    ctx = _Ctx(steps or {}, link or _default_link, compensations or {})
    box = _layout(root, ctx)
    body: list[str] = []
    box.draw(PAD, PAD, body)
    w = box.w + 2 * PAD
    h = box.h + 2 * PAD
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{w:g}" height="{h:g}"'
        f' viewBox="0 0 {w:g} {h:g}" role="img" aria-label="workflow graph">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7"'
        ' markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"'
        ' class="arrowhead"/></marker></defs>'
    )
    return head + "".join(body) + "</svg>"


def graph_nodes(
    root: Node,
    steps: Mapping[str, Any] | None = None,
    compensations: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The drawn nodes as data (the graph's JSON twin): path, op, label, status."""
    ctx = _Ctx(steps or {}, _default_link, compensations or {})
    _layout(root, ctx)
    return ctx.nodes

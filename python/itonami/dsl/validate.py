"""Validation and compilation of workflow documents into :class:`WorkflowIR`.

The compiler walks the whole document and records *every* problem it finds
(unknown ops and keys, missing or mistyped fields, duplicate step ids, bad
durations, retry policies, JSONPath and CEL expressions, limits) as a
:class:`~itonami.errors.Problem` with its document path, then raises one
:class:`~itonami.errors.WorkflowDefinitionError` listing them all.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Container, Iterator, Mapping
from typing import Any

import orjson

from itonami.dsl.durations import parse_duration
from itonami.dsl.expr import Condition
from itonami.dsl.ir import (
    INPUT_TYPES,
    NO_DEFAULT,
    ActivityNode,
    Completion,
    DecisionNode,
    InputMapping,
    InputSpec,
    MapNode,
    Node,
    OutputSpec,
    ParallelNode,
    SagaNode,
    SeqNode,
    SubworkflowNode,
    WaitNode,
    WorkflowIR,
    _json_type,
    retry_policy_to_dict,
    suggest,
    type_matches,
)
from itonami.dsl.jsonpath import JsonPath
from itonami.errors import Problem, WorkflowDefinitionError
from itonami.retry import RetryPolicy

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "OPS",
    "compile_workflow",
    "content_hash",
    "line_for",
]

#: Deepest nesting of strategy nodes (the root is depth 1).
MAX_DEPTH = 64
#: Most strategy nodes in one workflow (compensations and templates count).
MAX_NODES = 10_000
#: Largest workflow document, measured as compact JSON.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMON_KEYS = ("op", "id", "description")

#: Keys each op accepts besides ``op``, ``id`` and ``description``.
OPS: dict[str, tuple[str, ...]] = {
    "activity": (
        "activity_ref",
        "input_mapping",
        "timeout",
        "schedule_to_close_timeout",
        "retry_policy",
        "compensation",
    ),
    "seq": ("strategies",),
    "parallel": ("branches", "completion_condition"),
    "map": ("items", "strategy", "max_concurrency"),
    "decision": ("conditions", "default_branch"),
    "wait": ("condition", "timeout"),
    "saga": ("main_flow", "compensation"),
    "subworkflow": ("workflow_ref", "version", "input_mapping"),
}
_OP_ALIASES = {"sub_workflow": "subworkflow"}

_WORKFLOW_KEYS = (
    "id",
    "name",
    "version",
    "description",
    "inputs",
    "outputs",
    "strategy",
    "timeout",
    "retry_policy",
)
_INPUT_KEYS = ("name", "type", "required", "default", "description")
_OUTPUT_KEYS = ("name", "type", "source", "description")
_RETRY_KEYS = (
    "initial_interval",
    "backoff_coefficient",
    "maximum_interval",
    "maximum_attempts",
    "non_retryable_errors",
    "jitter",
)
_WAIT_KEYS = {
    "timer": ("duration",),
    "signal": ("signal_name",),
    "event": ("event_type", "filter"),
}

_PARENT = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def line_for(lines: Mapping[str, int] | None, path: str) -> int | None:
    """The source line of ``path``, or of its nearest ancestor that has one."""
    if not lines:
        return None
    while path:
        if path in lines:
            return lines[path]
        shorter = _PARENT.sub("", path)
        if shorter == path:
            return None
        path = shorter
    return None


def content_hash(document: Mapping[str, Any]) -> str:
    """Hex SHA-256 of ``document`` as orjson with sorted keys."""
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def compile_workflow(
    data: Any,
    *,
    source: str | None = None,
    lines: Mapping[str, int] | None = None,
    activities: Container[str] | None = None,
    workflows: Callable[[str, str | None], bool] | None = None,
) -> WorkflowIR:
    """Validate ``data`` (``{"workflow": {...}}`` or the inner object) into a WorkflowIR.

    Raises :class:`WorkflowDefinitionError` listing every problem, including
    unknown references when ``activities`` or ``workflows`` is given.
    """
    compiler = _Compiler(lines)
    ir = compiler.workflow(data)
    problems = compiler.problems
    if ir is not None:
        problems = problems + ir.check(activities=activities, workflows=workflows)
    if problems or ir is None:
        raise WorkflowDefinitionError(problems, source=source)
    return ir


class _Compiler:
    """One compilation: collects problems while building nodes."""

    def __init__(self, lines: Mapping[str, int] | None) -> None:
        self.lines = dict(lines or {})
        self.problems: list[Problem] = []
        self.step_ids: dict[str, str] = {}
        self.node_count = 0
        self.too_many_reported = False

    # -- helpers --------------------------------------------------------------

    def problem(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message, line_for(self.lines, where)))

    def keys(self, raw: Mapping[str, Any], where: str, allowed: tuple[str, ...], what: str) -> None:
        for key in raw:
            if not isinstance(key, str):
                self.problem(where, f"keys must be strings, got {key!r}")
            elif key not in allowed:
                self.problem(
                    f"{where}.{key}",
                    f"unknown key {key!r} for {what}" + suggest(key, allowed),
                )

    def string(
        self, raw: Mapping[str, Any], key: str, where: str, *, required: bool = False
    ) -> str | None:
        value = raw.get(key)
        if value is None:
            if required:
                self.problem(f"{where}.{key}", "is required (a string)")
            return None
        if not isinstance(value, str):
            self.problem(f"{where}.{key}", f"expected a string, got {_json_type(value)}")
            return None
        if required and not value.strip():
            self.problem(f"{where}.{key}", "must not be empty")
            return None
        return value

    def duration(
        self, raw: Mapping[str, Any], key: str, where: str, *, positive: bool = False
    ) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.problem(f"{where}.{key}", str(exc))
            return None
        if positive and seconds <= 0:
            self.problem(f"{where}.{key}", f"must be longer than zero, got {value!r}")
            return None
        return seconds

    def mapping(self, raw: Mapping[str, Any], key: str, where: str) -> InputMapping:
        value = raw.get(key)
        if value is None:
            return InputMapping()
        mapping, problems = InputMapping.parse(value)
        for sub, message in problems:
            self.problem(f"{where}.{key}{sub}", message)
        return mapping or InputMapping()

    def jsonpath(self, value: Any, where: str) -> JsonPath | None:
        if not isinstance(value, str):
            self.problem(where, f"expected a JSONPath string, got {_json_type(value)}")
            return None
        try:
            return JsonPath(value)
        except ValueError as exc:
            self.problem(where, str(exc))
            return None

    def condition(self, value: Any, where: str) -> Condition | None:
        if not isinstance(value, str):
            self.problem(where, f"expected a CEL expression string, got {_json_type(value)}")
            return None
        try:
            return Condition(value)
        except ValueError as exc:
            self.problem(where, str(exc))
            return None

    def retry_policy(self, value: Any, where: str) -> RetryPolicy | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(where, f"expected an object, got {_json_type(value)}")
            return None
        before = len(self.problems)
        self.keys(value, where, _RETRY_KEYS, "retry_policy")
        fields: dict[str, Any] = {}
        for key in ("initial_interval", "maximum_interval"):
            seconds = self.duration(value, key, where)
            if seconds is not None:
                fields[key] = seconds
        coefficient = value.get("backoff_coefficient")
        if coefficient is not None:
            if _is_number(coefficient) and math.isfinite(coefficient):
                fields["backoff_coefficient"] = float(coefficient)
            else:
                self.problem(
                    f"{where}.backoff_coefficient",
                    f"expected a number, got {_json_type(coefficient)}",
                )
        jitter = value.get("jitter")
        if jitter is not None:
            if _is_number(jitter):
                fields["jitter"] = float(jitter)
            else:
                self.problem(f"{where}.jitter", f"expected a number, got {_json_type(jitter)}")
        attempts = value.get("maximum_attempts")
        if attempts is not None:
            if _is_integer(attempts):
                fields["maximum_attempts"] = int(attempts)
            else:
                self.problem(
                    f"{where}.maximum_attempts",
                    f"expected an integer, got {_json_type(attempts)}",
                )
        errors = value.get("non_retryable_errors")
        if errors is not None:
            if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
                fields["non_retryable_errors"] = tuple(errors)
            else:
                self.problem(f"{where}.non_retryable_errors", "expected an array of strings")
        if len(self.problems) > before:
            return None
        try:
            return RetryPolicy(**fields)
        except ValueError:
            # Build an unchecked instance only to ask it for each problem separately.
            unchecked = object.__new__(RetryPolicy)
            defaults = RetryPolicy()
            for name in _RETRY_KEYS:
                object.__setattr__(unchecked, name, fields.get(name, getattr(defaults, name)))
            for message in unchecked.problems():
                self.problem(where, message)
            return None

    # -- the workflow -----------------------------------------------------------

    def workflow(self, data: Any) -> WorkflowIR | None:
        where = "workflow"
        if not isinstance(data, Mapping):
            self.problem(where, f"expected an object, got {_json_type(data)}")
            return None
        if "workflow" in data and "strategy" not in data:
            extra = [k for k in data if k != "workflow"]
            for key in extra:
                self.problem(str(key), f"unknown top-level key {key!r}; expected only 'workflow'")
            data = data["workflow"]
            if not isinstance(data, Mapping):
                self.problem(where, f"expected an object, got {_json_type(data)}")
                return None
        try:
            size = len(orjson.dumps(data))
        except (orjson.JSONEncodeError, TypeError) as exc:
            self.problem(where, f"not a JSON document: {exc}")
            return None
        if size > MAX_DOCUMENT_BYTES:
            self.problem(where, f"document is {size} bytes, over the limit of {MAX_DOCUMENT_BYTES}")
            return None

        self.keys(data, where, _WORKFLOW_KEYS, "workflow")
        wf_id = self.string(data, "id", where, required=True)
        name = self.string(data, "name", where, required=True)
        version = self.string(data, "version", where, required=True)
        description = self.string(data, "description", where)
        inputs = self.inputs(data.get("inputs"), f"{where}.inputs")
        outputs = self.outputs(data.get("outputs"), f"{where}.outputs")
        timeout = self.duration(data, "timeout", where, positive=True)
        retry = self.retry_policy(data.get("retry_policy"), f"{where}.retry_policy")
        strategy: Node | None = None
        if data.get("strategy") is None:
            self.problem(f"{where}.strategy", "is required (the root strategy node)")
        else:
            strategy = self.node(data["strategy"], f"{where}.strategy", "0", 1)
        if self.problems or strategy is None:
            return None
        assert wf_id is not None and name is not None and version is not None
        inner: dict[str, Any] = {"id": wf_id, "name": name, "version": version}
        if description is not None:
            inner["description"] = description
        if inputs:
            inner["inputs"] = [spec.to_dict() for spec in inputs]
        if outputs:
            inner["outputs"] = [spec.to_dict() for spec in outputs]
        inner["strategy"] = strategy.to_dict()
        if timeout is not None:
            inner["timeout"] = timeout
        if retry is not None:
            inner["retry_policy"] = retry_policy_to_dict(retry)
        document = {"workflow": inner}
        return WorkflowIR(
            id=wf_id,
            name=name,
            version=version,
            description=description,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            strategy=strategy,
            timeout=timeout,
            retry_policy=retry,
            document=document,
            content_hash=content_hash(document),
            source_lines=self.lines,
        )

    def _specs(
        self, raw: Any, where: str, keys: Any, what: str
    ) -> Iterator[tuple[str, Mapping[str, Any], str | None, str | None, int]]:
        """The entries of an ``inputs``/``outputs`` array, with their common
        fields checked: ``(at, item, name, type, problems before the item)``."""
        if raw is None:
            return
        if not isinstance(raw, list):
            self.problem(where, f"expected an array, got {_json_type(raw)}")
            return
        seen: set[str] = set()
        for i, item in enumerate(raw):
            at = f"{where}[{i}]"
            if not isinstance(item, Mapping):
                self.problem(at, f"expected an object, got {_json_type(item)}")
                continue
            before = len(self.problems)
            self.keys(item, at, keys, f"an {what}")
            name = self.name(item, at, seen, what)
            yield at, item, name, self.type_name(item, at), before

    def inputs(self, raw: Any, where: str) -> list[InputSpec]:
        out: list[InputSpec] = []
        for at, item, name, type_name, before in self._specs(raw, where, _INPUT_KEYS, "input"):
            required = item.get("required", False)
            if not isinstance(required, bool):
                self.problem(f"{at}.required", f"expected a boolean, got {_json_type(required)}")
            default = item.get("default", NO_DEFAULT)
            if (
                default is not NO_DEFAULT
                and type_name is not None
                and not (default is None or type_matches(type_name, default))
            ):
                self.problem(f"{at}.default", f"expected {type_name}, got {_json_type(default)}")
            description = self.string(item, "description", at)
            if len(self.problems) == before and name is not None and type_name is not None:
                out.append(InputSpec(name, type_name, required, default, description))
        return out

    def outputs(self, raw: Any, where: str) -> list[OutputSpec]:
        out: list[OutputSpec] = []
        for at, item, name, type_name, before in self._specs(raw, where, _OUTPUT_KEYS, "output"):
            source = None
            if item.get("source") is not None:
                source = self.jsonpath(item["source"], f"{at}.source")
            description = self.string(item, "description", at)
            if len(self.problems) == before and name is not None and type_name is not None:
                out.append(OutputSpec(name, type_name, source, description))
        return out

    def name(self, item: Mapping[str, Any], at: str, seen: set[str], what: str) -> str | None:
        name = self.string(item, "name", at, required=True)
        if name is None:
            return None
        if name in seen:
            self.problem(f"{at}.name", f"duplicate {what} name {name!r}")
            return None
        seen.add(name)
        return name

    def type_name(self, item: Mapping[str, Any], at: str) -> str | None:
        type_name = item.get("type", "any")
        if not isinstance(type_name, str) or type_name not in INPUT_TYPES:
            shown = type_name if isinstance(type_name, str) else _json_type(type_name)
            hint = suggest(type_name, INPUT_TYPES) if isinstance(type_name, str) else ""
            self.problem(
                f"{at}.type",
                f"unknown type {shown!r}{hint}; expected one of {', '.join(INPUT_TYPES)}",
            )
            return None
        return type_name

    # -- nodes ------------------------------------------------------------------

    def node(self, raw: Any, where: str, path: str, depth: int) -> Node | None:
        """Compile one strategy node; ``None`` when it (or a descendant) has problems."""
        if depth > MAX_DEPTH:
            self.problem(where, f"strategy nesting is deeper than the limit of {MAX_DEPTH}")
            return None
        self.node_count += 1
        if self.node_count > MAX_NODES:
            if not self.too_many_reported:
                self.too_many_reported = True
                self.problem(where, f"workflow has more than {MAX_NODES} strategy nodes")
            return None
        if not isinstance(raw, Mapping):
            self.problem(where, f"expected a strategy object with an 'op', got {_json_type(raw)}")
            return None
        op = raw.get("op")
        if op is None:
            self.problem(f"{where}.op", f"is required (one of {', '.join(OPS)})")
            return None
        if not isinstance(op, str):
            self.problem(f"{where}.op", f"expected a string, got {_json_type(op)}")
            return None
        op = _OP_ALIASES.get(op, op)
        if op not in OPS:
            self.problem(
                f"{where}.op",
                f"unknown op {op!r}"
                + suggest(op, list(OPS))
                + f"; expected one of {', '.join(OPS)}",
            )
            return None
        before = len(self.problems)
        self.keys(raw, where, _COMMON_KEYS + OPS[op], f"op {op!r}")
        step_id = self.step_id(raw, where)
        description = self.string(raw, "description", where)
        common = {"path": path, "id": step_id, "description": description, "location": where}
        build = getattr(self, f"op_{op}")
        node: Node = build(raw, where, path, depth, common)
        if len(self.problems) > before:
            return None
        return node

    def step_id(self, raw: Mapping[str, Any], where: str) -> str | None:
        value = raw.get("id")
        if value is None:
            return None
        if not isinstance(value, str) or not _IDENT.match(value):
            self.problem(
                f"{where}.id",
                f"step id must be an identifier (letters, digits, '_'; not starting "
                f"with a digit), got {value!r}",
            )
            return None
        first = self.step_ids.get(value)
        if first is not None:
            self.problem(f"{where}.id", f"duplicate step id {value!r} (first used at {first})")
            return None
        self.step_ids[value] = where
        return value

    def children(
        self, raw: Mapping[str, Any], key: str, where: str, path: str, depth: int
    ) -> list[Node | None]:
        value = raw.get(key)
        at = f"{where}.{key}"
        if value is None:
            self.problem(at, "is required (a non-empty array of strategies)")
            return []
        if not isinstance(value, list):
            self.problem(at, f"expected an array, got {_json_type(value)}")
            return []
        if not value:
            self.problem(at, "must not be empty")
            return []
        return [
            self.node(item, f"{at}[{i}]", f"{path}/{i}", depth + 1) for i, item in enumerate(value)
        ]

    def required_node(
        self, raw: Mapping[str, Any], key: str, where: str, path: str, depth: int
    ) -> Node | None:
        if raw.get(key) is None:
            self.problem(f"{where}.{key}", "is required (a strategy)")
            return None
        return self.node(raw[key], f"{where}.{key}", path, depth + 1)

    def op_activity(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> ActivityNode | None:
        ref = self.string(raw, "activity_ref", where, required=True)
        mapping = self.mapping(raw, "input_mapping", where)
        timeout = self.duration(raw, "timeout", where, positive=True)
        s2c = self.duration(raw, "schedule_to_close_timeout", where, positive=True)
        retry = self.retry_policy(raw.get("retry_policy"), f"{where}.retry_policy")
        compensation = None
        comp_raw = raw.get("compensation")
        if comp_raw is not None:
            compensation = self.compensation(comp_raw, f"{where}.compensation", path, depth)
        if ref is None:
            return None
        return ActivityNode(
            **common,
            activity_ref=ref,
            input_mapping=mapping,
            timeout=timeout,
            schedule_to_close_timeout=s2c,
            retry_policy=retry,
            compensation=compensation,
        )

    def compensation(self, raw: Any, where: str, path: str, depth: int) -> ActivityNode | None:
        comp_path = f"{path}/comp"
        if isinstance(raw, str):
            if not raw.strip():
                self.problem(where, "must not be empty")
                return None
            self.node_count += 1
            return ActivityNode(path=comp_path, activity_ref=raw, location=where)
        if isinstance(raw, Mapping):
            op = raw.get("op", "activity")
            if op != "activity":
                self.problem(
                    f"{where}.op",
                    f"an activity's compensation must be an activity, got op {op!r}",
                )
                return None
            node = self.node({**raw, "op": "activity"}, where, comp_path, depth + 1)
            assert node is None or isinstance(node, ActivityNode)
            return node
        self.problem(
            where, f"expected an activity ref string or an activity object, got {_json_type(raw)}"
        )
        return None

    def op_seq(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> SeqNode | None:
        kids = self.children(raw, "strategies", where, path, depth)
        if not kids or any(k is None for k in kids):
            return None
        return SeqNode(**common, strategies=tuple(k for k in kids if k is not None))

    def op_parallel(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> ParallelNode | None:
        kids = self.children(raw, "branches", where, path, depth)
        completion = self.completion(raw.get("completion_condition", "all"), where, len(kids))
        if not kids or any(k is None for k in kids) or completion is None:
            return None
        return ParallelNode(
            **common, branches=tuple(k for k in kids if k is not None), completion=completion
        )

    def completion(self, value: Any, where: str, count: int) -> Completion | None:
        at = f"{where}.completion_condition"
        if value == "all":
            return Completion("all", count)
        if value == "any":
            return Completion("any", 1)
        if isinstance(value, Mapping):
            self.keys(value, at, ("at_least",), "completion_condition")
            raw_n: Any = value.get("at_least")
            if not _is_integer(raw_n):
                self.problem(f"{at}.at_least", f"expected an integer, got {_json_type(raw_n)}")
                return None
            n = int(raw_n)
            if count and not 1 <= n <= count:
                self.problem(
                    f"{at}.at_least", f"must be between 1 and the {count} branches, got {n}"
                )
                return None
            return Completion("at_least", n)
        shown = value if isinstance(value, str) else _json_type(value)
        hint = suggest(value, ["all", "any"]) if isinstance(value, str) else ""
        self.problem(at, f"expected 'all', 'any' or {{at_least: N}}, got {shown!r}{hint}")
        return None

    def op_map(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> MapNode | None:
        items = None
        if raw.get("items") is None:
            self.problem(f"{where}.items", "is required (a JSONPath selecting an array)")
        else:
            items = self.jsonpath(raw["items"], f"{where}.items")
        strategy = self.required_node(raw, "strategy", where, f"{path}/*", depth)
        limit = raw.get("max_concurrency")
        if limit is not None and not (_is_integer(limit) and limit >= 1):
            self.problem(f"{where}.max_concurrency", f"expected an integer >= 1, got {limit!r}")
            limit = None
        if items is None or strategy is None:
            return None
        return MapNode(
            **common,
            items=items,
            strategy=strategy,
            max_concurrency=None if limit is None else int(limit),
        )

    def op_decision(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> DecisionNode | None:
        conditions: list[tuple[Condition | None, Node | None]] = []
        value = raw.get("conditions")
        at = f"{where}.conditions"
        if value is not None and not isinstance(value, list):
            self.problem(at, f"expected an array, got {_json_type(value)}")
        elif value:
            for i, entry in enumerate(value):
                item = f"{at}[{i}]"
                if not isinstance(entry, Mapping):
                    self.problem(item, f"expected {{condition, branch}}, got {_json_type(entry)}")
                    conditions.append((None, None))
                    continue
                self.keys(entry, item, ("condition", "branch", "description"), "a condition")
                cond = None
                if entry.get("condition") is None:
                    self.problem(f"{item}.condition", "is required (a CEL expression)")
                else:
                    cond = self.condition(entry["condition"], f"{item}.condition")
                branch = self.required_node(entry, "branch", item, f"{path}/{i}", depth)
                conditions.append((cond, branch))
        default = None
        if raw.get("default_branch") is not None:
            default = self.node(
                raw["default_branch"], f"{where}.default_branch", f"{path}/d", depth + 1
            )
        if not value and raw.get("default_branch") is None:
            self.problem(at, "a decision needs at least one condition or a default_branch")
            return None
        if any(c is None or n is None for c, n in conditions):
            return None
        return DecisionNode(
            **common,
            conditions=tuple((c, n) for c, n in conditions if c is not None and n is not None),
            default_branch=default,
        )

    def op_wait(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> WaitNode | None:
        at = f"{where}.condition"
        cond = raw.get("condition")
        timeout = self.duration(raw, "timeout", where, positive=True)
        if cond is None:
            self.problem(at, "is required ({type: 'timer'|'signal'|'event', ...})")
            return None
        if not isinstance(cond, Mapping):
            self.problem(at, f"expected an object, got {_json_type(cond)}")
            return None
        kind = cond.get("type")
        if kind not in _WAIT_KEYS:
            hint = suggest(kind, list(_WAIT_KEYS)) if isinstance(kind, str) else ""
            self.problem(f"{at}.type", f"expected 'timer', 'signal' or 'event', got {kind!r}{hint}")
            return None
        self.keys(cond, at, ("type", *_WAIT_KEYS[kind]), f"a {kind} wait")
        if kind == "timer":
            if cond.get("duration") is None:
                self.problem(f"{at}.duration", "is required for a timer wait")
                return None
            duration = self.duration(cond, "duration", at)
            if timeout is not None:
                self.problem(f"{where}.timeout", "a timer wait takes no timeout; use duration")
            return None if duration is None else WaitNode(**common, kind="timer", duration=duration)
        if kind == "signal":
            name = self.string(cond, "signal_name", at, required=True)
            if name is None:
                return None
            return WaitNode(**common, kind="signal", signal_name=name, timeout=timeout)
        event_type = self.string(cond, "event_type", at, required=True)
        filt = None
        if cond.get("filter") is not None:
            filt = self.condition(cond["filter"], f"{at}.filter")
        if event_type is None:
            return None
        return WaitNode(**common, kind="event", event_type=event_type, filter=filt, timeout=timeout)

    def op_saga(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> SagaNode | None:
        main = self.required_node(raw, "main_flow", where, f"{path}/m", depth)
        comp = None
        if raw.get("compensation") is not None:
            comp = self.node(raw["compensation"], f"{where}.compensation", f"{path}/c", depth + 1)
        if main is None:
            return None
        return SagaNode(**common, main_flow=main, compensation=comp)

    def op_subworkflow(
        self, raw: Mapping[str, Any], where: str, path: str, depth: int, common: dict[str, Any]
    ) -> SubworkflowNode | None:
        ref = self.string(raw, "workflow_ref", where, required=True)
        version = self.string(raw, "version", where)
        mapping = self.mapping(raw, "input_mapping", where)
        if ref is None:
            return None
        return SubworkflowNode(**common, workflow_ref=ref, version=version, input_mapping=mapping)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())

"""The compiled workflow: :class:`WorkflowIR` and the node tree the engine interprets.

Every node knows its step path (see ``docs/core-contract.md``): the root
strategy is ``"0"``, child ``i`` of a ``seq``/``parallel`` is ``p/i``, a
decision's branch ``i`` is ``p/i`` and its default ``p/d``, a saga's main flow
``p/m`` and compensation ``p/c``, an activity's compensation ``p/comp``. A
map's ``strategy`` is a template stored at ``p/*``; iteration ``k`` runs the
template re-rooted at ``p/k`` (:meth:`MapNode.iteration`).

Nodes are frozen, hashable and compare by value; ``location`` (the node's
place in the document, for messages) takes no part in comparison.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import orjson

from itonami.dsl.expr import Condition
from itonami.dsl.jsonpath import JsonPath
from itonami.errors import InputValidationError, Problem, WorkflowDefinitionError
from itonami.retry import RetryPolicy

__all__ = [
    "INPUT_TYPES",
    "NO_DEFAULT",
    "ActivityNode",
    "Completion",
    "DecisionNode",
    "InputMapping",
    "InputSpec",
    "MapNode",
    "Node",
    "OutputSpec",
    "ParallelNode",
    "SagaNode",
    "SeqNode",
    "SubworkflowNode",
    "WaitNode",
    "WorkflowIR",
]

#: The declared types an input or output may have.
INPUT_TYPES = ("string", "number", "integer", "boolean", "object", "array", "any")


class _NoDefault:
    """The type of :data:`NO_DEFAULT`."""

    _instance: ClassVar[_NoDefault | None] = None

    def __new__(cls) -> _NoDefault:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_DEFAULT"

    def __reduce__(self) -> str:
        return "NO_DEFAULT"

    def __deepcopy__(self, memo: dict[int, Any]) -> _NoDefault:
        return self


#: ``InputSpec.default`` when the input declares no default.
NO_DEFAULT: Any = _NoDefault()


def _json_type(value: Any) -> str:
    """The JSON type name of ``value``, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def type_matches(type_name: str, value: Any) -> bool:
    """Whether ``value`` is a JSON value of declared type ``type_name``."""
    if type_name == "any":
        return True
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "boolean":
        return isinstance(value, bool)
    if type_name == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if type_name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "object":
        return isinstance(value, Mapping)
    if type_name == "array":
        return isinstance(value, (list, tuple))
    return False


def suggest(word: str, choices: Sequence[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    if not close and len(word) >= 3:
        # "name" for "signal_name": a key missing its prefix is a likely slip too.
        close = [c for c in choices if c.endswith(f"_{word}") or c.startswith(f"{word}_")][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------
# Inputs, outputs, mappings


@dataclass(frozen=True)
class InputSpec:
    """A declared workflow input. ``default`` is :data:`NO_DEFAULT` when none is given."""

    name: str
    type: str = "any"
    required: bool = False
    default: Any = NO_DEFAULT
    description: str | None = None

    @property
    def has_default(self) -> bool:
        """Whether the input declares a default value."""
        return self.default is not NO_DEFAULT

    def to_dict(self) -> dict[str, Any]:
        """The normalised document form."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.has_default:
            out["default"] = copy.deepcopy(self.default)
        if self.description is not None:
            out["description"] = self.description
        return out

    def __hash__(self) -> int:
        return hash((self.name, self.type, self.required, orjson.dumps(self.default, default=repr)))


@dataclass(frozen=True)
class OutputSpec:
    """A declared workflow output; ``source`` selects its value from the final context."""

    name: str
    type: str = "any"
    source: JsonPath | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The normalised document form."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.source is not None:
            out["source"] = self.source.text
        if self.description is not None:
            out["description"] = self.description
        return out


class InputMapping:
    """An ``input_mapping``: builds an activity's or sub-workflow's input from the context.

    Every string value that starts with ``$`` is an RFC 9535 JSONPath query over
    the context (``{"inputs", "steps", "signals", "item", "index"}``), compiled
    once at load. Its value is :meth:`JsonPath.resolve`: a *singular* query
    (``$.inputs.orderId``, ``$.items[0]``) binds the selected value, or ``None``
    when nothing matches; a non-singular query (``$.items[*]``, ``$..id``,
    filters, slices) binds the list of all matches. A string starting with
    ``$$`` is the literal text with one ``$`` removed. Other values are
    literals; objects and arrays are mapped recursively.
    """

    __slots__ = ("_compiled", "_key", "raw")

    def __init__(self, raw: Mapping[str, Any] | None = None) -> None:
        problems: list[tuple[str, str]] = []
        compiled = _compile_mapping_value(dict(raw or {}), "", problems)
        if problems:
            where, message = problems[0]
            raise ValueError(f"input_mapping{where}: {message}")
        self.raw: dict[str, Any] = copy.deepcopy(dict(raw or {}))
        self._compiled = compiled
        self._key = orjson.dumps(self.raw, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def parse(cls, raw: Any) -> tuple[InputMapping | None, list[tuple[str, str]]]:
        """Compile ``raw`` and collect every problem as ``(sub-path, message)``.

        The sub-path is relative to the mapping (``.order_id``, ``.items[2]``).
        """
        if not isinstance(raw, Mapping):
            return None, [("", f"expected an object, got {_json_type(raw)}")]
        problems: list[tuple[str, str]] = []
        _compile_mapping_value(raw, "", problems)
        if problems:
            return None, problems
        return cls(raw), []

    def evaluate(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """The mapped input for ``context`` (a fresh dict; literals are copied)."""
        result = _evaluate_mapping(self._compiled, context)
        assert isinstance(result, dict)
        return result

    def queries(self) -> list[JsonPath]:
        """Every JSONPath query in the mapping."""
        out: list[JsonPath] = []
        _collect_queries(self._compiled, out)
        return out

    def __bool__(self) -> bool:
        return bool(self.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputMapping):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"InputMapping({self.raw!r})"


class _Literal:
    """A mapping leaf that is not a query; copied on each evaluation."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _compile_mapping_value(value: Any, where: str, problems: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        if value.startswith("$$"):
            return _Literal(value[1:])
        if value.startswith("$"):
            try:
                return JsonPath(value)
            except ValueError as exc:
                problems.append((where, f"{exc} (write '$$' for a literal leading '$')"))
                return None
        return _Literal(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((where, f"object keys must be strings, got {key!r}"))
                continue
            out[key] = _compile_mapping_value(item, f"{where}.{key}", problems)
        return out
    if isinstance(value, (list, tuple)):
        return [
            _compile_mapping_value(item, f"{where}[{i}]", problems) for i, item in enumerate(value)
        ]
    if value is None or isinstance(value, (bool, int, float)):
        return _Literal(value)
    problems.append((where, f"not a JSON value: {type(value).__name__}"))
    return None


def _evaluate_mapping(compiled: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(compiled, JsonPath):
        return compiled.resolve(context)
    if isinstance(compiled, _Literal):
        return compiled.value
    if isinstance(compiled, dict):
        return {key: _evaluate_mapping(item, context) for key, item in compiled.items()}
    return [_evaluate_mapping(item, context) for item in compiled]


def _collect_queries(compiled: Any, out: list[JsonPath]) -> None:
    if isinstance(compiled, JsonPath):
        out.append(compiled)
    elif isinstance(compiled, dict):
        for item in compiled.values():
            _collect_queries(item, out)
    elif isinstance(compiled, list):
        for item in compiled:
            _collect_queries(item, out)


def _duration_out(seconds: float | None) -> float | None:
    return None if seconds is None else float(seconds)


def retry_policy_to_dict(policy: RetryPolicy) -> dict[str, Any]:
    """A retry policy in normalised document form (intervals in seconds, no nulls)."""
    out = policy.to_dict()
    if out["maximum_interval"] is None:
        del out["maximum_interval"]
    return out


# ---------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True, kw_only=True)
class Node:
    """A step of the strategy tree. ``op`` names the pattern; ``path`` is the step path."""

    op: ClassVar[str] = ""

    path: str
    id: str | None = None
    description: str | None = None
    #: Where the node is in the document (``workflow.strategy.strategies[1]``).
    location: str = field(default="", compare=False, repr=False)

    def children(self) -> tuple[Node, ...]:
        """The direct child nodes, in path order (a map's template included)."""
        return ()

    def walk(self) -> Iterator[Node]:
        """This node and every descendant, depth first, in path order."""
        yield self
        for child in self.children():
            yield from child.walk()

    def at(self, path: str) -> Node:
        """This subtree re-rooted at ``path``: every descendant's path follows."""
        return dataclasses.replace(self, path=path)

    def child(self, segment: str) -> Node:
        """The child at path segment ``segment``; :class:`KeyError` when none."""
        for node in self.children():
            if node.path.rsplit("/", 1)[-1] == segment:
                return node
        raise KeyError(f"step {self.path!r} ({self.op}) has no child {segment!r}")

    def to_dict(self) -> dict[str, Any]:
        """The node in normalised document form."""
        out: dict[str, Any] = {"op": self.op}
        if self.id is not None:
            out["id"] = self.id
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass(frozen=True, kw_only=True)
class ActivityNode(Node):
    """Run the activity ``activity_ref`` with the mapped input.

    ``timeout`` is the start-to-close timeout of one attempt and
    ``schedule_to_close_timeout`` bounds all attempts together (seconds).
    ``retry_policy`` is ``None`` when the node gives none: the engine then uses
    the workflow's, then :data:`itonami.retry.DEFAULT_RETRY_POLICY`.
    ``compensation`` (path ``p/comp``) undoes this activity inside a saga.
    """

    op: ClassVar[str] = "activity"

    activity_ref: str
    input_mapping: InputMapping = field(default_factory=InputMapping)
    timeout: float | None = None
    schedule_to_close_timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    compensation: ActivityNode | None = None

    def children(self) -> tuple[Node, ...]:
        return () if self.compensation is None else (self.compensation,)

    def at(self, path: str) -> ActivityNode:
        comp = None if self.compensation is None else self.compensation.at(f"{path}/comp")
        return dataclasses.replace(self, path=path, compensation=comp)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["activity_ref"] = self.activity_ref
        if self.input_mapping:
            out["input_mapping"] = copy.deepcopy(self.input_mapping.raw)
        if self.timeout is not None:
            out["timeout"] = _duration_out(self.timeout)
        if self.schedule_to_close_timeout is not None:
            out["schedule_to_close_timeout"] = _duration_out(self.schedule_to_close_timeout)
        if self.retry_policy is not None:
            out["retry_policy"] = retry_policy_to_dict(self.retry_policy)
        if self.compensation is not None:
            out["compensation"] = self.compensation.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class SeqNode(Node):
    """Run ``strategies`` one after another; child ``i`` is at ``p/i``."""

    op: ClassVar[str] = "seq"

    strategies: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.strategies

    def at(self, path: str) -> SeqNode:
        kids = tuple(s.at(f"{path}/{i}") for i, s in enumerate(self.strategies))
        return dataclasses.replace(self, path=path, strategies=kids)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["strategies"] = [s.to_dict() for s in self.strategies]
        return out


@dataclass(frozen=True)
class Completion:
    """When a parallel step completes: ``all`` branches, ``any`` one, or ``at_least`` n.

    ``n`` is the number of branches that must succeed (``len(branches)`` for
    ``all``, 1 for ``any``).
    """

    kind: Literal["all", "any", "at_least"]
    n: int

    def to_json(self) -> Any:
        """The document form: ``"all"``, ``"any"`` or ``{"at_least": n}``."""
        return {"at_least": self.n} if self.kind == "at_least" else self.kind


@dataclass(frozen=True, kw_only=True)
class ParallelNode(Node):
    """Run ``branches`` concurrently (branch ``i`` at ``p/i``) until ``completion`` holds."""

    op: ClassVar[str] = "parallel"

    branches: tuple[Node, ...]
    completion: Completion

    def children(self) -> tuple[Node, ...]:
        return self.branches

    def at(self, path: str) -> ParallelNode:
        kids = tuple(b.at(f"{path}/{i}") for i, b in enumerate(self.branches))
        return dataclasses.replace(self, path=path, branches=kids)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["branches"] = [b.to_dict() for b in self.branches]
        out["completion_condition"] = self.completion.to_json()
        return out


@dataclass(frozen=True, kw_only=True)
class MapNode(Node):
    """Run ``strategy`` once per element of ``items`` (a JSONPath over the context).

    ``strategy`` is a template at ``p/*``; iteration ``k`` runs at ``p/k`` with
    ``item`` and ``index`` bound in the context. ``items`` must select an array:
    a singular query gives that array, any other query the list of its matches
    (see :meth:`resolve_items`).
    """

    op: ClassVar[str] = "map"

    items: JsonPath
    strategy: Node
    max_concurrency: int | None = None

    def children(self) -> tuple[Node, ...]:
        return (self.strategy,)

    def path_for(self, k: int) -> str:
        """The step path of iteration ``k``."""
        return f"{self.path}/{k}"

    def iteration(self, k: int) -> Node:
        """The template re-rooted for iteration ``k`` (at ``p/k``)."""
        return self.strategy.at(self.path_for(k))

    def resolve_items(self, context: Mapping[str, Any]) -> list[Any]:
        """The list to iterate over in ``context``, one iteration per element.

        A non-singular query (``$.inputs.orders[*].id``, ``$..sku``, a filter)
        gives the list of every value it matches, in document order, which may
        be empty. A singular query (``$.inputs.orders``) must select an array
        and gives that array. Anything else (a singular query selecting a
        non-array, or nothing) raises :class:`ValueError` naming the map's
        step path and the query. The runtime takes a map's iterations from
        here, so every runtime applies the same rule.
        """
        if not self.items.singular:
            return self.items.find_all(context)
        value = self.items.find_one(context)
        if not isinstance(value, list):
            raise ValueError(
                f"map at {self.path!r}: items {self.items.text!r} must select an array, "
                f"got {_json_type(value)}"
            )
        return value

    def child(self, segment: str) -> Node:
        if segment == "*":
            return self.strategy
        if segment.isdigit() and (segment == "0" or not segment.startswith("0")):
            return self.iteration(int(segment))
        raise KeyError(f"map step {self.path!r} has no iteration {segment!r}")

    def at(self, path: str) -> MapNode:
        return dataclasses.replace(self, path=path, strategy=self.strategy.at(f"{path}/*"))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["items"] = self.items.text
        out["strategy"] = self.strategy.to_dict()
        if self.max_concurrency is not None:
            out["max_concurrency"] = self.max_concurrency
        return out


@dataclass(frozen=True, kw_only=True)
class DecisionNode(Node):
    """Take the first branch whose condition holds (``p/i``), else ``default_branch`` (``p/d``)."""

    op: ClassVar[str] = "decision"

    conditions: tuple[tuple[Condition, Node], ...]
    default_branch: Node | None = None

    def children(self) -> tuple[Node, ...]:
        kids = tuple(node for _, node in self.conditions)
        return kids if self.default_branch is None else (*kids, self.default_branch)

    def choose(self, context: Mapping[str, Any]) -> int | Literal["default"] | None:
        """Index of the first condition that holds, ``"default"``, or ``None`` (no branch)."""
        for i, (condition, _) in enumerate(self.conditions):
            if condition.evaluate(context):
                return i
        return "default" if self.default_branch is not None else None

    def at(self, path: str) -> DecisionNode:
        conds = tuple((c, n.at(f"{path}/{i}")) for i, (c, n) in enumerate(self.conditions))
        default = None if self.default_branch is None else self.default_branch.at(f"{path}/d")
        return dataclasses.replace(self, path=path, conditions=conds, default_branch=default)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["conditions"] = [
            {"condition": c.text, "branch": n.to_dict()} for c, n in self.conditions
        ]
        if self.default_branch is not None:
            out["default_branch"] = self.default_branch.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class WaitNode(Node):
    """Wait for a timer (``duration`` s), a signal (``signal_name``) or an event.

    An event wait matches events of ``event_type`` whose payload satisfies
    ``filter`` (CEL; evaluate it over the context plus ``event`` = the
    payload). ``timeout`` (seconds) bounds signal and event waits.
    """

    op: ClassVar[str] = "wait"

    kind: Literal["timer", "signal", "event"]
    duration: float | None = None
    signal_name: str | None = None
    event_type: str | None = None
    filter: Condition | None = None
    timeout: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        cond: dict[str, Any] = {"type": self.kind}
        if self.kind == "timer":
            cond["duration"] = _duration_out(self.duration)
        elif self.kind == "signal":
            cond["signal_name"] = self.signal_name
        else:
            cond["event_type"] = self.event_type
            if self.filter is not None:
                cond["filter"] = self.filter.text
        out["condition"] = cond
        if self.timeout is not None:
            out["timeout"] = _duration_out(self.timeout)
        return out


@dataclass(frozen=True, kw_only=True)
class SagaNode(Node):
    """Run ``main_flow`` (``p/m``); on failure run ``compensation`` (``p/c``).

    Compensations declared on the activities of the main flow are run too
    (newest first); how the two combine is the engine's documented choice.
    """

    op: ClassVar[str] = "saga"

    main_flow: Node
    compensation: Node | None = None

    def children(self) -> tuple[Node, ...]:
        return (
            (self.main_flow,) if self.compensation is None else (self.main_flow, self.compensation)
        )

    def at(self, path: str) -> SagaNode:
        comp = None if self.compensation is None else self.compensation.at(f"{path}/c")
        return dataclasses.replace(
            self, path=path, main_flow=self.main_flow.at(f"{path}/m"), compensation=comp
        )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["main_flow"] = self.main_flow.to_dict()
        if self.compensation is not None:
            out["compensation"] = self.compensation.to_dict()
        return out


@dataclass(frozen=True, kw_only=True)
class SubworkflowNode(Node):
    """Start workflow ``workflow_ref`` (``version`` or the newest) as a child and await it."""

    op: ClassVar[str] = "subworkflow"

    workflow_ref: str
    version: str | None = None
    input_mapping: InputMapping = field(default_factory=InputMapping)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["workflow_ref"] = self.workflow_ref
        if self.version is not None:
            out["version"] = self.version
        if self.input_mapping:
            out["input_mapping"] = copy.deepcopy(self.input_mapping.raw)
        return out


# ---------------------------------------------------------------------------
# The workflow


@dataclass(frozen=True)
class WorkflowIR:
    """A validated, compiled workflow definition.

    ``document`` is the normalised definition (``{"workflow": {...}}``, durations
    in seconds, aliases resolved, empty optional parts left out); two sources
    that mean the same workflow have the same document. ``content_hash`` is
    the hex SHA-256 of ``document`` serialised by orjson with sorted keys.
    """

    id: str
    name: str
    version: str
    description: str | None
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    strategy: Node
    timeout: float | None
    retry_policy: RetryPolicy | None
    document: dict[str, Any] = field(hash=False)
    content_hash: str
    #: Document path -> source line, where the loader could tell (JSON input).
    source_lines: Mapping[str, int] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    # -- loading ------------------------------------------------------------

    @classmethod
    def from_jsonnet(
        cls,
        path: str | os.PathLike[str],
        *,
        ext_vars: Mapping[str, str] | None = None,
        tla: Mapping[str, Any] | None = None,
        library_paths: Sequence[str | os.PathLike[str]] = (),
        activities: Container[str] | None = None,
        workflows: Callable[[str, str | None], bool] | None = None,
    ) -> WorkflowIR:
        """Load a ``.kotoba`` (Jsonnet) file; see :mod:`itonami.dsl.loader` for imports.

        Raises :class:`WorkflowDefinitionError` listing every problem. When
        ``activities`` / ``workflows`` are given, references are checked too
        (see :meth:`check`).
        """
        from itonami.dsl.loader import evaluate_jsonnet_file

        data = evaluate_jsonnet_file(path, ext_vars=ext_vars, tla=tla, library_paths=library_paths)
        return cls.from_dict(
            data, source=os.fspath(path), activities=activities, workflows=workflows
        )

    @classmethod
    def from_jsonnet_string(
        cls,
        text: str,
        *,
        filename: str = "<string>",
        base_dir: str | os.PathLike[str] | None = None,
        ext_vars: Mapping[str, str] | None = None,
        tla: Mapping[str, Any] | None = None,
        library_paths: Sequence[str | os.PathLike[str]] = (),
        activities: Container[str] | None = None,
        workflows: Callable[[str, str | None], bool] | None = None,
    ) -> WorkflowIR:
        """Load Jsonnet source text. Imports resolve in ``base_dir`` and ``library_paths``
        only (none at all when both are empty)."""
        from itonami.dsl.loader import evaluate_jsonnet_string

        data = evaluate_jsonnet_string(
            text,
            filename=filename,
            base_dir=base_dir,
            ext_vars=ext_vars,
            tla=tla,
            library_paths=library_paths,
        )
        return cls.from_dict(data, source=filename, activities=activities, workflows=workflows)

    @classmethod
    def from_json(
        cls,
        source: str | bytes | os.PathLike[str],
        *,
        activities: Container[str] | None = None,
        workflows: Callable[[str, str | None], bool] | None = None,
    ) -> WorkflowIR:
        """Load JSON text, bytes, or a path to a JSON file (a ``str`` that does not
        start with ``{`` is taken as a path). Problems carry source lines."""
        from itonami.dsl.loader import load_json

        data, lines, name = load_json(source)
        return cls.from_dict(
            data, source=name, activities=activities, workflows=workflows, _lines=lines
        )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        source: str | None = None,
        activities: Container[str] | None = None,
        workflows: Callable[[str, str | None], bool] | None = None,
        _lines: Mapping[str, int] | None = None,
    ) -> WorkflowIR:
        """Validate and compile a definition: ``{"workflow": {...}}`` or the inner object."""
        from itonami.dsl.validate import compile_workflow

        return compile_workflow(
            data, source=source, lines=_lines, activities=activities, workflows=workflows
        )

    def to_dict(self) -> dict[str, Any]:
        """The normalised document (a deep copy): ``from_dict(ir.to_dict()) == ir``."""
        return copy.deepcopy(self.document)

    def to_json(self) -> bytes:
        """The normalised document as canonical JSON (sorted keys)."""
        return orjson.dumps(self.document, option=orjson.OPT_SORT_KEYS)

    # -- inspection ---------------------------------------------------------

    def nodes(self) -> Iterator[Node]:
        """Every node of the strategy tree (map templates at ``p/*``), depth first."""
        return self.strategy.walk()

    def node_at(self, path: str) -> Node:
        """The node at step path ``path`` (map iterations re-rooted); :class:`KeyError`
        when there is none."""
        segments = path.split("/")
        if not segments or segments[0] != self.strategy.path:
            raise KeyError(f"no step at path {path!r}: paths start at {self.strategy.path!r}")
        node = self.strategy
        for i, segment in enumerate(segments[1:], start=1):
            try:
                node = node.child(segment)
            except KeyError:
                raise KeyError(
                    f"no step at path {path!r}: {'/'.join(segments[:i])!r} ({node.op}) "
                    f"has no child {segment!r}"
                ) from None
        return node

    def step_ids(self) -> dict[str, Node]:
        """Step id -> node, for nodes that have an id."""
        return {node.id: node for node in self.nodes() if node.id is not None}

    def activity_refs(self) -> set[str]:
        """Every activity the workflow may run (compensations included)."""
        return {n.activity_ref for n in self.nodes() if isinstance(n, ActivityNode)}

    def workflow_refs(self) -> set[tuple[str, str | None]]:
        """Every ``(workflow_ref, version)`` the workflow may start as a child."""
        return {(n.workflow_ref, n.version) for n in self.nodes() if isinstance(n, SubworkflowNode)}

    def check(
        self,
        *,
        activities: Container[str] | None = None,
        workflows: Callable[[str, str | None], bool] | None = None,
    ) -> list[Problem]:
        """Reference problems: activity refs not in ``activities``, sub-workflows for which
        ``workflows(ref, version)`` is false. Empty when both are ``None``."""
        problems: list[Problem] = []
        known: list[str] = []
        if activities is not None and not isinstance(activities, (str, bytes)):
            try:
                known = sorted(str(a) for a in activities)  # type: ignore[attr-defined]
            except TypeError:
                known = []
        for node in self.nodes():
            if isinstance(node, ActivityNode) and activities is not None:
                if node.activity_ref not in activities:
                    where = f"{node.location}.activity_ref" if node.location else node.path
                    problems.append(
                        Problem(
                            where,
                            f"unknown activity {node.activity_ref!r}"
                            + suggest(node.activity_ref, known),
                            self._line(where),
                        )
                    )
            elif (
                isinstance(node, SubworkflowNode)
                and workflows is not None
                and not workflows(node.workflow_ref, node.version)
            ):
                where = f"{node.location}.workflow_ref" if node.location else node.path
                version = "" if node.version is None else f" version {node.version!r}"
                problems.append(
                    Problem(
                        where,
                        f"unknown workflow {node.workflow_ref!r}{version}",
                        self._line(where),
                    )
                )
        return problems

    def _line(self, where: str) -> int | None:
        from itonami.dsl.validate import line_for

        return line_for(self.source_lines, where)

    # -- inputs ---------------------------------------------------------------

    def validate_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check ``inputs`` against the declared inputs and fill defaults.

        Every declared input is present in the result (a missing optional
        input without default is ``None``). Raises
        :class:`InputValidationError` listing every problem: missing required
        inputs, wrong types, undeclared names. A workflow that declares no
        inputs takes any object as it is.
        """
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, Mapping):
            raise InputValidationError(
                [Problem("inputs", f"expected an object, got {_json_type(inputs)}")]
            )
        if not self.inputs:
            return dict(inputs)
        problems: list[Problem] = []
        declared = {spec.name: spec for spec in self.inputs}
        out: dict[str, Any] = {}
        for name in inputs:
            if name not in declared:
                problems.append(
                    Problem(
                        f"inputs.{name}",
                        "is not a declared input" + suggest(str(name), list(declared)),
                    )
                )
        for spec in self.inputs:
            where = f"inputs.{spec.name}"
            if spec.name not in inputs:
                if spec.has_default:
                    out[spec.name] = copy.deepcopy(spec.default)
                elif spec.required:
                    problems.append(Problem(where, f"is required ({spec.type})"))
                else:
                    out[spec.name] = None
                continue
            value = inputs[spec.name]
            if value is None and spec.type != "any":
                if spec.required:
                    problems.append(Problem(where, f"is required ({spec.type}), got null"))
                else:
                    out[spec.name] = None
                continue
            if not type_matches(spec.type, value):
                problems.append(Problem(where, f"expected {spec.type}, got {_json_type(value)}"))
                continue
            if spec.type == "integer" and isinstance(value, float):
                value = int(value)
            out[spec.name] = value
        if problems:
            raise InputValidationError(problems)
        return out


def raise_if(problems: list[Problem], source: str | None = None) -> None:
    """Raise :class:`WorkflowDefinitionError` when ``problems`` is not empty."""
    if problems:
        raise WorkflowDefinitionError(problems, source=source)

"""The workflow language: load, validate and compile ``.kotoba`` definitions.

``WorkflowIR.from_jsonnet(path)`` evaluates a Jsonnet workflow file, checks
every part of it (reporting all problems at once in a
:class:`~itonami.errors.WorkflowDefinitionError`) and returns the compiled
node tree the engine interprets. See :mod:`itonami.dsl.ir` for the nodes and
their step paths, :mod:`itonami.dsl.loader` for import confinement and
limits.
"""

from itonami.dsl.durations import format_duration, parse_duration
from itonami.dsl.expr import Condition, ExpressionError
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
)
from itonami.dsl.jsonpath import JsonPath
from itonami.dsl.loader import MAX_OUTPUT_BYTES, MAX_SOURCE_BYTES, MAX_STACK
from itonami.dsl.validate import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_NODES, OPS, content_hash

__all__ = [
    "INPUT_TYPES",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "MAX_OUTPUT_BYTES",
    "MAX_SOURCE_BYTES",
    "MAX_STACK",
    "NO_DEFAULT",
    "OPS",
    "ActivityNode",
    "Completion",
    "Condition",
    "DecisionNode",
    "ExpressionError",
    "InputMapping",
    "InputSpec",
    "JsonPath",
    "MapNode",
    "Node",
    "OutputSpec",
    "ParallelNode",
    "SagaNode",
    "SeqNode",
    "SubworkflowNode",
    "WaitNode",
    "WorkflowIR",
    "content_hash",
    "format_duration",
    "parse_duration",
]

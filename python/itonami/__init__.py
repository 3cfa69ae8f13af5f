"""itonami: a durable, event-sourced workflow engine for Python with a Rust core.

Workflows are declarative (Jsonnet ``.kotoba`` files or JSON); every state
change of an execution is an immutable event, applied by the Rust core's one
reducer, hashed into a blake3 Merkle chain and made durable before the
engine acts on it.

    engine = WorkflowEngine.builder().with_storage("memory").with_activities(reg).build()
    eid = await engine.start_workflow(WorkflowIR.from_jsonnet("order.kotoba"), inputs)
    outputs = await engine.wait_for_completion(eid)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The errors are light and the core raises them: loaded at once. Everything
# else loads on first use (PEP 562), so that importing a submodule such as
# the pytest plugin (``itonami.testing.pytest_plugin``, imported by every
# pytest run) or the errors does not pull in the engine, the language and
# the activities.
from .errors import (
    ActivityError,
    ActivityTimeoutError,
    ConflictError,
    CorruptStorageError,
    DecodeError,
    ExecutionNotFinishedError,
    ExecutionNotFoundError,
    ExecutionNotRunningError,
    HostNotAllowedError,
    InputValidationError,
    IntegrityError,
    InvalidArgumentError,
    ItonamiError,
    PayloadError,
    PayloadTooLargeError,
    Problem,
    StorageError,
    TxOutOfRangeError,
    UnknownActivityError,
    WaitTimeoutError,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)

if TYPE_CHECKING:
    from ._core import (
        Appended,
        Event,
        ExecutionState,
        InclusionProof,
        VerifyReport,
        VersionInfo,
        VersionStore,
        decode_history,
        encode_event,
        replay,
        verify_proof,
    )
    from .activities import (
        Activity,
        ActivityContext,
        ActivityRegistry,
        DatabaseActivity,
        FunctionActivity,
        HostPolicy,
        HttpActivity,
        NonRetryableError,
        Secret,
        current_context,
    )
    from .dsl import WorkflowIR
    from .engine import (
        Balancer,
        Clock,
        ClusterHealth,
        Execution,
        LeastLoadedBalancer,
        RoundRobinBalancer,
        SyncWorkflowEngine,
        SystemClock,
        TestClock,
        WorkflowEngine,
        WorkflowEngineBuilder,
    )
    from .retry import RetryPolicy
    from .storage import Storage, open_storage

    __version__: str

#: Where each lazily loaded name lives (the imports above, for checkers).
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("Appended", "Event", "ExecutionState", "InclusionProof", "VerifyReport", "VersionInfo",
         "VersionStore", "decode_history", "encode_event", "replay", "verify_proof"),
        "._core",
    ),
    **dict.fromkeys(
        ("Activity", "ActivityContext", "ActivityRegistry", "DatabaseActivity",
         "FunctionActivity", "HostPolicy", "HttpActivity", "NonRetryableError", "Secret",
         "current_context"),
        ".activities",
    ),
    "WorkflowIR": ".dsl",
    **dict.fromkeys(
        ("Balancer", "Clock", "ClusterHealth", "Execution", "LeastLoadedBalancer",
         "RoundRobinBalancer", "SyncWorkflowEngine", "SystemClock", "TestClock",
         "WorkflowEngine", "WorkflowEngineBuilder"),
        ".engine",
    ),
    "RetryPolicy": ".retry",
    "Storage": ".storage",
    "open_storage": ".storage",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = getattr(importlib.import_module("._core", __name__), "__version__", "0.1.0")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


_SUBMODULES = frozenset(
    {"_core", "activities", "cli", "dsl", "engine", "errors", "integrity", "payload", "retry",
     "steps", "storage", "testing", "worker"}
)  # fmt: skip

__all__ = [
    "Activity",
    "ActivityContext",
    "ActivityError",
    "ActivityRegistry",
    "ActivityTimeoutError",
    "Appended",
    "Balancer",
    "Clock",
    "ClusterHealth",
    "ConflictError",
    "CorruptStorageError",
    "DatabaseActivity",
    "DecodeError",
    "Event",
    "Execution",
    "ExecutionNotFoundError",
    "ExecutionNotFinishedError",
    "ExecutionNotRunningError",
    "ExecutionState",
    "FunctionActivity",
    "HostNotAllowedError",
    "HostPolicy",
    "HttpActivity",
    "InclusionProof",
    "InputValidationError",
    "IntegrityError",
    "InvalidArgumentError",
    "ItonamiError",
    "LeastLoadedBalancer",
    "NonRetryableError",
    "PayloadError",
    "PayloadTooLargeError",
    "Problem",
    "RetryPolicy",
    "RoundRobinBalancer",
    "Secret",
    "Storage",
    "StorageError",
    "SyncWorkflowEngine",
    "SystemClock",
    "TestClock",
    "TxOutOfRangeError",
    "UnknownActivityError",
    "VerifyReport",
    "VersionInfo",
    "VersionStore",
    "WaitTimeoutError",
    "WorkflowDefinitionError",
    "WorkflowEngine",
    "WorkflowEngineBuilder",
    "WorkflowFailedError",
    "WorkflowIR",
    "WorkflowNotFoundError",
    "__version__",
    "current_context",
    "decode_history",
    "encode_event",
    "open_storage",
    "replay",
    "verify_proof",
]

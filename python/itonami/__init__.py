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

from . import _core
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
    Clock,
    Execution,
    SyncWorkflowEngine,
    SystemClock,
    TestClock,
    WorkflowEngine,
    WorkflowEngineBuilder,
)
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
from .retry import RetryPolicy
from .storage import Storage, open_storage

__version__: str = getattr(_core, "__version__", "0.1.0")

__all__ = [
    "Activity",
    "ActivityContext",
    "ActivityError",
    "ActivityRegistry",
    "ActivityTimeoutError",
    "Appended",
    "Clock",
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
    "NonRetryableError",
    "PayloadError",
    "PayloadTooLargeError",
    "Problem",
    "RetryPolicy",
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

"""Activities: the units of work a workflow runs, and how one attempt runs.

The engine looks activities up in an :class:`ActivityRegistry`, builds an
:class:`ActivityContext` per attempt and calls :func:`run_activity`; retries,
backoff and events stay with the engine. Built-in kinds: plain functions
(:class:`FunctionActivity`), HTTP (:class:`HttpActivity`, guarded by a
:class:`HostPolicy`) and SQL (:class:`DatabaseActivity`). Credentials are
:class:`Secret` references, resolved only when a call is made.
"""

from .base import (
    Activity,
    ActivityConfigError,
    ActivityContext,
    NonRetryableError,
    context_deadline,
    current_context,
    describe_error,
    make_idempotency_key,
    run_activity,
)
from .function import FunctionActivity
from .http import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RETRY_STATUS, HostPolicy, HttpActivity
from .registry import ActivityRegistry, DuplicateActivityError
from .secrets import Secret, redact, redact_value
from .sql import DatabaseActivity

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_RETRY_STATUS",
    "Activity",
    "ActivityConfigError",
    "ActivityContext",
    "ActivityRegistry",
    "DatabaseActivity",
    "DuplicateActivityError",
    "FunctionActivity",
    "HostPolicy",
    "HttpActivity",
    "NonRetryableError",
    "Secret",
    "context_deadline",
    "current_context",
    "describe_error",
    "make_idempotency_key",
    "redact",
    "redact_value",
    "run_activity",
]

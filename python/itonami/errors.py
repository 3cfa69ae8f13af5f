"""The exception hierarchy of itonami.

Every error the package raises on purpose derives from :class:`ItonamiError`.
Each class also derives from the standard-library type a caller would
naturally catch (``ValueError`` for bad input, ``KeyError`` for a missing
execution, ``TimeoutError`` for waits that ran out), and carries the
structured fields that explain it, so callers never parse messages.

The Rust core (``itonami._core``) raises these same classes: it imports this
module and instantiates them with keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ActivityError",
    "ActivityTimeoutError",
    "ConflictError",
    "CorruptStorageError",
    "DecodeError",
    "ExecutionNotFoundError",
    "ExecutionNotFinishedError",
    "ExecutionNotRunningError",
    "FencedError",
    "HostNotAllowedError",
    "InputValidationError",
    "IntegrityError",
    "InvalidArgumentError",
    "ItonamiError",
    "PayloadError",
    "PayloadTooLargeError",
    "Problem",
    "StorageError",
    "TxOutOfRangeError",
    "UnknownActivityError",
    "WorkflowDefinitionError",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
    "WaitTimeoutError",
]


class ItonamiError(Exception):
    """Base class of every error raised by itonami."""


class DecodeError(ItonamiError, ValueError):
    """Bytes that are not a valid encoded event, history or snapshot.

    ``offset`` is the byte offset where decoding failed (``None`` when not
    known), ``index`` the position of the event in a batch or history.
    """

    def __init__(
        self, message: str, *, offset: int | None = None, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.offset = offset
        self.index = index


class IntegrityError(ItonamiError):
    """A history whose Merkle chain does not verify.

    ``version`` is the first bad node (1-based version number), ``expected``
    and ``actual`` the hashes (hex) where they are known.
    """

    def __init__(
        self,
        message: str,
        *,
        execution_id: str | None = None,
        version: int | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.version = version
        self.expected = expected
        self.actual = actual


class ConflictError(ItonamiError):
    """An optimistic-concurrency append whose expected version is stale."""

    def __init__(self, message: str, *, execution_id: str, expected: int, actual: int) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.expected = expected
        self.actual = actual


class FencedError(ConflictError):
    """A write by a process that no longer holds the execution's lease.

    The store checked ``owner`` and ``epoch`` (the fencing token) in the same
    transaction as the write and found another owner or a newer epoch, so it
    wrote nothing. The process must drop its copy of the run. ``expected`` and
    ``actual`` are the epochs; ``owner`` is the current owner (``None`` when
    unowned).
    """

    def __init__(
        self,
        message: str,
        *,
        execution_id: str,
        expected: int,
        actual: int,
        owner: str | None = None,
    ) -> None:
        super().__init__(message, execution_id=execution_id, expected=expected, actual=actual)
        self.owner = owner


class ExecutionNotFoundError(ItonamiError, KeyError):
    """No execution with this id is known."""

    def __init__(self, message: str, *, execution_id: str) -> None:
        super().__init__(message)
        self.execution_id = execution_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ExecutionNotRunningError(ItonamiError):
    """A signal or cancel for an execution that has already finished."""

    def __init__(self, message: str, *, execution_id: str, status: str) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.status = status


class ExecutionNotFinishedError(ItonamiError):
    """Deleting an execution (or one of its sub-workflows) that has not finished."""

    def __init__(self, message: str, *, execution_id: str, status: str) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.status = status


class WorkflowNotFoundError(ItonamiError, KeyError):
    """No registered workflow definition matches this reference."""

    def __init__(self, message: str, *, workflow_id: str, version: str | None = None) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.version = version

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidArgumentError(ItonamiError, ValueError, OverflowError):
    """An argument of the core that is out of its range (a negative or huge int).

    It is also an ``OverflowError``, which is what such an argument raised
    before the core reported it as an itonami error.
    """


class TxOutOfRangeError(ItonamiError, IndexError):
    """A transaction id before the execution existed, or after the newest.

    Also raised for a tx above the largest the store can hand out (``2**63-1``);
    ``execution_id`` is ``None`` when no execution was involved
    (``VersionStore.advance_tx``).
    """

    def __init__(self, message: str, *, execution_id: str | None, tx: int) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.tx = tx


class PayloadTooLargeError(ItonamiError, ValueError):
    """An event payload, input or result over the configured size limit."""

    def __init__(self, message: str, *, size: int, limit: int, what: str = "payload") -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
        self.what = what


class PayloadError(ItonamiError, ValueError, TypeError):
    """A value that cannot be recorded as it is (inputs, results, signal payloads).

    ``field`` is the path to the offending value (``inputs.order.items[2]``),
    ``reason`` one of ``type``, ``float``, ``key``, ``depth``, ``int``,
    ``string``. It is also a ``TypeError``, which is what such a value raised
    before itonami named it.
    """

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Problem:
    """One problem found in a workflow definition.

    ``path`` locates it in the document (``workflow.strategy.strategies[1]``),
    ``line`` is the source line where the loader could tell.
    """

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line is not None else self.path
        return f"{where}: {self.message}"


class WorkflowDefinitionError(ItonamiError, ValueError):
    """A workflow definition that cannot run; ``problems`` lists every issue."""

    def __init__(self, problems: list[Problem], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid workflow definition{f' {source}' if source else ''}"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}: {len(self.problems)} problem(s)\n{body}")


class InputValidationError(ItonamiError, ValueError):
    """Workflow inputs that do not match the declared inputs."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        body = "; ".join(str(p) for p in self.problems)
        super().__init__(f"invalid workflow inputs: {body}")


class ActivityError(ItonamiError):
    """An activity that failed.

    ``error_type`` is the name of the original exception type (what
    ``non_retryable_errors`` matches), ``retryable`` whether a retry policy may
    try again.
    """

    def __init__(
        self,
        message: str,
        *,
        activity: str | None = None,
        error_type: str | None = None,
        retryable: bool = True,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.activity = activity
        self.error_type = error_type or type(self).__name__
        self.retryable = retryable
        self.details = details


class ActivityTimeoutError(ActivityError, TimeoutError):
    """An activity attempt (or all of its attempts) ran out of time."""


class UnknownActivityError(ItonamiError, KeyError):
    """An activity reference that no registered activity answers to."""

    def __init__(self, message: str, *, activity: str) -> None:
        super().__init__(message)
        self.activity = activity

    def __str__(self) -> str:
        return str(self.args[0])


class HostNotAllowedError(ActivityError):
    """An HTTP activity whose target host the host policy denies."""

    def __init__(self, message: str, *, host: str, activity: str | None = None) -> None:
        super().__init__(message, activity=activity, retryable=False)
        self.host = host


class WorkflowFailedError(ItonamiError):
    """``wait_for_completion`` on an execution that did not complete.

    ``status`` is the terminal status (failed, cancelled, timed_out,
    compensated) and ``error`` the recorded error, a dict with at least
    ``type`` and ``message``.
    """

    def __init__(self, message: str, *, execution_id: str, status: str, error: Any = None) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.status = status
        self.error = error


class WaitTimeoutError(ItonamiError, TimeoutError):
    """``wait_for_completion`` returned before the execution finished."""

    def __init__(self, message: str, *, execution_id: str) -> None:
        super().__init__(message)
        self.execution_id = execution_id


class StorageError(ItonamiError):
    """A storage backend failed (I/O, connection, schema)."""


class CorruptStorageError(StorageError):
    """Stored data that cannot be read back; names what and where."""

    def __init__(
        self, message: str, *, execution_id: str | None = None, version: int | None = None
    ) -> None:
        super().__init__(message)
        self.execution_id = execution_id
        self.version = version

"""The activity model: context, protocol, one attempt, and error description.

The engine owns retries, backoff and events; this module owns what happens
inside *one* attempt: the context an activity sees, the start-to-close
timeout, and turning whatever the activity raised into an
:class:`~itonami.errors.ActivityError` whose ``error_type`` and ``retryable``
the retry policy can judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import orjson

from itonami.errors import ActivityError, ActivityTimeoutError, ItonamiError

from .secrets import redact, redact_value

__all__ = [
    "Activity",
    "ActivityConfigError",
    "ActivityContext",
    "NonRetryableError",
    "context_deadline",
    "current_context",
    "describe_error",
    "make_idempotency_key",
    "run_activity",
]


class ActivityConfigError(ItonamiError, ValueError):
    """An activity that is set up wrongly (bad name, URL template, DSN, ...).

    Raised when the activity is *built or registered*, never while it runs;
    ``activity`` names it where known.
    """

    def __init__(self, message: str, *, activity: str | None = None) -> None:
        super().__init__(message)
        self.activity = activity


class NonRetryableError(ActivityError):
    """Raise from activity code to fail the activity at once, with no retry.

    ``error_type`` defaults to ``"NonRetryableError"``; pass your own to make
    the failure easier to match in ``non_retryable_errors`` or compensation
    logic. Any other exception carrying a true-ish attribute
    ``retryable = False`` is treated the same way by :func:`run_activity`.
    """

    def __init__(
        self,
        message: str,
        *,
        activity: str | None = None,
        error_type: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(
            message, activity=activity, error_type=error_type, retryable=False, details=details
        )


def make_idempotency_key(execution_id: str, step_path: str) -> str:
    """The idempotency key of the activity at ``step_path`` in ``execution_id``.

    It is the first 32 hex digits of ``sha256(f"{len(execution_id)}:"
    f"{execution_id}{step_path}")`` (the length prefix keeps the split
    unambiguous): a pure function of the two, so it is the same across every
    attempt and across re-runs after a crash, differs between steps (map
    iterations have distinct paths), and is safe to put in an HTTP header or a
    SQL column.
    """
    text = f"{len(execution_id)}:{execution_id}{step_path}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:32]


class _IdempotencyKey:
    """The ``idempotency_key`` field of :class:`ActivityContext`: computed on
    first read (a sha256 that most activities never ask for), unless given."""

    def __get__(self, ctx: ActivityContext | None, owner: type | None = None) -> str:
        if ctx is None:
            return ""  # the field's default: computed from the context when read
        key: str = ctx.__dict__.get("_idempotency_key", "")
        if not key:
            key = make_idempotency_key(ctx.execution_id, ctx.step_path)
            ctx.__dict__["_idempotency_key"] = key
        return key

    def __set__(self, ctx: ActivityContext, value: str) -> None:
        # Only the dataclass's __init__ gets here (the class is frozen).
        ctx.__dict__["_idempotency_key"] = value


@dataclass(frozen=True)
class ActivityContext:
    """What an activity attempt knows about where it runs.

    ``attempt`` is 1-based. ``idempotency_key`` is stable per (execution,
    step path): see :func:`make_idempotency_key` (computed when first read,
    unless one is given). ``deadline`` is the
    :func:`time.monotonic` instant by which this attempt must finish, or
    ``None``. ``info`` carries extras such as the workflow version.
    """

    execution_id: str
    workflow_id: str
    step_path: str
    activity: str
    attempt: int = 1
    idempotency_key: _IdempotencyKey = _IdempotencyKey()
    deadline: float | None = None
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.attempt < 1:
            raise ValueError(f"ActivityContext.attempt is 1-based, got {self.attempt}")

    def remaining(self) -> float | None:
        """Seconds left before ``deadline`` (never negative), or ``None``."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)


def context_deadline(now: float, when: float | None) -> float | None:
    """The :attr:`ActivityContext.deadline` for a step that must end at ``when``.

    ``now`` and ``when`` are instants of the engine's clock (which may be a
    test clock); the context's deadline is a :func:`time.monotonic` instant,
    so the time left is carried over: ``when - now`` seconds from now (never
    negative). ``None`` (no timeout) stays ``None``.
    """
    if when is None:
        return None
    return time.monotonic() + max(when - now, 0.0)


@runtime_checkable
class Activity(Protocol):
    """Anything the engine can run as an activity.

    ``execute`` returns a JSON-ready value and raises on failure; raise
    :class:`NonRetryableError` (or any exception with ``retryable = False``)
    for failures that retrying cannot fix.
    """

    name: str

    async def execute(self, input: dict[str, Any], ctx: ActivityContext) -> Any:
        """Run one attempt."""
        ...


_CURRENT: contextvars.ContextVar[ActivityContext | None] = contextvars.ContextVar(
    "itonami_activity_context", default=None
)


def current_context() -> ActivityContext:
    """The context of the activity attempt running in this task or thread.

    Sync functions run in worker threads see it too, because the context is
    copied into the thread. Raises :class:`RuntimeError` when called outside
    an activity attempt.
    """
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("current_context() was called outside an activity attempt")
    return ctx


def _is_retryable(exc: BaseException) -> bool:
    return getattr(exc, "retryable", True) is not False


def _message(exc: BaseException) -> str:
    text = str(exc)
    return redact(text) if text else type(exc).__name__


def _wrap(exc: BaseException, activity: str) -> ActivityError:
    """``exc`` as an ActivityError (kept as is if it already is one)."""
    if isinstance(exc, ActivityError):
        if exc.activity is None:
            exc.activity = activity
        return exc
    wrapped = ActivityError(
        _message(exc),
        activity=activity,
        error_type=type(exc).__name__,
        retryable=_is_retryable(exc),
    )
    wrapped.__cause__ = exc
    return wrapped


def _check_json(value: Any, activity: str) -> None:
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise NonRetryableError(
            f"activity {activity!r} returned a value that is not JSON-serialisable: {exc}",
            activity=activity,
            error_type="TypeError",
        ) from exc


async def _attempt(activity: Activity, input: dict[str, Any], ctx: ActivityContext) -> Any:
    _CURRENT.set(ctx)  # this coroutine runs in its own task, so the set is local to it
    return await activity.execute(input, ctx)


async def run_activity(
    activity: Activity,
    input: Mapping[str, Any],
    ctx: ActivityContext,
    timeout: float | None = None,
) -> Any:
    """Run one attempt of ``activity`` and return its JSON-ready result.

    Known secret values are redacted from the result (a server may echo a
    header back), as they are from error messages.

    The attempt gets ``timeout`` seconds (start-to-close), further capped by
    ``ctx.deadline``; when it runs out the attempt is cancelled and
    :class:`~itonami.errors.ActivityTimeoutError` (retryable) is raised. A
    sync function already running in a thread cannot be stopped: it finishes
    in the background and its result is dropped.

    Every other exception comes out as an :class:`ActivityError`:
    ``ActivityError`` subclasses unchanged (their ``activity`` filled in),
    anything else wrapped with ``error_type`` = the original class name,
    ``message`` = its text (known secret values redacted), ``retryable`` =
    false only if the exception says ``retryable = False``, and the original
    kept as ``__cause__``. Cancellation of the caller propagates untouched.
    """
    name = ctx.activity or getattr(activity, "name", type(activity).__name__)
    if not isinstance(input, Mapping):
        raise NonRetryableError(
            f"activity {name!r} input must be a mapping, got {type(input).__name__}",
            activity=name,
            error_type="TypeError",
        )
    if timeout is not None and timeout <= 0:
        raise ValueError(f"activity {name!r}: timeout must be > 0 seconds, got {timeout}")
    limit = timeout
    remaining = ctx.remaining()
    if remaining is not None:
        limit = remaining if limit is None else min(limit, remaining)

    if limit is None:
        # No timer to race: run the attempt in the caller's task. The context
        # variable is set and reset around the await, which keeps it local to
        # this attempt because a task runs one await chain at a time.
        token = _CURRENT.set(ctx)
        try:
            result = await activity.execute(dict(input), ctx)
        except asyncio.CancelledError:
            if _cancelling():
                raise
            raise _wrap(asyncio.CancelledError(), name) from None
        except Exception as exc:
            raise _wrap(exc, name) from exc
        finally:
            _CURRENT.reset(token)
        _check_json(result, name)
        return redact_value(result)

    task = asyncio.ensure_future(_attempt(activity, dict(input), ctx))
    try:
        done, _ = await asyncio.wait({task}, timeout=limit)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ActivityTimeoutError(
            f"activity {name!r} attempt {ctx.attempt} timed out after {limit:g}s",
            activity=name,
            retryable=True,
            details={"timeout": limit},
        )
    try:
        result = task.result()
    except asyncio.CancelledError as exc:
        # the activity cancelled itself (not us): a failure like any other
        raise _wrap(exc, name) from exc
    except Exception as exc:
        raise _wrap(exc, name) from exc
    _check_json(result, name)
    return redact_value(result)


def _cancelling() -> bool:
    """Whether the current task is being cancelled (not an activity cancelling itself)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0 if hasattr(task, "cancelling") else True


def describe_error(exc: BaseException) -> dict[str, Any]:
    """``exc`` as JSON-ready data for an event: ``{type, message, retryable, ...}``.

    ``type`` is ``error_type`` for an ActivityError, else the class name.
    ``activity`` and ``details`` are added when present (``details`` only if
    JSON-serialisable). Known secret values are redacted from the message.
    """
    if isinstance(exc, ActivityError):
        out: dict[str, Any] = {
            "type": exc.error_type,
            "message": _message(exc),
            "retryable": bool(exc.retryable),
        }
        if exc.activity is not None:
            out["activity"] = exc.activity
        if exc.details is not None:
            # details that are not JSON-ready are dropped, never recorded half-way
            with contextlib.suppress(TypeError, orjson.JSONDecodeError):
                out["details"] = orjson.loads(orjson.dumps(redact_value(exc.details)))
        return out
    return {
        "type": type(exc).__name__,
        "message": _message(exc),
        "retryable": _is_retryable(exc),
    }

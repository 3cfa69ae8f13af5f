"""run_activity (one attempt), describe_error, contexts and idempotency keys."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from itonami.activities import (
    ActivityContext,
    FunctionActivity,
    NonRetryableError,
    describe_error,
    make_idempotency_key,
    run_activity,
)
from itonami.errors import ActivityError, ActivityTimeoutError, HostNotAllowedError
from itonami.retry import RetryPolicy


async def test_attempt_timeout_raises_retryable_timeout(make_ctx) -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(ActivityTimeoutError) as info:
        await run_activity(FunctionActivity("hang", hang), {}, make_ctx(activity="hang"), 0.05)
    err = info.value
    assert err.retryable and err.activity == "hang" and err.error_type == "ActivityTimeoutError"
    assert isinstance(err, TimeoutError)
    assert cancelled.is_set()  # the attempt was cancelled, not left running
    assert describe_error(err)["type"] == "ActivityTimeoutError"


async def test_deadline_caps_the_timeout(make_ctx) -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    ctx = make_ctx(deadline=time.monotonic() + 0.05)
    started = time.monotonic()
    with pytest.raises(ActivityTimeoutError):
        await run_activity(FunctionActivity("hang", hang), {}, ctx, timeout=30)
    assert time.monotonic() - started < 5


async def test_sync_timeout_returns_while_thread_is_still_blocked(make_ctx) -> None:
    gate = threading.Event()

    def stuck() -> None:
        gate.wait(10)

    try:
        with pytest.raises(ActivityTimeoutError):
            await run_activity(FunctionActivity("stuck", stuck), {}, make_ctx(), 0.05)
        assert not gate.is_set()
    finally:
        gate.set()


async def test_timeout_raised_inside_activity_is_not_the_attempt_timeout(make_ctx) -> None:
    async def own_timeout() -> None:
        raise TimeoutError("upstream said so")

    with pytest.raises(ActivityError) as info:
        await run_activity(FunctionActivity("t", own_timeout), {}, make_ctx(), timeout=10)
    assert not isinstance(info.value, ActivityTimeoutError)
    assert info.value.error_type == "TimeoutError"
    assert str(info.value) == "upstream said so"


async def test_exceptions_are_wrapped_with_type_and_cause(make_ctx) -> None:
    def boom(n: int) -> None:
        raise KeyError(f"missing {n}")

    with pytest.raises(ActivityError) as info:
        await run_activity(FunctionActivity("boom", boom), {"n": 3}, make_ctx(activity="boom"))
    err = info.value
    assert err.error_type == "KeyError" and err.retryable and err.activity == "boom"
    assert isinstance(err.__cause__, KeyError)
    assert describe_error(err) == {
        "type": "KeyError",
        "message": "'missing 3'",
        "retryable": True,
        "activity": "boom",
    }
    policy = RetryPolicy(non_retryable_errors=("KeyError",))
    assert not policy.should_retry(1, err.error_type, err.retryable)


async def test_non_retryable_error_and_retryable_attribute(make_ctx) -> None:
    async def refuse() -> None:
        raise NonRetryableError("card declined", error_type="CardDeclined", details={"code": 51})

    class Fatal(Exception):
        retryable = False

    def fatal() -> None:
        raise Fatal("bad config")

    with pytest.raises(NonRetryableError) as info:
        await run_activity(FunctionActivity("pay", refuse), {}, make_ctx(activity="pay"))
    assert describe_error(info.value) == {
        "type": "CardDeclined",
        "message": "card declined",
        "retryable": False,
        "activity": "pay",
        "details": {"code": 51},
    }
    with pytest.raises(ActivityError) as info2:
        await run_activity(FunctionActivity("f", fatal), {}, make_ctx())
    assert info2.value.error_type == "Fatal" and info2.value.retryable is False
    assert not RetryPolicy().should_retry(1, info2.value.error_type, info2.value.retryable)


async def test_activity_errors_pass_through_unchanged(make_ctx) -> None:
    original = HostNotAllowedError("nope", host="h")

    async def deny() -> None:
        raise original

    with pytest.raises(HostNotAllowedError) as info:
        await run_activity(FunctionActivity("d", deny), {}, make_ctx(activity="d"))
    assert info.value is original and info.value.activity == "d"


async def test_empty_message_uses_type_name(make_ctx) -> None:
    def f() -> None:
        raise RuntimeError()

    with pytest.raises(ActivityError, match=r"^RuntimeError$"):
        await run_activity(FunctionActivity("f", f), {}, make_ctx())


async def test_result_must_be_json_ready(make_ctx) -> None:
    def f() -> Any:
        return {"s": {1, 2}}

    with pytest.raises(ActivityError) as info:
        await run_activity(FunctionActivity("f", f), {}, make_ctx())
    assert info.value.error_type == "TypeError" and not info.value.retryable


async def test_input_must_be_a_mapping(make_ctx) -> None:
    with pytest.raises(ActivityError, match="input must be a mapping"):
        await run_activity(FunctionActivity("f", lambda: 1), [1], make_ctx())  # type: ignore[arg-type]


async def test_caller_cancellation_propagates_and_cancels_the_attempt(make_ctx) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(run_activity(FunctionActivity("h", hang), {}, make_ctx()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


def test_describe_error_of_plain_exception_is_json_ready() -> None:
    described = describe_error(ValueError("bad value"))
    assert described == {"type": "ValueError", "message": "bad value", "retryable": True}
    orjson.dumps(described)


def test_describe_error_drops_details_that_are_not_json() -> None:
    err = ActivityError("x", details={"obj": object()})
    assert "details" not in describe_error(err)


def test_context_defaults_and_validation(make_ctx) -> None:
    ctx = make_ctx(execution_id="e", step_path="0/m/1")
    assert ctx.idempotency_key == make_idempotency_key("e", "0/m/1")
    assert ctx.remaining() is None
    assert make_ctx(idempotency_key="given").idempotency_key == "given"
    with pytest.raises(ValueError, match="1-based"):
        make_ctx(attempt=0)
    with pytest.raises(AttributeError):
        ctx.attempt = 2  # type: ignore[misc]


def test_context_key_is_a_field_like_the_others(make_ctx) -> None:
    """The key is derived when first read, yet the context still behaves as
    a frozen dataclass with it as a field: shown, compared, copied, frozen."""
    ctx = make_ctx(execution_id="e", step_path="0/1")
    later = dataclasses.replace(ctx, attempt=3)
    assert later.idempotency_key == ctx.idempotency_key == make_idempotency_key("e", "0/1")
    assert later == dataclasses.replace(ctx, attempt=3) and later != ctx
    assert f"idempotency_key={ctx.idempotency_key!r}" in repr(ctx)
    assert make_ctx(step_path="0/1", idempotency_key="given") != make_ctx(step_path="0/1")
    with pytest.raises(AttributeError):
        ctx.idempotency_key = "other"  # type: ignore[misc]
    assert ctx.idempotency_key == make_idempotency_key("e", "0/1")


@given(st.text(), st.text(), st.integers(1, 50))
def test_idempotency_key_is_stable_across_attempts(execution_id: str, path: str, n: int) -> None:
    base = ActivityContext(execution_id, "wf", path, "a", attempt=1)
    later = ActivityContext(execution_id, "wf", path, "a", attempt=n)
    assert base.idempotency_key == later.idempotency_key
    assert len(base.idempotency_key) == 32 and base.idempotency_key.isalnum()


@given(st.text(), st.text(), st.text(), st.text())
def test_idempotency_keys_differ_between_steps(e1: str, p1: str, e2: str, p2: str) -> None:
    if (e1, p1) != (e2, p2):
        assert make_idempotency_key(e1, p1) != make_idempotency_key(e2, p2)

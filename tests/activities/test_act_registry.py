"""ActivityRegistry: decorator, register, lookup, defaults, merge."""

from __future__ import annotations

from typing import Any

import pytest

from itonami.activities import (
    ActivityConfigError,
    ActivityContext,
    ActivityRegistry,
    DuplicateActivityError,
    FunctionActivity,
    run_activity,
)
from itonami.errors import UnknownActivityError
from itonami.retry import RetryPolicy


class Echo:
    """A hand-written Activity (not a function)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def execute(self, input: dict[str, Any], ctx: ActivityContext) -> Any:
        return {"echo": input, "activity": ctx.activity}


async def test_decorator_registers_sync_and_async_and_returns_function(make_ctx) -> None:
    reg = ActivityRegistry()

    @reg.activity()
    def validate_order(order_id: str) -> dict[str, Any]:
        return {"valid": order_id.startswith("o-")}

    @reg.activity("charge", timeout=5, retry_policy=RetryPolicy(maximum_attempts=7))
    async def process_payment(amount: float) -> dict[str, Any]:
        return {"charged": amount}

    assert validate_order("o-1") == {"valid": True}  # the function itself is unchanged
    assert reg.names() == ["charge", "validate_order"]
    assert len(reg) == 2 and "charge" in reg and "process_payment" not in reg
    assert isinstance(reg.get("charge"), FunctionActivity)
    assert await run_activity(reg.get("validate_order"), {"order_id": "x"}, make_ctx()) == {
        "valid": False
    }
    assert await run_activity(reg.get("charge"), {"amount": 2.5}, make_ctx()) == {"charged": 2.5}
    policy, timeout = reg.defaults_for("charge")
    assert policy == RetryPolicy(maximum_attempts=7) and timeout == 5.0
    assert reg.defaults_for("validate_order") == (None, None)


async def test_register_activity_object_and_callable(make_ctx) -> None:
    reg = ActivityRegistry()
    echo = Echo("echo")
    assert reg.register(echo) is echo
    wrapped = reg.register(lambda x: x * 2, "double")
    assert wrapped.name == "double"
    assert reg.get("echo") is echo
    assert await run_activity(reg.get("double"), {"x": 21}, make_ctx()) == 42
    # an Activity registered under an alias keeps its object
    reg.register(echo, "echo2")
    assert reg.get("echo2") is echo


def test_lambda_without_name_is_rejected() -> None:
    with pytest.raises(ActivityConfigError, match="pass name"):
        ActivityRegistry().register(lambda: 1)


def test_duplicate_name_is_rejected_unless_replace() -> None:
    reg = ActivityRegistry()
    reg.register(Echo("a"))
    with pytest.raises(DuplicateActivityError, match="'a' is already registered") as info:
        reg.register(lambda: 1, "a")
    assert info.value.activity == "a"
    assert isinstance(info.value, ValueError)
    other = Echo("a")
    reg.register(other, replace=True)
    assert reg.get("a") is other


def test_unknown_name_suggests_close_matches() -> None:
    reg = ActivityRegistry()
    for name in ("process_payment", "reserve_inventory", "send_confirmation"):
        reg.register(Echo(name))
    with pytest.raises(UnknownActivityError) as info:
        reg.get("proces_payment")
    assert "did you mean 'process_payment'" in str(info.value)
    assert info.value.activity == "proces_payment"
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownActivityError) as info:
        reg.get("zzz")
    assert "did you mean" not in str(info.value)
    assert "registered: process_payment, reserve_inventory, send_confirmation" in str(info.value)
    with pytest.raises(UnknownActivityError):
        reg.defaults_for("nope")


@pytest.mark.parametrize("bad", ["", " padded ", None])
def test_bad_names_are_rejected(bad: Any) -> None:
    with pytest.raises(ActivityConfigError):
        ActivityRegistry().register(lambda: 1, bad if bad is not None else "")


@pytest.mark.parametrize("timeout", [0, -1, "5"])
def test_bad_timeout_is_rejected(timeout: Any) -> None:
    with pytest.raises(ActivityConfigError, match="timeout"):
        ActivityRegistry().register(Echo("a"), timeout=timeout)


def test_bad_retry_policy_type_is_rejected() -> None:
    with pytest.raises(ActivityConfigError, match="RetryPolicy"):
        ActivityRegistry().register(Echo("a"), retry_policy={"maximum_attempts": 3})  # type: ignore[arg-type]


def test_merge_combines_and_rejects_conflicts() -> None:
    shared = Echo("shared")
    left, right = ActivityRegistry(), ActivityRegistry()
    left.register(Echo("a"), timeout=1)
    left.register(shared)
    right.register(Echo("b"))
    right.register(shared)
    merged = left.merge(right)
    assert merged.names() == ["a", "b", "shared"]
    assert merged.defaults_for("a") == (None, 1.0)
    assert left.names() == ["a", "shared"]  # the inputs are untouched
    right.register(Echo("a"))
    with pytest.raises(DuplicateActivityError, match="'a' is registered in both"):
        left.merge(right)


def test_decorator_without_parentheses_gives_clear_error() -> None:
    reg = ActivityRegistry()
    with pytest.raises(TypeError, match="parentheses"):

        @reg.activity  # type: ignore[arg-type]
        def f() -> None:
            pass


async def test_aclose_closes_activities_holding_resources() -> None:
    closed: list[str] = []

    class Closable(Echo):
        async def aclose(self) -> None:
            closed.append(self.name)

    reg = ActivityRegistry()
    reg.register(Closable("c"))
    reg.register(Echo("plain"))
    await reg.aclose()
    assert closed == ["c"]

"""FunctionActivity: sync/async, threads, calling convention, context."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from itonami.activities import (
    ActivityConfigError,
    ActivityContext,
    FunctionActivity,
    current_context,
    run_activity,
)
from itonami.errors import ActivityError


async def test_async_function_runs_on_the_loop_thread(make_ctx) -> None:
    async def f() -> int:
        return threading.get_ident()

    assert await run_activity(FunctionActivity("f", f), {}, make_ctx()) == threading.get_ident()


async def test_sync_function_runs_in_another_thread(make_ctx) -> None:
    def f() -> int:
        return threading.get_ident()

    assert await run_activity(FunctionActivity("f", f), {}, make_ctx()) != threading.get_ident()


async def test_sync_function_does_not_block_the_loop(make_ctx) -> None:
    # The sync activity blocks until a coroutine on the loop sets the event:
    # if it ran on the loop thread, the coroutine could never run (deadlock).
    gate = threading.Event()

    def blocking() -> str:
        return "released" if gate.wait(10) else "starved"

    async def opener() -> None:
        await asyncio.sleep(0)
        gate.set()

    result, _ = await asyncio.gather(
        run_activity(FunctionActivity("b", blocking), {}, make_ctx()), opener()
    )
    assert result == "released"


async def test_sync_activities_run_concurrently(make_ctx) -> None:
    # Each waits at a barrier for the other: only concurrent runs pass it.
    barrier = threading.Barrier(2, timeout=10)

    def meet(who: str) -> str:
        barrier.wait()
        return who

    act = FunctionActivity("meet", meet)
    results = await asyncio.gather(
        run_activity(act, {"who": "a"}, make_ctx()), run_activity(act, {"who": "b"}, make_ctx())
    )
    assert results == ["a", "b"]


async def test_keyword_convention_with_defaults(make_ctx) -> None:
    def greet(name: str, greeting: str = "hello") -> str:
        return f"{greeting} {name}"

    act = FunctionActivity("greet", greet)
    assert not act.takes_whole_input
    assert await run_activity(act, {"name": "ann"}, make_ctx()) == "hello ann"
    assert await run_activity(act, {"name": "bo", "greeting": "hi"}, make_ctx()) == "hi bo"


async def test_unknown_and_missing_fields_fail_without_retry(make_ctx) -> None:
    def greet(name: str) -> str:
        return name

    act = FunctionActivity("greet", greet)
    with pytest.raises(ActivityError) as info:
        await run_activity(act, {"name": "a", "nmae": "b"}, make_ctx())
    assert info.value.error_type == "ActivityInputError" and not info.value.retryable
    assert "['nmae']" in str(info.value)
    with pytest.raises(ActivityError, match=r"missing required input field\(s\) \['name'\]"):
        await run_activity(act, {}, make_ctx())


async def test_var_keyword_accepts_any_field(make_ctx) -> None:
    def collect(first: int, **rest: Any) -> dict[str, Any]:
        return {"first": first, "rest": rest}

    out = await run_activity(FunctionActivity("c", collect), {"first": 1, "x": 2}, make_ctx())
    assert out == {"first": 1, "rest": {"x": 2}}


@pytest.mark.parametrize(
    "fn",
    [
        lambda input: sorted(input),
        lambda inputs: sorted(inputs),
    ],
)
async def test_parameter_named_input_gets_the_whole_dict(fn, make_ctx) -> None:
    act = FunctionActivity("whole", fn)
    assert act.takes_whole_input
    assert await run_activity(act, {"b": 1, "a": 2}, make_ctx()) == ["a", "b"]


async def test_mapping_annotation_gets_the_whole_dict(make_ctx) -> None:
    def by_dict(payload: dict[str, Any]) -> int:
        return len(payload)

    def by_mapping(payload: Mapping[str, Any], ctx: ActivityContext) -> str:
        return f"{len(payload)}@{ctx.attempt}"

    assert await run_activity(FunctionActivity("d", by_dict), {"x": 1, "y": 2}, make_ctx()) == 2
    act = FunctionActivity("m", by_mapping)
    assert act.takes_whole_input
    assert await run_activity(act, {"x": 1}, make_ctx(attempt=3)) == "1@3"


async def test_single_plain_parameter_is_a_field_not_the_dict(make_ctx) -> None:
    # ``order`` is neither named input/inputs nor annotated as a mapping: rule 3
    def f(order: Any) -> Any:
        return order

    act = FunctionActivity("f", f)
    assert not act.takes_whole_input
    assert await run_activity(act, {"order": {"id": 1}}, make_ctx()) == {"id": 1}


@pytest.mark.parametrize("style", ["annotation", "ctx", "context", "positional-only"])
async def test_context_is_passed_by_name_or_annotation(style: str, make_ctx) -> None:
    def by_annotation(x: int, c: ActivityContext) -> list[Any]:
        return [x, c.step_path, c.idempotency_key]

    def by_ctx(x: int, ctx) -> list[Any]:
        return [x, ctx.step_path, ctx.idempotency_key]

    def by_context(context, x: int) -> list[Any]:
        return [x, context.step_path, context.idempotency_key]

    def positional(input, ctx, /) -> list[Any]:
        return [input["x"], ctx.step_path, ctx.idempotency_key]

    fn = {
        "annotation": by_annotation,
        "ctx": by_ctx,
        "context": by_context,
        "positional-only": positional,
    }[style]
    ctx = make_ctx(step_path="0/2")
    assert await run_activity(FunctionActivity("f", fn), {"x": 5}, ctx) == [
        5,
        "0/2",
        ctx.idempotency_key,
    ]


def test_two_context_parameters_are_rejected() -> None:
    def f(ctx, context) -> None:
        pass

    with pytest.raises(ActivityConfigError, match="context parameter"):
        FunctionActivity("f", f)


def test_positional_only_field_parameters_are_rejected() -> None:
    def f(a, b, /) -> None:
        pass

    with pytest.raises(ActivityConfigError, match="positional-only"):
        FunctionActivity("f", f)


def test_non_callable_is_rejected() -> None:
    with pytest.raises(ActivityConfigError, match="not callable"):
        FunctionActivity("f", 3)  # type: ignore[arg-type]


async def test_current_context_in_async_and_sync_code(make_ctx) -> None:
    async def in_async() -> str:
        return current_context().idempotency_key

    def in_thread() -> list[Any]:
        c = current_context()
        return [c.attempt, c.execution_id]

    ctx = make_ctx(attempt=2, execution_id="e-9")
    assert await run_activity(FunctionActivity("a", in_async), {}, ctx) == ctx.idempotency_key
    assert await run_activity(FunctionActivity("s", in_thread), {}, ctx) == [2, "e-9"]
    with pytest.raises(RuntimeError, match="outside an activity"):
        current_context()  # not leaked to the caller


async def test_current_context_with_a_timeout_and_outside_any_activity(make_ctx) -> None:
    # With a timeout the attempt runs in its own task: the context goes with it.
    async def in_task() -> int:
        return current_context().attempt

    assert await run_activity(FunctionActivity("t", in_task), {}, make_ctx(attempt=3), 5) == 3
    with pytest.raises(RuntimeError, match=r"current_context\(\) was called outside"):
        current_context()


async def test_concurrent_attempts_see_their_own_context(make_ctx) -> None:
    async def which() -> str:
        await asyncio.sleep(0)
        c = current_context()
        assert c is not None
        return c.step_path

    act = FunctionActivity("w", which)
    paths = [f"0/{i}" for i in range(20)]
    results = await asyncio.gather(*(run_activity(act, {}, make_ctx(step_path=p)) for p in paths))
    assert results == paths


async def test_callable_object_with_async_call(make_ctx) -> None:
    class Adder:
        async def __call__(self, a: int, b: int) -> int:
            return a + b

    assert await run_activity(FunctionActivity("add", Adder()), {"a": 1, "b": 2}, make_ctx()) == 3

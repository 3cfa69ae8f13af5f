"""Plain Python functions (sync or async) as activities.

Calling convention, decided once from the signature when the activity is
built:

1. **Context.** A parameter annotated :class:`ActivityContext` or named
   ``ctx`` / ``context`` receives the attempt's context. At most one.
2. **Whole input.** If exactly one *other* parameter remains, it can take a
   positional argument, and it is named ``input`` / ``inputs`` or annotated
   as a ``dict`` / ``Mapping``, it receives the whole input dict.
3. **Keywords.** Otherwise every input field is passed as the keyword
   argument of the same name. A field no parameter accepts is an error
   (unless the function takes ``**kwargs``); a parameter without a field
   uses its default, or the call is an error. ``*args`` is never filled.

Mismatches fail the attempt with a non-retryable ``ActivityInputError``
naming the fields: retrying would not fix them.

Async functions are awaited on the event loop. Sync functions run in a
shared thread pool (with the caller's contextvars, so
:func:`current_context` works), never blocking the loop.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import functools
import inspect
import threading
import typing
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from .base import ActivityConfigError, ActivityContext, NonRetryableError

__all__ = ["FunctionActivity", "shared_executor"]

_CTX_NAMES = frozenset({"ctx", "context"})
_INPUT_NAMES = frozenset({"input", "inputs"})
_MAPPING_TYPES = (dict, collections.abc.Mapping, collections.abc.MutableMapping, typing.Mapping)
_MAPPING_PREFIXES = ("dict", "Dict", "Mapping", "typing.Mapping", "collections.abc.Mapping")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def shared_executor() -> ThreadPoolExecutor:
    """The thread pool sync activities run in (created on first use, 32 threads)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="itonami-activity")
        return _executor


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        # annotations naming something not importable here: keep them as strings
        return inspect.signature(fn)


def _is_context_annotation(annotation: Any) -> bool:
    if annotation is ActivityContext:
        return True
    return isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == "ActivityContext"


def _is_mapping_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(_MAPPING_PREFIXES)
    origin = typing.get_origin(annotation) or annotation
    return origin in _MAPPING_TYPES


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class FunctionActivity:
    """An activity that calls ``fn`` (sync or async) with the module's convention."""

    def __init__(
        self, name: str, fn: Callable[..., Any], *, executor: Executor | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ActivityConfigError(f"activity name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise ActivityConfigError(f"activity {name!r}: {fn!r} is not callable", activity=name)
        self.name = name
        self.fn = fn
        self._executor = executor
        self._async = _is_async(fn)
        self._plan(_signature(fn))

    def _plan(self, sig: inspect.Signature) -> None:
        self._ctx_param: str | None = None
        self._var_kw = False
        positional_only: list[str] = []  # in declaration order
        others: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                self._var_kw = True
                continue
            if p.kind is p.VAR_POSITIONAL:
                continue
            if p.kind is p.POSITIONAL_ONLY:
                positional_only.append(p.name)
            if _is_context_annotation(p.annotation) or p.name in _CTX_NAMES:
                if self._ctx_param is not None:
                    raise ActivityConfigError(
                        f"activity {self.name!r}: both {self._ctx_param!r} and {p.name!r} "
                        "look like the context parameter; keep one",
                        activity=self.name,
                    )
                self._ctx_param = p.name
            else:
                others.append(p)
        self._whole_input = (
            len(others) == 1
            and not self._var_kw
            and others[0].kind in (others[0].POSITIONAL_ONLY, others[0].POSITIONAL_OR_KEYWORD)
            and (others[0].name in _INPUT_NAMES or _is_mapping_annotation(others[0].annotation))
        )
        self._input_param = others[0].name if self._whole_input else None
        self._params = {p.name: p for p in others}
        # Binding rules prepared once: a call checks them with two set tests.
        self._names = frozenset(self._params)
        self._required = frozenset(n for n, p in self._params.items() if p.default is p.empty)
        self._positional_only = positional_only
        if not self._whole_input:
            fields = [n for n in positional_only if n != self._ctx_param]
            if fields:
                raise ActivityConfigError(
                    f"activity {self.name!r}: positional-only parameters {fields} "
                    "cannot receive input fields (they are passed by keyword)",
                    activity=self.name,
                )

    @property
    def takes_whole_input(self) -> bool:
        """Whether ``fn`` receives the input dict as one argument (rule 2)."""
        return self._whole_input

    def _arguments(
        self, input: dict[str, Any], ctx: ActivityContext
    ) -> tuple[list[Any], dict[str, Any]]:
        named: dict[str, Any] = {}
        if self._input_param is not None:
            named[self._input_param] = input
        else:
            if not self._var_kw and not self._names.issuperset(input):
                unknown = sorted(k for k in input if k not in self._params)
                raise NonRetryableError(
                    f"activity {self.name!r} got input field(s) {unknown} that no parameter "
                    f"of {getattr(self.fn, '__qualname__', self.fn)!r} accepts "
                    f"(parameters: {sorted(self._params)})",
                    activity=self.name,
                    error_type="ActivityInputError",
                )
            if not input.keys() >= self._required:
                missing = sorted(n for n in self._required if n not in input)
                raise NonRetryableError(
                    f"activity {self.name!r} is missing required input field(s) {missing}",
                    activity=self.name,
                    error_type="ActivityInputError",
                )
        if self._ctx_param is not None:
            if self._ctx_param in input and self._input_param is None:
                raise NonRetryableError(
                    f"activity {self.name!r}: input field {self._ctx_param!r} clashes with the "
                    "context parameter",
                    activity=self.name,
                    error_type="ActivityInputError",
                )
            named[self._ctx_param] = ctx
        args = [named.pop(n) for n in self._positional_only if n in named] if named else []
        if self._input_param is None:
            named.update(input)
        return args, named

    async def execute(self, input: dict[str, Any], ctx: ActivityContext) -> Any:
        """Call ``fn`` with ``input`` (and ``ctx``) and return its result."""
        args, kwargs = self._arguments(input, ctx)
        if self._async:
            return await self.fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(self.fn, *args, **kwargs)
        context = contextvars.copy_context()
        result = await loop.run_in_executor(self._executor or shared_executor(), context.run, call)
        if inspect.isawaitable(result):  # a sync wrapper that returned a coroutine
            result = await result
        return result

    def __repr__(self) -> str:
        kind = "async" if self._async else "sync"
        return f"FunctionActivity({self.name!r}, {kind} {getattr(self.fn, '__qualname__', '?')})"

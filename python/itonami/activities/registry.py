"""The registry that maps ``activity_ref`` names to activities."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from itonami.errors import UnknownActivityError
from itonami.retry import RetryPolicy

from .base import Activity, ActivityConfigError
from .function import FunctionActivity

__all__ = ["ActivityRegistry", "DuplicateActivityError"]

F = TypeVar("F", bound=Callable[..., Any])


class DuplicateActivityError(ActivityConfigError):
    """A second activity registered under a name that is already taken."""


@dataclass(frozen=True)
class _Entry:
    activity: Activity
    retry_policy: RetryPolicy | None
    timeout: float | None


def _is_activity(obj: Any) -> bool:
    return isinstance(getattr(obj, "name", None), str) and callable(getattr(obj, "execute", None))


class ActivityRegistry:
    """Named activities plus the retry policy / timeout each was registered with.

    Names are unique: registering a taken name raises
    :class:`DuplicateActivityError` unless ``replace=True``.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def activity(
        self,
        name: str | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Decorator registering a sync or async function; returns it unchanged.

        ``name`` defaults to the function's ``__name__``.
        """
        if callable(name):
            raise TypeError("use @registry.activity() (with parentheses) or pass a name")

        def decorate(fn: F) -> F:
            self.register(fn, name, retry_policy=retry_policy, timeout=timeout)
            return fn

        return decorate

    def register(
        self,
        activity: Activity | Callable[..., Any],
        name: str | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: float | None = None,
        replace: bool = False,
    ) -> Activity:
        """Register an :class:`Activity`, or a plain callable as a FunctionActivity.

        ``name`` defaults to the activity's ``name`` (or the function's
        ``__name__``). ``retry_policy`` and ``timeout`` (seconds, > 0) are the
        defaults the engine uses when the workflow definition gives none.
        Returns the registered activity.
        """
        key: str | None
        if _is_activity(activity):
            act: Activity = activity  # type: ignore[assignment]
            key = act.name if name is None else name
        elif callable(activity):
            key = name if name is not None else getattr(activity, "__name__", None)
            if not isinstance(key, str) or not key or key == "<lambda>":
                raise ActivityConfigError(
                    f"cannot derive an activity name from {activity!r}; pass name=..."
                )
            act = FunctionActivity(key, activity)
        else:
            raise ActivityConfigError(
                f"cannot register {activity!r}: expected an Activity (name + async execute) "
                "or a callable"
            )
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            raise ActivityConfigError(
                f"activity name must be a non-empty string without surrounding spaces, got {key!r}"
            )
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise ActivityConfigError(
                f"activity {key!r}: retry_policy must be a RetryPolicy, "
                f"got {type(retry_policy).__name__}",
                activity=key,
            )
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ActivityConfigError(
                f"activity {key!r}: timeout must be a number of seconds > 0, got {timeout!r}",
                activity=key,
            )
        if key in self._entries and not replace:
            raise DuplicateActivityError(
                f"activity {key!r} is already registered "
                f"({self._entries[key].activity!r}); pass replace=True to override",
                activity=key,
            )
        self._entries[key] = _Entry(act, retry_policy, None if timeout is None else float(timeout))
        return act

    def get(self, name: str) -> Activity:
        """The activity registered as ``name``; UnknownActivityError with suggestions."""
        try:
            return self._entries[name].activity
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def _unknown(self, name: Any) -> UnknownActivityError:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = f" (registered: {', '.join(sorted(self._entries)) or 'none'})"
        return UnknownActivityError(
            f"unknown activity {name!r}{hint}{known if not close else ''}", activity=str(name)
        )

    def defaults_for(self, name: str) -> tuple[RetryPolicy | None, float | None]:
        """``(retry_policy, timeout)`` given when ``name`` was registered."""
        entry = self._entries.get(name)
        if entry is None:
            raise self._unknown(name)
        return entry.retry_policy, entry.timeout

    def merge(self, other: ActivityRegistry) -> ActivityRegistry:
        """A new registry with the activities of both; a shared name is an error.

        Registering the very same activity object under the same name in both
        is not a conflict.
        """
        merged = ActivityRegistry()
        merged._entries = dict(self._entries)
        for key, entry in other._entries.items():
            mine = merged._entries.get(key)
            if mine is not None and mine != entry:
                raise DuplicateActivityError(
                    f"cannot merge registries: activity {key!r} is registered in both",
                    activity=key,
                )
            merged._entries[key] = entry
        return merged

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"ActivityRegistry({self.names()})"

    async def aclose(self) -> None:
        """Close every registered activity that holds resources (HTTP clients, ...)."""
        for entry in self._entries.values():
            close = getattr(entry.activity, "aclose", None)
            if close is not None:
                await close()

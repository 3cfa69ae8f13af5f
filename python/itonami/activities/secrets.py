"""Secrets resolved at call time, so they never enter inputs or event history.

A :class:`Secret` is a *reference* (an environment variable name or a
callable); its value is read only when an HTTP or database activity runs.
``repr``/``str`` show the reference, never the value, and every value that
has been revealed is remembered so :func:`redact` can scrub it from error
messages before they are recorded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from itonami.errors import ActivityError

__all__ = ["REDACTED", "Secret", "redact", "resolve"]

#: What a revealed secret value is replaced with in recorded messages.
REDACTED = "[REDACTED]"

# Values shorter than this are not scrubbed: redacting "1" or "ab" from every
# message would destroy them while protecting nothing.
_MIN_REDACT_LEN = 4

_revealed: set[str] = set()
_revealed_lock = threading.Lock()


def _remember(value: str) -> None:
    if len(value) >= _MIN_REDACT_LEN:
        with _revealed_lock:
            _revealed.add(value)


def redact(text: str) -> str:
    """``text`` with every secret value revealed so far replaced by ``[REDACTED]``."""
    with _revealed_lock:
        values = sorted(_revealed, key=len, reverse=True)  # longest first: no partial leftovers
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class Secret:
    """A reference to a secret string, resolved by :meth:`reveal` at call time.

    Build one with :meth:`env` or :meth:`from_callable`; ``prefix`` /
    ``suffix`` wrap the value (``Secret.env("TOKEN", prefix="Bearer ")``).
    """

    __slots__ = ("_label", "_prefix", "_source", "_suffix")

    def __init__(
        self,
        source: Callable[[], str],
        *,
        label: str,
        prefix: str = "",
        suffix: str = "",
    ) -> None:
        if not callable(source):
            raise TypeError("Secret source must be a callable returning a string")
        self._source = source
        self._label = label
        self._prefix = prefix
        self._suffix = suffix

    @classmethod
    def env(cls, variable: str, *, prefix: str = "", suffix: str = "") -> Secret:
        """The value of environment variable ``variable``, read at each call."""
        if not variable:
            raise ValueError("Secret.env needs an environment variable name")

        def read() -> str:
            value = os.environ.get(variable)
            if value is None:
                raise ActivityError(
                    f"secret environment variable {variable!r} is not set",
                    error_type="SecretNotFoundError",
                    retryable=False,
                )
            return value

        return cls(read, label=f"env:{variable}", prefix=prefix, suffix=suffix)

    @classmethod
    def from_callable(
        cls, fn: Callable[[], str], *, label: str = "callable", prefix: str = "", suffix: str = ""
    ) -> Secret:
        """The string ``fn()`` returns, called at each use (e.g. a vault lookup)."""
        return cls(fn, label=label, prefix=prefix, suffix=suffix)

    @property
    def label(self) -> str:
        """Where the secret comes from (safe to log)."""
        return self._label

    def reveal(self) -> str:
        """The secret value. Call only where it is sent, never to log or record it."""
        value = self._source()
        if not isinstance(value, str):
            raise ActivityError(
                f"secret {self._label} did not resolve to a string",
                error_type="SecretNotFoundError",
                retryable=False,
            )
        _remember(value)
        full = f"{self._prefix}{value}{self._suffix}"
        _remember(full)
        return full

    def __repr__(self) -> str:
        return f"Secret({self._label})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled (it would leak or lose its value)")


def resolve(value: str | Secret) -> str:
    """``value`` itself, or the revealed value of a :class:`Secret`."""
    return value.reveal() if isinstance(value, Secret) else value

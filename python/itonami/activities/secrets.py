"""Secrets resolved at call time, so they never enter inputs or event history.

A :class:`Secret` is a *reference* (an environment variable name or a
callable); its value is read only when an HTTP or database activity runs.
``repr``/``str`` show the reference, never the value, and every value that
has been revealed is remembered so :func:`redact` can scrub it from error
messages before they are recorded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson

from itonami.errors import ActivityError

__all__ = ["REDACTED", "Secret", "redact", "redact_value", "remember_header", "resolve"]

#: What a revealed secret value is replaced with in recorded messages.
REDACTED = "[REDACTED]"

# Values shorter than this are not scrubbed: redacting "1" or "ab" from every
# message would destroy them while protecting nothing.
_MIN_REDACT_LEN = 4

_revealed: set[str] = set()
_revealed_lock = threading.Lock()
# One alternation of every form of every revealed value, longest first (no
# partial leftovers); rebuilt when a new value is revealed.
_pattern: re.Pattern[str] | None = None


def _encodings(value: str) -> set[str]:
    """Every form in which ``value`` can turn up in text that gets stored.

    A value reaches messages not only as itself: an exception shows it as a
    Python (str or bytes) repr, JSON escapes it (once, or twice when JSON is
    embedded in a JSON string), a URL percent-encodes it, a header may carry
    it base64-encoded. Whitespace around it is also tried without, because
    a value read from a file keeps its newline while a library may strip it.
    """
    forms = {value, value.strip()}
    for v in list(forms):
        raw = v.encode("utf-8", "surrogatepass")
        json_once = {_json_inside(v), json.dumps(v)[1:-1]}  # raw UTF-8, or \uXXXX escapes
        forms.update(json_once)
        for once in json_once:
            forms.update({_json_inside(once), json.dumps(once)[1:-1]})
        forms.update(
            {
                repr(v)[1:-1],
                repr(raw)[2:-1],
                v.encode("unicode_escape").decode("ascii"),
                urllib.parse.quote(v, safe=""),
                urllib.parse.quote(v),
                urllib.parse.quote_plus(v),
                base64.b64encode(raw).decode(),
                base64.b64encode(raw).decode().rstrip("="),
                base64.urlsafe_b64encode(raw).decode().rstrip("="),
            }
        )
    return {f for f in forms if len(f) >= _MIN_REDACT_LEN}


def _json_inside(value: str) -> str:
    """``value`` as the inside of an orjson string (orjson's own escaping)."""
    try:
        return orjson.dumps(value).decode()[1:-1]
    except TypeError:  # a lone surrogate: orjson refuses it, json.dumps covers it
        return value


def _remember(value: str) -> None:
    global _pattern
    if len(value.strip()) < _MIN_REDACT_LEN:
        return
    forms = _encodings(value)
    with _revealed_lock:
        if forms <= _revealed:
            return
        _revealed.update(forms)
        ordered = sorted(_revealed, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, ordered)))


def remember_header(value: str) -> None:
    """Remember a header value that carries a secret, and its credential parts.

    ``Basic`` credentials are base64 of ``user:password``: the password alone
    is not a substring of that encoding, so the decoded credentials and the
    password are remembered too.
    """
    _remember(value)
    scheme, _, token = value.strip().partition(" ")
    if not token:
        return
    _remember(token)
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return
        _remember(decoded)
        _remember(decoded.partition(":")[2])


def redact(text: str) -> str:
    """``text`` with every form of every secret value revealed so far replaced."""
    pattern = _pattern
    if pattern is None:
        return text
    return pattern.sub(REDACTED, text)


def redact_value(value: Any) -> Any:
    """A JSON-ready ``value`` with :func:`redact` applied to every string in it.

    Keys are redacted too. The value is returned as it is (the same object)
    when nothing in it needs redacting, which is the common case.
    """
    pattern = _pattern
    if pattern is None:
        return value
    try:
        dumped = orjson.dumps(value).decode()
    except TypeError:
        return _redact_walk(value, pattern)
    if pattern.search(dumped) is None:
        return value
    return _redact_walk(value, pattern)


def _redact_walk(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if isinstance(value, dict):
        return {
            (pattern.sub(REDACTED, k) if isinstance(k, str) else k): _redact_walk(v, pattern)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_walk(v, pattern) for v in value]
    return value


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

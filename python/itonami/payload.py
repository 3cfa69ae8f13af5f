"""Values as they are recorded: JSON, converted once, or refused by name.

Whatever a later step (or a resumed run) receives is read back from the
history, so a value must not change on its way into it. JSON cannot hold
``NaN``, ``Infinity``, non-string keys, arbitrary objects or unbounded
nesting; ``orjson`` would silently write ``NaN`` as ``null`` and a
``datetime`` as a string, and the live run would go on with the original
object while a resumed run sees the recorded one.

:func:`to_recorded` is the one gate: it returns the value exactly as it will
be recorded (so the caller passes *that* on), converting only what has one
obvious JSON form, and raises :class:`~itonami.errors.PayloadError` naming
the field for anything else. It writes nothing.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import uuid
from typing import Any

from itonami.errors import PayloadError

__all__ = ["MAX_DEPTH", "to_recorded"]

#: Deepest nesting of lists and objects a recorded value may have. The core
#: parses recorded JSON with a nesting limit of 128 (serde_json's), and a
#: value sits a few levels down in an event and deeper still in a snapshot
#: of the state, so values are kept well below it.
MAX_DEPTH = 64

_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1  # the range orjson and the core's canonical JSON hold


def to_recorded(value: Any, field: str) -> Any:
    """``value`` as it will be recorded: plain JSON types, converted once.

    - ``dict`` (string keys, put in the canonical sorted order), ``list``,
      ``tuple`` (as a list), ``str``,
      ``int`` (64-bit), finite ``float``, ``bool`` and ``None`` are kept;
      subclasses (``str``/``int`` enums, ...) become their plain base type.
    - ``datetime``, ``date`` and ``time`` become ISO 8601 strings
      (``isoformat()``), ``UUID`` its canonical string.
    - Anything else (``NaN``, ``Infinity``, a set, an object, a non-string
      key, a lone surrogate, a too large int, nesting deeper than
      :data:`MAX_DEPTH`) raises :class:`PayloadError` whose ``field`` is the
      path to it, starting at ``field`` (``inputs.order.items[2].price``).
    """
    return _convert(value, field, 0)


#: Where a value sits: the caller's field name, or ``(parent, key)`` for a
#: dict key (str), a list index (int) or the key itself (``_KEY``). Spelled
#: out only for an error: a valid value costs one tuple per level.
_Path = str | tuple[Any, Any]
_KEY = object()


def _name(path: _Path) -> str:
    """The path as the error names it (``inputs.order.items[2].price``)."""
    if isinstance(path, str):
        return path
    parent, key = path
    base = _name(parent)
    if key is _KEY:
        return f"{base} key"
    if type(key) is int:
        return f"{base}[{key}]"
    return f"{base}.{key}" if key.isidentifier() else f"{base}[{key!r}]"


def _convert(value: Any, path: _Path, depth: int) -> Any:
    # Exact types first: the common case costs one dict lookup per value.
    kind = type(value)
    if kind is str:
        return _text(value, path)
    if kind is bool or value is None:
        return value
    if kind is int:
        return _integer(value, path)
    if kind is float:
        return _number(value, path)
    if kind is dict or kind is list or kind is tuple:
        return _container(value, path, depth)
    return _other(value, path, depth)


def _container(value: Any, path: _Path, depth: int) -> Any:
    if depth >= MAX_DEPTH:
        name = _name(path)
        raise PayloadError(
            f"{name} is nested more than {MAX_DEPTH} levels deep", field=name, reason="depth"
        )
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        # Sorted as the core's canonical JSON sorts them (code points, which is
        # UTF-8 byte order), so even iteration order is what a resumed run sees.
        for key, item in sorted(value.items(), key=_key_order):
            if not isinstance(key, str):
                name = _name(path)
                raise PayloadError(
                    f"{name} has a key {key!r} of type {type(key).__name__}; "
                    "JSON object keys are strings",
                    field=name,
                    reason="key",
                )
            key = _text(str.__str__(key), (path, _KEY))
            out[key] = _convert(item, (path, key), depth + 1)
        return out
    return [_convert(item, (path, i), depth + 1) for i, item in enumerate(value)]


def _key_order(item: tuple[Any, Any]) -> tuple[int, str]:
    key = item[0]
    # a non-string key sorts first, so the error names the first one found
    return (1, key) if isinstance(key, str) else (0, "")


def _other(value: Any, path: _Path, depth: int) -> Any:
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, enum.Enum) and not isinstance(value, (str, int, float)):
        raise _refuse(value, path)
    if isinstance(value, str):
        return _text(str.__str__(value), path)
    if isinstance(value, int):
        return _integer(int(value), path)
    if isinstance(value, float):
        return _number(float(value), path)
    if isinstance(value, (dict, list, tuple)):
        return _container(value, path, depth)
    if isinstance(value, (_dt.date, _dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _refuse(value, path)


def _refuse(value: Any, path: _Path) -> PayloadError:
    name = _name(path)
    return PayloadError(
        f"{name} is a {type(value).__name__}, which JSON cannot hold", field=name, reason="type"
    )


def _text(value: str, path: _Path) -> str:
    if value.isascii():  # a flag of the string: no copy, no scan
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        name = _name(path)
        raise PayloadError(
            f"{name} is a string with a lone surrogate, which is not valid UTF-8",
            field=name,
            reason="string",
        ) from None
    return value


def _integer(value: int, path: _Path) -> int:
    if not _INT_MIN <= value <= _UINT_MAX:
        name = _name(path)
        raise PayloadError(
            f"{name} is an int outside the 64-bit range JSON values are stored in",
            field=name,
            reason="int",
        )
    return value


def _number(value: float, path: _Path) -> float:
    if not math.isfinite(value):
        name = _name(path)
        raise PayloadError(
            f"{name} is {value!r}; JSON has no NaN or Infinity (use null or a string)",
            field=name,
            reason="float",
        )
    return value

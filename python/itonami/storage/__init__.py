"""Durable storage for itonami: the :class:`Storage` interface and its backends.

Pick a backend by URL with :func:`open_storage`:

==================================  ==============================================
``memory``                          dicts in this process; nothing survives it
``sqlite:///relative/path.db``      a SQLite file, path relative to the cwd
``sqlite:////absolute/path.db``     a SQLite file, absolute path (four slashes)
``sqlite:///:memory:``              SQLite in memory (tests)
``postgresql://user@host/db``       PostgreSQL through psycopg 3 (also ``postgres://``)
==================================  ==============================================

SQLite URLs take options as query parameters too
(``sqlite:///x.db?durability=normal``); keyword arguments win over them.

:func:`default_storage_url` tells where a store lives when nothing is said:
the ``ITONAMI_DB`` environment variable (a URL as above, or a plain file path
for SQLite), else ``$XDG_DATA_HOME/itonami/itonami.db``, else
``~/.local/share/itonami/itonami.db``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, unquote

from itonami.storage.base import (
    MESSAGE_KINDS,
    READY_NOW,
    TERMINAL_STATUSES,
    UNCHANGED,
    AppendRequest,
    Claim,
    ClusterStats,
    ExecutionRecord,
    Fence,
    Lease,
    Message,
    NodeInfo,
    Storage,
    StoredEvent,
)
from itonami.storage.memory import MemoryStorage
from itonami.storage.sqlite import SqliteStorage

__all__ = [
    "MESSAGE_KINDS",
    "READY_NOW",
    "TERMINAL_STATUSES",
    "UNCHANGED",
    "AppendRequest",
    "Claim",
    "ClusterStats",
    "ExecutionRecord",
    "Fence",
    "Lease",
    "Message",
    "NodeInfo",
    "MemoryStorage",
    "SqliteStorage",
    "Storage",
    "StoredEvent",
    "default_storage_url",
    "open_storage",
]

SUPPORTED_SCHEMES = ("memory", "sqlite:///", "postgresql://", "postgres://")

_SQLITE_INT_OPTIONS = ("readers",)
_SQLITE_FLOAT_OPTIONS = ("busy_timeout", "poll_interval")


def open_storage(url: str, **options: Any) -> Storage:
    """Make the backend named by ``url`` (not yet opened: ``await s.open()``).

    ``options`` go to the backend's constructor (SQLite: ``durability``,
    ``writer``, ``readers``, ``busy_timeout``, ``poll_interval``, ``bulk``;
    PostgreSQL: ``schema``, ``bulk``). An unknown scheme
    raises ``ValueError`` naming the supported ones.
    """
    if not isinstance(url, str):
        raise TypeError(f"storage URL must be a string, got {type(url).__name__}")
    if url in ("memory", "memory://", "memory:"):
        return MemoryStorage(url)
    if url.startswith("sqlite:///"):
        rest, _, query = url[len("sqlite:///") :].partition("?")
        path = unquote(rest)
        if not path:
            raise ValueError(f"storage URL {url!r} names no file (sqlite:///path/to/file.db)")
        merged: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in _SQLITE_INT_OPTIONS:
                merged[key] = int(value)
            elif key in _SQLITE_FLOAT_OPTIONS:
                merged[key] = float(value)
            elif key in ("durability", "writer"):
                merged[key] = value
            else:
                raise ValueError(
                    f"storage URL {url!r}: unknown SQLite option {key!r} "
                    "(known: durability, writer, readers, busy_timeout, poll_interval)"
                )
        merged.update(options)
        return SqliteStorage(path, url=url, **merged)
    if url.startswith(("postgresql://", "postgres://")):
        from itonami.storage.postgres import PostgresStorage

        return PostgresStorage(url, **options)
    raise ValueError(
        f"unsupported storage URL {url!r}: supported are {', '.join(SUPPORTED_SCHEMES)}"
    )


def default_storage_url() -> str:
    """The store to use when none is given: ``ITONAMI_DB``, else a per-user SQLite file."""
    env = os.environ.get("ITONAMI_DB", "").strip()
    if env:
        if env == "memory" or "://" in env:
            return env
        return "sqlite:///" + os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    if not base or not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return "sqlite:///" + os.path.join(base, "itonami", "itonami.db")

"""SQL activities with bound parameters only (SQLite and PostgreSQL).

The query text is fixed when the activity is built; input values reach the
database only as bound parameters, never by string formatting.

- SQLite (``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``,
  ``sqlite:///:memory:``) runs through :mod:`sqlite3` in a worker thread.
  Placeholders are SQLite's own: ``?`` / ``?NNN`` (positional) or
  ``:name`` (named). A ``:memory:`` database lives as long as the activity
  (one connection, used by one call at a time); a file database gets a
  connection per call. A call that is cancelled (timeout) interrupts the
  running statement.
- PostgreSQL (``postgresql://`` or ``postgres://``) runs through psycopg 3's
  async connection, one connection per call. Placeholders are psycopg's
  ``%s`` / ``%(name)s`` (a literal ``%`` is written ``%%``), or PostgreSQL's
  native ``$1``, ``$2``... which are passed to the server untouched through
  psycopg's raw cursor (no rewriting of the query): the ``paramstyle``
  argument picks, ``"auto"`` choosing native when the query contains
  ``$<digit>`` and no ``%s`` / ``%(``.

Each call runs in one transaction: committed when the statement succeeds,
rolled back when it fails.

``params`` says which input fields bind: a sequence of field names binds
them positionally in that order (to SQLite named placeholders in the order
they first appear in the query, so their count must match); a mapping
``{placeholder: field}`` binds by name; ``None`` binds the whole input by
name (or nothing if it is empty).
A field missing from the input is a non-retryable ``ActivityInputError``.
Dict and list values are bound as JSON (text in SQLite, ``jsonb`` in
PostgreSQL).

``fetch``: ``"all"`` -> ``{"rows": [{column: value}, ...]}``; ``"one"`` ->
``{"row": {...} | None}``; ``"rowcount"`` -> ``{"rowcount": n}``; ``"auto"``
-> rows when the statement returns rows, else the rowcount. Values are made
JSON-ready: bytes become base64 text, ``Decimal`` becomes its exact decimal
string, dates and times ISO 8601 strings, UUIDs strings.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import re
import sqlite3
import threading
import urllib.parse
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson

from .base import ActivityConfigError, ActivityContext, NonRetryableError
from .function import shared_executor
from .secrets import Secret, resolve

__all__ = ["DatabaseActivity"]

Fetch = Literal["all", "one", "rowcount", "auto"]
_NATIVE_PLACEHOLDER = re.compile(r"\$\d")
_FORMAT_PLACEHOLDER = re.compile(r"%(?:s|\()")

# SQLite's tokens, as far as telling parameters from text: literals, quoted
# identifiers and comments are skipped whole, so a ':x' inside them is no
# parameter, and words are taken whole, since SQLite identifiers may hold '$'.
_SQLITE_TOKEN = re.compile(
    r"""
      '(?:[^']|'')*'? | "(?:[^"]|"")*"? | `(?:[^`]|``)*`? | \[[^\]]*\]?
    | --[^\n]* | /\*.*?(?:\*/|\Z)
    | (?P<named>[:@$][\w$]+)
    | (?P<positional>\?)
    | [\w$]+ | .
    """,
    re.VERBOSE | re.DOTALL,
)


def _sqlite_named_parameters(query: str) -> list[str] | None:
    """The distinct named parameters of ``query`` in SQLite's numbering order.

    SQLite numbers parameters by first appearance, so this is the order in
    which a sequence binds them. ``None`` when the query has a ``?``
    parameter or no named one: then a sequence binds as it is.
    """
    names: list[str] = []
    for match in _SQLITE_TOKEN.finditer(query):
        if match.group("positional"):
            return None
        name = match.group("named")
        if name and name[1:] not in names:
            names.append(name[1:])
    return names or None


def _json_ready(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    return str(value)


class DatabaseActivity:
    """Run one parameterised SQL statement; see the module docs for the rules."""

    def __init__(
        self,
        name: str,
        dsn: str | Secret,
        query: str,
        *,
        params: Sequence[str] | Mapping[str, str] | None = None,
        fetch: Fetch = "auto",
        paramstyle: Literal["auto", "format", "native"] = "auto",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ActivityConfigError(f"activity name must be a non-empty string, got {name!r}")
        self.name = name
        if not isinstance(query, str) or not query.strip():
            raise ActivityConfigError(f"activity {name!r}: query is empty", activity=name)
        self.query = query
        if fetch not in ("all", "one", "rowcount", "auto"):
            raise ActivityConfigError(
                f"activity {name!r}: fetch must be 'all', 'one', 'rowcount' or 'auto', "
                f"got {fetch!r}",
                activity=name,
            )
        self.fetch = fetch
        if isinstance(params, str):
            raise ActivityConfigError(
                f"activity {name!r}: params must be a list of field names or a mapping, "
                f"not the string {params!r}",
                activity=name,
            )
        if params is not None and not isinstance(params, Mapping):
            params = tuple(params)
            bad = [p for p in params if not isinstance(p, str)]
        elif params is not None:
            params = dict(params)
            bad = [v for v in params.values() if not isinstance(v, str)]
        else:
            bad = []
        if bad:
            raise ActivityConfigError(
                f"activity {name!r}: params must name input fields (strings), got {bad!r}",
                activity=name,
            )
        self.params = params
        self.dsn = dsn
        self._backend, self._sqlite_path = self._parse_dsn(dsn)
        if paramstyle not in ("auto", "format", "native"):
            raise ActivityConfigError(
                f"activity {name!r}: paramstyle must be 'auto', 'format' or 'native'",
                activity=name,
            )
        if paramstyle == "auto":
            native = bool(_NATIVE_PLACEHOLDER.search(query)) and not _FORMAT_PLACEHOLDER.search(
                query
            )
            paramstyle = "native" if native else "format"
        self.paramstyle = paramstyle
        if self._backend != "sqlite" and paramstyle == "native" and isinstance(params, dict):
            raise ActivityConfigError(
                f"activity {name!r}: native $n placeholders are positional; "
                "give params as a list of field names",
                activity=name,
            )
        # Python 3.12 deprecates binding a sequence to named placeholders (3.14
        # refuses it), so a list of fields binds by name, in SQLite's order.
        self._sqlite_names = _sqlite_named_parameters(query)
        if self._backend == "sqlite" and (problem := self._sqlite_arity_problem()):
            raise ActivityConfigError(f"activity {name!r}: {problem}", activity=name)
        self._memory_conn: sqlite3.Connection | None = None
        self._memory_close: weakref.finalize[Any, Any] | None = None
        self._memory_lock = threading.Lock()

    def _sqlite_arity_problem(self) -> str | None:
        """Why a list of fields cannot bind the query's named placeholders, if so."""
        if self._sqlite_names is None or not isinstance(self.params, tuple):
            return None
        if len(self.params) == len(self._sqlite_names):
            return None
        placeholders = ", ".join(f":{n}" for n in self._sqlite_names)
        return (
            f"params lists {len(self.params)} fields for the query's "
            f"{len(self._sqlite_names)} named placeholders ({placeholders})"
        )

    def _parse_dsn(self, dsn: str | Secret) -> tuple[str, str | None]:
        if isinstance(dsn, Secret):
            return "secret", None  # the scheme is learnt when the secret is revealed
        if not isinstance(dsn, str):
            raise ActivityConfigError(
                f"activity {self.name!r}: dsn must be a string or Secret", activity=self.name
            )
        scheme = dsn.split(":", 1)[0].lower()
        if scheme == "sqlite":
            if not dsn.startswith("sqlite:///"):
                raise ActivityConfigError(
                    f"activity {self.name!r}: SQLite DSN must look like sqlite:///path.db or "
                    "sqlite:///:memory:",
                    activity=self.name,
                )
            path = urllib.parse.unquote(dsn[len("sqlite:///") :])
            if not path:
                raise ActivityConfigError(
                    f"activity {self.name!r}: SQLite DSN has no path", activity=self.name
                )
            return "sqlite", path
        if scheme in ("postgresql", "postgres"):
            return "postgresql", None
        raise ActivityConfigError(
            f"activity {self.name!r}: unsupported DSN scheme {scheme!r} "
            "(expected sqlite:/// or postgresql://)",
            activity=self.name,
        )

    def _bind(self, input: Mapping[str, Any], *, postgres: bool) -> Any:
        def value(field: str) -> Any:
            if field not in input:
                raise NonRetryableError(
                    f"activity {self.name!r}: query parameter needs input field {field!r}, "
                    f"which is missing (input fields: {sorted(input)})",
                    activity=self.name,
                    error_type="ActivityInputError",
                )
            return self._adapt(input[field], postgres)

        if self.params is None:
            return {k: self._adapt(v, postgres) for k, v in input.items()} if input else None
        if isinstance(self.params, dict):
            return {placeholder: value(field) for placeholder, field in self.params.items()}
        values = [value(field) for field in self.params]
        if not postgres and self._sqlite_names is not None:
            return dict(zip(self._sqlite_names, values, strict=True))
        return values

    @staticmethod
    def _adapt(value: Any, postgres: bool) -> Any:
        if isinstance(value, (dict, list)):
            if postgres:
                from psycopg.types.json import Jsonb

                return Jsonb(value)
            return orjson.dumps(value).decode()
        return value

    def _shape(self, description: Any, rows: list[Any] | None, rowcount: int) -> dict[str, Any]:
        fetch = self.fetch
        if fetch == "auto":
            fetch = "all" if description is not None else "rowcount"
        if fetch == "rowcount":
            return {"rowcount": rowcount}
        if description is None:
            raise NonRetryableError(
                f"activity {self.name!r}: fetch={self.fetch!r} but the statement returns no rows",
                activity=self.name,
                error_type="ProgrammingError",
            )
        columns = [d[0] for d in description]
        records = [
            {c: _json_ready(v) for c, v in zip(columns, row, strict=False)} for row in rows or []
        ]
        if fetch == "one":
            return {"row": records[0] if records else None}
        return {"rows": records}

    async def execute(self, input: dict[str, Any], ctx: ActivityContext) -> Any:
        """Run the statement with ``input`` bound and return rows or a rowcount."""
        backend, path = self._backend, self._sqlite_path
        dsn: str | None = None
        if backend == "secret":
            dsn = resolve(self.dsn)
            backend, path = self._parse_dsn(dsn)
        if backend == "sqlite":
            assert path is not None
            if dsn is not None and (problem := self._sqlite_arity_problem()):
                raise NonRetryableError(
                    f"activity {self.name!r}: {problem}",
                    activity=self.name,
                    error_type="ActivityConfigError",
                )
            return await self._execute_sqlite(input, path)
        return await self._execute_postgres(input, dsn if dsn is not None else resolve(self.dsn))

    # SQLite ---------------------------------------------------------------

    def _run_sqlite(self, conn: sqlite3.Connection, bound: Any) -> dict[str, Any]:
        with conn:  # commit on success, roll back on error
            cur = conn.execute(self.query, () if bound is None else bound)
            rows = cur.fetchall() if cur.description is not None else None
            return self._shape(cur.description, rows, cur.rowcount)

    async def _execute_sqlite(self, input: Mapping[str, Any], path: str) -> dict[str, Any]:
        bound = self._bind(input, postgres=False)
        holder: list[sqlite3.Connection] = []
        cancelled = threading.Event()

        def work() -> dict[str, Any]:
            if cancelled.is_set():
                raise sqlite3.OperationalError("interrupted before it started")
            if path == ":memory:":
                with self._memory_lock:
                    if self._memory_conn is None:
                        conn = sqlite3.connect(":memory:", check_same_thread=False)
                        # closed with the activity when aclose() is never called:
                        # Python 3.13 warns about connections left to the collector
                        self._memory_close = weakref.finalize(self, conn.close)
                        self._memory_conn = conn
                    holder.append(self._memory_conn)
                    return self._run_sqlite(self._memory_conn, bound)
            conn = sqlite3.connect(path, timeout=30)
            holder.append(conn)
            try:
                return self._run_sqlite(conn, bound)
            finally:
                conn.close()

        future = asyncio.get_running_loop().run_in_executor(shared_executor(), work)
        # after a cancellation nobody awaits the future: retrieve its outcome so that
        # asyncio does not log "exception was never retrieved"
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()
            if holder:
                # stop the statement instead of letting it run on in the thread
                holder[0].interrupt()
            raise

    # PostgreSQL -----------------------------------------------------------

    async def _execute_postgres(self, input: Mapping[str, Any], dsn: str) -> dict[str, Any]:
        import psycopg

        bound = self._bind(input, postgres=True)
        conn = await psycopg.AsyncConnection.connect(dsn)
        try:
            cursor_factory = (
                psycopg.AsyncRawCursor if self.paramstyle == "native" else psycopg.AsyncCursor
            )
            async with conn.transaction():
                cur = cursor_factory(conn)
                try:
                    await cur.execute(self.query, bound)
                    rows = await cur.fetchall() if cur.description is not None else None
                    return self._shape(cur.description, rows, cur.rowcount)
                finally:
                    await cur.close()
        finally:
            await conn.close()

    async def aclose(self) -> None:
        """Close the ``:memory:`` connection, if any (its data is lost)."""

        def close() -> None:
            with self._memory_lock:  # waits for a running statement: not on the loop
                if self._memory_close is not None:
                    self._memory_close()  # closes the connection
                    self._memory_close = None
                self._memory_conn = None

        await asyncio.get_running_loop().run_in_executor(shared_executor(), close)

    def __repr__(self) -> str:
        target = self._backend if self._backend != "secret" else "dsn from a secret"
        return f"DatabaseActivity({self.name!r}, {target})"

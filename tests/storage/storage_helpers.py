"""Helpers shared by the storage tests.

Every backend runs the same tests. PostgreSQL runs only when
``ITONAMI_TEST_POSTGRES_URL`` is set (``source .ci/postgres.sh`` starts a
private server and sets it); each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from itonami.storage import AppendRequest, Storage, StoredEvent, open_storage

PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")
PG_SKIP = "PostgreSQL tests need ITONAMI_TEST_POSTGRES_URL (run: source .ci/postgres.sh)"

BACKENDS = [
    "memory",
    "sqlite",
    "sqlite-perop",
    "sqlite-thread",
    "sqlite-memory",
    "postgres",
    "postgres-perop",
]
DURABLE_BACKENDS = ["sqlite", "sqlite-perop", "sqlite-thread", "postgres", "postgres-perop"]


def new_pg_schema() -> str:
    """A fresh schema name for one test."""
    return f"itonami_t_{uuid.uuid4().hex[:16]}"


def drop_pg_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass
class StoreFactory:
    """Makes store instances of one backend that share the same underlying data."""

    kind: str
    tmp: Path
    schema: str | None = None
    _memory: Storage | None = None
    tx: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def durable(self) -> bool:
        return self.kind in DURABLE_BACKENDS

    @property
    def path(self) -> Path:
        return self.tmp / "store.db"

    def make(self, **options: object) -> Storage:
        """A new, unopened store over this test's data."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = open_storage("memory")
            return self._memory
        if self.kind == "sqlite":
            return open_storage(f"sqlite:///{self.path}", **options)
        if self.kind == "sqlite-perop":  # every append through the shared SQL
            return open_storage(f"sqlite:///{self.path}", bulk=False, **options)
        if self.kind == "sqlite-thread":
            return open_storage(f"sqlite:///{self.path}", writer="thread", **options)
        if self.kind == "sqlite-memory":
            return open_storage("sqlite:///:memory:", **options)
        if self.kind == "postgres-perop":  # every append through the shared SQL
            return open_storage(PG_URL, schema=self.schema, bulk=False, **options)
        assert self.kind == "postgres"
        return open_storage(PG_URL, schema=self.schema, **options)

    def next_tx(self) -> int:
        return next(self.tx)


def event(
    execution_id: str, version: int, tx: int, *, kind: str = "step", ts: int = 0
) -> StoredEvent:
    """A stored event with a hash and payload derived from its identity."""
    ident = f"{execution_id}/{version}/{tx}".encode()
    return StoredEvent(
        version=version,
        tx=tx,
        timestamp=ts or 1_000_000 + version,
        kind=kind,
        hash=hashlib.sha256(ident).digest(),
        encoded=b"event:" + ident,
    )


def request(
    factory: StoreFactory,
    execution_id: str,
    expected: int,
    count: int = 1,
    *,
    status: str = "running",
    workflow_id: str = "wf",
    **extra: object,
) -> AppendRequest:
    """An append of ``count`` events after ``expected`` with fresh tx ids."""
    events = [event(execution_id, expected + 1 + i, factory.next_tx()) for i in range(count)]
    return AppendRequest(
        execution_id=execution_id,
        expected_version=expected,
        events=events,
        status=status,
        workflow_id=workflow_id if expected == 0 else None,
        **extra,  # type: ignore[arg-type]
    )

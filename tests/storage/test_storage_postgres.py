"""PostgreSQL-only behaviour: schema versions and connection errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from storage_helpers import PG_SKIP, PG_URL, drop_pg_schema, new_pg_schema

from itonami.errors import StorageError
from itonami.storage import open_storage

pytestmark = pytest.mark.postgres


@pytest.fixture
def schema() -> Iterator[str]:
    if not PG_URL:
        pytest.skip(PG_SKIP)
    name = new_pg_schema()
    yield name
    drop_pg_schema(name)


def _sql(schema: str, *statements: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for stmt in statements:
            conn.execute(stmt)  # type: ignore[call-overload]


async def test_v1_schema_is_migrated(schema: str) -> None:
    from itonami.storage.postgres import MIGRATIONS, SCHEMA_VERSION

    _sql(
        schema,
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version VALUES (1)",
        *MIGRATIONS[0][1],
        "INSERT INTO executions VALUES ('old', 'wf', '1', 'running', NULL, 1, 2, 0)",
    )
    s = open_storage(PG_URL, schema=schema)
    await s.open()
    try:
        rec = await s.get_execution("old")
        assert rec is not None and rec.workflow_id == "wf"
        assert await s.all_timers() == []  # the timers table exists now
    finally:
        await s.close()
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_URL) as conn:
        query = sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(schema))
        assert conn.execute(query).fetchone() == (SCHEMA_VERSION,)


async def test_newer_schema_is_refused(schema: str) -> None:
    s = open_storage(PG_URL, schema=schema)
    await s.open()
    await s.close()
    _sql(schema, "UPDATE schema_version SET version = version + 1")
    with pytest.raises(StorageError, match="newer"):
        await open_storage(PG_URL, schema=schema).open()


async def test_foreign_schema_is_refused(schema: str) -> None:
    _sql(schema, "CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StorageError, match="not an itonami store"):
        await open_storage(PG_URL, schema=schema).open()


async def test_unreachable_server_names_it_without_the_password() -> None:
    from itonami.storage.postgres import PostgresStorage

    s = PostgresStorage("postgresql://someone:s3cret@127.0.0.1:1/nowhere", connect_timeout=2)
    with pytest.raises(StorageError, match=r"127\.0\.0\.1:1") as info:
        await s.open()
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


async def test_commits_are_synchronous(schema: str) -> None:
    from itonami.storage.postgres import PostgresStorage

    s = PostgresStorage(PG_URL, schema=schema)
    await s.open()
    try:

        async def show(conn: object) -> str:
            cur = await conn.execute("SHOW synchronous_commit")  # type: ignore[attr-defined]
            return (await cur.fetchone())[0]

        assert await s._write(show) == "on"
    finally:
        await s.close()

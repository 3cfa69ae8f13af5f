"""PostgreSQL-only behaviour: schema versions and connection errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


async def test_openers_of_a_fresh_store_at_the_same_instant_all_succeed(schema: str) -> None:
    # Several processes (here: connections) creating the same fresh store
    # and registering its first definition at once take turns, none fails.
    async def one() -> None:
        s = open_storage(PG_URL, schema=schema)
        await s.open()
        try:
            await s.put_definition("wf", "1", "a" * 64, b"{}")
        finally:
            await s.close()

    await asyncio.gather(*(one() for _ in range(6)))
    s = open_storage(PG_URL, schema=schema)
    await s.open()
    try:
        assert await s.get_definition("wf", "1") == b"{}"
    finally:
        await s.close()


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


async def test_the_writer_finds_rows_by_key_on_a_young_table(schema: str) -> None:
    # Before statistics exist the planner scanned the whole executions table
    # for the append's row locks; the writer's session prefers the indexes.
    from itonami.storage import AppendRequest, StoredEvent
    from itonami.storage.postgres import PostgresStorage

    s = PostgresStorage(PG_URL, schema=schema)
    await s.open()
    try:
        ids = [f"e{i:04d}" for i in range(600)]
        for eid in ids:
            await s.append(
                AppendRequest(
                    execution_id=eid,
                    expected_version=0,
                    events=[StoredEvent(1, 1, 1, "workflow_started", b"h" * 32, b"{}")],
                    status="running",
                    workflow_id="wf",
                    allocate_tx=True,
                )
            )

        async def plan(conn: Any) -> str:
            cur = await conn.execute(
                "EXPLAIN SELECT execution_id, version, owner, epoch FROM executions"
                " WHERE execution_id = ANY(%s) ORDER BY execution_id FOR UPDATE",
                (ids[::10],),
            )
            return "\n".join(row[0] for row in await cur.fetchall())

        chosen = await s._write(plan)
        assert "Index" in chosen and "Seq Scan" not in chosen, chosen
        # The claimer too: its UPDATE of the picked rows scanned the table.
        await s.claim("n1", capabilities=[], limit=1)
        assert s._claimer is not None
        cur = await s._claimer.execute(
            "EXPLAIN " + s._CLAIM_SQL, ("n1", 0, [], 64, "n1", 1_000_000, 64)
        )
        claim_plan = "\n".join(row[0] for row in await cur.fetchall())
        assert "Seq Scan" not in claim_plan, claim_plan
    finally:
        await s.close()


# The schema of version 2 (before leases), as the previous release wrote it.
V2_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (2)",
    "CREATE TABLE executions (execution_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL,"
    " workflow_version TEXT NOT NULL, status TEXT NOT NULL, parent_id TEXT,"
    " created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, version BIGINT NOT NULL)",
    "CREATE TABLE events (execution_id TEXT NOT NULL, version BIGINT NOT NULL,"
    " tx BIGINT NOT NULL UNIQUE, timestamp BIGINT NOT NULL, kind TEXT NOT NULL,"
    " hash BYTEA NOT NULL, encoded BYTEA NOT NULL, PRIMARY KEY (execution_id, version))",
    "CREATE TABLE snapshots (execution_id TEXT NOT NULL, version BIGINT NOT NULL,"
    " data BYTEA NOT NULL, PRIMARY KEY (execution_id, version))",
    "CREATE TABLE definitions (workflow_id TEXT NOT NULL, version TEXT NOT NULL,"
    " content_hash TEXT NOT NULL, document BYTEA NOT NULL,"
    " seq BIGINT GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (workflow_id, version))",
    "CREATE INDEX definitions_hash ON definitions (content_hash)",
    "CREATE TABLE timers (execution_id TEXT NOT NULL, step TEXT NOT NULL,"
    " fire_at BIGINT NOT NULL, PRIMARY KEY (execution_id, step))",
    "CREATE INDEX timers_fire_at ON timers (fire_at)",
    "CREATE INDEX executions_status ON executions (status, created_at)",
    "CREATE INDEX executions_workflow ON executions (workflow_id, created_at)",
)


async def test_v2_schema_is_carried_forward_to_leases(schema: str) -> None:
    from itonami.storage import AppendRequest, Fence, StoredEvent

    _sql(
        schema,
        *V2_SCHEMA,
        "INSERT INTO executions VALUES ('run', 'wf', '1', 'running', NULL, 1, 2, 1)",
        "INSERT INTO executions VALUES ('done', 'wf', '1', 'completed', NULL, 1, 2, 1)",
        "INSERT INTO events VALUES ('run', 1, 41, 1, 'workflow_started', 'h', 'e')",
        "INSERT INTO events VALUES ('done', 1, 42, 1, 'workflow_started', 'h', 'e')",
    )
    s = open_storage(PG_URL, schema=schema)
    await s.open()
    try:
        (claim,) = await s.claim("n1", capabilities=[], limit=5)
        assert (claim.execution_id, claim.epoch) == ("run", 1)
        ev = StoredEvent(2, 1, 3, "step_started", b"h2", b"e2")
        req = AppendRequest("run", 1, [ev], "running", allocate_tx=True, fence=Fence("n1", 1))
        (tx,) = await s.commit(req)
        assert tx == 43  # the sequence starts above the stored txs
        assert await s.integrity_check() == []
    finally:
        await s.close()


async def test_a_failed_statement_in_the_pipelined_batch_fails_only_its_request(
    schema: str,
) -> None:
    # The bulk append sends its statements pipelined; one that fails there
    # (a stray event row where the next version goes) must send the batch
    # down the one-by-one path: the other request commits, the culprit fails
    # alone, and the connection serves the next batch.
    from storage_helpers import StoreFactory, request

    factory = StoreFactory("postgres", tmp=Path("."), schema=schema)
    s = factory.make()
    await s.open()
    try:
        await s.append(request(factory, "a", 0))
        await s.append(request(factory, "b", 0))
        _sql(
            schema,
            "INSERT INTO events (execution_id, version, tx, timestamp, kind, hash, encoded)"
            " VALUES ('b', 2, 999999, 0, 'stray', '\\x00', '\\x00')",
        )
        ok = s.submit(request(factory, "a", 1))
        bad = s.submit(request(factory, "b", 1))
        results = await asyncio.gather(ok, bad, return_exceptions=True)
        assert isinstance(results[0], list) and len(results[0]) == 1
        assert isinstance(results[1], StorageError)
        assert [e.version for e in await s.read_events("a")] == [1, 2]
        record = await s.get_execution("b")
        assert record is not None and record.version == 1
        await s.append(request(factory, "a", 2))
        assert len(await s.read_events("a")) == 3
    finally:
        await s.close()


async def test_rust_encoded_arrays_round_trip_through_the_server(schema: str) -> None:
    # The bulk append's array parameters are encoded by the Rust core and
    # sent through dumpers registered on the storage's own connections.
    from storage_helpers import StoreFactory

    from itonami.storage import postgres as pg

    cases: list[tuple[Any, str, list[Any]]] = [
        (pg._int8s, "bigint", [0, None, -1, -(2**63), 2**63 - 1, 1 << 40]),
        (pg._int8s, "bigint", [None]),
        (pg._int8s, "bigint", []),
        (pg._texts, "text", ["", None, "é", "日本語 😀", "a'b\"c{},\\", "x" * 70_000]),
        (pg._texts, "text", []),
        (pg._byteas, "bytea", [b"", None, bytes(range(256)), b"\x00" * 3_000_000]),
        (pg._byteas, "bytea", [None, None]),
        (pg._byteas, "bytea", []),
        (pg._bools, "bool", [True, None, False]),
        (pg._bools, "bool", []),
    ]
    factory = StoreFactory("postgres", tmp=Path("."), schema=schema)
    s = factory.make()
    conn = await s._connect()  # type: ignore[attr-defined]
    try:
        for encode, sql_type, values in cases:
            cur = await conn.execute(
                f"SELECT %b::{sql_type}[], cardinality(%b::{sql_type}[])",
                (encode(values), encode(values)),
            )
            row = await cur.fetchone()
            assert row is not None
            assert row[0] == values, sql_type
            assert row[1] == len(values)
        # Several arrays in one unnest, as the bulk statements send them.
        cur = await conn.execute(
            "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bytea[], %b::bool[])",
            (
                pg._texts(["a", None]),
                pg._int8s([None, 7]),
                pg._byteas([b"\x01", None]),
                pg._bools([None, True]),
            ),
        )
        assert await cur.fetchall() == [("a", None, b"\x01", None), (None, 7, None, True)]
    finally:
        await conn.close()


async def test_a_value_the_array_encoder_refuses_fails_only_its_request(schema: str) -> None:
    # A timer past int8 cannot be encoded: the batch goes the one-by-one way
    # (where the server refuses the value) and the other request commits.
    from storage_helpers import StoreFactory, request

    factory = StoreFactory("postgres", tmp=Path("."), schema=schema)
    s = factory.make()
    await s.open()
    try:
        await s.append(request(factory, "a", 0))
        await s.append(request(factory, "b", 0))
        ok = s.submit(request(factory, "a", 1))
        bad = s.submit(request(factory, "b", 1, timers_set={"t": 2**64}))
        results = await asyncio.gather(ok, bad, return_exceptions=True)
        assert isinstance(results[0], list) and len(results[0]) == 1
        assert isinstance(results[1], Exception)
        record = await s.get_execution("b")
        assert record is not None and record.version == 1
        await s.append(request(factory, "b", 1, timers_set={"t": 5}))
        assert len(await s.read_events("b")) == 2
    finally:
        await s.close()


async def test_a_running_executions_commits_rewrite_its_row_in_place(schema: str) -> None:
    """Schema 7: no index holds a column that a running execution's commits
    change, and pages keep room, so those commits are HOT updates (no new
    entry in each of the table's indexes)."""
    import time

    import psycopg

    from itonami.storage import AppendRequest, StoredEvent

    s = open_storage(PG_URL, schema=schema)
    await s.open()
    try:
        version = 0
        for n, status in ((1, "running"), *[(2, "running")] * 20, (1, "completed")):
            events = [
                StoredEvent(version + 1 + i, 1, 10 + version + i, "step_started", b"h" * 32, b"{}")
                for i in range(n)
            ]
            req = AppendRequest("e", version, events, status, workflow_id="wf", allocate_tx=True)
            await s.append(req)
            version += n
        assert await s.prune(finished_before=1) == []  # finished at 10 + version - 1
    finally:
        await s.close()  # its backend flushes its statistics as it exits
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        (options,) = conn.execute(
            "SELECT reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = 'executions'",
            (schema,),
        ).fetchone()
        assert "fillfactor=80" in options
        finished_at, updated_at = conn.execute(
            f'SELECT finished_at, updated_at FROM "{schema}".executions'  # type: ignore[call-overload]
        ).fetchone()
        assert finished_at == updated_at is not None
        deadline = time.monotonic() + 30
        while True:
            updated, hot = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE schemaname = %s AND relname = 'executions'",
                (schema,),
            ).fetchone()
            if updated >= 22 or time.monotonic() > deadline:
                break
            conn.execute("SELECT pg_stat_clear_snapshot()")
    # The first commit inserts the row and updates it (the bulk path's
    # shape); 20 commits of the running execution; the last changes status.
    assert updated == 22
    assert hot >= 20, (updated, hot)

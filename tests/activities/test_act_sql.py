"""DatabaseActivity on SQLite (always) and PostgreSQL (ITONAMI_TEST_POSTGRES_URL)."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itonami.activities import (
    ActivityConfigError,
    DatabaseActivity,
    Secret,
    describe_error,
    run_activity,
)
from itonami.activities.sql import _sqlite_named_parameters
from itonami.errors import ActivityError, ActivityTimeoutError

INJECTION = "Robert'); DROP TABLE students;--"


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "school.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT, meta TEXT)")
        conn.executemany(
            "INSERT INTO students (id, name) VALUES (?, ?)", [(1, "ann"), (2, "bo"), (3, "cy")]
        )
    conn.close()
    return f"sqlite:///{path}"


async def test_select_rows_as_dicts(db: str, make_ctx) -> None:
    act = DatabaseActivity(
        "list", db, "SELECT id, name FROM students WHERE id >= ? ORDER BY id", params=["min"]
    )
    out = await run_activity(act, {"min": 2}, make_ctx())
    assert out == {"rows": [{"id": 2, "name": "bo"}, {"id": 3, "name": "cy"}]}


async def test_named_params_and_fetch_one(db: str, make_ctx) -> None:
    act = DatabaseActivity(
        "one",
        db,
        "SELECT name FROM students WHERE id = :sid",
        params={"sid": "student"},
        fetch="one",
    )
    assert await run_activity(act, {"student": 1}, make_ctx()) == {"row": {"name": "ann"}}
    assert await run_activity(act, {"student": 99}, make_ctx()) == {"row": None}


async def test_whole_input_binds_by_name_when_params_is_none(db: str, make_ctx) -> None:
    act = DatabaseActivity("by_name", db, "SELECT name FROM students WHERE id = :id")
    assert await run_activity(act, {"id": 3}, make_ctx()) == {"rows": [{"name": "cy"}]}


async def test_insert_returns_rowcount_and_commits(db: str, make_ctx) -> None:
    insert = DatabaseActivity(
        "add", db, "INSERT INTO students (id, name) VALUES (?, ?)", params=["id", "name"]
    )
    assert await run_activity(insert, {"id": 10, "name": "dee"}, make_ctx()) == {"rowcount": 1}
    update = DatabaseActivity("ren", db, "UPDATE students SET name = upper(name) WHERE id < 3")
    assert await run_activity(update, {}, make_ctx()) == {"rowcount": 2}
    count = DatabaseActivity("n", db, "SELECT count(*) AS n FROM students", fetch="one")
    assert await run_activity(count, {}, make_ctx()) == {"row": {"n": 4}}


async def test_injection_attempt_is_stored_literally(db: str, make_ctx) -> None:
    insert = DatabaseActivity(
        "add",
        db,
        "INSERT INTO students (id, name) VALUES (:id, :name)",
        params={"id": "id", "name": "name"},
    )
    await run_activity(insert, {"id": 4, "name": INJECTION}, make_ctx())
    select = DatabaseActivity(
        "get", db, "SELECT name FROM students WHERE name = ?", params=["name"]
    )
    assert await run_activity(select, {"name": INJECTION}, make_ctx()) == {
        "rows": [{"name": INJECTION}]
    }
    count = DatabaseActivity("n", db, "SELECT count(*) AS n FROM students", fetch="one")
    assert await run_activity(count, {}, make_ctx()) == {"row": {"n": 4}}  # table survived


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
)
async def test_any_text_round_trips_through_bound_parameters(
    tmp_path: Path, make_ctx, value: str
) -> None:
    dsn = f"sqlite:///{tmp_path / 'rt.db'}"
    create = DatabaseActivity("c", dsn, "CREATE TABLE IF NOT EXISTS t (v TEXT)")
    await run_activity(create, {}, make_ctx())
    await run_activity(DatabaseActivity("d", dsn, "DELETE FROM t"), {}, make_ctx())
    await run_activity(
        DatabaseActivity("i", dsn, "INSERT INTO t VALUES (?)", params=["v"]),
        {"v": value},
        make_ctx(),
    )
    out = await run_activity(DatabaseActivity("s", dsn, "SELECT v FROM t"), {}, make_ctx())
    assert out == {"rows": [{"v": value}]}


async def test_json_values_and_blobs(make_ctx) -> None:
    act = DatabaseActivity(
        "j",
        "sqlite:///:memory:",
        "SELECT ? AS doc, x'00ff' AS blob, NULL AS missing",
        params=["doc"],
    )
    out = await run_activity(act, {"doc": {"a": [1, 2]}}, make_ctx())
    assert out == {"rows": [{"doc": '{"a":[1,2]}', "blob": "AP8=", "missing": None}]}


async def test_memory_database_lives_as_long_as_the_activity(make_ctx) -> None:
    act = DatabaseActivity("m", "sqlite:///:memory:", "CREATE TABLE t (x)")
    await run_activity(act, {}, make_ctx())
    with pytest.raises(ActivityError, match="already exists"):
        await run_activity(act, {}, make_ctx())
    await act.aclose()
    await run_activity(act, {}, make_ctx())  # a fresh database after aclose
    await act.aclose()


async def test_failed_statement_rolls_back(db: str, make_ctx) -> None:
    # the second row violates the primary key: neither row may stay
    act = DatabaseActivity(
        "bad", db, "INSERT INTO students (id, name) VALUES (?, 'x'), (1, 'dup')", params=["id"]
    )
    with pytest.raises(ActivityError) as info:
        await run_activity(act, {"id": 50}, make_ctx())
    assert info.value.error_type == "IntegrityError"
    check = DatabaseActivity(
        "c", db, "SELECT count(*) AS n FROM students WHERE id = 50", fetch="one"
    )
    assert await run_activity(check, {}, make_ctx()) == {"row": {"n": 0}}


async def test_missing_field_is_a_clear_non_retryable_error(db: str, make_ctx) -> None:
    act = DatabaseActivity("x", db, "SELECT * FROM students WHERE id = ?", params=["sid"])
    with pytest.raises(ActivityError, match="needs input field 'sid'") as info:
        await run_activity(act, {"id": 1}, make_ctx())
    assert not info.value.retryable


async def test_sql_errors_are_described(db: str, make_ctx) -> None:
    act = DatabaseActivity("x", db, "SELECT * FROM no_such_table")
    with pytest.raises(ActivityError) as info:
        await run_activity(act, {}, make_ctx(activity="x"))
    described = describe_error(info.value)
    assert described["type"] == "OperationalError"
    assert "no_such_table" in described["message"]


async def test_fetch_rows_from_a_statement_without_rows_fails(db: str, make_ctx) -> None:
    act = DatabaseActivity("x", db, "DELETE FROM students WHERE id = 1", fetch="all")
    with pytest.raises(ActivityError, match="returns no rows"):
        await run_activity(act, {}, make_ctx())


async def test_timeout_interrupts_a_long_query(make_ctx) -> None:
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    act = DatabaseActivity("slow", "sqlite:///:memory:", endless)
    with pytest.raises(ActivityTimeoutError):
        await run_activity(act, {}, make_ctx(), timeout=0.2)
    # aclose needs the connection's lock, held until the statement stops: it
    # returns only because the timeout interrupted the endless query
    await asyncio.wait_for(act.aclose(), 5)


async def test_field_list_binds_named_placeholders_in_order_of_appearance(
    db: str, make_ctx
) -> None:
    # Python 3.12 deprecates binding a sequence to named placeholders (and the
    # suite turns warnings into errors), so this also proves none is emitted.
    insert = DatabaseActivity(
        "add",
        db,
        "INSERT INTO students (name, id, meta) VALUES (:n, @i, $m || ':x' || :n) -- :c",
        params=["who", "num", "tag"],
    )
    assert await run_activity(insert, {"who": "di", "num": 7, "tag": "t"}, make_ctx()) == {
        "rowcount": 1
    }
    select = DatabaseActivity(
        "get", db, "SELECT name, meta FROM students WHERE id = :id", params=["id"], fetch="one"
    )
    assert await run_activity(select, {"id": 7}, make_ctx()) == {
        "row": {"name": "di", "meta": "t:xdi"}
    }


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("SELECT :a, :b, :a", ["a", "b"]),
        ("SELECT $b, @a, :c", ["b", "a", "c"]),
        ("SELECT ':no', \"@no\", [$no], `:no` /* :no */ , :yes -- :no", ["yes"]),
        ("SELECT 'it''s :no' || :yes", ["yes"]),
        ("SELECT a$b, :x FROM t", ["x"]),
        ("SELECT ?, :a", None),
        ("SELECT ?1, ?2", None),
        ("SELECT 1", None),
    ],
)
def test_sqlite_named_parameters_follow_sqlite_tokens(query: str, names: list[str] | None) -> None:
    assert _sqlite_named_parameters(query) == names


def test_field_list_must_match_the_named_placeholders() -> None:
    with pytest.raises(ActivityConfigError, match=r"2 fields for the query's 1 named .*\(:a\)"):
        DatabaseActivity("bad", "sqlite:///:memory:", "SELECT :a, :a", params=["x", "y"])


async def test_field_list_arity_is_checked_for_a_secret_sqlite_dsn(
    tmp_path: Path, make_ctx, monkeypatch
) -> None:
    monkeypatch.setenv("ITONAMI_TEST_DSN", f"sqlite:///{tmp_path / 's.db'}")
    act = DatabaseActivity("s", Secret.env("ITONAMI_TEST_DSN"), "SELECT :a", params=["x", "y"])
    with pytest.raises(ActivityError, match="2 fields for the query's 1") as info:
        await run_activity(act, {"x": 1, "y": 2}, make_ctx())
    assert info.value.retryable is False


async def test_memory_connection_is_closed_with_the_activity(make_ctx) -> None:
    act = DatabaseActivity("m", "sqlite:///:memory:", "SELECT 1 AS one")
    assert await run_activity(act, {}, make_ctx()) == {"rows": [{"one": 1}]}
    conn = act._memory_conn
    assert conn is not None
    del act
    gc.collect()
    # closed by the activity's finalizer, not left to the collector (a ResourceWarning on 3.13)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")


async def test_dsn_from_secret(tmp_path: Path, make_ctx, monkeypatch) -> None:
    monkeypatch.setenv("ITONAMI_TEST_DSN", f"sqlite:///{tmp_path / 's.db'}")
    act = DatabaseActivity("s", Secret.env("ITONAMI_TEST_DSN"), "SELECT 2 AS two")
    assert await run_activity(act, {}, make_ctx()) == {"rows": [{"two": 2}]}
    assert "s.db" not in repr(act)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("mysql://x", "SELECT 1"), {}, "unsupported DSN scheme"),
        (("sqlite://x.db", "SELECT 1"), {}, "sqlite:///"),
        (("sqlite:///", "SELECT 1"), {}, "no path"),
        (("sqlite:///:memory:", "  "), {}, "query is empty"),
        (("sqlite:///:memory:", "SELECT 1"), {"fetch": "many"}, "fetch"),
        (("sqlite:///:memory:", "SELECT ?"), {"params": "id"}, "not the string"),
        (("sqlite:///:memory:", "SELECT ?"), {"params": [1]}, "name input fields"),
        (("postgresql://h/db", "SELECT $1"), {"params": {"a": "b"}}, "positional"),
    ],
)
def test_bad_configuration_is_rejected(
    args: tuple[str, str], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ActivityConfigError, match=match):
        DatabaseActivity("bad", *args, **kwargs)


# PostgreSQL ------------------------------------------------------------------

POSTGRES_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL")
postgres = pytest.mark.skipif(not POSTGRES_URL, reason="ITONAMI_TEST_POSTGRES_URL is not set")


@pytest.fixture
async def pg_table() -> Any:
    import psycopg

    assert POSTGRES_URL is not None
    table = f"itonami_test_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {table} (id int PRIMARY KEY, name text, price numeric(10,2), doc jsonb)"
        )
        await conn.execute(f"INSERT INTO {table} VALUES (1, 'ann', 9.50, NULL), (2, 'bo', 1, NULL)")
        try:
            yield table
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")


@pytest.mark.postgres
@postgres
async def test_postgres_select_with_native_dollar_placeholders(pg_table: str, make_ctx) -> None:
    act = DatabaseActivity(
        "sel",
        POSTGRES_URL,
        f"SELECT id, name, price FROM {pg_table} WHERE id >= $1 ORDER BY id",
        params=["min"],
    )
    assert act.paramstyle == "native"
    out = await run_activity(act, {"min": 1}, make_ctx())
    assert out == {
        "rows": [
            {"id": 1, "name": "ann", "price": "9.50"},
            {"id": 2, "name": "bo", "price": "1.00"},
        ]
    }


@pytest.mark.postgres
@postgres
async def test_postgres_dollar_inside_string_literal_is_not_a_placeholder(
    pg_table: str, make_ctx
) -> None:
    act = DatabaseActivity(
        "lit", POSTGRES_URL, "SELECT '$2 is text' AS t, $1::int AS n", params=["n"]
    )
    assert await run_activity(act, {"n": 5}, make_ctx()) == {"rows": [{"t": "$2 is text", "n": 5}]}


@pytest.mark.postgres
@postgres
async def test_postgres_format_style_insert_rowcount_and_injection(pg_table: str, make_ctx) -> None:
    insert = DatabaseActivity(
        "ins",
        POSTGRES_URL,
        f"INSERT INTO {pg_table} (id, name, doc) VALUES (%(id)s, %(name)s, %(doc)s)",
        params={"id": "id", "name": "name", "doc": "doc"},
    )
    assert insert.paramstyle == "format"
    out = await run_activity(insert, {"id": 3, "name": INJECTION, "doc": {"k": [1]}}, make_ctx())
    assert out == {"rowcount": 1}
    select = DatabaseActivity(
        "get",
        POSTGRES_URL,
        f"SELECT name, doc FROM {pg_table} WHERE id = %s",
        params=["id"],
        fetch="one",
    )
    assert await run_activity(select, {"id": 3}, make_ctx()) == {
        "row": {"name": INJECTION, "doc": {"k": [1]}}
    }


@pytest.mark.postgres
@postgres
async def test_postgres_error_rolls_back(pg_table: str, make_ctx) -> None:
    act = DatabaseActivity(
        "dup",
        POSTGRES_URL,
        f"INSERT INTO {pg_table} (id, name) VALUES ($1, 'x'), (1, 'dup')",
        params=["id"],
    )
    with pytest.raises(ActivityError) as info:
        await run_activity(act, {"id": 40}, make_ctx())
    assert info.value.error_type == "UniqueViolation"
    check = DatabaseActivity(
        "c", POSTGRES_URL, f"SELECT count(*) AS n FROM {pg_table} WHERE id = 40", fetch="one"
    )
    assert await run_activity(check, {}, make_ctx()) == {"row": {"n": 0}}

"""The crash torture on PostgreSQL, plus a server restart in the middle of a run.

Skipped unless ``ITONAMI_TEST_POSTGRES_URL`` is set (``source .ci/postgres.sh``).
The restart needs control of the server: ``ITONAMI_PG_DIR`` (the cluster's
folder, data in ``$ITONAMI_PG_DIR/data``) and ``ITONAMI_PG_BIN`` (the folder of
``pg_ctl``), both exported by ``.ci/postgres.sh``; as root, ``pg_ctl`` runs as
the ``postgres`` user. Without them the restart part is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crash_helpers import ENGINE_FAILPOINTS, Store, restart_postgres, run_torture, torture_kills

pytestmark = [pytest.mark.crash, pytest.mark.postgres]

PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")
PG_DIR = os.environ.get("ITONAMI_PG_DIR", "")
PG_BIN = os.environ.get("ITONAMI_PG_BIN", "")

if not PG_URL:
    pytestmark.append(
        pytest.mark.skip(
            reason="PostgreSQL crash tests need ITONAMI_TEST_POSTGRES_URL "
            "(run: source .ci/postgres.sh)"
        )
    )


@pytest.fixture
def pg_store() -> Iterator[Callable[[Path], Store]]:
    """Makes stores in fresh schemas; drops them all afterwards."""
    import psycopg
    from psycopg import sql

    schemas: list[str] = []

    def make(_directory: Path) -> Store:
        schema = f"itonami_crash_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        return Store(PG_URL, {"schema": schema})

    yield make
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _assert_no_unknown_hangs(hangs: list[str]) -> None:
    unknown = list(hangs)
    assert unknown == [], unknown[0] if unknown else ""


def test_postgres_survives_kills(pg_store: Callable[[Path], Store], tmp_path: Path) -> None:
    kills = max(1, torture_kills() * 3 // 10)
    report = run_torture(
        pg_store, kills=kills, seed=424242, workdir=tmp_path, failpoints=ENGINE_FAILPOINTS
    )
    print(report.text())
    assert report.kills >= kills
    assert report.in_flight_by_cause.total() > 0
    _assert_no_unknown_hangs(report.hangs)


@pytest.mark.skipif(
    not (PG_DIR and PG_BIN),
    reason="restarting PostgreSQL needs ITONAMI_PG_DIR and ITONAMI_PG_BIN (.ci/postgres.sh)",
)
def test_postgres_survives_server_restarts_mid_run(
    pg_store: Callable[[Path], Store], tmp_path: Path
) -> None:
    report = run_torture(
        pg_store,
        kills=5,
        seed=7,
        workdir=tmp_path,
        failpoints=ENGINE_FAILPOINTS,
        restart_server=restart_postgres,
        server_restarts=2,
    )
    print(report.text())
    assert report.server_restarts == 2
    _assert_no_unknown_hangs(report.hangs)

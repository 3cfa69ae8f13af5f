"""Fixtures of the web UI tests: populated stores on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web UI tests need the ui extra")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "storage"))

from storage_helpers import drop_pg_schema
from ui_support import Store, make_store


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def populated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    store = make_store(request.param, tmp_path_factory.mktemp("ui"))
    yield store
    if store.schema is not None:
        drop_pg_schema(store.schema)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_store("sqlite", tmp_path_factory.mktemp("ui-browser"))

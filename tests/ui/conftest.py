"""Fixtures of the web UI tests: populated stores on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web UI tests need the ui extra")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "storage"))

import demo
from storage_helpers import PG_SKIP, PG_URL, drop_pg_schema

from itonami.storage import Storage, open_storage


@dataclass
class Store:
    """One populated store: make as many Storage objects on it as needed."""

    kind: str
    url: str
    schema: str | None
    ids: dict[str, str]

    def open(self) -> Storage:
        if self.schema is not None:
            return open_storage(self.url, schema=self.schema)
        return open_storage(self.url)

    @property
    def target(self) -> str | Callable[[], Storage]:
        """What ``demo.engine`` takes: the URL, or a store factory for a PG schema."""
        return self.url if self.schema is None else self.open


def make_store(kind: str, tmp: Path) -> Store:
    if kind == "postgres":
        if not PG_URL:
            pytest.skip(PG_SKIP)
        schema = f"itonami_ui_{uuid.uuid4().hex[:12]}"
        store = Store(kind, PG_URL, schema, {})
    else:
        store = Store(kind, f"sqlite:///{tmp}/ui.db", None, {})
    # In a thread of its own: Playwright's sync API may hold this thread's loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        store.ids = pool.submit(asyncio.run, demo.populate(store.target)).result()
    return store


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

"""Fixtures for the storage conformance suite (helpers in storage_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from storage_helpers import BACKENDS, PG_SKIP, PG_URL, StoreFactory, drop_pg_schema, new_pg_schema

from itonami.storage import Storage


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    kind = request.param
    if kind.startswith("postgres"):
        if not PG_URL:
            pytest.skip(PG_SKIP)
        schema = new_pg_schema()
        yield StoreFactory(kind, tmp_path, schema)
        drop_pg_schema(schema)
    else:
        yield StoreFactory(kind, tmp_path)


@pytest.fixture
async def store(factory: StoreFactory) -> AsyncIterator[Storage]:
    s = factory.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()

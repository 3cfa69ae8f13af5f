"""Fixtures for engine tests: every test runs on each storage backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from engine_helpers import Harness, drop_schema

PG_URL = os.environ.get("ITONAMI_TEST_POSTGRES_URL", "")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def h(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    kind = request.param
    schema = None
    if kind == "memory":
        harness = Harness()
    elif kind == "sqlite":
        harness = Harness(f"sqlite:///{tmp_path}/engine.db")
    else:
        if not PG_URL:
            pytest.skip("PostgreSQL tests need ITONAMI_TEST_POSTGRES_URL")
        schema = f"itonami_e_{uuid.uuid4().hex[:12]}"
        harness = Harness(PG_URL, schema=schema)
    try:
        yield harness
    finally:
        await harness.close()
        if schema is not None:
            drop_schema(schema)

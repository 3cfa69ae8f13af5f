"""Fixtures for engine tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from engine_helpers import Harness


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.close()

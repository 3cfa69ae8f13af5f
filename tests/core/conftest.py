"""Fixtures for the core tests."""

from __future__ import annotations

import pytest
from core_helpers import SAMPLE, append_all

from itonami import _core


@pytest.fixture
def sample_store() -> tuple[_core.VersionStore, bytes]:
    store = _core.VersionStore()
    return store, append_all(store, "e1", SAMPLE)

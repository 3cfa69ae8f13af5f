"""Populated stores for the web UI tests (SQLite, or a PostgreSQL schema)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "storage"))

import ui_demo
from storage_helpers import PG_SKIP, PG_URL

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
        store.ids = pool.submit(asyncio.run, ui_demo.populate(store.target)).result()
    return store

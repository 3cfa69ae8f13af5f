"""The executions list over 100,000 executions: pages, filters and counts stay right."""

from __future__ import annotations

import asyncio
import hashlib
import re

import httpx
import pytest

from itonami.storage import Storage, open_storage
from itonami.storage.base import AppendRequest, StoredEvent
from itonami.ui import create_app

N = 100_000
STATUSES = ("completed", "failed", "running", "cancelled")
pytestmark = pytest.mark.timeout(600)


def row(i: int) -> AppendRequest:
    """Execution ``i``: created at second ``i``; its status and workflow cycle."""
    eid = f"exec-{i:06d}"
    ident = eid.encode()
    ev = StoredEvent(
        version=1,
        tx=i + 1,
        timestamp=1_700_000_000_000_000 + i * 1_000_000,
        kind="workflow_started",
        hash=hashlib.blake2b(ident, digest_size=32).digest(),
        encoded=b"row:" + ident,  # the list reads the summary rows only
    )
    return AppendRequest(
        execution_id=eid,
        expected_version=0,
        events=[ev],
        status=STATUSES[i % 4],
        workflow_id=f"wf-{i % 3}",
        workflow_version="1",
    )


async def fill(storage: Storage) -> None:
    # Submitted together, the appends share commits (group commit).
    for start in range(0, N, 5000):
        await asyncio.gather(*(storage.submit(row(i)) for i in range(start, start + 5000)))


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('big')}/big.db?durability=normal"

    async def make() -> None:
        storage = open_storage(url)
        await storage.open()
        try:
            await fill(storage)
        finally:
            await storage.close()

    asyncio.run(make())
    return url


def ids(page: dict[str, object]) -> list[str]:
    items = page["items"]
    assert isinstance(items, list)
    return [r["execution_id"] for r in items]


async def test_paging_a_hundred_thousand_executions(big_store: str) -> None:
    app = create_app(big_store)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui") as c,
    ):
        first = (await c.get("/api/executions", params={"limit": 100})).json()
        assert first["total"] == N
        assert first["counts"] == {
            "running": N // 4,
            "pending": 0,
            "completed": N // 4,
            "failed": N // 4,
            "compensated": 0,
            "cancelled": N // 4,
            "timed_out": 0,
        }
        assert ids(first) == [f"exec-{i:06d}" for i in range(N - 1, N - 101, -1)]
        assert first["has_more"] is True

        deep = (await c.get("/api/executions", params={"limit": 100, "offset": 99_950})).json()
        assert ids(deep) == [f"exec-{i:06d}" for i in range(49, -1, -1)]
        assert deep["has_more"] is False

        failed = (
            await c.get(
                "/api/executions",
                params={"status": "failed", "workflow_id": "wf-1", "offset": 10, "limit": 3},
            )
        ).json()
        # failed: i % 4 == 1; wf-1: i % 3 == 1; so i % 12 == 1, newest first
        assert ids(failed) == [f"exec-{i:06d}" for i in (99_877, 99_865, 99_853)]
        assert failed["total"] == len(range(1, N, 12))

        window = (
            await c.get(
                "/api/executions",
                params={
                    "created_after": str(1_700_000_000_000_000 + 500 * 1_000_000),
                    "created_before": str(1_700_000_000_000_000 + 510 * 1_000_000),
                },
            )
        ).json()
        assert ids(window) == [f"exec-{i:06d}" for i in range(509, 499, -1)]
        assert (await c.get("/api/executions", params={"q": "exec-04242"})).json()["total"] == 10

        # the HTML page walks the same pages, with links to the next and previous
        html = (await c.get("/executions", params={"offset": 50})).text
        assert re.findall(r'<tr data-id="([^"]*)"', html)[0] == f"exec-{N - 51:06d}"
        assert 'href="/executions?offset=100" rel="next"' in html
        assert 'href="/executions" rel="prev"' in html
        assert f"51\u2013100 of {N}" in html

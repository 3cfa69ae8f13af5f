"""``/metrics``: what ``itonami serve`` exposes about a store (read at scrape
time), and the engine metrics an ASGI app can mount."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
import ui_demo as demo
from ui_server import free_port
from ui_support import Store

from itonami.ui import create_app

pytest.importorskip("prometheus_client", reason="the metrics tests need the metrics extra")
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def expected(store: Store) -> tuple[dict[str, int], Any]:
    storage = store.open()
    await storage.open()
    try:
        return await storage.count_executions(), await storage.cluster_stats()
    finally:
        await storage.close()


def test_itonami_serve_exposes_the_store_on_metrics(sqlite_store: Store) -> None:
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "itonami.cli", "--db", sqlite_store.url, "serve",
         "--port", str(port)],
        env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stderr is not None
            # uvicorn says so once it listens (or the process ends: the test fails).
            for line in proc.stderr:
                if "Uvicorn running on" in line:
                    break
            else:
                raise AssertionError(f"itonami serve did not start (exit {proc.wait()})")
            resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        finally:
            proc.terminate()
            proc.wait(30)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    got = samples(resp.text)
    statuses, stats = asyncio.run(expected(sqlite_store))
    assert sum(statuses.values()) >= 5  # the demo store holds several statuses
    for status in ("running", "completed", "failed", "cancelled", "timed_out", "compensated"):
        assert got[("itonami_store_executions", (("status", status),))] == statuses.get(status, 0)
    assert got[("itonami_store_ready_executions", ())] == stats.ready
    assert got[("itonami_store_waiting_for_capability", ())] == len(stats.waiting_for)
    assert got[("itonami_store_lease_reassignments_total", ())] == stats.reassignments
    assert got[("itonami_store_fenced_writes_total", ())] == stats.fenced_writes
    nodes = sum(v for (name, _), v in got.items() if name == "itonami_store_nodes")
    assert nodes == len(stats.nodes)
    # The process's own registry rides along (the default collectors at least).
    assert any(name == "python_info" for name, _ in got)


async def test_metrics_is_served_only_when_asked_for(sqlite_store: Store) -> None:
    for metrics, code in ((False, 404), (True, 200)):
        storage = sqlite_store.open()
        app = create_app(storage, metrics=metrics)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
                resp = await client.get("/metrics")
            assert resp.status_code == code
        finally:
            await storage.close()


async def test_an_engines_metrics_mount_in_an_asgi_app(tmp_path: Any) -> None:
    from itonami.metrics import asgi_app

    reg = CollectorRegistry()
    engine = demo.engine(f"sqlite:///{tmp_path}/mounted.db")
    engine.enable_metrics(reg)
    async with engine:
        order = demo.definitions()["order"]
        eid = await engine.start_workflow(order, {"orderId": "M-1", "amount": 5})
        await engine.wait_for_completion(eid, timeout=10)
    transport = httpx.ASGITransport(app=asgi_app(reg))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        resp = await client.get("/")
    got = samples(resp.text)
    assert got[("itonami_workflow_started_total", (("workflow_id", "order_processing"),))] == 1
    assert got[("itonami_workflow_completed_total", (("workflow_id", "order_processing"),))] == 1

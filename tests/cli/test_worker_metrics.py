"""``itonami worker --metrics-port``: a worker node serves its engine's
Prometheus metrics while it runs the store's work."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from itonami import LeastLoadedBalancer, WorkflowEngine, WorkflowIR

pytest.importorskip("prometheus_client", reason="the metrics tests need the metrics extra")
from prometheus_client.parser import text_string_to_metric_families

ACTIVITIES = """
from itonami import ActivityRegistry

registry = ActivityRegistry()


@registry.activity()
async def hello(name: str) -> str:
    return f"hello {name}"
"""

IR = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "greet",
            "name": "greet",
            "version": "1",
            "inputs": [{"name": "name", "type": "string", "required": True}],
            "strategy": {
                "op": "activity",
                "id": "hi",
                "activity_ref": "hello",
                "input_mapping": {"name": "$.inputs.name"},
            },
        }
    }
)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_worker_serves_the_metrics_of_what_it_ran(tmp_path: Path) -> None:
    app = tmp_path / "greeting.py"
    app.write_text(ACTIVITIES)
    db = f"sqlite:///{tmp_path}/cluster.db"
    with subprocess.Popen(
        [sys.executable, "-m", "itonami", "--db", db, "worker", "--activities", str(app),
         "--node-id", "w1", "--metrics-port", "0"],
        env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stderr is not None
            url = None
            for line in proc.stderr:
                found = re.search(r"metrics on (http://\S+)", line)
                if found:
                    url = found.group(1)
                    break
            assert url is not None, f"the worker did not start (exit {proc.wait()})"
            client = (
                WorkflowEngine.builder()
                .with_storage(db)
                .with_recovery(False)
                .with_distributed_execution(LeastLoadedBalancer())
                .build()
            )
            async with client:
                eid = await client.start_workflow(IR, {"name": "ada"})
                assert await client.wait_for_completion(eid, timeout=30) == {"result": "hello ada"}
            # The worker counts the end just after its commit, which the client
            # may read first: look until the count arrives (bounded).
            done = ("itonami_workflow_completed_total", (("workflow_id", "greet"),))
            deadline = time.monotonic() + 10
            got = scrape(url)
            while got.get(done) != 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                got = scrape(url)
            assert got.get(done) == 1
        finally:
            proc.terminate()
            proc.wait(30)
    latency = ("itonami_activity_execution_latency_seconds_count", (("activity", "hello"),))
    assert got[latency] == 1
    # The client started it (its own registry, not the worker's); the worker ran it.
    assert got.get(("itonami_workflow_started_total", (("workflow_id", "greet"),)), 0) == 0
    assert got[("itonami_commit_events_count", ())] >= 1
    assert got[("itonami_executions", (("phase", "live"),))] == 0

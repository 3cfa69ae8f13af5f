"""HTTP and SQL activities inside real workflows, and the blocking facade."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from engine_helpers import Harness, act, wf

from itonami import (
    ActivityRegistry,
    DatabaseActivity,
    HttpActivity,
    Secret,
    WorkflowEngine,
    WorkflowFailedError,
)


class Prices(BaseHTTPRequestHandler):
    seen_auth: list[str] = []  # noqa: RUF012 - shared by the test on purpose

    def do_GET(self) -> None:
        Prices.seen_auth.append(self.headers.get("Authorization", ""))
        sku = unquote(self.path.rsplit("/", 1)[-1])
        if sku == "missing":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"sku": sku, "price": 12.5}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def price_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Prices)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_http_then_sql_in_one_workflow(
    h: Harness, price_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "orders.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE orders (sku TEXT, price REAL)")
    monkeypatch.setenv("PRICE_TOKEN", "s3cr3t-token")
    h.registry.register(
        HttpActivity(
            "price",
            f"{price_server}/price/{{sku}}",
            method="GET",
            body="none",
            headers={"Authorization": Secret.env("PRICE_TOKEN", prefix="Bearer ")},
        )
    )
    h.registry.register(
        DatabaseActivity(
            "save",
            f"sqlite:///{db}",
            "INSERT INTO orders (sku, price) VALUES (:sku, :price)",
            params=["sku", "price"],
        )
    )
    ir = wf(
        {
            "op": "seq",
            "strategies": [
                act("price", "quote", input_mapping={"sku": "$.inputs.sku"}),
                act(
                    "save",
                    input_mapping={
                        "sku": "$.steps.quote.output.body.sku",
                        "price": "$.steps.quote.output.body.price",
                    },
                ),
            ],
        },
        inputs=[{"name": "sku", "type": "string", "required": True}],
    )
    eid = await h.engine.start_workflow(ir, {"sku": "A 1/x"})
    assert await h.engine.wait_for_completion(eid, timeout=10) == {"rowcount": 1}
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("SELECT sku, price FROM orders").fetchall() == [("A 1/x", 12.5)]
    assert Prices.seen_auth[-1] == "Bearer s3cr3t-token"
    # The secret reached the server, never the history.
    for event in await h.engine.get_event_history(eid):
        assert "s3cr3t" not in json.dumps(event.data)


async def test_http_status_failure_fails_the_workflow(h: Harness, price_server: str) -> None:
    h.registry.register(HttpActivity("price", f"{price_server}/price/{{sku}}", method="GET"))
    ir = wf(act("price", input_mapping={"sku": "missing"}, retry_policy={"maximum_attempts": 1}))
    with pytest.raises(WorkflowFailedError) as info:
        await h.run(ir)
    assert info.value.error["type"] == "HttpStatusError"


def test_blocking_facade_runs_a_workflow(tmp_path: Path) -> None:
    registry = ActivityRegistry()

    @registry.activity()
    def greet(name: str) -> dict:
        return {"greeting": f"hello {name}"}

    ir = wf(act("greet", input_mapping={"name": "$.inputs.who"}))
    with (
        WorkflowEngine.builder()
        .with_storage(f"sqlite:///{tmp_path / 'sync.db'}")
        .with_activities(registry)
        .build_sync()
    ) as engine:
        eid = engine.start_workflow(ir, {"who": "ann"})
        assert engine.wait_for_completion(eid, timeout=10) == {"greeting": "hello ann"}
        kinds = [e.kind for e in engine.get_event_history(eid)]
        assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed"
        engine.verify(eid)

"""Every endpoint of the web UI, through its ASGI app (no browser), on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import ui_demo as demo
from ui_support import Store

from itonami import InclusionProof, verify_proof
from itonami.storage.base import AppendRequest, StoredEvent
from itonami.ui import create_app

pytestmark = pytest.mark.timeout(300)


@contextlib.asynccontextmanager
async def ui(store: Store, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    storage = store.open()
    app = create_app(storage, **options)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ui") as c,
        ):
            yield c
    finally:
        await storage.close()


async def start_approval(store: Store) -> str:
    """A fresh approval left waiting for its signal, owned by nobody."""
    eid = f"approval-{uuid.uuid4().hex[:8]}"
    async with demo.engine(store.target) as eng:
        await eng.start_workflow(demo.definitions()["approval"], {"amount": 5000}, execution_id=eid)
        await demo.waiting(eng, eid)
    return eid


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-id="([^"]*)"', page)


async def test_executions_list_filters_and_counts(populated: Store) -> None:
    async with ui(populated) as c:
        everything = (await c.get("/api/executions")).json()
        ids = [r["execution_id"] for r in everything["items"]]
        assert set(populated.ids.values()) <= set(ids)
        created = [r["created_at"] for r in everything["items"]]
        assert created == sorted(created, reverse=True)  # newest first

        orders = (await c.get("/api/executions", params={"workflow_id": "order_processing"})).json()
        assert {r["execution_id"] for r in orders["items"]} == {"order-ok", "order-declined"}
        assert orders["counts"]["completed"] == 1
        assert orders["counts"]["compensated"] == 1
        assert orders["total"] == 2

        declined = (
            await c.get(
                "/api/executions",
                params={"workflow_id": "order_processing", "status": "compensated"},
            )
        ).json()
        assert [r["execution_id"] for r in declined["items"]] == ["order-declined"]
        assert declined["total"] == 1
        assert declined["counts"]["completed"] == 1  # counts ignore the status filter

        found = (await c.get("/api/executions", params={"q": "batch"})).json()
        assert [r["execution_id"] for r in found["items"]] == ["batch-1"]
        later = (await c.get("/api/executions", params={"created_after": "2999-01-01"})).json()
        assert later["items"] == []
        first = min(created)
        since = (
            await c.get(
                "/api/executions",
                params={"created_after": str(first), "created_before": str(first + 1)},
            )
        ).json()
        assert len(since["items"]) == 1

        page = (await c.get("/executions", params={"status": "compensated"})).text
        assert rows(page) == ["order-declined"]
        fragment = await c.get("/executions", params={"q": "order", "fragment": "table"})
        assert "<html" not in fragment.text
        assert set(rows(fragment.text)) == {"order-ok", "order-declined"}

        bad = await c.get("/api/executions", params={"status": "nope"})
        assert bad.status_code == 400
        assert "status must be one of" in bad.json()["error"]
        assert (
            await c.get("/api/executions", params={"created_after": "yesterday"})
        ).status_code == 400


async def test_execution_summary_and_page(populated: Store) -> None:
    async with ui(populated) as c:
        e = (await c.get("/api/executions/order-declined")).json()
        assert e["status"] == "compensated"
        assert e["error"]["message"] == "card declined"
        assert e["inputs"] == {"orderId": "ORD-2", "amount": 900}
        assert e["finished"] is True
        assert re.fullmatch(r"[0-9a-f]{64}", e["head_hash"])

        page = (await c.get("/executions/order-declined")).text
        assert 'id="exec-status">compensated<' in page
        assert 'data-path="0/m/1/0" data-status="failed"' in page
        assert 'id="travel-slider" min="1" max="20"' in page
        assert (await c.get("/fragments/summary/order-declined")).text.count("card declined") >= 1

        missing = await c.get("/api/executions/no-such")
        assert missing.status_code == 404
        assert missing.json()["error"] == "no execution 'no-such'"
        assert (await c.get("/executions/no-such")).status_code == 404


async def test_graph(populated: Store) -> None:
    async with ui(populated) as c:
        nodes = (await c.get("/api/graph/order-declined")).json()["nodes"]
        by_path = {n["path"]: n["status"] for n in nodes}
        assert by_path["0/m/1/0"] == "failed"  # payment
        assert by_path["0/m/1/1"] == "compensated"  # inventory, undone
        assert by_path["0/m/1/1/comp"] == "completed"  # its compensation ran
        assert by_path["0/m/2"] == "not_started"  # confirm never ran
        assert by_path["0"] == "compensated"  # the saga

        svg = await c.get("/api/graph/approval-big", params={"format": "svg"})
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert 'class="col taken"' in svg.text  # the "large amount" branch
        assert re.search(r'class="node op-activity st-none faded" data-path="0/1/d"', svg.text)
        approval = {
            n["path"]: n["status"] for n in (await c.get("/api/graph/approval-big")).json()["nodes"]
        }
        assert approval["0/1/0"] == "waiting"

        batch = {
            n["path"]: n["status"] for n in (await c.get("/api/graph/batch-1")).json()["nodes"]
        }
        assert batch["0/*"] == "completed"  # the template: every iteration completed
        at_one = (await c.get("/fragments/graph/order-declined", params={"version": 1})).text
        assert 'data-path="0/m/1/0" data-status=""' in at_one  # nothing had run yet


async def test_events_paged_and_filtered(populated: Store) -> None:
    async with ui(populated) as c:
        page = (await c.get("/api/events/order-ok", params={"limit": 5})).json()
        assert page["total"] == 14
        assert [e["version"] for e in page["items"]] == [1, 2, 3, 4, 5]
        assert page["items"][0]["kind"] == "workflow_started"
        assert page["items"][0]["data"]["inputs"] == {"orderId": "ORD-1", "amount": 120}
        tail = (await c.get("/api/events/order-ok", params={"offset": 10, "limit": 5})).json()
        assert [e["version"] for e in tail["items"]] == [11, 12, 13, 14]

        done = (await c.get("/api/events/order-ok", params={"kind": "activity_completed"})).json()
        assert done["total"] == 4
        assert {e["kind"] for e in done["items"]} == {"activity_completed"}
        under = (await c.get("/api/events/order-ok", params={"step": "0/m/1"})).json()
        assert under["total"] > 0
        assert all(e["step"].startswith("0/m/1") for e in under["items"])

        html = (await c.get("/executions/order-ok", params={"kind": "activity_completed"})).text
        assert html.count('class="event k-activity_completed"') == 4
        fragment = (await c.get("/fragments/timeline/order-ok", params={"offset": 13})).text
        assert 'data-version="14"' in fragment
        assert 'data-version="13"' not in fragment


async def test_versions_and_time_travel(populated: Store) -> None:
    async with ui(populated) as c:
        versions = (await c.get("/api/versions/order-declined")).json()["items"]
        assert [v["version"] for v in versions] == list(range(1, 21))
        txs = [v["tx"] for v in versions]
        assert txs == sorted(txs)

        first = (await c.get("/api/state/order-declined", params={"version": 1})).json()
        assert first["state"]["status"] == "running"
        assert first["event"]["kind"] == "workflow_started"
        assert {"path": "inputs", "op": "added", "after": {"orderId": "ORD-2", "amount": 900}} in (
            first["diff"]
        )
        last = (await c.get("/api/state/order-declined")).json()
        assert last["version"] == 20
        assert last["state"]["status"] == "compensated"
        assert any(d["path"] == "status" and d["after"] == "compensated" for d in last["diff"])

        at_tx = (await c.get("/api/state/order-declined", params={"tx": versions[3]["tx"]})).json()
        assert at_tx["version"] == 4
        assert (await c.get("/api/state/order-declined", params={"version": 21})).status_code == 404
        assert (
            await c.get("/api/state/order-declined", params={"version": "x"})
        ).status_code == 400

        fragment = (await c.get("/fragments/state/order-declined", params={"version": 2})).text
        assert 'data-version="2"' in fragment
        assert 'id="travel-status">running<' in fragment


async def test_verify_and_proofs(populated: Store) -> None:
    async with ui(populated) as c:
        report = (await c.get("/api/verify/order-ok")).json()
        versions = (await c.get("/api/versions/order-ok")).json()["items"]
        assert report == {
            "execution_id": "order-ok",
            "ok": True,
            "versions": 14,
            "head_hash": versions[-1]["hash"],
        }
        badge = (await c.get("/fragments/verify/order-ok")).text
        assert 'id="verify-ok"' in badge
        assert versions[-1]["hash"] in badge

        raw = await c.get("/api/proof/order-ok", params={"version": 3})
        assert raw.headers["content-type"] == "application/octet-stream"
        assert "attachment" in raw.headers["content-disposition"]
        proof = InclusionProof.from_bytes(raw.content)
        head = bytes.fromhex(versions[-1]["hash"])
        assert proof.version == 3
        assert verify_proof(proof, head)
        assert not verify_proof(proof, bytes(32))
        as_json = (
            await c.get("/api/proof/order-ok", params={"version": 3, "format": "json"})
        ).json()
        assert as_json["head_hash"] == versions[-1]["hash"]
        assert bytes.fromhex(as_json["proof"]) == raw.content
        assert (await c.get("/api/proof/order-ok")).status_code == 400
        assert (await c.get("/api/proof/order-ok", params={"version": 99})).status_code == 404
        assert (await c.get("/api/verify/no-such")).status_code == 404


def tamper(store: Store, execution_id: str, version: int) -> None:
    """Change one stored event's payload behind the store's back, as an attacker
    with write access to the database would."""
    if store.schema is None:
        import sqlite3

        path = store.url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            # the payload bytes are JSON text: replace() works on the blob as text
            conn.execute(
                "UPDATE events SET encoded = CAST(replace(CAST(encoded AS TEXT), '5000', '5001')"
                " AS BLOB) WHERE execution_id = ? AND version = ?",
                (execution_id, version),
            )
    else:
        import psycopg
        from psycopg import sql

        with psycopg.connect(store.url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema)))
            conn.execute(
                "UPDATE events SET encoded = overlay(encoded placing '5001'::bytea"
                " from position('5000'::bytea in encoded) for 4)"
                " WHERE execution_id = %s AND version = %s",
                (execution_id, version),
            )


async def test_verify_reports_tampering(populated: Store) -> None:
    """A stored event changed behind the store's back fails verification, naming its version."""
    eid = await start_approval(populated)
    async with ui(populated) as c:
        assert (await c.get(f"/api/verify/{eid}")).json()["ok"] is True
        tamper(populated, eid, 1)  # workflow_started holds the amount, 5000
        report = (await c.get(f"/api/verify/{eid}")).json()
        assert report["ok"] is False
        assert report["version"] == 1
        assert eid in report["error"]
        assert 'id="verify-bad"' in (await c.get(f"/fragments/verify/{eid}")).text


async def test_workflows(populated: Store) -> None:
    async with ui(populated) as c:
        items = (await c.get("/api/workflows")).json()["items"]
        assert {(w["workflow_id"], w["version"]) for w in items} == {
            ("order_processing", "1.0.0"),
            ("approval", "2"),
            ("batch", "1"),
            ("shipment", "1"),
        }
        irs = demo.definitions()
        by_id = {w["workflow_id"]: w for w in items}
        assert by_id["order_processing"]["content_hash"] == irs["order"].content_hash

        one = (await c.get("/api/workflows/order_processing/1.0.0")).json()
        assert one["content_hash"] == irs["order"].content_hash
        assert one["counts"]["completed"] == 1
        assert one["document"] == irs["order"].document
        assert {n["path"] for n in one["graph"]} >= {"0", "0/m/0", "0/m/1/0/comp"}
        running = (await c.get("/api/workflows/approval/2")).json()["running"]
        assert "approval-big" in {r["execution_id"] for r in running}

        page = (await c.get("/workflows")).text
        assert 'data-workflow="order_processing"' in page
        detail = (await c.get("/workflows/order_processing/1.0.0")).text
        assert irs["order"].content_hash in detail
        assert "<svg" in detail
        assert (await c.get("/api/workflows/order_processing/9")).status_code == 404


async def test_cluster(populated: Store) -> None:
    """A registered node with its load and capabilities, and a ready execution
    that needs what no live node has."""
    eid = await start_approval(populated)
    node = f"ui-node-{uuid.uuid4().hex[:6]}"
    storage = populated.open()
    await storage.open()
    try:
        await storage.register_node(node, capacity=8, capabilities=["activity:validate_order"])
        assert await storage.heartbeat(node, inflight=3)
        claim = await storage.acquire(eid, node)
        assert claim is not None
        await storage.release(eid, node, claim.epoch, ready_at=0, needs=["activity:sign"])
        async with ui(populated) as c:
            data = (await c.get("/api/cluster")).json()
            assert set(data) == {
                "ready",
                "oldest_ready_age",
                "waiting_for",
                "reassignments",
                "fenced_writes",
                "nodes",
            }
            mine = [n for n in data["nodes"] if n["node_id"] == node]
            assert len(mine) == 1
            assert mine[0]["status"] == "healthy"
            assert (mine[0]["capacity"], mine[0]["inflight"], mine[0]["load"]) == (8, 3, 0.375)
            assert mine[0]["capabilities"] == ["activity:validate_order"]
            assert data["ready"] >= 1
            assert data["waiting_for"][eid] == ["activity:sign"]
            page = (await c.get("/cluster")).text
            assert f'data-node="{node}"' in page
            assert "activity:sign" in page
            assert f'href="/executions/{eid}"' in page
            fragment = (await c.get("/cluster", params={"fragment": "1"})).text
            assert "<html" not in fragment
            assert f'data-node="{node}"' in fragment
    finally:
        await storage.deregister_node(node)
        await storage.close()


async def test_actions_refused_when_read_only(populated: Store) -> None:
    eid = populated.ids["waiting"]
    async with ui(populated) as c:  # no token configured
        r = await c.post(
            f"/api/signal/{eid}", json={"name": "approve"}, headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 403
        assert "read-only" in r.json()["error"]
        page = (await c.get(f"/executions/{eid}")).text
        assert 'id="signal-form"' not in page
        assert "read-only" in page
    async with ui(populated, token="s3cret", read_only=True) as c:
        r = await c.post(f"/api/cancel/{eid}", json={}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 403
    with pytest.raises(ValueError):
        create_app(populated.url, token="")


async def test_signal_needs_the_token(populated: Store) -> None:
    eid = await start_approval(populated)
    async with ui(populated, token="s3cret") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Itonami-Token": "s3cre"}):
            r = await c.post(f"/api/signal/{eid}", json={"name": "approve"}, headers=headers)
            assert r.status_code == 403, headers
            assert "valid token" in r.json()["error"]
            assert "s3cret" not in r.text
        form = await c.post(f"/actions/signal/{eid}", data={"name": "approve", "token": "nope"})
        assert form.status_code == 403
        assert "valid token" in form.text

        bad = await c.post(
            f"/actions/signal/{eid}",
            data={"name": "approve", "payload": "{oops", "token": "s3cret"},
        )
        assert bad.status_code == 400
        assert "not valid JSON" in bad.text
        nameless = await c.post(
            f"/api/signal/{eid}", json={"name": ""}, headers={"X-Itonami-Token": "s3cret"}
        )
        assert nameless.status_code == 400

        ok = await c.post(
            f"/actions/signal/{eid}",
            data={"name": "approve", "payload": '{"by": "<b>alice</b>"}', "token": "s3cret"},
        )
        assert ok.status_code == 200
        assert "signal &#39;approve&#39; sent" in ok.text
        signals = (await c.get(f"/api/events/{eid}", params={"kind": "signal_received"})).json()
        assert [e["data"] for e in signals["items"]] == [
            {"name": "approve", "payload": {"by": "<b>alice</b>"}}
        ]
        page = (await c.get(f"/executions/{eid}")).text
        assert "&lt;b&gt;alice&lt;/b&gt;" in page
        assert "<b>alice</b>" not in page
        assert "s3cret" not in page

        api = await c.post(
            f"/api/signal/{eid}",
            json={"name": "note", "payload": [1, 2]},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert api.json() == {
            "ok": True,
            "execution_id": eid,
            "signal": "note",
            "message": "signal 'note' sent",
        }
        missing = await c.post(
            "/api/signal/no-such", json={"name": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert missing.status_code == 404


async def test_cancel(populated: Store) -> None:
    eid = await start_approval(populated)
    async with ui(populated, token="s3cret") as c:
        r = await c.post(
            f"/api/cancel/{eid}",
            json={"reason": "no longer needed"},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert r.status_code == 200
        assert r.json()["cancelled"] is True
        e = (await c.get(f"/api/executions/{eid}")).json()
        assert e["status"] == "cancelled"
        assert e["error"]["reason"] == "no longer needed"
        again = await c.post(
            f"/api/cancel/{eid}", json={}, headers={"Authorization": "Bearer s3cret"}
        )
        assert again.json()["cancelled"] is False
        late = await c.post(
            f"/api/signal/{eid}",
            json={"name": "approve"},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert late.status_code == 409
        assert "cancelled" in late.json()["error"]


async def test_stream(populated: Store) -> None:
    async with ui(populated) as c:
        r = await c.get("/api/stream", params={"execution": "order-ok", "max_events": 1})
        assert r.headers["content-type"].startswith("text/event-stream")
        event = [block for block in r.text.split("\n\n") if block.startswith("event:")]
        assert len(event) == 1
        name, data = event[0].split("\n")
        assert name == "event: execution"
        assert orjson.loads(data.removeprefix("data: ")) == {"version": 14, "status": "completed"}
        change = await c.get("/api/stream", params={"max_events": 1})
        assert "event: change" in change.text
        assert (await c.get("/api/stream", params={"execution": "no-such"})).status_code == 404


async def test_everything_escaped_and_headers(populated: Store) -> None:
    nasty = f'<script>alert("{uuid.uuid4().hex[:6]}")</script>'
    async with demo.engine(populated.target) as eng:
        await eng.start_workflow(
            demo.definitions()["batch"], {"items": ["<i>x</i>"]}, execution_id=nasty
        )
        await eng.wait_for_completion(nasty)
    async with ui(populated) as c:
        listing = await c.get("/executions", params={"q": "<script>"})
        assert "<script>alert" not in listing.text
        assert "&lt;script&gt;alert" in listing.text
        page = await c.get("/executions/" + quote(nasty, safe=""))
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "<i>x</i>" not in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        api = (await c.get("/api/executions/" + quote(nasty, safe=""))).json()
        assert api["execution_id"] == nasty


async def test_mounted_under_a_prefix(populated: Store) -> None:
    """Mounted in another ASGI app (whose lifespan does not run the UI's), the
    UI opens its store on the first request and every link keeps the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    storage = populated.open()
    host = Starlette(routes=[Mount("/ops", app=create_app(storage))])
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=host), base_url="http://host"
        ) as c:
            home = await c.get("/ops/", follow_redirects=True)
            assert home.status_code == 200
            assert str(home.url).endswith("/ops/executions")
            assert 'href="/ops/static/style.css"' in home.text
            assert 'href="/ops/executions/order-ok"' in home.text
            assert 'data-live-stream="/ops/api/stream"' in home.text
            page = (await c.get("/ops/executions/order-declined")).text
            assert 'data-travel="/ops/fragments/state/order-declined"' in page
            assert 'href="/ops/executions/order-declined?step=0%2Fm%2F0#timeline"' in page
            hrefs = re.findall(r'(?:href|src|action|data-[a-z-]+)="(/[^"]*)"', page)
            assert hrefs and all(h.startswith("/ops/") for h in hrefs), hrefs
            assert (await c.get("/ops/static/itonami.js")).status_code == 200
            assert (await c.get("/ops/api/executions/order-ok")).json()["status"] == "completed"
    finally:
        await storage.close()


async def test_a_history_of_20000_events(populated: Store) -> None:
    """A long history (20,001 signals on a waiting approval, recorded through
    the core and stored in one append) pages, filters and travels by version."""
    from itonami import VersionStore

    eid = f"long-{uuid.uuid4().hex[:8]}"
    core = VersionStore()
    ir = demo.definitions()["approval"]
    started = {
        "workflow_id": ir.id,
        "workflow_version": ir.version,
        "definition_hash": ir.content_hash,
        "inputs": {"amount": 1},
    }
    appended = [core.append(eid, 0, "workflow_started", "", 0, orjson.dumps(started), 1)]
    batch = [
        ("signal_received", "", 0, orjson.dumps({"name": f"s{i % 7}", "payload": i}), 2 + i)
        for i in range(20_000)
    ]
    appended += core.append_batch(eid, 1, batch)
    storage = populated.open()
    await storage.open()
    try:
        max_tx = await storage.max_tx()
        await storage.append(
            AppendRequest(
                execution_id=eid,
                expected_version=0,
                events=[
                    StoredEvent(
                        a.version, max_tx + a.version, a.timestamp, a.kind, a.hash, a.encoded
                    )
                    for a in appended
                ],
                status="running",
                workflow_id=ir.id,
                workflow_version=ir.version,
            )
        )
    finally:
        await storage.close()
    async with ui(populated) as c:
        last = (await c.get(f"/api/events/{eid}", params={"offset": 19_990})).json()
        assert last["total"] == 20_001
        assert [e["version"] for e in last["items"]] == list(range(19_991, 20_002))
        assert last["items"][-1]["data"] == {"name": "s0", "payload": 19_999}
        s3 = (
            await c.get(f"/api/events/{eid}", params={"kind": "signal_received", "limit": 2})
        ).json()
        assert s3["total"] == 20_000
        page = (await c.get(f"/executions/{eid}", params={"offset": 10_000})).text
        assert page.count('class="event k-signal_received"') == 100
        assert 'data-version="10001"' in page
        mid = (await c.get(f"/api/state/{eid}", params={"version": 10_001})).json()
        assert len(mid["state"]["signals"]["s0"]) == len(range(0, 10_000, 7))
        assert (await c.get(f"/api/verify/{eid}")).json() == {
            "execution_id": eid,
            "ok": True,
            "versions": 20_001,
            "head_hash": appended[-1].hash.hex(),
        }


async def test_oversized_action_refused(populated: Store) -> None:
    async with ui(populated, token="s3cret") as c:
        big = {"name": "approve", "payload": "x" * (2 * 1024 * 1024)}
        r = await c.post(
            f"/api/signal/{populated.ids['waiting']}",
            content=orjson.dumps(big),
            headers={"Content-Type": "application/json", "Authorization": "Bearer s3cret"},
        )
        assert r.status_code == 413
        odd = await c.post(
            f"/api/signal/{populated.ids['waiting']}",
            content=b"name=x",
            headers={"Content-Type": "text/plain", "Authorization": "Bearer s3cret"},
        )
        assert odd.status_code == 415

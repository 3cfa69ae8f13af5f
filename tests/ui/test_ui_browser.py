"""The web UI in a real browser: Playwright driving the local chromium.

Skipped (with the reason) when Playwright or chromium is missing here; CI
installs both (``.ci/run``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_server import chromium_path, serving
from ui_support import Store

# CI sets ITONAMI_REQUIRE_BROWSER: there a missing browser is a failure, not a skip.
REQUIRED = bool(os.environ.get("ITONAMI_REQUIRE_BROWSER"))
if not REQUIRED:
    pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
import playwright.sync_api as playwright_sync  # noqa: E402

CHROMIUM = chromium_path()
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None and not REQUIRED,
        reason="no chromium here (install it, or set ITONAMI_CHROMIUM)",
    ),
    pytest.mark.timeout(300),
]
expect = playwright_sync.expect
TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def base_url(sqlite_store: Store) -> Iterator[str]:
    with serving(sqlite_store.url, token=TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM is not None, "ITONAMI_REQUIRE_BROWSER is set and no chromium was found"
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    context.close()
    assert errors == [], errors  # no script error on any page


def test_list_filter_and_open(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/executions")
    rows = page.locator("tbody tr[data-id]")
    expect(rows).to_have_count(6)
    expect(page.locator('[data-count="compensated"] b')).to_have_text("1")
    page.select_option('select[name="status"]', "compensated")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", "order-declined")
    page.fill('input[name="q"]', "nothing-like-this")
    page.click("#filters button[type=submit]")
    expect(page.locator("td.empty")).to_have_text("No execution matches.")
    page.click("text=Clear")
    page.fill('input[name="q"]', "declined")
    page.click("#filters button[type=submit]")
    page.click("a:text('order-declined')")
    expect(page.locator("#exec-status")).to_have_text("compensated")


def test_graph_marks_the_failed_step(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/executions/order-declined")
    payment = page.locator('#graph g.node[data-path="0/m/1/0"]')
    expect(payment).to_have_attribute("data-status", "failed")
    expect(payment).to_have_class("node op-activity st-failed")
    # its fill is the failed colour (the stylesheet applies)
    fill = payment.locator("rect.box").evaluate("r => getComputedStyle(r).fill")
    assert fill == "rgb(255, 240, 240)"
    expect(page.locator('#graph g.node[data-path="0/m/1/1/comp"]')).to_have_attribute(
        "data-status", "completed"
    )
    # a step's box leads to its events
    page.click('#graph g.node[data-path="0/m/1/0"] a')
    expect(page.locator("li.event")).not_to_have_count(0)
    steps = page.locator("li.event .step").all_inner_texts()
    assert steps and all(s.startswith("0/m/1/0") for s in steps)


def test_time_travel_slider(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/executions/order-declined")
    slider = page.locator("#travel-slider")
    slider.fill("1")
    expect(page.locator('#travel-state .state[data-version="1"]')).to_be_visible()
    expect(page.locator("#travel-status")).to_have_text("running")
    expect(page.locator("#travel-label")).to_have_text("version 1 / 20")
    expect(page.locator("#travel-state table.diff")).to_contain_text("inputs")
    slider.fill("20")
    expect(page.locator('#travel-state .state[data-version="20"]')).to_be_visible()
    expect(page.locator("#travel-status")).to_have_text("compensated")
    expect(page.locator("#travel-state table.diff")).to_contain_text("compensated")
    # the graph at that version: at version 1 nothing has run
    slider.fill("1")
    expect(page.locator('#travel-state g.node[data-path="0/m/0"]')).to_have_attribute(
        "data-status", ""
    )


def test_verify_the_merkle_chain(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/executions/order-ok")
    head = page.locator("#head-hash").inner_text()
    page.click("#verify-button")
    ok = page.locator("#verify-ok")
    expect(ok).to_contain_text("Chain verified: 14 versions")
    expect(ok).to_contain_text(head)
    # an event's inclusion proof downloads
    page.locator('li.event[data-version="3"] summary').click()
    with page.expect_download() as info:
        page.locator('li.event[data-version="3"] a[download]').click()
    download = info.value
    assert download.suggested_filename == "order-ok-v3.itnproof"
    from itonami import InclusionProof, verify_proof

    proof = InclusionProof.from_bytes(Path(download.path()).read_bytes())
    assert verify_proof(proof, bytes.fromhex(head))


def test_signal_with_the_token_completes_live(
    page: Any, base_url: str, sqlite_store: Store
) -> None:
    """A worker process owns an approval waiting for its signal; the UI's signal
    reaches it through the store, and the open page shows it complete."""
    eid = "approval-live"
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "ui_worker.py"), sqlite_store.url, eid],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "waiting", worker.stderr
        page.goto(f"{base_url}/executions/{eid}")
        expect(page.locator("#exec-status")).to_have_text("running")
        expect(page.locator('#graph g.node[data-path="0/1/0"]')).to_have_attribute(
            "data-status", "waiting"
        )
        slider = page.locator("#travel-slider")
        before = int(slider.get_attribute("max") or 0)
        form = page.locator("#signal-form")
        # refused without the right token, and nothing is delivered
        form.locator('input[name="name"]').fill("approve")
        form.locator('input[name="token"]').fill("not-the-token")
        form.locator("button[type=submit]").click()
        expect(page.locator("#action-result .result-err")).to_contain_text("valid token")
        expect(page.locator("#exec-status")).to_have_text("running")
        # with it: delivered, and the page follows the execution to its end
        form.locator('textarea[name="payload"]').fill('{"by": "alice"}')
        form.locator('input[name="token"]').fill(TOKEN)
        form.locator("button[type=submit]").click()
        expect(page.locator("#action-result .result-ok")).to_contain_text("signal 'approve' sent")
        expect(page.locator("#exec-status")).to_have_text("completed", timeout=30_000)
        expect(page.locator('#graph g.node[data-path="0/2"]')).to_have_attribute(
            "data-status", "completed", timeout=30_000
        )
        # the timeline follows too, without a reload
        expect(page.locator("li.event.k-workflow_completed")).to_have_count(1, timeout=30_000)
        expect(page.locator("li.event.k-signal_received")).to_have_count(1)
        versions = page.locator("li.event").count()
        expect(slider).to_have_attribute("max", str(versions))  # the slider grew with it
        assert versions > before
        out, err = worker.communicate(timeout=60)
        assert out.strip() == "completed", err
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_actions_refused_without_token(page: Any, base_url: str, sqlite_store: Store) -> None:
    page.goto(f"{base_url}/executions/approval-big")
    form = page.locator("#cancel-form")
    form.locator('input[name="token"]').fill("guess")
    form.locator("button[type=submit]").click()
    expect(page.locator("#action-result .result-err")).to_contain_text("valid token")
    expect(page.locator("#exec-status")).to_have_text("running")
    # and a read-only server shows no form at all
    with serving(sqlite_store.url) as read_only:
        page.goto(f"{read_only}/executions/approval-big")
        expect(page.locator("#signal-form")).to_have_count(0)
        expect(page.locator("header .mode")).to_have_text("read-only")
        status = page.request.post(
            f"{read_only}/api/signal/approval-big",
            data='{"name": "approve"}',
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        assert status.status == 403
        assert "read-only" in status.json()["error"]


def test_workflows_and_cluster_pages(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/workflows")
    expect(page.locator("tr[data-workflow]")).to_have_count(4)
    page.click("a:text('approval')")
    expect(page.locator("svg.graph")).to_be_visible()
    expect(page.locator("pre.source")).to_contain_text('"signal_name": "approve"')
    page.goto(f"{base_url}/cluster")
    expect(page.locator("#ready-depth")).to_be_visible()

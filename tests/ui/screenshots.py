"""Refresh the screenshots in docs/ui/ (``make ui-screenshots``).

Builds the demo store in a temporary folder, serves it, and captures the
main pages with the local chromium.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from itonami.storage import open_storage

sys.path.insert(0, str(Path(__file__).parent))

import ui_demo as demo
from ui_server import chromium_path, serving

OUT = Path(__file__).resolve().parents[2] / "docs" / "ui"


async def cluster(url: str) -> None:
    """Two workers in the nodes table, and one execution none of them can run."""
    storage = open_storage(url)
    await storage.open()
    try:
        acts = sorted(f"activity:{name}" for name in demo.registry().names())
        await storage.register_node("worker-a", capacity=16, capabilities=acts)
        await storage.heartbeat("worker-a", inflight=5)
        await storage.register_node("worker-b", capacity=8, capabilities=acts[:3])
        await storage.heartbeat("worker-b", inflight=8)
        claim = await storage.acquire("approval-big", "worker-b")
        assert claim is not None
        await storage.release(
            "approval-big", "worker-b", claim.epoch, ready_at=0, needs=["activity:sign_off"]
        )
    finally:
        await storage.close()


def main() -> int:
    chromium = chromium_path()
    if chromium is None:
        print("no chromium found (set ITONAMI_CHROMIUM or install chromium)", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/demo.db"
        asyncio.run(demo.populate(url))
        asyncio.run(cluster(url))
        with serving(url, token="demo-token") as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{base}/executions")
            page.screenshot(path=str(OUT / "executions.png"), full_page=True)
            page.goto(f"{base}/executions/order-declined")
            page.click("#verify-button")
            page.wait_for_selector("#verify-ok")
            page.screenshot(path=str(OUT / "execution.png"), full_page=False)
            slider = page.locator("#travel-slider")
            slider.fill("12")
            page.wait_for_selector('#travel-state .state[data-version="12"]')
            page.locator("#travel").screenshot(path=str(OUT / "time-travel.png"))
            page.goto(f"{base}/workflows/approval/2")
            page.screenshot(path=str(OUT / "workflow.png"), full_page=False)
            page.goto(f"{base}/cluster")
            page.screenshot(path=str(OUT / "cluster.png"), full_page=False)
            browser.close()
    for png in sorted(OUT.glob("*.png")):
        print(png.relative_to(OUT.parents[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Activities of the cluster benchmark's worker processes.

``noop`` does nothing; ``mark`` appends ``{"node", "eid", "at"}`` (wall clock
at the start of the step) to $ITONAMI_BENCH_MARKS; ``block`` hangs on the
node named $ITONAMI_BENCH_BLOCK_ON and returns at once elsewhere (what the
failover measurement kills).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from itonami import ActivityRegistry, current_context

registry = ActivityRegistry()
NODE = os.environ.get("ITONAMI_NODE", str(os.getpid()))


@registry.activity()
async def noop() -> dict[str, Any]:
    return {"ok": True}


def _mark() -> None:
    line = {"node": NODE, "eid": current_context().execution_id, "at": time.time()}
    with open(os.environ["ITONAMI_BENCH_MARKS"], "a") as f:
        f.write(json.dumps(line) + "\n")


@registry.activity()
async def mark() -> dict[str, Any]:
    _mark()
    return {"ok": True}


@registry.activity()
async def block() -> dict[str, Any]:
    _mark()
    if os.environ.get("ITONAMI_BENCH_BLOCK_ON") == NODE:
        await asyncio.sleep(3600)
    return {"ok": True}

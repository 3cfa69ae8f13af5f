"""A worker process for the UI tests: runs one approval on a store and waits.

    python worker.py STORE_URL EXECUTION_ID

Starts the demo approval (amount 2500: it waits for the ``approve``
signal), prints ``waiting`` once its wait is committed, then ``completed``
when it has ended, and exits. It owns the execution meanwhile, so a signal
from the UI reaches it through the store's inbox.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import ui_demo as demo


async def main(url: str, execution_id: str) -> None:
    eng = demo.engine(url, lease=60.0)
    async with eng:
        await eng.start_workflow(
            demo.definitions()["approval"], {"amount": 2500}, execution_id=execution_id
        )
        await demo.waiting(eng, execution_id)
        print("waiting", flush=True)
        await eng.wait_for_completion(execution_id)
        print((await eng.get_execution(execution_id)).status, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

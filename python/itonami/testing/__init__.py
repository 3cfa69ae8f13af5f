"""The test kit: run workflows on a test clock, assert on their history, replay stored histories.

::

    from itonami.testing import WorkflowEnvironment, replay

    async def test_times_out() -> None:
        async with WorkflowEnvironment.start_local(activities=registry) as env:
            eid = await env.start(definition, {"orderId": "A-1"})
            await env.advance(61)                   # no sleeps: the wait times out
            assert (await env.wait_for_end(eid)).status == "failed"

With pytest, the plugin (``itonami.testing.pytest_plugin``, registered as
an entry point) gives the ``itonami_env`` fixture. ``docs/testing.md``
describes it all.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._env import BlockedForeverError, HistoryItem, NotSettledError, WorkflowEnvironment
    from ._replay import (
        HistoryFile,
        ReplayError,
        export_execution,
        export_history,
        read_history_file,
        replay,
        verify_history,
    )

__all__ = [
    "BlockedForeverError",
    "HistoryFile",
    "HistoryItem",
    "NotSettledError",
    "ReplayError",
    "WorkflowEnvironment",
    "export_execution",
    "export_history",
    "read_history_file",
    "replay",
    "verify_history",
]


# Loaded on first use (PEP 562): the pytest plugin lives in this package and
# is imported by every pytest run, which must not cost the engine's import.
_ENV = frozenset({"BlockedForeverError", "HistoryItem", "NotSettledError", "WorkflowEnvironment"})


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _env, _replay

    value = getattr(_env if name in _ENV else _replay, name)
    globals()[name] = value
    return value

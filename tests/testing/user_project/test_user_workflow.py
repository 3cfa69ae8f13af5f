"""How a user tests their own workflow with the kit (also checked with ``mypy --strict``)."""

from __future__ import annotations

import pytest

from itonami import ActivityRegistry, WorkflowIR
from itonami.testing import WorkflowEnvironment

DEFINITION = WorkflowIR.from_dict(
    {
        "workflow": {
            "id": "approval",
            "name": "approval",
            "version": "1",
            "strategy": {
                "op": "seq",
                "strategies": [
                    {"op": "activity", "id": "draft", "activity_ref": "draft"},
                    {
                        "op": "wait",
                        "condition": {"type": "signal", "signal_name": "approve"},
                        "timeout": "PT60S",
                    },
                ],
            },
        }
    }
)


@pytest.fixture
def itonami_activities() -> ActivityRegistry:
    registry = ActivityRegistry()

    @registry.activity()
    def draft() -> dict[str, str]:
        return {"text": "hello"}

    return registry


@pytest.mark.asyncio
async def test_approval_times_out(itonami_env: WorkflowEnvironment) -> None:
    eid = await itonami_env.start(DEFINITION)
    await itonami_env.advance(61)
    done = await itonami_env.wait_for_end(eid)
    assert done.status == "failed"
    await itonami_env.assert_history(
        eid, ["workflow_started", "step_failed", "workflow_failed"], mode="subsequence"
    )


@pytest.mark.asyncio
@pytest.mark.itonami(storage="sqlite")
async def test_approval_on_sqlite(itonami_env: WorkflowEnvironment) -> None:
    eid = await itonami_env.start(DEFINITION)
    await itonami_env.signal(eid, "approve", True)
    outputs: dict[str, object] = await itonami_env.wait_for_completion(eid)
    assert outputs == {"result": True}

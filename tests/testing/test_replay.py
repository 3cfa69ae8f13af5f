"""replay(): a stored history must still verify and run the same with today's definition."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_environment import act, seq, sig, wf

from itonami import ActivityRegistry, WorkflowIR
from itonami.testing import ReplayError, WorkflowEnvironment, read_history_file, replay

ROOT = Path(__file__).parent.parent.parent
POLICY = {"initial_interval": "PT10S", "maximum_attempts": 3}


def order_flow(
    second: str = "charge", duration: str = "PT1H", version: str = "1", extra: bool = False
) -> WorkflowIR:
    steps = [
        act("reserve", "reserve"),
        sig("approve"),
        act(second, "charge", retry_policy=POLICY),
        {"op": "wait", "condition": {"type": "timer", "duration": duration}},
    ]
    if extra:
        steps.insert(1, act("reserve", "again"))
    return wf(seq(*steps), version=version)


def registry() -> ActivityRegistry:
    reg = ActivityRegistry()
    failures: list[int] = []

    @reg.activity()
    async def reserve(**_: object) -> dict[str, str]:
        return {"slot": "A7"}

    @reg.activity()
    async def charge(**_: object) -> dict[str, int]:
        if not failures:
            failures.append(1)
            raise ConnectionError("card network down")
        return {"charged": 42}

    reg.register(charge, "refund")
    return reg


async def recorded(tmp_path: Path, storage: str = "memory") -> Path:
    """Run the flow once (a signal, a retry, a timer) and export its history."""
    async with WorkflowEnvironment.start_local(activities=registry(), storage=storage) as env:
        eid = await env.start(order_flow(), {}, execution_id="order-1")
        await env.signal(eid, "approve", {"by": "ana"})
        await env.wait_for_completion(eid)
        assert (await env.history_kinds(eid)).count("activity_retry_scheduled") == 1
        return await env.export_history(eid, tmp_path / "order-1.itnhist")


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_an_exported_history_replays_with_the_same_definition(
    tmp_path: Path, storage: str
) -> None:
    path = await recorded(tmp_path, storage)
    hf = read_history_file(path)
    assert hf.execution_id == "order-1"
    assert hf.hashes is not None and len(hf.hashes) == 32 * len(hf.events())
    await replay(path, order_flow())


async def test_a_compatible_change_still_replays(tmp_path: Path) -> None:
    path = await recorded(tmp_path)
    # A new version with a longer timer: the history still fits it.
    await replay(path, order_flow(duration="PT2H", version="2"))


async def test_a_tampered_history_fails_to_verify(tmp_path: Path) -> None:
    path = await recorded(tmp_path)
    data = path.read_bytes()
    at = data.index(b"A7")  # inside the first activity's recorded result
    path.write_bytes(data[:at] + b"B" + data[at + 1 :])
    with pytest.raises(ReplayError, match="does not verify"):
        await replay(path, order_flow())


async def test_a_changed_activity_is_a_divergence(tmp_path: Path) -> None:
    path = await recorded(tmp_path)
    with pytest.raises(ReplayError, match=r"diverges at event \d+ \(step '0/2'\)") as info:
        await replay(path, order_flow(second="refund"))
    assert info.value.index is not None
    assert read_history_file(path).events()[info.value.index].kind == "activity_scheduled"


async def test_an_inserted_step_is_a_divergence(tmp_path: Path) -> None:
    path = await recorded(tmp_path)
    with pytest.raises(ReplayError, match="diverges"):
        await replay(path, order_flow(extra=True, version="2"))


async def test_a_history_of_another_workflow_is_refused(tmp_path: Path) -> None:
    path = await recorded(tmp_path)
    other = wf(act("reserve"), id="other")
    with pytest.raises(ReplayError, match="not 'other'"):
        await replay(path, other)


@pytest.mark.parametrize("name", ["order_completed", "order_compensated"])
async def test_the_golden_histories_replay_with_todays_example(name: str) -> None:
    """A bare framed history with its ``.hashes`` beside it (tests/golden)."""
    ir = WorkflowIR.from_jsonnet(str(ROOT / "examples" / "order_processing.kotoba"))
    await replay(ROOT / "tests" / "golden" / f"{name}.history", ir)

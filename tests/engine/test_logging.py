"""The engine's log: a record for every lifecycle transition, with the
execution's fields as ``extra``; INFO stays quiet for a healthy run; failures
carry the activity's traceback, never a secret."""

from __future__ import annotations

import logging

import pytest
from engine_helpers import Harness, act, eventually, wf

from itonami import RetryPolicy, Secret, WorkflowFailedError

FIELDS = ("execution_id", "workflow_id", "version", "step", "attempt")


def ours(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("itonami") and r.levelno >= level]


async def test_a_healthy_run_logs_start_and_end_at_info(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    @h.registry.activity()
    async def ok() -> int:
        return 1

    caplog.set_level(logging.DEBUG, logger="itonami")
    eid = await h.engine.start_workflow(wf({"op": "seq", "strategies": [act("ok", "a")]}), {})
    await h.engine.wait_for_completion(eid, timeout=10)
    info = [r.getMessage() for r in ours(caplog, logging.INFO) if r.execution_id == eid]
    assert len(info) == 2 and info[0].endswith("started") and info[1].endswith("completed")
    debug = [r for r in ours(caplog) if getattr(r, "execution_id", None) == eid]
    assert any(r.step == "a" and "started" in r.getMessage() for r in debug)
    for r in debug:
        for f in FIELDS:
            assert hasattr(r, f), (f, r.getMessage())


async def test_retries_and_failures_are_logged_with_the_traceback_without_secrets(
    h: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from itonami.activities.secrets import resolve

    monkeypatch.setenv("ITONAMI_TEST_LOG_TOKEN", "tok-SECRET-42")
    token = Secret.env("ITONAMI_TEST_LOG_TOKEN")

    @h.registry.activity(retry_policy=RetryPolicy(initial_interval=0, maximum_attempts=2))
    async def bad() -> None:
        def deep() -> None:
            raise ValueError(f"refused with {resolve(token)}")

        deep()

    caplog.set_level(logging.DEBUG, logger="itonami")
    eid = await h.engine.start_workflow(wf(act("bad", "b")), {})
    with pytest.raises(WorkflowFailedError):
        await h.engine.wait_for_completion(eid, timeout=10)
    records = [r for r in ours(caplog) if getattr(r, "execution_id", None) == eid]
    retried = [r for r in records if "retry in" in r.getMessage()]
    failed = [r for r in records if "failed for good" in r.getMessage()]
    assert len(retried) == 1 and retried[0].levelno == logging.INFO and retried[0].attempt == 1
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING and failed[0].attempt == 2
    assert failed[0].step == "b"
    assert "in deep" in failed[0].getMessage()  # the activity's own traceback
    assert any("ended failed" in r.getMessage() for r in records)
    assert all("tok-SECRET-42" not in r.getMessage() for r in ours(caplog))


async def test_parking_and_reviving_are_logged(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="itonami")
    ir = wf({"op": "wait", "condition": {"type": "signal", "signal_name": "go"}})
    eid = await h.engine.start_workflow(ir, {})
    await eventually(lambda: h.engine.phase(eid) == "parked", "parked")
    await h.engine.signal(eid, "go", 1)
    await h.engine.wait_for_completion(eid, timeout=10)
    text = [r.getMessage() for r in ours(caplog)]
    assert any("parked" in t and eid in t for t in text)
    assert any("resumed at version" in t and eid in t for t in text)

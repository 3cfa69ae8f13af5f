"""Through the engine: a secret reaches no stored or printed text.

The stored text is every recorded event, the snapshot, and the
``WorkflowFailedError`` raised to the caller.
"""

from __future__ import annotations

import base64
import urllib.parse

import orjson
import pytest

from itonami import ActivityRegistry, TestClock, WorkflowEngine, WorkflowIR
from itonami.activities import HttpActivity, Secret
from itonami.errors import WorkflowFailedError

TOKEN = "tok-engine-8c1f77"


def forms(value: str) -> list[str]:
    return [
        value,
        repr(value)[1:-1],
        orjson.dumps(value).decode()[1:-1],
        urllib.parse.quote(value, safe=""),
        base64.b64encode(value.encode()).decode().rstrip("="),
        "tok-engine",  # not even a part of it
    ]


def workflow() -> WorkflowIR:
    return WorkflowIR.from_dict(
        {
            "workflow": {
                "id": "leak",
                "name": "leak",
                "version": "1",
                "strategy": {"op": "activity", "activity_ref": "call"},
            }
        }
    )


async def run(url: str, secret: Secret) -> tuple[list[bytes], bytes | None, str]:
    registry = ActivityRegistry()
    http = HttpActivity("call", url, "GET", headers={"Authorization": secret})
    registry.register(http)
    engine = (
        WorkflowEngine.builder()
        .with_storage("memory")
        .with_activities(registry)
        .with_clock(TestClock())
        .with_snapshots(every=1)
        .build()
    )
    async with engine:
        eid = await engine.start_workflow(workflow(), {})
        failure = ""
        try:
            await engine.wait_for_completion(eid, timeout=10)
        except WorkflowFailedError as e:
            failure = f"{e} {e.error!r}"
        events = [e.data_json for e in await engine.get_event_history(eid)]
        snapshot = await engine.storage.load_snapshot(eid)
    await http.aclose()
    return events, snapshot[1] if snapshot else None, failure


def assert_nowhere(texts: list[bytes | str]) -> None:
    for text in texts:
        blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for form in forms(TOKEN):
            assert form not in blob, (form, blob[:300])


async def test_a_newline_secret_fails_the_step_and_is_recorded_nowhere(
    http_server, monkeypatch
) -> None:
    monkeypatch.setenv("ITONAMI_TEST_ENGINE_TOKEN", TOKEN + "\n")
    secret = Secret.env("ITONAMI_TEST_ENGINE_TOKEN", prefix="Bearer ")
    events, snapshot, failure = await run(f"{http_server.url}/echo", secret)
    assert "HeaderValueError" in failure
    assert_nowhere([*events, snapshot or b"", failure])


async def test_a_secret_echoed_by_a_server_is_recorded_nowhere(http_server, monkeypatch) -> None:
    monkeypatch.setenv("ITONAMI_TEST_ENGINE_TOKEN", TOKEN)
    secret = Secret.env("ITONAMI_TEST_ENGINE_TOKEN", prefix="Bearer ")
    events, snapshot, failure = await run(f"{http_server.url}/echo", secret)
    assert failure == ""
    assert any(b"[REDACTED]" in e for e in events)
    assert_nowhere([*events, snapshot or b""])


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch) -> None:
    # the HTTP client ignores proxy settings; make sure no test depends on them
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)

"""HttpActivity against a real HTTP server on 127.0.0.1 (see conftest)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itonami.activities import (
    ActivityConfigError,
    HostPolicy,
    HttpActivity,
    Secret,
    describe_error,
    run_activity,
)
from itonami.errors import ActivityError, ActivityTimeoutError, HostNotAllowedError


async def call(act: HttpActivity, input: dict[str, Any], ctx: Any, timeout: float | None = None):
    try:
        return await run_activity(act, input, ctx, timeout)
    finally:
        await act.aclose()


async def test_post_sends_input_as_json_and_parses_json(http_server: str, make_ctx) -> None:
    act = HttpActivity("echo", f"{http_server}/echo")
    ctx = make_ctx(activity="echo")
    out = await call(act, {"order_id": "o-1", "amount": 12.5}, ctx)
    assert out["status"] == 200
    assert out["body"]["method"] == "POST"
    assert out["body"]["body"] == {"order_id": "o-1", "amount": 12.5}
    assert out["body"]["headers"]["content-type"] == "application/json"
    assert out["body"]["headers"]["idempotency-key"] == ctx.idempotency_key
    assert out["headers"]["content-type"] == "application/json"
    assert out["headers"]["x-multi"] == "a, b"


async def test_url_placeholders_are_percent_encoded(http_server: str, make_ctx) -> None:
    act = HttpActivity("get", f"{http_server}/echo/orders/{{order_id}}", "GET")
    evil = "../admin?x=1#frag/ é"
    out = await call(act, {"order_id": evil}, make_ctx())
    raw = out["body"]["raw_path"]
    assert raw == "/echo/orders/" + urllib.parse.quote(evil, safe="")
    assert "?" not in raw and "#" not in raw
    assert out["body"]["path"] == f"/echo/orders/{evil}"
    assert out["body"]["body"] is None  # GET sends no body


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(), st.integers(), st.booleans()))
def test_rendered_url_keeps_host_and_path_shape(value: Any) -> None:
    act = HttpActivity("t", "https://api.example.com/v1/items/{item}/detail")
    url = act.render_url({"item": value})
    split = urllib.parse.urlsplit(url)
    assert split.hostname == "api.example.com"
    assert split.query == "" and split.fragment == ""
    segments = split.path.split("/")
    assert len(segments) == 5 and segments[-1] == "detail"
    expected = ("true" if value else "false") if isinstance(value, bool) else str(value)
    assert urllib.parse.unquote(segments[3]) == expected


async def test_missing_or_structured_url_field_fails_without_retry(make_ctx) -> None:
    act = HttpActivity("t", "http://127.0.0.1:1/{id}")
    with pytest.raises(ActivityError, match="needs input field 'id'") as info:
        await call(act, {}, make_ctx())
    assert not info.value.retryable and info.value.error_type == "ActivityInputError"
    with pytest.raises(ActivityError, match="string or number"):
        await call(act, {"id": {"a": 1}}, make_ctx())


async def test_body_template_keeps_types_and_fills_text(http_server: str, make_ctx) -> None:
    act = HttpActivity(
        "tmpl",
        f"{http_server}/echo",
        "PUT",
        body={"order": "{order_id}", "note": "order {order_id} x{qty}", "items": ["{items}", 1]},
    )
    out = await call(act, {"order_id": 7, "qty": 2, "items": [{"sku": "a"}]}, make_ctx())
    assert out["body"]["method"] == "PUT"
    assert out["body"]["body"] == {
        "order": 7,
        "note": "order 7 x2",
        "items": [[{"sku": "a"}], 1],
    }


async def test_body_none_and_text_and_empty_responses(http_server: str, make_ctx) -> None:
    out = await call(HttpActivity("n", f"{http_server}/echo", body="none"), {"a": 1}, make_ctx())
    assert out["body"]["body"] is None
    text = await call(HttpActivity("t", f"{http_server}/text", "GET"), {}, make_ctx())
    assert text["body"] == "plain text \u00e9"
    empty = await call(HttpActivity("e", f"{http_server}/empty", "DELETE"), {}, make_ctx())
    assert empty["status"] == 204 and empty["body"] is None


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (404, False), (500, False), (503, True), (429, True)]
)
async def test_non_success_status_classification(
    http_server: str, make_ctx, status: int, retryable: bool
) -> None:
    act = HttpActivity("s", f"{http_server}/status/{status}", "GET")
    with pytest.raises(ActivityError) as info:
        await call(act, {}, make_ctx())
    err = info.value
    assert err.error_type == "HttpStatusError"
    assert err.retryable is retryable
    assert err.details["status"] == status
    assert err.details["body"] == f"status {status} body"
    assert (err.details.get("retry_after") == "7") is (status == 429)
    assert str(status) in str(err)
    assert describe_error(err)["details"]["status"] == status


async def test_custom_success_and_retry_status(http_server: str, make_ctx) -> None:
    act = HttpActivity(
        "s", f"{http_server}/status/404", "GET", success_status={200, 404}, retry_status=()
    )
    out = await call(act, {}, make_ctx())
    assert out["status"] == 404 and out["body"] == "status 404 body"
    act = HttpActivity("s", f"{http_server}/status/500", "GET", retry_status={500})
    with pytest.raises(ActivityError) as info:
        await call(act, {}, make_ctx())
    assert info.value.retryable


async def test_redirects_are_not_followed(http_server: str, make_ctx) -> None:
    act = HttpActivity("r", f"{http_server}/redirect", "GET")
    with pytest.raises(ActivityError) as info:
        await call(act, {}, make_ctx())
    assert info.value.details["status"] == 302


async def test_per_call_timeout(http_server: str, make_ctx) -> None:
    act = HttpActivity("slow", f"{http_server}/slow?s=10", "GET", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ActivityTimeoutError) as info:
        await call(act, {}, make_ctx())
    assert time.monotonic() - started < 5
    assert info.value.retryable and info.value.error_type == "HttpTimeoutError"


async def test_attempt_deadline_caps_http_timeout(http_server: str, make_ctx) -> None:
    act = HttpActivity("slow", f"{http_server}/slow?s=10", "GET", timeout=30)
    started = time.monotonic()
    with pytest.raises(ActivityTimeoutError):
        await call(act, {}, make_ctx(deadline=time.monotonic() + 0.2))
    assert time.monotonic() - started < 5


async def test_connection_refused_is_retryable(make_ctx) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ActivityError) as info:
        await call(HttpActivity("c", f"http://127.0.0.1:{port}/", "GET"), {}, make_ctx())
    assert info.value.retryable and info.value.error_type == "ConnectError"


async def test_secret_header_is_sent_but_never_shown(
    http_server: str, make_ctx, monkeypatch
) -> None:
    monkeypatch.setenv("ITONAMI_TEST_TOKEN", "s3cr3t-token-value")
    act = HttpActivity(
        "auth",
        f"{http_server}/echo",
        headers={"Authorization": Secret.env("ITONAMI_TEST_TOKEN", prefix="Bearer ")},
    )
    try:
        sent = await act.execute({}, make_ctx())  # the raw result, before redaction
    finally:
        await act.aclose()
    assert sent["body"]["headers"]["authorization"] == "Bearer s3cr3t-token-value"
    # what run_activity returns (and the engine records) has the echo redacted
    out = await call(act, {}, make_ctx())
    assert out["body"]["headers"]["authorization"] == "[REDACTED]"
    assert "s3cr3t" not in repr(act.headers) and "s3cr3t" not in str(act.headers)


async def test_missing_secret_fails_without_retry(http_server: str, make_ctx, monkeypatch) -> None:
    monkeypatch.delenv("ITONAMI_TEST_ABSENT", raising=False)
    act = HttpActivity("a", f"{http_server}/echo", headers={"X": Secret.env("ITONAMI_TEST_ABSENT")})
    with pytest.raises(ActivityError) as info:
        await call(act, {}, make_ctx())
    assert info.value.error_type == "SecretNotFoundError" and not info.value.retryable


async def test_client_is_shared_and_reopened_after_aclose(http_server: str, make_ctx) -> None:
    act = HttpActivity("e", f"{http_server}/echo", "GET")
    await run_activity(act, {}, make_ctx())
    first = act._client
    await run_activity(act, {}, make_ctx())
    assert act._client is first
    await act.aclose()
    assert first is not None and first.is_closed
    async with act:
        assert (await run_activity(act, {}, make_ctx()))["status"] == 200
    assert act._client is None


async def test_mock_transport_is_used(make_ctx) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True})

    act = HttpActivity(
        "m",
        "http://127.0.0.1/x/{id}",
        transport=httpx.MockTransport(handler),
        idempotency_header=None,
    )
    out = await call(act, {"id": "a b"}, make_ctx())
    assert out == {"status": 201, "headers": out["headers"], "body": {"ok": True}}
    assert seen[0].url.raw_path == b"/x/a%20b"
    assert "idempotency-key" not in seen[0].headers


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "http:///nohost"}, "no host"),
        ({"url": "http://h/{a.b}"}, "plain"),
        ({"url": "http://h/{a!r}"}, "plain"),
        ({"url": "http://h/{a"}, "bad url template"),
        ({"url": "http://h/", "body": "json"}, "body must be"),
        ({"url": "http://h/", "body": {"a": "{x:>3}"}}, "plain"),
        ({"url": "http://h/", "timeout": 0}, "timeout"),
        ({"url": "http://h/", "method": "GE T"}, "method"),
        ({"url": "http://h/", "headers": {"X": 1}}, "header"),
    ],
)
def test_bad_configuration_is_rejected_at_build_time(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ActivityConfigError, match=match):
        HttpActivity("bad", **kwargs)


async def test_host_policy_is_applied_before_the_request(http_server: str, make_ctx) -> None:
    seen: list[httpx.Request] = []
    act = HttpActivity(
        "meta",
        "http://169.254.169.254/latest/meta-data/",
        "GET",
        transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200)),
    )
    with pytest.raises(HostNotAllowedError) as info:
        await call(act, {}, make_ctx())
    assert seen == [] and info.value.activity == "meta" and not info.value.retryable
    strict = HttpActivity("s", f"{http_server}/echo", host_policy=HostPolicy.strict())
    with pytest.raises(HostNotAllowedError, match="loopback or private"):
        await call(strict, {}, make_ctx())
    allowed = HttpActivity(
        "a", f"{http_server}/echo", host_policy=HostPolicy.strict(allow=["127.0.0.1"])
    )
    assert (await call(allowed, {}, make_ctx()))["status"] == 200


async def test_templated_host_cannot_escape_the_policy(make_ctx) -> None:
    act = HttpActivity(
        "t", "http://{host}/", "GET", host_policy=HostPolicy(allow=["*.example.com"])
    )
    with pytest.raises(HostNotAllowedError):
        await call(act, {"host": "169.254.169.254"}, make_ctx())
    with pytest.raises(HostNotAllowedError):
        # '@' is percent-encoded, so this cannot become user-info of another host
        await call(act, {"host": "x.example.com@127.0.0.1"}, make_ctx())


def test_activity_survives_being_used_from_two_event_loops(http_server: str, make_ctx) -> None:
    # e.g. a sync wrapper calling asyncio.run once per workflow
    act = HttpActivity("e", f"{http_server}/echo", "GET")
    first = asyncio.run(run_activity(act, {}, make_ctx()))
    second = asyncio.run(run_activity(act, {}, make_ctx()))
    assert first["status"] == second["status"] == 200
    asyncio.run(act.aclose())

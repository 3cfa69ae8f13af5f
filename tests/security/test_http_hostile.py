"""HTTP activity under hostile conditions; only 127.0.0.1 is ever contacted.

Addresses that must never be contacted (metadata, private ranges behind
IPv6 forms) are tested through the policy's decision alone.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import httpx
import pytest

from itonami.activities import (
    ActivityContext,
    HostPolicy,
    HttpActivity,
    Secret,
    context_deadline,
    describe_error,
    redact,
    run_activity,
)
from itonami.activities._pinned import PinnedBackend
from itonami.activities.http import _PINNED
from itonami.errors import ActivityError, ActivityTimeoutError, HostNotAllowedError


async def call(act: HttpActivity, ctx: ActivityContext, input: dict | None = None):
    try:
        return await run_activity(act, input or {}, ctx)
    finally:
        await act.aclose()


# ---------------------------------------------------------------- secrets


async def test_a_secret_ending_in_a_newline_fails_without_showing_it(
    http_server, make_ctx, monkeypatch
) -> None:
    monkeypatch.setenv("ITONAMI_TEST_NL_TOKEN", "tok-nl-4f2a9c\n")
    act = HttpActivity(
        "auth",
        f"{http_server.url}/echo",
        "GET",
        headers={"Authorization": Secret.env("ITONAMI_TEST_NL_TOKEN", prefix="Bearer ")},
    )
    with pytest.raises(ActivityError) as info:
        await call(act, make_ctx())
    assert info.value.error_type == "HeaderValueError" and not info.value.retryable
    shown = str(info.value) + json.dumps(describe_error(info.value))
    assert "tok-nl-4f2a9c" not in shown
    assert "Authorization" in shown and "env:ITONAMI_TEST_NL_TOKEN" in shown
    assert http_server.hosts == []  # nothing was sent


def test_redaction_covers_every_encoding_of_a_secret() -> None:
    value = 'p@ss wörd/"\\\n-91ab'
    Secret.from_callable(lambda: value, prefix="Bearer ").reveal()
    forms = [
        value,
        repr(value),
        repr(f"Bearer {value}".encode()),  # httpx: Illegal header value b'...'
        json.dumps(value),
        json.dumps(value, ensure_ascii=False),
        json.dumps(json.dumps(value)),  # JSON inside a JSON string
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        base64.b64encode(value.encode()).decode(),
    ]
    for form in forms:
        assert redact(f"before {form} after").count("[REDACTED]") == 1, form
        assert "91ab" not in redact(f"before {form} after"), form


def test_basic_auth_credentials_are_redacted_in_every_form() -> None:
    from itonami.activities.secrets import remember_header

    token = base64.b64encode(b"svc-user:basic-pw-7731").decode()
    remember_header(f"Basic {token}")
    for text in (token, "svc-user:basic-pw-7731", "basic-pw-7731", f"Basic {token}"):
        assert "7731" not in redact(f"auth {text}") and "[REDACTED]" in redact(text)


async def test_a_secret_echoed_in_a_success_response_is_redacted(
    http_server, make_ctx, monkeypatch
) -> None:
    monkeypatch.setenv("ITONAMI_TEST_ECHO_TOKEN", "echo-tok-55d1e0")
    act = HttpActivity(
        "echo",
        f"{http_server.url}/echo",
        "GET",
        headers={"X-Api-Key": Secret.env("ITONAMI_TEST_ECHO_TOKEN")},
    )
    out = await call(act, make_ctx())
    assert out["status"] == 200
    assert out["body"]["headers"]["x-api-key"] == "[REDACTED]"
    assert "echo-tok-55d1e0" not in json.dumps(out)


# ---------------------------------------------------------------- DNS rebinding


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup(
    http_server, make_ctx
) -> None:
    lookups: list[str] = []

    async def resolver(host: str) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    # "rebind.invalid" never resolves through the system (RFC 2606): only a
    # connection to the address the policy checked can reach the server.
    policy = HostPolicy(resolver=resolver)
    act = HttpActivity(
        "pinned", f"http://rebind.invalid:{http_server.port}/echo", "GET", host_policy=policy
    )
    out = await call(act, make_ctx())
    assert out["status"] == 200
    assert lookups == ["rebind.invalid"]
    assert http_server.hosts == [f"rebind.invalid:{http_server.port}"]  # Host header kept


async def test_a_name_that_turns_into_loopback_after_the_check_is_not_followed() -> None:
    # The check saw a public address; whatever DNS says at connect time, the
    # connection may only go there. The backend connects to exactly what it
    # was given, and refuses a host it was given nothing for.
    backend = PinnedBackend()
    seen: list[str] = []

    class Recorder:
        async def connect_tcp(self, host: str, port: int, **kwargs: object) -> None:
            seen.append(host)
            raise httpcore.ConnectError("recorded")

    backend._inner = Recorder()  # type: ignore[assignment]
    token = _PINNED.set({"api.example.com": ["203.0.113.7"]})
    try:
        with pytest.raises(httpcore.ConnectError):
            await backend.connect_tcp("api.example.com", 443)
        with pytest.raises(httpcore.ConnectError, match="not checked"):
            await backend.connect_tcp("other.example.com", 443)
    finally:
        _PINNED.reset(token)
    with pytest.raises(httpcore.ConnectError, match="not checked"):
        await backend.connect_tcp("api.example.com", 443)
    assert seen == ["203.0.113.7"]


# ---------------------------------------------------------------- IPv6 forms


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "::a9fe:a9fe",  # IPv4-compatible
        "2002:a9fe:a9fe::1",  # 6to4
        "::ffff:0:a9fe:a9fe",  # IPv4-translated
        "::ffff:a9fe:a9fe",  # IPv4-mapped
        "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo, client 169.254.169.254 (obfuscated)
    ],
)
async def test_ipv6_forms_of_the_metadata_address_are_denied(address: str) -> None:
    policy = HostPolicy()
    assert policy.denial(address) is not None
    with pytest.raises(HostNotAllowedError, match=re.escape("169.254.169.254")):
        await policy.check(f"[{address}]")


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::a00:1", "::ffff:0:7f00:1", "2002:c0a8:101::1", "::a00:1", "64:ff9b:1::808:808"],
)
def test_ipv6_forms_of_private_addresses_are_private(address: str) -> None:
    assert HostPolicy().denial(address) is None  # the default allows private networks
    assert HostPolicy.strict().denial(address) is not None


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "2606:4700::1111"])
def test_ipv6_forms_of_public_addresses_stay_allowed(address: str) -> None:
    assert HostPolicy.strict().denial(address) is None


def test_loopback_and_unspecified_ipv6_are_not_mistaken_for_embedded_ipv4() -> None:
    assert HostPolicy().denial("::1") is None
    assert HostPolicy.strict().denial("::1") == "loopback or private"
    assert HostPolicy().denial("::") is not None


# ---------------------------------------------------------------- response size


@pytest.mark.parametrize("with_length", [True, False])
async def test_a_body_over_the_cap_stops_the_read(http_server, make_ctx, with_length) -> None:
    n = 64 * 1024 * 1024
    query = f"n={n}" + ("&length=1" if with_length else "")
    act = HttpActivity("big", f"{http_server.url}/big?{query}", "GET")
    with pytest.raises(ActivityError) as info:
        await call(act, make_ctx())
    assert info.value.error_type == "ResponseTooLargeError" and not info.value.retryable
    assert info.value.details == {"limit": 4 * 1024 * 1024}
    assert http_server.big_done.wait(10)
    assert http_server.sent[0] < n  # the rest was never read


async def test_a_body_under_the_cap_is_read_whole(http_server, make_ctx) -> None:
    act = HttpActivity("big", f"{http_server.url}/big?n=5000", "GET", max_response_bytes=5000)
    out = await call(act, make_ctx())
    assert out["body"] == "x" * 5000


# ---------------------------------------------------------------- deadline


async def test_the_step_deadline_reaches_the_http_time_budget(http_server, make_ctx) -> None:
    # The engine's clock says the step has 0.3 s left; the activity's own
    # timeout (30 s) must not be what applies.
    now = 1_000.0
    ctx = make_ctx(deadline=context_deadline(now, now + 0.3))
    act = HttpActivity("slow", f"{http_server.url}/slow?s=5", "GET")
    started = time.monotonic()
    with pytest.raises(ActivityTimeoutError):
        await act.execute({}, ctx)
    await act.aclose()
    assert time.monotonic() - started < 2.0


def test_context_deadline_carries_the_time_left_over() -> None:
    assert context_deadline(5.0, None) is None
    before = time.monotonic()
    d = context_deadline(100.0, 102.5)
    assert d is not None and before + 2.5 <= d <= time.monotonic() + 2.5
    past = context_deadline(100.0, 90.0)
    assert past is not None and past <= time.monotonic()


# ---------------------------------------------------------------- TLS through the pin


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on 127.0.0.1 with a certificate for ``pinned.test``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=pinned.test", "-addext", "subjectAltName=DNS:pinned.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    seen: dict[str, list[str]] = {"sni": [], "host": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen["host"].append(self.headers.get("Host", ""))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def note_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        seen["sni"].append(name or "")

    context.sni_callback = note_sni  # type: ignore[assignment]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], cert, seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_tls_names_the_host_while_connecting_to_the_checked_address(
    tls_server, make_ctx, monkeypatch
) -> None:
    port, cert, seen = tls_server
    # trust the test certificate instead of the system's roots
    monkeypatch.setattr(
        httpx, "create_ssl_context", lambda **_: ssl.create_default_context(cafile=str(cert))
    )

    async def resolver(host: str) -> list[str]:
        return ["127.0.0.1"]

    act = HttpActivity(
        "tls", f"https://pinned.test:{port}/", "GET", host_policy=HostPolicy(resolver=resolver)
    )
    out = await call(act, make_ctx())
    # the certificate for pinned.test verified, so the client checked that name
    assert out["body"] == {"ok": True}
    assert seen["sni"] == ["pinned.test"]
    assert seen["host"] == [f"pinned.test:{port}"]


def test_denial_wants_an_address() -> None:
    from itonami.activities import ActivityConfigError

    with pytest.raises(ActivityConfigError, match="not an IP address"):
        HostPolicy().denial("metadata.google.internal")

"""HTTP activities (httpx) guarded by a host policy against SSRF.

URL templates use ``{field}`` placeholders filled from the input, each value
percent-encoded with no safe characters, so an input can never add a path
segment, query or host. Redirects are not followed (a redirect is a
non-success status), and the connection goes to the very addresses the policy
checked (no second DNS lookup), so the policy checked before the request is
the policy that applies.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import string
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import orjson

from itonami.errors import ActivityError, ActivityTimeoutError, HostNotAllowedError

from .base import ActivityConfigError, ActivityContext, NonRetryableError
from .secrets import Secret, redact, remember_header, resolve

if TYPE_CHECKING:
    # httpx is imported where a request is made, so `import itonami` does not pay
    # for it when no HTTP activity runs.
    import httpx

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "DEFAULT_RETRY_STATUS", "HostPolicy", "HttpActivity"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Awaitable[list[str]]]

#: Statuses worth retrying: throttled or a gateway that could not reach upstream.
DEFAULT_RETRY_STATUS = frozenset({429, 502, 503, 504})

#: The largest response body read (after content decoding): the core's
#: default payload limit, so a bigger body could never be recorded anyway.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024

# Always denied unless an allow entry names the address explicitly.
_ALWAYS_DENIED_NETS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local, incl. 169.254.169.254 (AWS/GCP/Azure metadata)
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches localhost on Linux
        "::/128",
        "224.0.0.0/4",  # multicast
        "ff00::/8",
        "240.0.0.0/4",  # reserved
        "255.255.255.255/32",
    )
)
_ALWAYS_DENIED_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
# Denied only with ``deny_private=True``.
_PRIVATE_NETS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT
        "fc00::/7",  # unique local
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): translates into a local network
    )
)


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _as_address(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return addr


# IPv6 ranges whose last 32 bits are an IPv4 address that a translator,
# tunnel or the host's own stack may deliver the packet to.
_EMBEDDING_NETS: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
        "64:ff9b:1::/48",  # NAT64 local-use prefix (RFC 8215)
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
        "::/96",  # IPv4-compatible (deprecated, still routed by some stacks)
    )
)
_LOW_32 = 0xFFFFFFFF


def _embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (NAT64, 6to4, Teredo, ...)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    out: list[ipaddress.IPv4Address] = []
    if addr not in (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1")) and any(
        addr in net for net in _EMBEDDING_NETS
    ):
        out.append(ipaddress.IPv4Address(int(addr) & _LOW_32))
    if addr.sixtofour is not None:
        out.append(addr.sixtofour)
    if addr.teredo is not None:
        out.extend(addr.teredo)  # (server, client), the client de-obfuscated
    return out


def _in(addr: IPAddress, nets: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in nets)


async def _system_resolver(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    # getaddrinfo runs in the loop's executor: off the event loop
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class HostPolicy:
    """Which hosts HTTP activities may call.

    ``allow`` / ``deny`` entries are host names (``api.example.com``), suffix
    wildcards (``*.example.com``, which matches subdomains only), IP
    addresses or CIDR networks. A host passes when:

    1. its name matches no ``deny`` name, nor a cloud-metadata name
       (``metadata.google.internal``, ...);
    2. every address it resolves to (DNS is resolved off the event loop;
       IP literals are taken as they are) is in no ``deny`` network, and is
       either in an ``allow`` network or outside the always-denied ranges
       (link-local ``169.254.0.0/16`` and ``fe80::/10``, the metadata
       addresses, unspecified, multicast, reserved) and, with
       ``deny_private=True``, outside loopback and private ranges;
    3. when ``allow`` is not empty, the name matches an ``allow`` name or
       every address is in an ``allow`` network.

    The default policy (``HostPolicy()``) therefore allows loopback and
    private networks (a workflow engine commonly calls services next to it)
    and denies link-local and metadata endpoints. Use :meth:`strict` for
    public-only egress.

    IPv6 addresses that embed an IPv4 address (NAT64 ``64:ff9b::/96``,
    IPv4-compatible ``::a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``,
    6to4 ``2002::/16``, Teredo) are judged by the embedded address as well.

    :class:`HttpActivity` connects to the addresses :meth:`check` returned,
    never resolving the name a second time, so a DNS server that answers
    differently at connect time (DNS rebinding) is not followed.
    """

    def __init__(
        self,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        *,
        deny_private: bool = False,
        resolver: Resolver | None = None,
    ) -> None:
        self.allow_names, self.allow_nets = self._split(allow, "allow")
        self.deny_names, self.deny_nets = self._split(deny, "deny")
        self.deny_private = deny_private
        self._resolver = resolver or _system_resolver

    @classmethod
    def strict(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> HostPolicy:
        """Public addresses only (plus whatever ``allow`` names explicitly)."""
        return cls(allow, deny, deny_private=True)

    @staticmethod
    def _split(entries: Iterable[str], what: str) -> tuple[list[str], list[IPNetwork]]:
        if isinstance(entries, str):
            raise ActivityConfigError(f"HostPolicy {what} must be a list of entries, not a string")
        names: list[str] = []
        nets: list[IPNetwork] = []
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                raise ActivityConfigError(f"HostPolicy {what} entry {entry!r} is not a host")
            try:
                net = ipaddress.ip_network(_normalise_host(entry), strict=False)
            except ValueError:
                name = _normalise_host(entry)
                if "*" in name[2:] or ("*" in name and not name.startswith("*.")):
                    raise ActivityConfigError(
                        f"HostPolicy {what} entry {entry!r}: only a leading '*.' wildcard "
                        "is supported"
                    ) from None
                names.append(name)
            else:
                mapped = getattr(net.network_address, "ipv4_mapped", None)
                if mapped is not None and net.prefixlen == 128:
                    net = ipaddress.ip_network(mapped)
                nets.append(net)
        return names, nets

    @staticmethod
    def _name_matches(host: str, patterns: Iterable[str]) -> bool:
        for pattern in patterns:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and host != pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def _address_denial(self, addr: IPAddress) -> str | None:
        if _in(addr, self.deny_nets):
            return "in a denied network"
        if _in(addr, self.allow_nets):
            return None
        if _in(addr, _ALWAYS_DENIED_NETS):
            return "link-local, metadata or otherwise unroutable"
        if self.deny_private and _in(addr, _PRIVATE_NETS):
            return "loopback or private"
        for inner in _embedded_ipv4(addr):
            reason = self._address_denial(inner)
            if reason is not None:
                return f"embeds {inner}, which is {reason}"
        return None

    def denial(self, address: str) -> str | None:
        """Why the policy refuses to connect to IP ``address``, or ``None``.

        The address-only part of :meth:`check`: no DNS, no allow-list of
        names. Useful to test what the policy makes of an address without
        contacting it.
        """
        addr = _as_address(address)
        if addr is None:
            raise ActivityConfigError(f"{address!r} is not an IP address")
        return self._address_denial(addr)

    async def check(self, host: str, *, activity: str | None = None) -> list[str]:
        """Raise HostNotAllowedError unless ``host`` passes; return its addresses."""
        name = _normalise_host(host)

        def deny(reason: str) -> HostNotAllowedError:
            return HostNotAllowedError(
                f"host {host!r} is not allowed by the host policy: {reason}",
                host=host,
                activity=activity,
            )

        if not name:
            raise deny("empty host")
        literal = _as_address(name)
        if literal is None and (
            self._name_matches(name, self.deny_names) or name in _ALWAYS_DENIED_NAMES
        ):
            raise deny("the name is denied")
        if (
            literal is None
            and self.allow_names
            and not self.allow_nets
            and not self._name_matches(name, self.allow_names)
        ):
            raise deny("it is not on the allow list")  # no need to ask DNS
        if literal is not None:
            addresses = [literal]
        else:
            try:
                resolved = await self._resolver(name)
            except OSError as exc:
                raise ActivityError(
                    f"cannot resolve host {host!r}: {exc}",
                    activity=activity,
                    error_type="HostResolutionError",
                    retryable=True,
                ) from exc
            addresses = [a for a in (_as_address(r) for r in resolved) if a is not None]
            if not addresses:
                raise ActivityError(
                    f"host {host!r} resolved to no address",
                    activity=activity,
                    error_type="HostResolutionError",
                    retryable=True,
                )
        for addr in addresses:
            reason = self._address_denial(addr)
            if reason is not None:
                raise deny(f"it resolves to {addr}, which is {reason}")
        if (self.allow_names or self.allow_nets) and not (
            (literal is None and self._name_matches(name, self.allow_names))
            or all(_in(a, self.allow_nets) for a in addresses)
        ):
            raise deny("it is not on the allow list")
        return [str(a) for a in addresses]


# The addresses the host policy checked, by normalised host name, for the
# request being sent in this task: what :class:`_PinnedBackend` connects to.
_PINNED: contextvars.ContextVar[Mapping[str, list[str]] | None] = contextvars.ContextVar(
    "itonami_http_pinned", default=None
)


def _check_header(name: str, value: str, source: Secret | str, activity: str) -> None:
    """Refuse a header httpx would reject, without the value in the message.

    httpx's own error quotes the value (``Illegal header value b'Bearer
    tok\\n'``); a secret read from a file often ends in a newline.
    """
    bad = next((c for c in value if not (c == "\t" or " " <= c <= "~")), None)
    if bad is None:
        return
    where = f" (from {source!r})" if isinstance(source, Secret) else ""
    if bad in "\r\n":
        what = "a line break (a trailing newline?)"
    elif bad < " " or bad == "\x7f":
        what = "a control character"
    else:
        what = "a non-ASCII character"
    raise NonRetryableError(
        f"activity {activity!r}: header {name!r}{where} holds {what}, which a header "
        "cannot carry; the value is not shown",
        activity=activity,
        error_type="HeaderValueError",
    )


_FORMATTER = string.Formatter()


def _template_fields(template: str, what: str, activity: str) -> list[str]:
    """Placeholder names in ``template``; only plain ``{name}`` is accepted."""
    fields = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ActivityConfigError(
            f"activity {activity!r}: bad {what} template {template!r}: {exc}", activity=activity
        ) from exc
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ActivityConfigError(
                f"activity {activity!r}: {what} template {template!r} has placeholder "
                f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}; "
                "only plain {name} placeholders are allowed",
                activity=activity,
            )
        fields.append(field)
    return fields


def _scalar_text(value: Any, field: str, activity: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise NonRetryableError(
        f"activity {activity!r}: input field {field!r} used in a template must be a "
        f"string or number, got {type(value).__name__}",
        activity=activity,
        error_type="ActivityInputError",
    )


def _lookup(input: Mapping[str, Any], field: str, what: str, activity: str) -> Any:
    if field not in input:
        raise NonRetryableError(
            f"activity {activity!r}: {what} needs input field {field!r}, which is missing "
            f"(input fields: {sorted(input)})",
            activity=activity,
            error_type="ActivityInputError",
        )
    return input[field]


class HttpActivity:
    """Call an HTTP endpoint; the result is ``{"status", "headers", "body"}``.

    - ``url``: template with ``{field}`` placeholders, values percent-encoded.
    - ``headers``: values may be :class:`Secret`, revealed per call.
    - ``body``: ``"input"`` sends the input as JSON (not for GET/HEAD, which
      send no body), ``"none"`` sends nothing, a mapping is a JSON template:
      a string that is exactly ``"{field}"`` becomes the field's value (any
      JSON type), other strings have ``{field}`` placeholders substituted as
      text, lists and mappings are walked, other values are sent as is.
    - ``timeout``: seconds for the whole call, capped by the attempt deadline;
      running out raises a retryable ActivityTimeoutError.
    - A status outside ``success_status`` raises ActivityError with
      ``error_type="HttpStatusError"``, retryable iff in ``retry_status``,
      ``details`` = ``{status, body (first 1000 chars), retry_after?}``.
    - The response body is parsed JSON when the content type is JSON, else
      text; ``None`` when empty. Response headers are lower-cased.
    - ``idempotency_header`` (default ``Idempotency-Key``) carries
      ``ctx.idempotency_key`` unless ``headers`` sets it; ``None`` disables it.
    - ``max_response_bytes``: the body is read as a stream and the call fails
      (not retryable, ``error_type="ResponseTooLargeError"``) as soon as it
      passes this size, or at once when ``Content-Length`` says it will.
    - Header values must be printable ASCII; a :class:`Secret` value with a
      line break (as read from a file) fails the call with
      ``error_type="HeaderValueError"`` and the value is never shown.
    - ``transport``: for tests; with one, the connection is the transport's
      business and not pinned to the checked addresses.

    One ``httpx.AsyncClient`` is shared by all calls of the activity (created
    on first use, in the running event loop); close it with :meth:`aclose`.
    """

    def __init__(
        self,
        name: str,
        url: str,
        method: str = "POST",
        *,
        headers: Mapping[str, str | Secret] | None = None,
        body: Literal["input", "none"] | Mapping[str, Any] = "input",
        timeout: float = 30.0,
        success_status: Container[int] = range(200, 300),
        retry_status: Container[int] = DEFAULT_RETRY_STATUS,
        host_policy: HostPolicy | None = None,
        idempotency_header: str | None = "Idempotency-Key",
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ActivityConfigError(f"activity name must be a non-empty string, got {name!r}")
        self.name = name
        self.method = method.upper()
        if not self.method.isalpha():
            raise ActivityConfigError(
                f"activity {name!r}: bad HTTP method {method!r}", activity=name
            )
        self.url = url
        self._url_fields = _template_fields(url, "url", name)
        self._check_static_url()
        self.headers = dict(headers or {})
        for key, value in self.headers.items():
            if not isinstance(key, str) or not isinstance(value, (str, Secret)):
                raise ActivityConfigError(
                    f"activity {name!r}: header {key!r} must map a string to a string or Secret",
                    activity=name,
                )
        if isinstance(body, str):
            if body not in ("input", "none"):
                raise ActivityConfigError(
                    f"activity {name!r}: body must be 'input', 'none' or a mapping template, "
                    f"got {body!r}",
                    activity=name,
                )
        elif isinstance(body, Mapping):
            self._check_body_template(body, "body")
        else:
            raise ActivityConfigError(
                f"activity {name!r}: body must be 'input', 'none' or a mapping template",
                activity=name,
            )
        self.body = body
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ActivityConfigError(
                f"activity {name!r}: timeout must be > 0 seconds, got {timeout!r}", activity=name
            )
        self.timeout = float(timeout)
        self.success_status = success_status
        self.retry_status = retry_status
        self.host_policy = host_policy if host_policy is not None else HostPolicy()
        self.idempotency_header = idempotency_header
        if not (isinstance(max_response_bytes, int) and max_response_bytes > 0):
            raise ActivityConfigError(
                f"activity {name!r}: max_response_bytes must be a positive int, "
                f"got {max_response_bytes!r}",
                activity=name,
            )
        self.max_response_bytes = max_response_bytes
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _check_static_url(self) -> None:
        probe = urllib.parse.urlsplit(self.url.format_map({f: "x" for f in self._url_fields}))
        if probe.scheme not in ("http", "https"):
            raise ActivityConfigError(
                f"activity {self.name!r}: url {self.url!r} must start with http:// or https://",
                activity=self.name,
            )
        if not probe.hostname:
            raise ActivityConfigError(
                f"activity {self.name!r}: url {self.url!r} has no host", activity=self.name
            )

    def _check_body_template(self, node: Any, where: str) -> None:
        if isinstance(node, str):
            _template_fields(node, where, self.name)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise ActivityConfigError(
                        f"activity {self.name!r}: {where} key {key!r} must be a string",
                        activity=self.name,
                    )
                self._check_body_template(value, f"{where}.{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                self._check_body_template(value, f"{where}[{i}]")

    def render_url(self, input: Mapping[str, Any]) -> str:
        """The URL for ``input``: each placeholder percent-encoded (no safe chars)."""
        values = {
            f: urllib.parse.quote(
                _scalar_text(_lookup(input, f, "url", self.name), f, self.name), safe=""
            )
            for f in self._url_fields
        }
        return self.url.format_map(values)

    def _render_body(self, node: Any, input: Mapping[str, Any]) -> Any:
        if isinstance(node, str):
            parsed = list(_FORMATTER.parse(node))
            if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] is not None:
                return _lookup(input, parsed[0][1], "body", self.name)  # keep its JSON type
            return "".join(
                literal
                + (
                    ""
                    if field is None
                    else _scalar_text(_lookup(input, field, "body", self.name), field, self.name)
                )
                for literal, field, _, _ in parsed
            )
        if isinstance(node, Mapping):
            return {k: self._render_body(v, input) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [self._render_body(v, input) for v in node]
        return node

    def _client_for_loop(self) -> httpx.AsyncClient:
        import httpx

        from . import _pinned

        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            # a client's pooled connections belong to the loop that opened them; one
            # left behind by a finished loop (e.g. a sync wrapper's asyncio.run) is
            # dropped, its sockets closed with that loop
            self._client = httpx.AsyncClient(
                transport=self._transport or _pinned.pinned_transport(),
                follow_redirects=False,
                trust_env=False,
            )
            self._client_loop = loop
        return self._client

    async def execute(self, input: dict[str, Any], ctx: ActivityContext) -> Any:
        """Make the request and return ``{"status", "headers", "body"}``."""
        import httpx

        url = self.render_url(input)
        host = urllib.parse.urlsplit(url).hostname or ""
        addresses = await self.host_policy.check(host, activity=self.name)

        headers: dict[str, str] = {}
        for key, source in self.headers.items():
            value = resolve(source)
            if isinstance(source, Secret):
                remember_header(value)
            _check_header(key, value, source, self.name)
            headers[key] = value
        if self.idempotency_header and not any(
            k.lower() == self.idempotency_header.lower() for k in headers
        ):
            headers[self.idempotency_header] = ctx.idempotency_key
        content: bytes | None = None
        if self.body == "input":
            if self.method not in ("GET", "HEAD"):
                content = orjson.dumps(input)
        elif isinstance(self.body, Mapping):
            content = orjson.dumps(self._render_body(self.body, input))
        if content is not None:
            headers.setdefault("Content-Type", "application/json")

        budget = self.timeout
        remaining = ctx.remaining()
        if remaining is not None:
            budget = max(min(budget, remaining), 0.001)
        started = time.monotonic()
        token = _PINNED.set({_normalise_host(host): addresses})
        try:
            response, body = await asyncio.wait_for(
                self._send(url, headers, content, budget), budget
            )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ActivityTimeoutError(
                f"activity {self.name!r}: {self.method} {redact(url)} timed out after "
                f"{time.monotonic() - started:.3g}s (limit {budget:g}s)",
                activity=self.name,
                error_type="HttpTimeoutError",
                retryable=True,
            ) from exc
        finally:
            _PINNED.reset(token)
        return self._result(response, body, url)

    async def _send(
        self, url: str, headers: dict[str, str], content: bytes | None, budget: float
    ) -> tuple[httpx.Response, bytes]:
        """The response and its body, read as a stream up to the size cap."""
        cap = self.max_response_bytes
        client = self._client_for_loop()
        async with client.stream(
            self.method, url, headers=headers, content=content, timeout=budget
        ) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise self._too_large(url, f"announces {int(declared)} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise self._too_large(url, f"passed {cap} bytes")
                chunks.append(chunk)
        return response, b"".join(chunks)

    def _too_large(self, url: str, what: str) -> NonRetryableError:
        return NonRetryableError(
            f"activity {self.name!r}: the response to {self.method} {redact(url)} {what}, "
            f"over max_response_bytes={self.max_response_bytes}; reading stopped",
            activity=self.name,
            error_type="ResponseTooLargeError",
            details={"limit": self.max_response_bytes},
        )

    def _result(self, response: httpx.Response, raw: bytes, url: str) -> dict[str, Any]:
        text = raw.decode(response.encoding or "utf-8", errors="replace")
        body: Any
        if not raw:
            body = None
        elif "json" in response.headers.get("content-type", "").lower():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = text
        else:
            body = text
        if response.status_code not in self.success_status:
            text = text[:1000]
            details: dict[str, Any] = {"status": response.status_code, "body": text}
            retry_after = response.headers.get("retry-after")
            if retry_after is not None:
                details["retry_after"] = retry_after
            raise ActivityError(
                f"activity {self.name!r}: {self.method} {redact(url)} returned HTTP "
                f"{response.status_code} {response.reason_phrase}".rstrip(),
                activity=self.name,
                error_type="HttpStatusError",
                retryable=response.status_code in self.retry_status,
                details=details,
            )
        headers: dict[str, str] = {}
        for key, value in response.headers.multi_items():
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return {"status": response.status_code, "headers": headers, "body": body}

    async def aclose(self) -> None:
        """Close the shared HTTP client (a later call opens a new one)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> HttpActivity:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"HttpActivity({self.name!r}, {self.method} {self.url!r})"

"""Connections pinned to the addresses the host policy checked (no second DNS
lookup between the check and the connect: DNS rebinding cannot reach what
the policy refused).

Its own module because it builds on httpx and httpcore at import time, and
``import itonami`` must not pay for them when no HTTP activity runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from .http import _PINNED, _normalise_host

__all__ = ["PinnedBackend", "pinned_transport"]


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses the policy checked, never re-resolving the name.

    Only the TCP connect changes: httpcore still takes the TLS server name
    (SNI, certificate check) and httpx the ``Host`` header from the URL, so
    both keep naming the host while the socket goes to the checked address.
    A host with no checked addresses is refused (fail closed).
    """

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pinned = _PINNED.get() or {}
        addresses = pinned.get(_normalise_host(host))
        if not addresses:
            raise httpcore.ConnectError(
                f"host {host!r} was not checked by the host policy; not connecting"
            )
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through the host policy")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pinned_transport() -> httpx.AsyncHTTPTransport:
    """httpx's own transport, its connection pool on a :class:`PinnedBackend`.

    httpx does not let a caller choose the pool's network backend, so the
    pool it built is replaced by an equivalent one that has it; the check
    below stops a future httpx that is laid out differently from silently
    losing the pinning.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx version cannot pin connections to checked addresses")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=httpx.Limits().max_connections,
        max_keepalive_connections=httpx.Limits().max_keepalive_connections,
        keepalive_expiry=httpx.Limits().keepalive_expiry,
        network_backend=PinnedBackend(),
    )
    return transport

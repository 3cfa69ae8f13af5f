"""HostPolicy: defaults, allow/deny lists, DNS answers checked address by address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itonami.activities import ActivityConfigError, HostPolicy
from itonami.errors import ActivityError, HostNotAllowedError


def fake_dns(table: dict[str, list[str]]):
    """A resolver answering from ``table`` (unknown names fail like DNS does)."""
    asked: list[str] = []

    async def resolve(host: str) -> list[str]:
        asked.append(host)
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "169.254.1.1",
        "[fe80::1]",
        "fe80::1%eth0",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",
        "metadata.google.internal",
        "METADATA.google.internal.",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
async def test_default_policy_denies_link_local_and_metadata(host: str) -> None:
    with pytest.raises(HostNotAllowedError) as info:
        await HostPolicy().check(host)
    assert info.value.host == host and not info.value.retryable


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.10", "8.8.8.8"])
async def test_default_policy_allows_loopback_private_and_public(host: str) -> None:
    assert await HostPolicy().check(host) == [str(ipaddress.ip_address(host.strip("[]")))]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.1.2.3", "172.20.0.1", "fd12::1"])
async def test_strict_policy_denies_private_ranges(host: str) -> None:
    with pytest.raises(HostNotAllowedError, match="loopback or private"):
        await HostPolicy.strict().check(host)
    assert await HostPolicy.strict(allow=[f"{host}"]).check(host)


async def test_dns_name_resolving_to_denied_address_is_denied() -> None:
    dns = fake_dns({"innocent.example": ["93.184.216.34", "169.254.169.254"]})
    with pytest.raises(HostNotAllowedError, match=r"169\.254\.169\.254"):
        await HostPolicy(resolver=dns).check("innocent.example")
    assert dns.asked == ["innocent.example"]


async def test_real_dns_localhost_is_denied_by_strict_policy() -> None:
    # "localhost" resolves (through the system resolver, off the loop) to loopback
    with pytest.raises(HostNotAllowedError, match="resolves to"):
        await HostPolicy.strict().check("localhost")
    assert await HostPolicy().check("localhost")


async def test_allow_list_by_name_wildcard_and_cidr() -> None:
    dns = fake_dns(
        {
            "api.example.com": ["93.184.216.34"],
            "example.com": ["93.184.216.34"],
            "evil.test": ["93.184.216.35"],
        }
    )
    policy = HostPolicy(allow=["*.example.com", "203.0.113.0/24"], resolver=dns)
    assert await policy.check("api.example.com") == ["93.184.216.34"]
    assert await policy.check("203.0.113.9") == ["203.0.113.9"]
    with pytest.raises(HostNotAllowedError, match="allow list"):
        await policy.check("evil.test")
    with pytest.raises(HostNotAllowedError, match="allow list"):
        await policy.check("198.51.100.1")
    with pytest.raises(HostNotAllowedError):
        await policy.check("example.com")  # "*." matches subdomains only


async def test_allowed_name_still_cannot_resolve_to_metadata() -> None:
    dns = fake_dns({"api.example.com": ["169.254.169.254"]})
    with pytest.raises(HostNotAllowedError):
        await HostPolicy(allow=["api.example.com"], resolver=dns).check("api.example.com")


async def test_explicit_allow_of_an_address_overrides_the_default_deny() -> None:
    policy = HostPolicy(allow=["169.254.169.254"])
    assert await policy.check("169.254.169.254") == ["169.254.169.254"]


async def test_deny_list_by_name_and_network() -> None:
    dns = fake_dns({"svc.internal": ["10.0.0.5"], "ok.internal": ["10.1.0.5"]})
    policy = HostPolicy(deny=["*.corp", "10.0.0.0/16"], resolver=dns)
    with pytest.raises(HostNotAllowedError, match="name is denied"):
        await policy.check("db.corp")
    with pytest.raises(HostNotAllowedError, match="denied network"):
        await policy.check("svc.internal")
    assert await policy.check("ok.internal") == ["10.1.0.5"]
    with pytest.raises(HostNotAllowedError):  # deny wins over allow
        await HostPolicy(allow=["10.0.0.5"], deny=["10.0.0.0/8"]).check("10.0.0.5")


async def test_unresolvable_host_is_a_retryable_error() -> None:
    with pytest.raises(ActivityError) as info:
        await HostPolicy(resolver=fake_dns({})).check("nowhere.test")
    assert info.value.error_type == "HostResolutionError" and info.value.retryable
    assert not isinstance(info.value, HostNotAllowedError)


@pytest.mark.parametrize("entry", ["a.*.com", "*", "", "api*.example.com"])
def test_bad_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ActivityConfigError):
        HostPolicy(allow=[entry])


def test_a_single_string_is_not_a_list() -> None:
    with pytest.raises(ActivityConfigError, match="list"):
        HostPolicy(allow="example.com")


@given(st.integers(0, 2**16 - 1))
async def test_every_link_local_v4_address_is_denied(n: int) -> None:
    addr = str(ipaddress.IPv4Address("169.254.0.0") + n)
    with pytest.raises(HostNotAllowedError):
        await HostPolicy().check(addr)

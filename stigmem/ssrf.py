"""The SSRF guard for addresses the node connects to: webhook receivers (WIRE.md §5.1) and peers.

Two checks, because DNS answers change: ``check_url`` when a subscription is created (every
A/AAAA record of the host must be public), and ``resolve_pinned`` when a delivery connects: it
resolves again, refuses the host if any record is not public, and returns the one IP the caller
must connect to, so a rebinding between the check and the connect cannot redirect the request.

``allow_private`` (from ``STIGMEM_WEBHOOK_ALLOW_PRIVATE`` for webhooks, the default, or
``STIGMEM_FEDERATION_ALLOW_PRIVATE`` for peers; development and tests) lifts the address rule;
the scheme rule always applies.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

ALLOWED_SCHEMES = ("http", "https")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 ranges that carry an IPv4 address in their low 32 bits and reach it (NAT64).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeUrl(ValueError):
    """The URL may not be connected to; the message says why."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address; False for private, loopback, link-local,
    multicast, reserved, unspecified and shared ranges, also when wrapped in an IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        return is_public(inner)
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_unspecified
    )


def _allow_private(allow_private: bool | None) -> bool:
    return settings.STIGMEM_WEBHOOK_ALLOW_PRIVATE if allow_private is None else allow_private


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to (a literal IP resolves to itself); UnsafeUrl if none."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UnsafeUrl(f"cannot resolve host {host!r}: {exc}") from None
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # IPv6 link-local answers carry a zone ("fe80::1%eth0"); the zone does not change the verdict.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"host {host!r} has no IPv4 or IPv6 address")
    return addresses


def _vet(host: str, addresses: list[IPAddress]) -> None:
    for address in addresses:
        if not is_public(address):
            shown = host if str(address) == host else f"{host!r} resolves to {address}, which"
            raise UnsafeUrl(f"{shown} is not a public address (private, loopback, link-local, multicast or reserved)")


def split_url(url: str) -> tuple[SplitResult, str, int]:
    """The parsed URL, its host and its port (the scheme's default if absent); UnsafeUrl if unusable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"malformed URL: {exc}") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UnsafeUrl(f"the URL scheme must be one of {', '.join(ALLOWED_SCHEMES)}")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    return parts, host, port or (443 if parts.scheme.lower() == "https" else 80)


def check_url(url: str, *, allow_private: bool | None = None) -> None:
    """Create-time check of a webhook URL: http(s), a host, and every resolved address public.

    With private addresses allowed, the host is not resolved at all: resolution would only
    reject hosts that do not exist yet, which is no safety concern.
    """
    _, host, port = split_url(url)
    if _allow_private(allow_private):
        return
    _vet(host, _resolve(host, port))


def resolve_pinned(host: str, port: int, *, allow_private: bool | None = None) -> str:
    """Connect-time resolution: one IP to connect to (as a string), vetted now.

    Resolves ``host`` again and raises UnsafeUrl if it cannot be resolved or if *any* of its
    addresses is not public (a host mixing public and private records is refused outright).
    Connect to the returned IP, sending ``host`` as the Host header and TLS server name.
    """
    addresses = _resolve(host, port)
    if not _allow_private(allow_private):
        _vet(host, addresses)
    return str(addresses[0])

"""The names the dynamic forward proxy's DNS cache keys on, as Envoy makes them (sans-IO).

A request's Host/:authority becomes the cache key `host:port`: as the client wrote it (case kept) when it has a
port, else with the cluster's default port added (80, or 443 when the cluster's transport socket is TLS). The
filter that loads an entry and the cluster that picks a host must make the same key from the same request, so
both call `cache_key`. `parse_authority` splits a key into the name to resolve (brackets of an IPv6 literal
dropped), its port, and whether it is an IP address (resolved all the same, as Envoy does).
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

UINT32_MAX = 2**32 - 1


def _port_start(host: str) -> int:
    """Where a `:port` suffix starts, or -1: the last colon, unless a `]` (IPv6 literal) follows it."""
    colon = host.rfind(":")
    if colon < 0:
        return -1
    bracket = host.rfind("]")
    return colon if bracket < 0 or bracket < colon else -1


def has_port(host: str) -> bool:
    """Envoy's hostHasPort: a colon outside brackets followed by a number (up to 2^32 - 1)."""
    start = _port_start(host)
    if start < 0:
        return False
    digits = host[start + 1:]
    return digits.isascii() and digits.isdigit() and int(digits) <= UINT32_MAX


def cache_key(host: str, default_port: int) -> str:
    """The cache's key of a request host: `host` itself when it has a port, else `host:default_port`."""
    return host if has_port(host) else f"{host}:{default_port}"


class Authority(NamedTuple):
    name: str  # what is resolved: the host without port, an IPv6 literal without its brackets
    port: int | None
    is_ip: bool


def parse_authority(host: str) -> Authority:
    """Envoy's parseAuthority: a port after the last colon (not when the value ends in `]`), kept only when it
    is a number up to 65535 (else the whole value is the name); brackets come off an IP literal."""
    name, port = host, None
    colon = host.rfind(":")
    if colon >= 0 and not host.endswith("]"):
        digits = host[colon + 1:]
        if digits.isascii() and digits.isdigit() and int(digits) <= 65535:
            name, port = host[:colon], int(digits)
    candidate = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return Authority(name, port, False)
    return Authority(candidate, port, True)

"""A cluster's `auto_sni` / `auto_san_validation`: each request's host names the upstream TLS (sans-IO).

Envoy's router, when a cluster's upstream HTTP protocol options set either, takes the host the upstream
request carries (the route's host rewrite, else the Host/:authority header; `override_auto_sni_header`'s
value instead when the request has a non-empty one), drops the port, and uses it as the SNI of new
connections (not when it is an IP address) and as the SAN the server certificate must carry. Those are
per-connection settings, so Envoy keeps a connection pool per host name (its pools are keyed by the
transport socket options, names compared without case): a connection made for one name never serves a
request for another. pylon does the same: `pool_key` is what the worker's pool registry keys the pool by,
and `UpstreamName.tls` the TLS its connections are opened with.

Only clusters that set the options pay anything: the registry asks `Cluster.auto_sni` (None otherwise)
before looking at the request.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pylon.proxy.tls import ClientTls

if TYPE_CHECKING:
    from pylon.config.envoy import AutoSniOptions
    from pylon.proxy.upstream.tls_factory import UpstreamTls


class HostedRequest(Protocol):
    """What auto_sni reads of a request (the router's Stream): its matched route (for `host_rewrite`), the
    Host/:authority it came with, and its headers (names lower-case)."""

    route: Any
    authority: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class UpstreamName:
    """The TLS names of one request host: the SNI to send (None: the context's own) and the SAN to require
    (None: only the configured matchers)."""

    server_name: str | None
    san: str | None

    @property
    def key(self) -> tuple[str | None, str | None]:
        """Its part of the pool key: names compared without case, as Envoy hashes them."""
        return (self.server_name.lower() if self.server_name is not None else None,
                self.san.lower() if self.san is not None else None)

    def tls(self, tls: "UpstreamTls") -> "UpstreamTls":
        """The cluster's TLS for a connection of this name (plain TCP and unavailable TLS stay as they are)."""
        return tls.for_host(self.server_name, self.san) if isinstance(tls, ClientTls) else tls


def split_authority(authority: str) -> tuple[str, bool]:
    """(host without the port, whether it is an IP address) of a Host value, as Envoy parses an authority:
    `[::1]:80` -> ("::1", True); `a.example:8443` -> ("a.example", False); a suffix after the last colon that is
    no port (`::1`, `host:x`) stays part of the host."""
    host = authority
    colon = authority.rfind(":")
    if colon >= 0 and not authority.endswith("]"):
        port = authority[colon + 1:]
        if port.isdigit() and int(port) <= 65535:
            host = authority[:colon]
    bracketed = host.startswith("[") and host.endswith("]")
    candidate = host[1:-1] if bracketed else host
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return host, False
    return candidate, True


class AutoSni:
    """The options of one cluster, compiled: `name_for(request)` per request (only for clusters that have them)."""

    __slots__ = ("auto_sni", "auto_san", "override_header")

    def __init__(self, options: "AutoSniOptions") -> None:
        self.auto_sni = options.auto_sni
        self.auto_san = options.auto_san_validation
        self.override_header = options.override_auto_sni_header.lower().encode("latin-1") or None

    @classmethod
    def of(cls, cluster_config: Any) -> AutoSni | None:
        """The cluster's auto SNI, or None when its options set neither auto_sni nor auto_san_validation."""
        options = cluster_config.auto_sni_options
        return cls(options) if options is not None else None

    def name_for(self, request: HostedRequest) -> UpstreamName:
        """The TLS names the request's host gives its upstream connection."""
        value = request.route.host_rewrite or request.authority
        if self.override_header is not None:
            wanted = self.override_header
            override = b",".join(v for n, v in request.headers if n == wanted)  # all values, as Envoy joins them
            if override:
                value = override
        host, is_ip = split_authority(value.decode("latin-1"))
        return UpstreamName(host if self.auto_sni and not is_ip else None, host if self.auto_san else None)

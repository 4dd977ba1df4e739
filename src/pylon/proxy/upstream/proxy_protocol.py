"""The PROXY protocol header an upstream connection starts with (Envoy's upstream proxy_protocol transport socket).

A backend behind pylon that speaks the HAProxy PROXY protocol (HAProxy, nginx `proxy_protocol`, another Envoy's
listener filter) learns where the client really came from only if the proxy says so first, before any byte of
the application, TLS handshake included. The header is built here, sans IO; `connect.open_upstream` sends it on
the connected socket before anything else.

What goes in it, as Envoy 1.40 does (observed beside it, tests/proxy/test_proxy_upstream_proxy_protocol.py):
- a connection made for a downstream one (HTTP requests, tcp_proxy, CONNECT) carries that connection's client
  address as the source and the address it reached (restored by the proxy_protocol listener filter where one ran)
  as the destination. Since the header is per connection, HTTP requests of different downstream connections never
  share an upstream connection (the pool registry keys such a cluster's pools by the downstream addresses);
- a connection made for nobody (health checks, redis): version 1 carries the upstream socket's own addresses,
  version 2 is the LOCAL command, without TLVs;
- version 2 carries TLVs: the host's (its endpoint metadata `envoy.transport_sockets.proxy_protocol`, a
  `PerHostConfig`) first, then the config's `added_tlvs` whose types the host did not give.
A downstream address that is not an IP address of the same family as the other (an internal listener's) cannot be
written; the connection then fails with a reason saying so rather than carry made-up addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Callable, Sequence

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY = 0x21  # version 2, PROXY command
V2_LOCAL = 0x20  # version 2, LOCAL command
V2_TCP4 = 0x11  # AF_INET, STREAM
V2_TCP6 = 0x21  # AF_INET6, STREAM
#: a LOCAL header: no family, no addresses, nothing after it
V2_LOCAL_HEADER = V2_SIGNATURE + bytes((V2_LOCAL, 0, 0, 0))
#: the most a v2 header's length field can say
V2_MAX_PAYLOAD = 0xFFFF

#: (type, value) pairs, in the order they are written
Tlvs = Sequence[tuple[int, bytes]]


class HeaderError(Exception):
    """The addresses cannot be written in a PROXY header; the message says why (the connection fails with it)."""


def _ip(address: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(address, tuple):
        raise HeaderError(f"the address {address!r} is not an IP address")
    try:
        return ipaddress.ip_address(address[0])
    except ValueError:
        raise HeaderError(f"the address {address[0]!r} is not an IP address") from None


def _pair(source: Any, destination: Any) -> tuple[Any, Any]:
    src, dst = _ip(source), _ip(destination)
    if src.version != dst.version:
        raise HeaderError(f"the source {src} and destination {dst} are of different address families")
    return src, dst


def v1_header(source: Any, destination: Any) -> bytes:
    """`PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`."""
    src, dst = _pair(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def v2_header(source: Any, destination: Any, tlvs: Tlvs = ()) -> bytes:
    """The binary PROXY command header with `tlvs` after the addresses."""
    src, dst = _pair(source, destination)
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    extensions = b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    length = len(addresses) + len(extensions)
    if length > V2_MAX_PAYLOAD:
        raise HeaderError(f"the TLVs make the header longer than {V2_MAX_PAYLOAD} bytes")
    family = V2_TCP4 if src.version == 4 else V2_TCP6
    return V2_SIGNATURE + struct.pack("!BBH", V2_PROXY, family, length) + addresses + extensions


def merged_tlvs(host_tlvs: Tlvs, config_tlvs: Tlvs) -> list[tuple[int, bytes]]:
    """Envoy's order: the host's TLVs, each type once, then the config's of types the host did not give."""
    merged: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    for kind, value in host_tlvs:
        if kind not in seen:
            merged.append((kind, value))
            seen.add(kind)
    merged.extend((kind, value) for kind, value in config_tlvs if kind not in seen)
    return merged


class UpstreamProxyProtocol:
    """A cluster's proxy_protocol transport socket: which version, and the TLVs it adds."""

    __slots__ = ("version", "added_tlvs")

    def __init__(self, version: int, added_tlvs: Tlvs) -> None:
        self.version = version
        self.added_tlvs = list(added_tlvs)

    def header(self, host_tlvs: Tlvs, downstream: tuple[Any, Any] | None, local: Any, remote: Any) -> bytes:
        """The header of a connection from `local` to `remote` made for `downstream` (client, address it reached;
        None: for nobody)."""
        if self.version == 1:
            return v1_header(*downstream) if downstream is not None else v1_header(local, remote)
        if downstream is None:
            return V2_LOCAL_HEADER
        return v2_header(*downstream, merged_tlvs(host_tlvs, self.added_tlvs))

    def preamble(self, host: Any, downstream: tuple[Any, Any] | None) -> Callable[[Any, Any], bytes]:
        """What `open_upstream` calls with the connected socket's (local, remote) addresses for the header."""
        host_tlvs = host_proxy_protocol_tlvs(host)
        return lambda local, remote: self.header(host_tlvs, downstream, local, remote)


#: the endpoint metadata a host's TLVs are under (Envoy's well-known filter metadata name)
HOST_METADATA_KEY = "envoy.transport_sockets.proxy_protocol"


def host_proxy_protocol_tlvs(host: Any) -> Tlvs:
    """The TLVs a host's endpoint metadata adds (`PerHostConfig.added_tlvs`), none without it."""
    metadata = getattr(host, "typed_metadata", None) or {}
    per_host = metadata.get(HOST_METADATA_KEY)
    return per_host.tlv_pairs() if per_host is not None else ()


#: a wrapping transport socket's config type -> the UpstreamProxyProtocol it makes (extensions register:
#: extensions/transport_sockets/proxy_protocol.py; the proxy imports no extension)
_FACTORIES: dict[type, Callable[[Any], UpstreamProxyProtocol]] = {}


def register_upstream_proxy_protocol(config_type: type, factory: Callable[[Any], UpstreamProxyProtocol]) -> None:
    _FACTORIES[config_type] = factory


def socket_proxy_protocol(transport_socket: Any) -> UpstreamProxyProtocol | None:
    """The proxy_protocol socket among a cluster's transport socket and the ones it wraps; None without one."""
    while transport_socket is not None:
        config = transport_socket.typed_config
        factory = _FACTORIES.get(type(config))
        if factory is not None:
            return factory(config)
        transport_socket = getattr(config, "transport_socket", None)
    return None

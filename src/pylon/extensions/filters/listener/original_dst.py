"""envoy.filters.listener.original_dst: where was a redirected connection going before iptables sent it here?

A mesh sidecar captures traffic with iptables/nft REDIRECT rules: a workload's
connection to 10.0.0.7:8080 arrives at the proxy's 127.0.0.1:15001 instead,
and the kernel (conntrack) remembers the address it was meant for, which
SO_ORIGINAL_DST reads back. As in Envoy, that address becomes the connection's
local (destination) address: filter chains match its port and prefix, a
`use_original_dst` listener hands the connection to the listener bound to it,
and ORIGINAL_DST clusters connect there. A connection that was not redirected
reads back its own local address, and keeps it. It needs no bytes from the
client (server-first protocols work): it decides at accept.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Literal

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.proxy.filters.listener import DONE, Detected, register_listener_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"

_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; the same number for IPv6 (IP6T_SO_ORIGINAL_DST)


class OriginalDst(EnvoyStruct, kw_only=True):
    """extensions.filters.listener.original_dst.v3.OriginalDst (its traffic_direction is for Windows only)."""

    traffic_direction: Literal["UNSPECIFIED"] = "UNSPECIFIED"


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The address a REDIRECTed connection was sent to (its own local address when it was not); None when the
    kernel keeps none (no conntrack in this network namespace, or not TCP over IP)."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, _SO_ORIGINAL_DST, 28)  # sockaddr_in6
            port = struct.unpack_from("!H", raw, 2)[0]
            address = ipaddress.IPv6Address(raw[8:24])
            mapped = address.ipv4_mapped
            return (str(mapped) if mapped is not None else str(address)), port
        raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)  # sockaddr_in
        return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
    except OSError:
        return None


class OriginalDstFilter:
    """Reads the original destination at accept; never waits for bytes."""

    max_bytes = 0  # a socket filter: `on_accept`, not `inspect`

    def __init__(self, config: OriginalDst, stats: Any) -> None:
        self.config = config

    def on_accept(self, sock: socket.socket, detected: Detected) -> int:
        found = original_destination(sock)
        if found is not None:
            detected.original_destination = found
        return DONE


registry.register_typed(registry.LISTENER_FILTER, TYPE_URL, OriginalDst)
register_listener_filter(OriginalDst, OriginalDstFilter)

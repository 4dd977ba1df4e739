"""envoy.filters.listener.proxy_protocol: the HAProxy PROXY protocol header, v1 (text) or v2 (binary).

A load balancer in front (HAProxy, an AWS NLB, another proxy's upstream
proxy_protocol transport socket) opens the connection and sends, before any
payload, where the client really came from. The filter reads that header,
takes it off the stream (the chain's transport never sees it) and makes its
source the connection's remote address (x-forwarded-for, RBAC, access logs)
and its destination the restored local address (chain matching, ORIGINAL_DST
clusters) when it differs from the socket's, as Envoy does. A v1 `UNKNOWN`
line and a v2 LOCAL command (a balancer's health check) keep the socket's
addresses.

Envoy's rules, each tested beside Envoy 1.40 (tests/proxy/test_proxy_proxy_protocol.py):
a connection without the header is closed unless
`allow_requests_without_proxy_protocol` (then bytes that cannot begin either
signature go on as they are); `disallowed_versions` closes a header of that
version; a malformed header (a v1 line over 107 bytes or not `PROXY
TCP4|TCP6|UNKNOWN`, addresses of the wrong family or not unicast, a v2
version other than 2, a family other than INET/INET6 with the PROXY command, a
length shorter than the addresses) closes the connection. v2 TLVs are skipped.
Stats: `proxy_proto.[<stat_prefix>.]not_found_allowed|not_found_disallowed`,
`...versions.v1|v2.found|disallowed|error` and the legacy
`downstream_cx_proxy_proto_error`, process-wide as Envoy's. Refused by name:
`rules` (TLVs as metadata) and `pass_through_tlvs` (for an upstream
proxy_protocol transport socket pylon does not have).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet
from pylon.config.errors import FieldError
from pylon.proxy.filters.listener import CLOSE, DONE, MORE, Detected, register_listener_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16  # signature, version/command, family/transport, length
V1_MAX_LINE = 107  # the spec's longest v1 line, CRLF included
V2_MAX = V2_HEADER + 0xFFFF
_V2_ADDRESS_BYTES = {1: 12, 2: 36}  # INET, INET6: two addresses and two ports


class ProxyProtocol(EnvoyStruct, kw_only=True):
    """extensions.filters.listener.proxy_protocol.v3.ProxyProtocol."""

    rules: NotSupportedYet | None = None
    allow_requests_without_proxy_protocol: bool = False
    pass_through_tlvs: NotSupportedYet | None = None
    disallowed_versions: list[Literal["V1", "V2"]] = []
    stat_prefix: str = ""
    #: where `rules` put TLVs; with no rules (refused above) there is nothing to put anywhere, in Envoy too
    tlv_location: Literal["DYNAMIC_METADATA", "FILTER_STATE"] = "DYNAMIC_METADATA"

    def __post_init__(self) -> None:
        if {"V1", "V2"} <= set(self.disallowed_versions):
            raise FieldError("disallowed_versions", "all proxy protocol versions are disallowed")


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed header: its version, its length on the wire, and the addresses it names (None: keep the socket's)."""

    version: int
    length: int
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


class Malformed(ValueError):
    """The bytes are a PROXY header of `version` (0: not recognisably one) that cannot be used."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(reason)
        self.version = version


def _unicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.is_unspecified or ip.is_multicast:
        return False
    return not (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"))


def _address(text: str, port: str, version: int) -> tuple[str, int]:
    """One v1 address and port, of the line's family, unicast; Malformed(1) otherwise."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise Malformed(1, f"bad address {text!r}") from None
    if not port.isdigit() or int(port) > 65535 or ip.version != version or not _unicast(ip):
        raise Malformed(1, f"bad address {text}:{port}")
    return str(ip), int(port)


def _parse_v1(line: bytes) -> Header:
    parts = line.decode("latin-1").rstrip().split()
    if len(parts) < 2 or parts[0] != "PROXY":
        raise Malformed(1, "not a PROXY line")
    if parts[1] == "UNKNOWN":
        return Header(1, len(line))
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise Malformed(1, "bad PROXY line")
    version = 4 if parts[1] == "TCP4" else 6
    return Header(1, len(line), _address(parts[2], parts[4], version), _address(parts[3], parts[5], version))


def _parse_v2(data: bytes) -> Header | None:
    """A v2 header from bytes that begin with its signature; None while incomplete."""
    if len(data) < V2_HEADER:
        return None
    version_command, family = data[12], data[13]
    if version_command >> 4 != 2:
        raise Malformed(2, "not version 2")
    length = int.from_bytes(data[14:16], "big")
    local = version_command & 0xF == 0
    needed = 0 if local else _V2_ADDRESS_BYTES.get(family >> 4)
    if needed is None:
        raise Malformed(2, "unsupported address family")
    if length < needed:
        raise Malformed(2, "length shorter than the addresses")
    if len(data) < V2_HEADER + length:
        return None
    if local:
        return Header(2, V2_HEADER + length)
    if version_command & 0xF != 1 or family & 0xF not in (1, 2):  # PROXY over STREAM or DGRAM only
        raise Malformed(2, "unsupported command or transport")
    body = data[V2_HEADER:V2_HEADER + needed]
    size = 4 if family >> 4 == 1 else 16
    source_ip = ipaddress.ip_address(body[:size])
    destination_ip = ipaddress.ip_address(body[size:2 * size])
    if not (_unicast(source_ip) and _unicast(destination_ip)):
        raise Malformed(2, "addresses not unicast")
    ports = body[2 * size:]
    return Header(2, V2_HEADER + length, (str(source_ip), int.from_bytes(ports[:2], "big")),
                  (str(destination_ip), int.from_bytes(ports[2:4], "big")))


def parse(data: bytes) -> Header | None:
    """The header at the start of `data` (every byte the client sent so far); None while it may still come.

    Raises Malformed for bytes that are no usable header, as Envoy's reader decides: 16 bytes that begin neither
    signature, a v1 line over 107 bytes, or a header that breaks the rules in the module docstring.
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if len(data) >= V2_HEADER and not data.startswith(V1_SIGNATURE):
        raise Malformed(0, "no PROXY protocol signature")
    if data.startswith(b"\r\n"):
        return None  # the start of a v2 signature: decided at 16 bytes, as Envoy's reader waits for them
    end = data.find(b"\r\n", 1)
    if end < 0:
        if len(data) > V1_MAX_LINE:
            raise Malformed(0, "no v1 line end within 107 bytes")
        return None
    if end + 2 > V1_MAX_LINE:
        raise Malformed(1, "v1 line over 107 bytes")
    return _parse_v1(data[:end + 2])


def _may_begin(data: bytes, signature: bytes) -> bool:
    return signature.startswith(data[:len(signature)]) if len(data) < len(signature) else data.startswith(signature)


class _VersionStats:
    __slots__ = ("found", "disallowed", "error")

    def __init__(self, stats: Any, prefix: str) -> None:
        self.found = stats.counter(prefix + "found")
        self.disallowed = stats.counter(prefix + "disallowed")
        self.error = stats.counter(prefix + "error")


class ProxyProtocolFilter:
    """One listener's proxy_protocol filter in one worker (its stats are process-wide, as Envoy's)."""

    max_bytes = V2_MAX

    def __init__(self, config: ProxyProtocol, stats: Any) -> None:
        self.allow_missing = config.allow_requests_without_proxy_protocol
        self.allowed = {1: "V1" not in config.disallowed_versions, 2: "V2" not in config.disallowed_versions}
        prefix = "proxy_proto." + (config.stat_prefix + "." if config.stat_prefix else "")
        self.not_found_allowed = stats.counter(prefix + "not_found_allowed")
        self.not_found_disallowed = stats.counter(prefix + "not_found_disallowed")
        self.versions = {n: _VersionStats(stats, f"{prefix}versions.v{n}.") for n in (1, 2)}
        self.legacy_error = stats.counter("downstream_cx_proxy_proto_error")

    def inspect(self, data: bytes, detected: Detected) -> int:
        if self.allow_missing and not (self.allowed[2] and _may_begin(data, V2_SIGNATURE)) \
                and not (self.allowed[1] and _may_begin(data, V1_SIGNATURE)):
            self.not_found_allowed.inc()
            return DONE
        try:
            header = parse(data)
        except Malformed as exc:
            if exc.version:
                self.versions[exc.version].error.inc()
            else:
                self.not_found_disallowed.inc()
            self.legacy_error.inc()
            return CLOSE
        if header is None:
            return MORE
        stats = self.versions[header.version]
        stats.found.inc()
        if not self.allowed[header.version]:
            stats.disallowed.inc()
            return CLOSE
        detected.drain = header.length
        if header.source is not None:
            detected.remote_address = header.source
            detected.proxied_destination = header.destination
        return DONE


registry.register_typed(registry.LISTENER_FILTER, TYPE_URL, ProxyProtocol)
register_listener_filter(ProxyProtocol, ProxyProtocolFilter)

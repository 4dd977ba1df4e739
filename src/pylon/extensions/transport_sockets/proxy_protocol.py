"""envoy.transport_sockets.upstream_proxy_protocol: a cluster's connections start with a PROXY protocol header.

`extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport` wraps another upstream transport
socket (raw_buffer or TLS: the TLS code sees through it, config/secrets.py `tls_context`). The header is built by
the proxy (proxy/upstream/proxy_protocol.py, which says what goes in it); this module reads the config and the
per-host `PerHostConfig` an endpoint's `typed_filter_metadata` may carry under
`envoy.transport_sockets.proxy_protocol`.

Refused by name, as pylon cannot do them yet: `pass_through_tlvs` (the listener filter keeps no TLVs to pass),
a TLV's `format_string` (values from each stream), and `allow_unspecified_address`. `tlv_as_pool_key` is accepted:
with static TLVs only, a pool's connections all carry the same TLVs, so keying by them changes nothing, in Envoy
too.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet, UInt32, UpstreamTransportSocket
from pylon.config.errors import FieldError
from pylon.proxy.upstream.proxy_protocol import (
    V2_MAX_PAYLOAD, UpstreamProxyProtocol, register_upstream_proxy_protocol,
)

TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
PER_HOST_URL = "type.googleapis.com/envoy.config.core.v3.PerHostConfig"

#: the most a v2 header's TLVs may take: what its length field can say, less the longest addresses (IPv6)
_MAX_TLV_BYTES = V2_MAX_PAYLOAD - 36


class TlvEntry(EnvoyStruct, kw_only=True):
    """config.core.v3.TlvEntry: one TLV, its type a byte and its value at least one byte (Envoy's validation)."""

    type: UInt32
    value: bytes = b""
    format_string: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.type > 0xFF:
            raise FieldError("type", f"must be a byte (0-255), got {self.type}")
        if not self.value:
            raise FieldError("value", "must be at least one byte long")


def _check_tlvs(tlvs: list[TlvEntry]) -> None:
    if sum(3 + len(entry.value) for entry in tlvs) > _MAX_TLV_BYTES:
        raise FieldError("added_tlvs", f"the TLVs take more than the {_MAX_TLV_BYTES} bytes a v2 header has room for")


class PerHostConfig(EnvoyStruct, kw_only=True):
    """config.core.v3.PerHostConfig: TLVs an endpoint adds (its typed_filter_metadata
    `envoy.transport_sockets.proxy_protocol`); they come before the socket's own, and replace those of their
    types."""

    added_tlvs: list[TlvEntry] = []

    def __post_init__(self) -> None:
        _check_tlvs(self.added_tlvs)

    def tlv_pairs(self) -> list[tuple[int, bytes]]:
        return [(entry.type, entry.value) for entry in self.added_tlvs]


class ProxyProtocolConfig(EnvoyStruct, kw_only=True):
    """config.core.v3.ProxyProtocolConfig: the version (V1 by default) and the TLVs added (v2 only)."""

    version: Literal["V1", "V2"] = "V1"
    pass_through_tlvs: NotSupportedYet | None = None
    added_tlvs: list[TlvEntry] = []

    def __post_init__(self) -> None:
        _check_tlvs(self.added_tlvs)


class ProxyProtocolUpstreamTransport(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport."""

    transport_socket: UpstreamTransportSocket
    config: ProxyProtocolConfig = msgspec.field(default_factory=ProxyProtocolConfig)
    allow_unspecified_address: bool = False
    tlv_as_pool_key: bool = False

    def __post_init__(self) -> None:
        if self.allow_unspecified_address:
            raise FieldError("allow_unspecified_address", "not supported yet: pylon fails a connection whose "
                                                          "downstream addresses a PROXY header cannot carry")


def _upstream_proxy_protocol(config: ProxyProtocolUpstreamTransport) -> UpstreamProxyProtocol:
    return UpstreamProxyProtocol(1 if config.config.version == "V1" else 2,
                                 [(entry.type, entry.value) for entry in config.config.added_tlvs])


registry.register_typed(registry.UPSTREAM_TRANSPORT_SOCKET, TYPE_URL, ProxyProtocolUpstreamTransport)
registry.register_typed(registry.TYPED_METADATA, PER_HOST_URL, PerHostConfig)
register_upstream_proxy_protocol(ProxyProtocolUpstreamTransport, _upstream_proxy_protocol)

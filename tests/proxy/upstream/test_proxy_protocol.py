"""The PROXY protocol header of upstream connections, sans IO: versions, addresses, TLVs, what cannot be written."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from pylon.proxy.upstream.proxy_protocol import (
    V2_LOCAL_HEADER, V2_SIGNATURE, HeaderError, UpstreamProxyProtocol, merged_tlvs, v1_header, v2_header,
)

CLIENT = ("192.0.2.7", 5555)
REACHED = ("10.0.0.1", 443)


def test_v1_names_the_family_addresses_and_ports() -> None:
    assert v1_header(CLIENT, REACHED) == b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n"
    assert v1_header(("2001:db8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"


def test_v2_is_the_proxy_command_with_addresses_then_tlvs() -> None:
    header = v2_header(CLIENT, REACHED, [(0xEE, b"x"), (0x01, b"h2")])
    addresses = bytes([192, 0, 2, 7, 10, 0, 0, 1]) + struct.pack("!HH", 5555, 443)
    tlvs = b"\xee\x00\x01x" + b"\x01\x00\x02h2"
    assert header == V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 12 + 9) + addresses + tlvs


def test_v2_ipv6() -> None:
    header = v2_header(("2001:db8::1", 1), ("::1", 2))
    assert header[12:16] == bytes([0x21, 0x21, 0, 36])


@pytest.mark.parametrize(("source", "destination", "reason"), [
    ("internal", REACHED, "is not an IP address"),
    (("not-an-ip", 1), REACHED, "is not an IP address"),
    (CLIENT, ("::1", 2), "different address families"),
])  # fmt: skip
def test_what_cannot_be_written_is_an_error(source: object, destination: object, reason: str) -> None:
    for build in (v1_header, v2_header):
        with pytest.raises(HeaderError, match=reason):
            build(source, destination)


def test_tlvs_beyond_the_length_field_are_an_error() -> None:
    with pytest.raises(HeaderError, match="longer than 65535"):
        v2_header(CLIENT, REACHED, [(0xE0, b"x" * 65530)])


def test_host_tlvs_first_each_type_once_then_the_config_s_others() -> None:
    host = [(0xEE, b"override"), (0xEF, b"new"), (0xEE, b"again")]
    config = [(0xEE, b"default"), (0xE0, b"def"), (0xE0, b"def2")]
    assert merged_tlvs(host, config) == [(0xEE, b"override"), (0xEF, b"new"), (0xE0, b"def"), (0xE0, b"def2")]


def test_a_connection_for_nobody() -> None:
    """Health checks: v2 says LOCAL without TLVs; v1 gives the connection's own addresses."""
    v2 = UpstreamProxyProtocol(2, [(0xE0, b"x")])
    assert v2.header([(0xEE, b"y")], None, ("127.0.0.1", 40000), ("127.0.0.1", 8080)) == V2_LOCAL_HEADER
    v1 = UpstreamProxyProtocol(1, [])
    assert v1.header((), None, ("127.0.0.1", 40000), ("127.0.0.1", 8080)) == \
        b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 8080\r\n"


def test_the_preamble_reads_the_host_s_metadata() -> None:
    per_host = SimpleNamespace(tlv_pairs=lambda: [(0xEE, b"host")])
    host = SimpleNamespace(typed_metadata={"envoy.transport_sockets.proxy_protocol": per_host})
    preamble = UpstreamProxyProtocol(2, [(0xEE, b"socket"), (0xE0, b"z")]).preamble(host, (CLIENT, REACHED))
    assert preamble(("127.0.0.1", 1), ("127.0.0.1", 2)) == v2_header(CLIENT, REACHED, [(0xEE, b"host"), (0xE0, b"z")])

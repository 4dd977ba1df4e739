"""The PROXY protocol header parser and the listener filter's decisions (sans-IO), byte by byte."""

from __future__ import annotations

import pytest

from pylon.config.envoy import convert
from pylon.extensions.filters.listener.proxy_protocol import (
    V2_SIGNATURE, Header, Malformed, ProxyProtocol, ProxyProtocolFilter, parse,
)
from pylon.proxy.filters.listener import CLOSE, DONE, MORE, Detected
from pylon.stats.store import StatsStore

V1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n"
V2 = V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 7, 10, 0, 0, 1]) + b"\x15\xb3\x01\xbb"


def test_v1_and_v2_name_the_same_connection() -> None:
    assert parse(V1 + b"GET /") == Header(1, len(V1), ("192.0.2.7", 5555), ("10.0.0.1", 443))
    assert parse(V2 + b"\x16\x03") == Header(2, len(V2), ("192.0.2.7", 5555), ("10.0.0.1", 443))
    assert parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n").source == ("2001:db8::1", 1)


@pytest.mark.parametrize("data", [V1, V2])
def test_every_prefix_waits_for_more(data: bytes) -> None:
    for end in range(len(data)):
        assert parse(data[:end]) is None, end
    assert parse(data) is not None


@pytest.mark.parametrize(("data", "version"), [
    (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", 0),  # 16 bytes and neither signature
    (b"PROXY " + b"x" * 120, 0),  # no line end within 107 bytes
    (b"PROXY TCP4 " + b"1" * 100 + b"\r\n", 1),  # a line end past 107 bytes
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 5555\r\n", 1),  # a port missing
    (b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 70000\r\n", 1),
    (b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n", 1),  # the wrong family
    (b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", 1),
    (b"PROXY TCP4 224.0.0.1 10.0.0.1 1 2\r\n", 1),  # multicast
    (b"PROXY TCP4 192.0.2.7 255.255.255.255 1 2\r\n", 1),  # broadcast
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), 2),  # version 1 in a v2 header
    (V2_SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12), 2),  # AF_UNIX
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), 2),  # command 2
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), 2),  # INET6 with an INET length
])  # fmt: skip
def test_malformed_headers(data: bytes, version: int) -> None:
    with pytest.raises(Malformed) as info:
        parse(data)
    assert info.value.version == version


def test_local_and_unknown_name_no_addresses() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x03abc"
    assert parse(local + b"rest") == Header(2, len(local))
    unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse(unknown) == Header(1, len(unknown))


def make(**config: object) -> tuple[ProxyProtocolFilter, StatsStore]:
    stats = StatsStore()
    return ProxyProtocolFilter(convert(config, ProxyProtocol), stats), stats


def test_the_filter_drains_the_header_and_names_the_client() -> None:
    flt, stats = make()
    detected = Detected()
    assert flt.inspect(V1[:10], detected) == MORE
    assert flt.inspect(V1 + b"GET", detected) == DONE
    assert (detected.drain, detected.remote_address, detected.proxied_destination) == (
        len(V1), ("192.0.2.7", 5555), ("10.0.0.1", 443))
    assert stats.counter("proxy_proto.versions.v1.found").value == 1


def test_without_a_header_allowed_or_not() -> None:
    strict, _ = make()
    assert strict.inspect(b"GET / HTTP/1.1\r\nhost: a\r\n", Detected()) == CLOSE
    lenient, stats = make(allow_requests_without_proxy_protocol=True)
    detected = Detected()
    assert lenient.inspect(b"G", detected) == DONE and detected.drain == 0
    assert lenient.inspect(b"PRO", Detected()) == MORE  # could still be a v1 header
    assert stats.counter("proxy_proto.not_found_allowed").value == 1


def test_all_versions_disallowed_is_a_config_error() -> None:
    with pytest.raises(Exception, match="all proxy protocol versions are disallowed"):
        convert({"disallowed_versions": ["V1", "V2"]}, ProxyProtocol)

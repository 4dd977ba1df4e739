"""tls_inspector on real ClientHellos (made by the stdlib ssl module) and on what is not one."""

from __future__ import annotations

import ssl

import pytest

from pylon.config.envoy import convert
from pylon.extensions.filters.listener.tls_inspector import (MAX_CLIENT_HELLO, TlsInspector, TlsInspectorFilter,
                                                             handshake_bytes, parse_client_hello)
from pylon.proxy.filters.listener import CLOSE, DONE, MORE, Detected
from pylon.stats.store import StatsStore


def client_hello(server_name: str | None = None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a TLS client: the record(s) carrying its ClientHello."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def inspector(**config: object) -> tuple[TlsInspectorFilter, StatsStore]:
    stats = StatsStore()
    return TlsInspectorFilter(convert(config, TlsInspector), stats), stats


def counts(stats: StatsStore) -> dict[str, int]:
    return {name.split(".", 1)[1]: value for name, value in stats.snapshot()["counters"].items() if value}


def test_sni_and_alpn_are_found() -> None:
    tls, stats = inspector()
    detected = Detected()
    assert tls.inspect(client_hello("api.example.com", ["h2", "http/1.1"]), detected) == DONE
    assert detected == Detected("api.example.com", "tls", ("h2", "http/1.1"))
    assert counts(stats) == {"tls_found": 1, "sni_found": 1, "alpn_found": 1}


def test_a_hello_without_sni_or_alpn_is_still_tls() -> None:
    tls, stats = inspector()
    detected = Detected()
    assert tls.inspect(client_hello(), detected) == DONE
    assert detected == Detected("", "tls", ())
    assert counts(stats) == {"tls_found": 1, "sni_not_found": 1, "alpn_not_found": 1}


def test_a_hello_arriving_byte_by_byte_waits_then_decides() -> None:
    hello = client_hello("a.example")
    tls, _ = inspector()
    detected = Detected()
    for end in range(1, len(hello)):
        assert tls.inspect(hello[:end], detected) == MORE, end
    assert tls.inspect(hello, detected) == DONE and detected.server_name == "a.example"


def test_a_hello_split_over_two_records_is_reassembled() -> None:
    hello = client_hello("split.example", ["http/1.1"])
    body = hello[5:]
    half = len(body) // 2
    records = b"".join(bytes([22, 3, 1]) + len(part).to_bytes(2, "big") + part for part in (body[:half], body[half:]))
    message, consumed = handshake_bytes(records, MAX_CLIENT_HELLO) or (b"", 0)
    assert consumed == len(records)
    assert parse_client_hello(message).server_name == "split.example"


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x02\x01\x00\x05", b"hello", b"\x16\x03\x01\x00\x00"])
def test_what_is_not_a_hello_is_plaintext(data: bytes) -> None:
    tls, stats = inspector()
    detected = Detected()
    assert tls.inspect(data, detected) == DONE
    assert detected.transport_protocol == "" and counts(stats) == {"tls_not_found": 1}


def test_a_broken_hello_is_plaintext_unless_configured_to_close() -> None:
    hello = bytearray(client_hello("a.example"))
    hello[5 + 4 + 2 + 32] = 200  # a session id longer than the message
    assert inspector()[0].inspect(bytes(hello), Detected()) == DONE
    strict, stats = inspector(close_connection_on_client_hello_parsing_errors=True)
    assert strict.inspect(bytes(hello), Detected()) == CLOSE
    assert counts(stats) == {}


def test_a_hello_over_the_limit_closes_the_connection() -> None:
    hello = client_hello("a.example")
    small, stats = inspector(max_client_hello_size=100)
    assert small.inspect(hello[:10], Detected()) == CLOSE  # the declared length is over 100 already
    assert counts(stats) == {"client_hello_too_large": 1}


def test_the_limit_is_envoys() -> None:
    with pytest.raises(Exception, match="greater than the maximum of 16384"):
        convert({"max_client_hello_size": 16385}, TlsInspector)


@pytest.mark.parametrize("data", [b"G", b"GET", b"hell", b"\x16\x03\x01"])
def test_nothing_is_decided_before_a_whole_record_header(data: bytes) -> None:
    assert inspector()[0].inspect(data, Detected()) == MORE  # Envoy waits for 5 bytes, even for "GET"


def test_envoys_range_for_the_initial_read_buffer() -> None:
    for size in (255, 65537):
        with pytest.raises(Exception, match="initial_read_buffer_size"):
            convert({"initial_read_buffer_size": size}, TlsInspector)
    assert convert({"initial_read_buffer_size": 256}, TlsInspector).initial_read_buffer_size == 256

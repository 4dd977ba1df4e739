"""http_inspector: HTTP/1.0, HTTP/1.1 and h2c told from other bytes, as soon as the bytes allow."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.listener.http_inspector import H2_PREFACE, HttpInspector, HttpInspectorFilter, detect_protocol
from pylon.proxy.filters.listener import CLOSE, DONE, MORE, Detected
from pylon.stats.store import StatsStore


@pytest.mark.parametrize(
    ("data", "protocol"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "http/1.1"),
        (b"GET / HTTP/1.1\n", "http/1.1"),  # LF alone ends the line
        (b"get /x HTTP/1.1\r\n", "http/1.1"),  # any method token, lower case too
        (b"FOO / HTTP/1.1\r\n", "http/1.1"),
        (b"POST /x?y=1 HTTP/1.0\r\n", "http/1.0"),
        (b"GET /\r\n", "http/1.0"),  # no version
        (b"GET / HTTP/1.2\r\n", "http/1.0"),
        (b"GET / HTTP/2.0\r\n", "http/1.0"),
        (H2_PREFACE + b"\x00\x00", "h2c"),
        (b"hello\r\n", ""),
        (b"GET / HTTP/3\r\n", ""),
        (b"GET / http/1.1\r\n", ""),
        (b"GET / HTTP/1.1 extra\r\n", ""),
        (b"\r\nGET / HTTP/1.1\r\n", ""),
        (b"\x16\x03\x01\x02\x00", ""),  # no method has such bytes: decided at once
        # More of what Envoy 1.40 answered (probed one by one): separators, targets, versions.
        (b"junk data\n", ""), (b"GET data\n", ""), (b"GET\n", ""), (b"GET /a b\n", ""), (b"GET x:1\n", ""),
        (b"GET ?a\n", ""), (b" GET /\n", ""), (b"GET h:443 HTTP/1.1\r\n", ""), (b"GET / HTTP/01.1\n", ""),
        (b"GET / HTTP/1.10\n", ""), (b"GET / HTTP/1.1\rX\n", ""), (b"G\x01T / HTTP/1.1\r\n", ""),
        (b"GET / \n", "http/1.0"), (b"GET  /\n", "http/1.0"), (b"GET *\n", "http/1.0"), (b"GET //a\n", "http/1.0"),
        (b"GET http://x/\n", "http/1.0"), (b"OPTIONS * HTTP/1.1\r\n", "http/1.1"),
        (b"GET / HTTP/1.1 \r\n", "http/1.1"), (b"GET\t/ HTTP/1.1\n", "http/1.1"),
        (b"GET /\x01 HTTP/1.1\r\n", "http/1.1"), (b"CONNECT h:443 HTTP/1.1\r\n", "http/1.1"),
        (b"GE", None),
        (b"hello", None),
        (b"GET / HTTP/1.1", None),
        (H2_PREFACE[:18], None),
        (b"", None),
    ],
)
def test_detect_protocol(data: bytes, protocol: str | None) -> None:
    assert detect_protocol(data) == protocol


def test_found_protocols_are_counted_and_set() -> None:
    stats = StatsStore()
    inspector = HttpInspectorFilter(HttpInspector(), stats)
    detected = Detected()
    assert inspector.inspect(b"GET / HT", detected) == MORE
    assert inspector.inspect(b"GET / HTTP/1.1\r\n", detected) == DONE
    assert detected.application_protocols == ("http/1.1",)
    other = Detected()
    assert inspector.inspect(b"SSH-2.0-OpenSSH\r\n", other) == DONE and other.application_protocols == ()
    counters = stats.snapshot()["counters"]
    assert counters["http_inspector.http11_found"] == 1 and counters["http_inspector.http_not_found"] == 1


def test_a_tls_connection_is_left_to_its_alpn() -> None:
    detected = Detected(transport_protocol="tls", application_protocols=("h2",))
    assert HttpInspectorFilter(HttpInspector(), StatsStore()).inspect(b"\x16\x03", detected) == DONE
    assert detected.application_protocols == ("h2",)


def test_a_request_line_that_never_ends_closes_the_connection_at_the_limit() -> None:
    stats = StatsStore()
    inspector = HttpInspectorFilter(HttpInspector(), stats)
    assert inspector.inspect(b"GET /" + b"a" * (inspector.max_bytes - 5), Detected()) == CLOSE
    assert stats.snapshot()["counters"]["http_inspector.read_error"] == 1

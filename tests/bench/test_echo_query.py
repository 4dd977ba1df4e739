"""Fortio's echo query arguments and the replies they choose (no sockets)."""

from __future__ import annotations

import pytest

from pylon.bench.echo_query import (
    MAX_DELAY, MAX_SIZE, EchoQueryError, build_response, decide, filler, parse_echo_query,
)


def fixed(*draws: float):
    values = iter(draws)
    return lambda: next(values)


def test_weighted_status_picks_by_cumulative_percent() -> None:
    q = parse_echo_query("status=503:10,404:5")
    assert q.status == ((503, 10.0), (404, 5.0))
    assert decide(q, fixed(0.05)).status == 503
    assert decide(q, fixed(0.12)).status == 404
    assert decide(q, fixed(0.20)).status == 200
    assert decide(parse_echo_query("status=418"), fixed(0.999)).status == 418


def test_delay_size_header_close() -> None:
    q = parse_echo_query("delay=2ms:50,10ms:5&size=1024:10&header=X-A:b&header=X-C:%20d&close=true")
    reply = decide(q, fixed(0.05, 0.3))  # size draw 5% -> 1024; delay draw 30% -> 2ms
    assert (reply.body_size, reply.delay, reply.close) == (1024, 0.002, True)
    assert reply.headers == (("X-A", "b"), ("X-C", "d"))
    assert decide(q, fixed(0.5, 0.99)).delay == 0.0


def test_caps_like_fortio() -> None:
    assert decide(parse_echo_query("delay=10s"), fixed(0.0)).delay == MAX_DELAY
    assert decide(parse_echo_query("size=99999999"), fixed(0.0)).body_size == MAX_SIZE


def test_close_percentage() -> None:
    q = parse_echo_query("close=30")
    assert decide(q, fixed(0.2)).close and not decide(q, fixed(0.5)).close


@pytest.mark.parametrize("query", ["status=abc", "status=42", "delay=fast", "size=big", "header=novalue",
                                   "close=maybe", "header=X:%E2%82%AC"])
def test_bad_arguments(query: str) -> None:
    with pytest.raises(EchoQueryError):
        parse_echo_query(query)


def test_response_bytes() -> None:
    raw = build_response(503, b"abc", b"DATE", close=True, headers=(("X-A", "b"),))
    head, body = raw.split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"Content-Length: 3" in lines and b"Connection: close" in lines and b"X-A: b" in lines
    assert body == b"abc"
    assert len(filler(1000)) == 1000

"""The upstream HTTP/1.1 codec without sockets: requests to bytes; bytes in, response events out."""

from __future__ import annotations

from typing import Any

import httptools
import pytest

from pylon.proxy.http.h1_client import Http1RequestEncoder, Http1ResponseDecoder


# ---------------------------------------------------------------------------- request encoder
def test_request_head_frames_by_length_and_ends_with_nothing() -> None:
    encoder = Http1RequestEncoder(b"POST", b"/a", b"svc", [(b"x-a", b"1")], chunked=False, length=5,
                                  attempt_count=False)
    assert encoder.encode_head(1) == b"POST /a HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
    assert encoder.encode_data(b"hello") == b"hello"
    assert encoder.encode_end() == b""


def test_chunked_request_is_rechunked_piece_by_piece() -> None:
    encoder = Http1RequestEncoder(b"PUT", b"/", b"h", [], chunked=True, length=0, attempt_count=False)
    assert encoder.encode_head(1).endswith(b"host: h\r\ntransfer-encoding: chunked\r\n\r\n")
    assert encoder.encode_data(b"abc") == b"3\r\nabc\r\n"
    assert encoder.encode_end() == b"0\r\n\r\n"


@pytest.mark.parametrize(("method", "tail"), [(b"POST", b"content-length: 0\r\n\r\n"),
                                              (b"PATCH", b"content-length: 0\r\n\r\n"),
                                              (b"OPTIONS", b"content-length: 0\r\n\r\n"),
                                              (b"TRACE", b"content-length: 0\r\n\r\n"),
                                              (b"GET", b"host: h\r\n\r\n"),
                                              (b"HEAD", b"host: h\r\n\r\n"),
                                              (b"DELETE", b"host: h\r\n\r\n")])
def test_a_bodyless_request_says_length_zero_as_envoy_sends_it(method: bytes, tail: bytes) -> None:
    head = Http1RequestEncoder(method, b"/", b"h", [], chunked=False, length=0, attempt_count=False).encode_head(1)
    assert head.endswith(tail)


def test_every_attempt_says_which_it_is_right_after_the_host_line() -> None:
    encoder = Http1RequestEncoder(b"GET", b"/", b"h", [(b"x-a", b"1")], chunked=False, length=0,
                                  attempt_count=True, extra=b"x-envoy-expected-rq-timeout-ms: 500\r\n")
    first, second = encoder.encode_head(1), encoder.encode_head(2)
    assert first == (b"GET / HTTP/1.1\r\nhost: h\r\nx-envoy-attempt-count: 1\r\nx-a: 1\r\n"
                     b"x-envoy-expected-rq-timeout-ms: 500\r\n\r\n")
    assert second == first.replace(b"count: 1", b"count: 2")


# ---------------------------------------------------------------------------- response decoder
class Exchange:
    """The request being answered: every event in order."""

    def __init__(self, is_head: bool = False) -> None:
        self.is_head = is_head
        self.upgrade_accepted = False
        self.events: list[tuple[str, Any]] = []

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.events.append(("headers", status, headers, keep_alive))

    def on_upstream_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", trailers))


class Owner:
    """The upstream connection's side of the decoder: who is answered, and when it is done."""

    def __init__(self, exchange: Exchange | None) -> None:
        self.exchange = exchange
        self.keep_alive = True
        self.completed = 0

    def response_complete(self) -> None:
        assert self.exchange is not None
        self.exchange.events.append(("complete",))
        self.exchange = None
        self.completed += 1


def decoder_for(exchange: Exchange, max_headers: int = 100, trailers: bool = False
                ) -> tuple[Http1ResponseDecoder, Owner]:
    owner = Owner(exchange)
    decoder = Http1ResponseDecoder(owner, max_headers, trailers)
    return decoder, owner


def test_a_response_arrives_as_head_body_end_with_lowercased_names() -> None:
    exchange = Exchange()
    decoder, owner = decoder_for(exchange)
    assert decoder.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: a\r\n\r\nhi") is None
    assert exchange.events == [("headers", 200, [(b"content-length", b"2"), (b"x-up", b"a")], True),
                               ("body", b"hi"), ("complete",)]
    assert owner.keep_alive


def test_responses_split_across_reads_and_reused_for_the_next_exchange() -> None:
    first = Exchange()
    decoder, owner = decoder_for(first)
    decoder.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    decoder.feed(b"c\r\n0\r\n\r\n")
    assert [e[0] for e in first.events] == ["headers", "body", "body", "complete"]
    assert b"".join(e[1] for e in first.events if e[0] == "body") == b"abc"
    second = Exchange()
    owner.exchange = second
    decoder.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert second.events == [("headers", 204, [], True), ("complete",)]


def test_connection_close_forbids_reuse_and_its_nominated_headers_are_dropped() -> None:
    exchange = Exchange()
    decoder, owner = decoder_for(exchange)
    decoder.feed(b"HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nX-Hop: secret\r\nContent-Length: 0\r\n\r\n")
    status, headers, keep_alive = exchange.events[0][1:]
    assert (status, keep_alive, owner.keep_alive) == (200, False, False)
    assert (b"x-hop", b"secret") not in headers


def test_keep_alive_nominates_nothing_and_does_not_undo_an_earlier_connection_header() -> None:
    exchange = Exchange()
    decoder, owner = decoder_for(exchange)
    decoder.feed(b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: secret\r\nConnection: keep-alive\r\n"
                 b"Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n")
    status, headers, keep_alive = exchange.events[0][1:]
    assert (status, keep_alive, owner.keep_alive) == (200, True, True)
    assert [name for name, _ in headers] == [b"connection", b"connection", b"keep-alive", b"content-length"]


def test_informational_heads_are_skipped() -> None:
    exchange = Exchange()
    decoder, _ = decoder_for(exchange)
    decoder.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert exchange.events == [("headers", 201, [(b"content-length", b"0")], True), ("complete",)]


def test_each_response_starts_with_no_fields_of_the_one_before() -> None:
    """An informational head's fields and a nominating Connection header end with their response."""
    exchange = Exchange()
    decoder, owner = decoder_for(exchange)
    decoder.feed(b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\n"
                 b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: a\r\nContent-Length: 0\r\n\r\n")
    assert exchange.events[0] == ("headers", 200, [(b"connection", b"x-hop"), (b"content-length", b"0")], True)
    second = Exchange()
    owner.exchange = second
    decoder.feed(b"HTTP/1.1 200 OK\r\nX-Hop: b\r\nContent-Length: 0\r\n\r\n")
    assert second.events[0] == ("headers", 200, [(b"x-hop", b"b"), (b"content-length", b"0")], True)


def test_a_head_response_is_complete_at_its_head_whatever_its_length_says() -> None:
    exchange = Exchange(is_head=True)
    decoder, owner = decoder_for(exchange)
    decoder.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert [e[0] for e in exchange.events] == ["headers", "complete"]
    nxt = Exchange()
    owner.exchange = nxt
    decoder.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")  # a fresh parser: no body left to wait for
    assert [e[0] for e in nxt.events] == ["headers", "body", "complete"]


def test_a_body_without_length_ends_with_the_connection() -> None:
    exchange = Exchange()
    decoder, owner = decoder_for(exchange)
    decoder.feed(b"HTTP/1.1 200 OK\r\n\r\npart")
    assert [e[0] for e in exchange.events] == ["headers", "body"]
    assert decoder.connection_closed()  # the connection's end completes it
    framed = Exchange()
    decoder2, _ = decoder_for(framed)
    decoder2.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
    assert not decoder2.connection_closed()  # cut short: a reset, not a complete response


def test_more_headers_than_the_cluster_allows_is_a_parse_error() -> None:
    response = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n"
    allowed = Exchange()
    decoder_for(allowed, max_headers=3)[0].feed(response)
    assert [e[0] for e in allowed.events] == ["headers", "complete"]
    refused = Exchange()
    with pytest.raises(httptools.HttpParserError):
        decoder_for(refused, max_headers=2)[0].feed(response)
    assert refused.events == []


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",  # ambiguous length
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",  # both framings
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"NOT HTTP\r\n\r\n",
])
def test_malformed_responses_raise(response: bytes) -> None:
    decoder, _ = decoder_for(Exchange())
    with pytest.raises(httptools.HttpParserError):
        decoder.feed(response)


def test_a_101_hands_back_what_follows_its_head() -> None:
    exchange = Exchange()
    decoder, _ = decoder_for(exchange)
    rest = decoder.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframe")
    assert rest == b"frame"
    assert decoder.status == 101
    assert (b"upgrade", b"websocket") in decoder.headers


_TRAILED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nGrpc-Status: 0\r\n\r\n"


def test_response_trailers_arrive_before_the_end_when_the_cluster_enables_them() -> None:
    exchange = Exchange()
    decoder, _ = decoder_for(exchange, trailers=True)
    decoder.feed(_TRAILED)
    assert exchange.events == [("headers", 200, [(b"transfer-encoding", b"chunked")], True), ("body", b"hi"),
                               ("trailers", [(b"grpc-status", b"0")]), ("complete",)]


def test_response_trailers_are_dropped_by_default_and_never_join_the_head() -> None:
    exchange = Exchange()
    decoder, _ = decoder_for(exchange)
    decoder.feed(_TRAILED)
    assert exchange.events == [("headers", 200, [(b"transfer-encoding", b"chunked")], True), ("body", b"hi"),
                               ("complete",)]


def test_too_many_response_trailers_are_a_protocol_error() -> None:
    decoder, _ = decoder_for(Exchange(), max_headers=1, trailers=True)
    with pytest.raises(httptools.HttpParserError):
        decoder.feed(_TRAILED.replace(b"Grpc-Status: 0\r\n", b"A: 1\r\nB: 2\r\n"))


def test_the_request_encoder_writes_trailers_only_for_a_cluster_that_carries_them() -> None:
    trailers = [(b"x-sum", b"1")]
    carrying = Http1RequestEncoder(b"POST", b"/", b"h", [], chunked=True, length=0, attempt_count=False,
                                   trailers=True)
    assert carrying.encode_end(trailers) == b"0\r\nx-sum: 1\r\n\r\n"
    assert carrying.encode_end(None) == b"0\r\n\r\n"
    plain = Http1RequestEncoder(b"POST", b"/", b"h", [], chunked=True, length=0, attempt_count=False)
    assert plain.encode_end(trailers) == b"0\r\n\r\n"

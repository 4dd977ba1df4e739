"""The downstream HTTP/1.1 codec without sockets: bytes in, requests out; responses in, bytes out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pylon.proxy import local_reply as lr
from pylon.proxy.http.h1_server import Http1RequestDecoder, Http1ResponseEncoder


class Request:
    """The fields the decoder fills, and the events it delivers, recorded."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.is_head = self.http10 = self.upgrade = self.req_chunked = False
        self.keep_alive = True
        self.req_length = 0
        self.body: list[bytes] = []
        self.req_trailers: list[tuple[bytes, bytes]] | None = None
        self.complete = False

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_complete(self) -> None:
        self.complete = True


class Connection:
    """The decoder's callbacks: every event in order."""

    def __init__(self) -> None:
        self.closed = False
        self.draining = False
        self.requests: list[Request] = []
        self.events: list[tuple[str, Any]] = []

    def new_stream(self) -> Request:
        request = Request()
        self.requests.append(request)
        self.events.append(("begin", len(self.requests)))
        return request

    def request_head_complete(self, stream: Request) -> None:
        self.events.append(("head", stream.method + b" " + stream.url))

    def upgrade_rest(self, rest: bytes) -> None:
        self.events.append(("upgrade", rest))


def limits(**overrides: Any) -> SimpleNamespace:
    base = dict(max_header_bytes=60 * 1024, max_headers_count=100, underscores=0, accept_http_10=False,
                enable_trailers=False,
                rejected_underscores=SimpleNamespace(value=0), dropped_underscores=SimpleNamespace(value=0))
    return SimpleNamespace(**{**base, **overrides})


def decoder(**overrides: Any) -> tuple[Http1RequestDecoder, Connection]:
    conn = Connection()
    return Http1RequestDecoder(limits(**overrides), conn), conn  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- decoding


def test_a_request_split_anywhere_gives_the_same_events() -> None:
    wire = b"POST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Thing: v\r\n\r\nhello"
    for cut in range(1, len(wire)):
        dec, conn = decoder()
        assert dec.feed(wire[:cut]) is None and dec.feed(wire[cut:]) is None
        [request] = conn.requests
        assert (request.method, request.url, request.req_length) == (b"POST", b"/up?x=1", 5)
        assert request.headers == [(b"host", b"a"), (b"content-length", b"5"), (b"x-thing", b"v")]
        assert b"".join(request.body) == b"hello" and request.complete
        assert conn.events == [("begin", 1), ("head", b"POST /up?x=1")]
        assert dec.stream is None and dec.in_head


def test_pipelined_requests_come_out_in_order() -> None:
    dec, conn = decoder()
    assert dec.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n") is None
    assert [e for e in conn.events] == [("begin", 1), ("head", b"GET /1"), ("begin", 2), ("head", b"GET /2")]
    assert all(r.complete for r in conn.requests)


def test_a_chunked_body_arrives_unframed() -> None:
    dec, conn = decoder()
    assert dec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") is None
    [request] = conn.requests
    assert request.req_chunked and b"".join(request.body) == b"abcde" and request.complete


@pytest.mark.parametrize("wire, reply", [
    # Smuggling: both framings at once, two lengths, a bare LF, an obs-fold (llhttp's rules, which Envoy shares).
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", lr.BAD_REQUEST),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", lr.BAD_REQUEST),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", lr.BAD_REQUEST),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", lr.BAD_REQUEST),
    # Envoy's codec rules on top.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", lr.UNSUPPORTED_TRANSFER_ENCODING),
    (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", lr.LOW_VERSION),
    (b"GET /\r\n", lr.LOW_VERSION),  # HTTP/0.9: answered at once, not held for headers that never come
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", lr.LOW_VERSION),
])
def test_malformed_or_refused_requests_get_their_reply(wire: bytes, reply: lr.LocalReply) -> None:
    dec, _ = decoder()
    assert dec.feed(wire) is reply


def test_http_10_where_allowed() -> None:
    dec, conn = decoder(accept_http_10=True)
    assert dec.feed(b"GET / HTTP/1.0\r\n\r\n") is None
    assert conn.requests[0].http10 and not conn.requests[0].keep_alive


def test_header_count_and_size_limits() -> None:
    dec, _ = decoder(max_headers_count=3)
    assert dec.feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n") is lr.HEADERS_TOO_LARGE
    dec, _ = decoder(max_header_bytes=100)
    assert dec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 100 + b"\r\n\r\n") is lr.HEADERS_TOO_LARGE
    dec, _ = decoder(max_header_bytes=100)
    assert dec.feed(b"GET /" + b"p" * 120 + b" HTTP/1.1\r\n\r\n") is lr.HEADERS_TOO_LARGE


def test_a_header_line_that_never_ends_is_refused_before_it_is_complete() -> None:
    dec, _ = decoder(max_header_bytes=1024)
    assert dec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: ") is None
    replies = {dec.feed(b"v" * 4096) for _ in range(8)}
    assert lr.HEADERS_TOO_LARGE in replies


def test_headers_with_underscores_dropped_or_refused() -> None:
    wire = b"GET / HTTP/1.1\r\nHost: a\r\nX_Thing: 1\r\n\r\n"
    dec, conn = decoder(underscores=1)
    assert dec.feed(wire) is None
    assert conn.requests[0].headers == [(b"host", b"a")] and dec.hcm.dropped_underscores.value == 1
    dec, _ = decoder(underscores=2)
    assert dec.feed(wire) is lr.UNDERSCORE_IN_HEADER and dec.hcm.rejected_underscores.value == 1


def test_nothing_after_a_closing_request_is_parsed() -> None:
    dec, conn = decoder()
    conn.closed = True  # the connection answered and closed in the middle of this read
    assert dec.feed(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n") is None
    assert conn.requests == []


def test_bytes_after_an_upgrade_head_go_to_the_tunnel() -> None:
    dec, conn = decoder()
    dec.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    assert conn.requests[0].upgrade
    assert conn.events[-1] == ("upgrade", b"\x81\x05hello")


# ---------------------------------------------------------------------------- encoding


def test_a_response_with_a_length_is_sent_as_is() -> None:
    enc = Http1ResponseEncoder(b"envoy")
    assert not enc.encode_headers(200, [(b"content-length", b"2")], close=False, http10=False, head_request=False)
    enc.encode_data(b"ok")
    enc.encode_end()
    assert enc.take() == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert enc.take() == b""


def test_a_response_without_a_length_is_chunked() -> None:
    enc = Http1ResponseEncoder(b"envoy")
    enc.encode_headers(200, [(b"x", b"1")], close=False, http10=False, head_request=False)
    enc.encode_data(b"abc")
    enc.encode_end()
    assert enc.take() == b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    enc.encode_headers(200, [(b"content-length", b"1")], close=False, http10=False, head_request=False)
    enc.encode_data(b"z")  # the next response on the connection is not chunked by the last one's framing
    assert enc.take().endswith(b"\r\n\r\nz")


def test_an_http_10_client_reads_to_the_close() -> None:
    enc = Http1ResponseEncoder(b"envoy")
    assert enc.encode_headers(200, [], close=False, http10=True, head_request=False)
    enc.encode_data(b"abc")
    assert enc.take() == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc"


@pytest.mark.parametrize("status, head", [(204, False), (304, False), (200, True)])
def test_bodiless_responses_are_never_chunked(status: int, head: bool) -> None:
    enc = Http1ResponseEncoder(b"envoy")
    enc.encode_headers(status, [], close=False, http10=False, head_request=head)
    assert b"transfer-encoding" not in enc.take()


def test_local_replies_and_upgrades() -> None:
    enc = Http1ResponseEncoder(b"pylon")
    enc.encode_continue()
    enc.encode_local_reply(503, b"no healthy upstream", close=True, headers=[(b"x-a", b"1")])
    data = enc.take()
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n")
    assert b"server: pylon\r\n" in data and b"x-a: 1\r\n" in data and b"connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nno healthy upstream")
    enc.encode_local_reply(200, b"body", close=False, head_request=True)
    head_reply = enc.take()  # a HEAD request: the length the body would have had, and no body
    assert b"content-length: 4\r\n" in head_reply and head_reply.endswith(b"\r\n\r\n")
    enc.encode_upgrade([(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"content-length", b"0")])
    assert enc.take() == b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"


def test_a_grpc_local_reply_is_a_200_head_with_no_body() -> None:
    enc = Http1ResponseEncoder(b"envoy")
    grpc = [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")]
    enc.encode_trailers_only(grpc, close=True)
    data = enc.take()
    assert data.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ndate: ")
    assert data.endswith(b"server: envoy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    enc.encode_trailers_only(grpc, close=False, head_request=True)  # Envoy's framing of a HEAD reply
    assert enc.take().endswith(b"server: envoy\r\ntransfer-encoding: chunked\r\n\r\n")


# ---------------------------------------------------------------------------- trailers

_CHUNKED_WITH_TRAILERS = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")


def test_trailers_reach_the_stream_with_enable_trailers_and_never_join_its_headers() -> None:
    dec, conn = decoder(enable_trailers=True)
    assert dec.feed(_CHUNKED_WITH_TRAILERS) is None
    first, second = conn.requests
    assert first.req_trailers == [(b"x-sum", b"1"), (b"x-other", b"2")] and first.complete
    assert first.headers == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]
    assert second.req_trailers is None and second.headers == [(b"host", b"a")]


def test_trailers_are_dropped_by_default() -> None:
    dec, conn = decoder()
    assert dec.feed(_CHUNKED_WITH_TRAILERS) is None
    first, _ = conn.requests
    assert first.req_trailers is None and first.complete
    assert first.headers == [(b"host", b"a"), (b"transfer-encoding", b"chunked")]


def test_trailers_are_held_to_the_head_limits() -> None:
    dec, _ = decoder(enable_trailers=True, max_headers_count=1)
    assert dec.feed(_CHUNKED_WITH_TRAILERS) is lr.HEADERS_TOO_LARGE
    dec, _ = decoder(enable_trailers=True, underscores=2)
    assert dec.feed(_CHUNKED_WITH_TRAILERS.replace(b"X-Sum", b"X_Sum")) is lr.UNDERSCORE_IN_HEADER


def test_the_encoder_writes_trailers_after_the_last_chunk_only_when_enabled() -> None:
    trailers = [(b"grpc-status", b"0")]
    for enabled, end in ((True, b"0\r\ngrpc-status: 0\r\n\r\n"), (False, b"0\r\n\r\n")):
        enc = Http1ResponseEncoder(b"envoy", enabled)
        enc.encode_headers(200, [], close=False, http10=False, head_request=False)
        enc.encode_data(b"hi")
        enc.encode_end(trailers)
        assert enc.take().endswith(b"2\r\nhi\r\n" + end)
    enc = Http1ResponseEncoder(b"envoy", True)  # a response with a length has no place for them
    enc.encode_headers(200, [(b"content-length", b"2")], close=False, http10=False, head_request=False)
    enc.encode_data(b"hi")
    enc.encode_end(trailers)
    assert enc.take().endswith(b"\r\n\r\nhi")

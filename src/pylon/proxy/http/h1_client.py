"""The upstream HTTP/1.1 codec (sans-IO): requests to bytes, responses from bytes.

`Http1RequestEncoder` frames one request for an upstream: the head is built
once when the request is routed and sent again, with its attempt number, on
every retry; body pieces are framed as they arrive (chunked when the client
chunked, as they came otherwise). `Http1ResponseDecoder` parses the
upstream's answers with llhttp (httptools) and hands each one to the
exchange attached to the connection as events (head, body, end), so the
connection and its pool only decide about reuse, and the stream never sees
HTTP/1 framing: an HTTP/2 upstream codec would hand it the same events.

Trailers cross only where the cluster's explicit HTTP/1 config says
`enable_trailers`, as Envoy's codec: the encoder writes a request's after its
last chunk, the decoder hands a response's to the exchange
(`on_upstream_trailers`, just before the end); otherwise both drop them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import httptools

from pylon.proxy.http.header_case import PreservedCase
from pylon.proxy.http1 import HEADER_LINE, JOIN_LINES, NOMINATES_NOTHING, encode_chunk, last_chunk, without_nominated

if TYPE_CHECKING:
    from pylon.proxy.upstream.pool import Exchange

#: Methods Envoy 1.40 sends without a length when they have no body; every other bodiless request says
#: `content-length: 0` (seen with Envoy: OPTIONS, TRACE, POST, PUT, PATCH do; GET, HEAD, DELETE do not).
_BODILESS_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"CONNECT"})


class Http1RequestEncoder:
    """One request toward an upstream, ready for each attempt."""

    __slots__ = ("head", "split", "attempt_count", "chunked", "trailers", "parts")

    def __init__(self, method: bytes, target: bytes, host: bytes, headers: list[tuple[bytes, bytes]], *,
                 chunked: bool, length: int, attempt_count: bool, extra: bytes | None = None,
                 trailers: bool = False) -> None:
        """`headers` go as given (the stream already removed hop-by-hop and framing headers); `extra` is
        one ready header line. With `attempt_count` every attempt says which it is (x-envoy-attempt-count),
        right after the host line, as Envoy sets it. `trailers`: the cluster's enable_trailers.

        The HTTP/1.1 head is made by the first `encode_head`: an attempt on an HTTP/2 stream builds its header
        block from `parts` instead (h2_client.head_block) and never needs those bytes."""
        declared: int | None = None  # the content-length the head says (None: chunked, or none at all)
        if not chunked:
            if length:
                declared = length
            elif method not in _BODILESS_METHODS:
                declared = 0
        # What the head is made of (references, no copies).
        self.parts = (method, target, host, headers, extra, declared)
        self.head: bytes | None = None
        self.split = 0  # where x-envoy-attempt-count goes in the head (0: it does not), known with the head
        self.attempt_count = attempt_count
        self.chunked = chunked
        self.trailers = trailers

    def _make_head(self) -> bytes:
        method, target, host, headers, extra, declared = self.parts
        first = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, target, host)
        if self.attempt_count:
            self.split = len(first)
        parts = [first, JOIN_LINES(map(HEADER_LINE, headers)), b"\r\n"] if headers else [first]
        if extra is not None:
            parts.append(extra)
        if self.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif declared is not None:
            parts.append(b"content-length: %d\r\n\r\n" % declared)
        else:
            parts.append(b"\r\n")
        self.head = head = b"".join(parts)
        return head

    def encode_head(self, attempt: int) -> bytes:
        head = self.head
        if head is None:
            head = self._make_head()
        split = self.split
        if not split:
            return head
        return b"%sx-envoy-attempt-count: %d\r\n%s" % (head[:split], attempt, head[split:])

    def encode_data(self, data: bytes) -> bytes:
        return encode_chunk(data) if self.chunked else data

    def encode_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> bytes:
        """What ends the body on the wire: the last chunk (with `trailers` if this cluster carries them), or
        nothing when the length said it all."""
        if not self.chunked:
            return b""
        return last_chunk(trailers if self.trailers else None)


class ResponseOwner(Protocol):
    """The upstream connection a decoder parses for."""

    exchange: "Exchange | None"  # the request being answered (None once it is done or abandoned)
    keep_alive: bool  # whether the connection may serve another request after this response

    def response_complete(self) -> None:
        """The response ended: the exchange is told, and the connection goes back to its pool."""


class TooManyHeaders(Exception):
    """A response head has more headers than the cluster allows (raised from inside the parser:
    httptools turns it into a parse error, so it ends as a protocol error, as Envoy's 502 UPE)."""


class Http1ResponseDecoder:
    """Parses one upstream connection's responses, one exchange at a time (no pipelining)."""

    __slots__ = ("owner", "parser", "max_headers", "headers", "status", "connection", "informational",
                 "head_response", "close_delimited", "in_body", "trailers", "read_trailers", "tunnel")

    def __init__(self, owner: ResponseOwner, max_headers: int, trailers: bool = False) -> None:
        self.owner = owner
        self.parser = httptools.HttpResponseParser(self)
        self.max_headers = max_headers
        self.read_trailers = trailers  # the cluster's enable_trailers: a response's trailers go to the exchange
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None  # the current response's, once one came
        self.status = 0
        self.connection: bytes | None = None  # the response's Connection header naming headers: those go
        self.informational = False  # a 1xx head is being skipped (the proxy answered Expect itself)
        self.head_response = False  # the answer to a HEAD: no body whatever the headers say
        self.close_delimited = False  # the body ends with the connection (no length, no chunking)
        self.in_body = False
        self.tunnel: list[bytes] | None = None  # a CONNECT's 2xx came: the bytes after its head (the tunnel's)

    def feed(self, data: bytes) -> bytes | None:
        """Parse `data`. Returns the bytes after a `101 Switching Protocols` head (the tunnel's, if the
        exchange asked for the upgrade) or after a CONNECT's 2xx head (see `tunnel`), else None; raises
        httptools.HttpParserError on a malformed response."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return data[exc.args[0]:]
        if self.tunnel is not None:
            return b"".join(self.tunnel)
        return None

    def connection_closed(self) -> bool:
        """The connection ended: True when that ends a close-delimited body (the response is complete)."""
        return self.in_body and self.close_delimited

    # -- httptools callbacks ------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:  # llhttp reports trailer fields through this callback, after the body
            return self._on_trailer(name, value)
        name = name.lower()
        if name == b"connection" and value not in NOMINATES_NOTHING:  # keep-alive, close: nothing to drop
            self.connection = value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self.headers
        if len(headers) > self.max_headers:
            raise TooManyHeaders()
        parser = self.parser
        status = parser.get_status_code()
        self.status = status
        if status < 200:
            self.informational = True  # 100 Continue and friends: the stream already answered the client's Expect
            return
        owner = self.owner
        exchange = owner.exchange
        assert exchange is not None
        if status < 300 and exchange.upgrade_accepted and exchange.method == b"CONNECT":
            # llhttp cannot know the request was a CONNECT: it reads what follows as a close-delimited body
            self.tunnel = []
            return
        self.head_response = exchange.is_head
        keep_alive = owner.keep_alive = parser.should_keep_alive()
        framed = False
        for name, _ in headers:
            if name == b"content-length" or name == b"transfer-encoding":
                framed = True
                break
        self.close_delimited = not framed and status != 204 and status != 304 and not self.head_response
        self.in_body = True
        if self.connection is not None:
            headers = without_nominated(headers, self.connection)
            self.connection = None
        self.headers = []  # the next response's (no on_message_begin: one callback fewer per response)
        exchange.on_upstream_headers(status, headers, keep_alive)
        if self.head_response and owner.exchange is not None:
            # llhttp would wait for the Content-Length bytes a HEAD response never
            # carries; the response is complete now, and a fresh parser takes the next one.
            self.parser = httptools.HttpResponseParser(self)
            self.in_body = False
            owner.response_complete()

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        if not self.read_trailers:
            return
        trailers = self.trailers
        if trailers is None:
            trailers = self.trailers = []
        trailers.append((name.lower(), value))
        if len(trailers) > self.max_headers:
            raise TooManyHeaders()

    def on_body(self, body: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.append(body)
            return
        exchange = self.owner.exchange
        if exchange is not None:
            exchange.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            if self.status != 101:  # (a 101's head stays: the connection hands it to the tunnel)
                self.headers = []
                self.connection = None
            return
        if self.tunnel is not None:
            return  # a CONNECT's 2xx with a length: still the tunnel's start
        self.in_body = False
        exchange = self.owner.exchange
        if exchange is not None and not self.head_response:
            trailers = self.trailers
            if trailers is not None:
                self.trailers = None
                exchange.on_upstream_trailers(trailers)
            self.owner.response_complete()


class CasePreservingResponseDecoder(Http1ResponseDecoder):
    """The decoder of a cluster whose header_key_format is preserve_case: each response's names are recorded as
    they came and handed to the exchange (`resp_header_case`), for the client's response to carry."""

    __slots__ = ("case", "fallback_proper")

    def __init__(self, owner: ResponseOwner, max_headers: int, trailers: bool, fallback_proper: bool) -> None:
        super().__init__(owner, max_headers, trailers)
        self.fallback_proper = fallback_proper
        self.case = PreservedCase(fallback_proper)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_body:
            self.case.record(name)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        case, self.case = self.case, PreservedCase(self.fallback_proper)
        exchange = self.owner.exchange
        if exchange is not None and hasattr(exchange, "resp_header_case"):  # streams; not the proxy's own requests
            exchange.resp_header_case = case
        super().on_headers_complete()

"""The downstream HTTP/1.1 codec (sans-IO): requests from bytes, responses to bytes.

`Http1RequestDecoder` parses; `Http1ResponseEncoder` frames. The stream hands it a status and the response headers it decided on (hop-by-
hop headers already gone, the proxy's own added); framing is decided here:
Content-Length as given, else chunked, else (HTTP/1.0, which has no chunking)
the end of the connection; `connection: close` whenever the connection ends
after this response. Bytes collect in `out` and the connection writes them
once per read or upstream event (`HttpConnection.flush_output`): one write
per response is the biggest single saving on this path.

Trailers (fields after a chunked body) cross only where the HCM's
`http_protocol_options.enable_trailers` allows, as Envoy's HTTP/1 codec: the
decoder hands the stream a request's trailers, the encoder writes a response's
after its last chunk; otherwise both drop them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import httptools

from pylon.proxy import local_reply as lr
from pylon.proxy.http.header_case import PreservedCase
from pylon.proxy.http1 import (CONTINUE_100, HEADER_LINE, HOP_BY_HOP, JOIN_LINES, STATUS_LINES, encode_chunk,
                               last_chunk, local_reply, status_line, trailers_only_reply)

if TYPE_CHECKING:
    from pylon.proxy.hcm import HcmRuntime
    from pylon.proxy.stream import Stream

#: A 101's headers not relayed as they came: framing, and the connection header written here.
_UPGRADE_HEAD_SKIP = frozenset({b"connection", b"content-length", b"transfer-encoding", b"keep-alive"})


class Http1ResponseEncoder:
    """Encodes one connection's responses, one at a time (HTTP/1.1 answers in request order)."""

    __slots__ = ("out", "chunked", "server_name", "trailers")
    #: its connection can become a byte pipe after a 101 or a CONNECT's 2xx (tunnel.py)
    tunnels = True

    def __init__(self, server_name: bytes | None, trailers: bool = False) -> None:
        self.out: list[bytes] = []
        self.chunked = False  # the response being sent is chunked: data is framed, the end adds the last chunk
        self.server_name = server_name  # the server header of local replies (None: none)
        self.trailers = trailers  # enable_trailers: a response's trailers are written (else dropped)

    def encode_continue(self) -> None:
        """`100 Continue` for a client that sent `Expect: 100-continue` and waits before its body."""
        self.out.append(CONTINUE_100)

    def encode_headers(self, status: int, headers: list[tuple[bytes, bytes]], *, close: bool, http10: bool,
                       head_request: bool, drop: frozenset[bytes] = HOP_BY_HOP,
                       extra: list[tuple[bytes, bytes]] | None = None) -> bool:
        """The response head; returns whether the connection ends after this response.

        `headers` are sent but for the names in `drop` (at least the hop-by-hop
        ones, which describe the upstream's connection, not this one), then
        `extra`: one pass, since this runs for every response. `close`: the
        stream or the connection wants the connection ended (the client asked,
        a drain, an error). A response with no length becomes chunked, or for an
        HTTP/1.0 client is delimited by the close itself.
        """
        sent = []
        has_length = False
        for pair in headers:
            name = pair[0]
            if name in drop:
                continue
            if name == b"content-length":
                has_length = True
            sent.append(pair)
        if extra:
            sent += extra
        parts = [STATUS_LINES.get(status) or status_line(status), JOIN_LINES(map(HEADER_LINE, sent)), b"\r\n"] \
            if sent else [status_line(status)]
        if not has_length and not head_request and status != 204 and status != 304:
            if http10:
                close = True  # an HTTP/1.0 client reads to the end of the connection
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
        self.out.append(b"".join(parts))
        return close

    def encode_data(self, data: bytes) -> None:
        self.out.append(encode_chunk(data) if self.chunked else data)

    def encode_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """The response body is complete; `trailers` follow its last chunk if this codec writes them (a response
        with a length, or to an HTTP/1.0 client, has no place for them)."""
        if self.chunked:
            self.out.append(last_chunk(trailers if self.trailers else None))
            self.chunked = False

    def encode_upgrade(self, headers: list[tuple[bytes, bytes]], status: int = 101) -> None:
        """The 101 that switches the connection to the upgraded protocol, or a CONNECT's 2xx (no framing, no
        connection header: the bytes after it are the tunnel's, as Envoy writes it); what follows is the tunnel's."""
        parts = [status_line(status)]
        parts += [b"%s: %s\r\n" % pair for pair in headers if pair[0] not in _UPGRADE_HEAD_SKIP]
        parts.append(b"connection: upgrade\r\n\r\n" if status == 101 else b"\r\n")
        self.out.append(b"".join(parts))

    def encode_local_reply(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"text/plain",
                           headers: list[tuple[bytes, bytes]] | None = None, head_request: bool = False) -> None:
        """A whole response the proxy makes itself (Envoy's local reply), with its date and server headers."""
        self.chunked = False
        self.out.append(local_reply(status, body, close=close, content_type=content_type, extra=headers,
                                    server_name=self.server_name, head_only=head_request))

    def encode_trailers_only(self, headers: list[tuple[bytes, bytes]], *, close: bool,
                             head_request: bool = False) -> None:
        """A gRPC local reply: a 200 head with grpc-status among `headers`, and no body."""
        self.chunked = False
        self.out.append(trailers_only_reply(headers, close=close, server_name=self.server_name,
                                            head_only=head_request))

    def take(self) -> bytes:
        """Everything encoded since the last take, as one buffer (b"" if nothing)."""
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data


class RequestCallbacks(Protocol):
    """What the decoder needs from the connection it parses for."""

    closed: bool
    draining: bool

    def new_stream(self) -> "Stream": ...
    def request_head_complete(self, stream: "Stream") -> None: ...
    def upgrade_rest(self, rest: bytes) -> None: ...


class StopParsing(Exception):
    """Raised from a parser callback to stop parsing (httptools turns it into HttpParserCallbackError)."""


class Http1RequestDecoder:
    """Turns a downstream connection's bytes into requests (llhttp through httptools), with Envoy's HTTP/1 limits.

    llhttp already refuses the classic smuggling vectors (see `pylon.proxy.http1`);
    this adds Envoy's codec rules on top: header count and size limits, headers
    with underscores, HTTP/1.1 only (1.0 where allowed), plain chunked as the only
    transfer coding, HTTP/0.9 refused at once. `feed` returns the local reply a
    protocol error calls for (the connection answers it and closes), else None.
    The stream being parsed gets its head fields, then `on_body`, its trailers
    (`stream.req_trailers`, with enable_trailers) and `on_complete`. llhttp
    reports trailer fields through `on_header` after the body.
    """

    __slots__ = ("hcm", "callbacks", "parser", "stream", "in_head", "head_bytes", "raw_head_bytes", "stop_reply")

    def __init__(self, hcm: "HcmRuntime", callbacks: RequestCallbacks) -> None:
        self.hcm = hcm
        self.callbacks = callbacks
        self.parser = httptools.HttpRequestParser(self)
        self.stream: Stream | None = None  # the request whose bytes are being parsed
        self.in_head = True  # between requests or inside a head (the request-headers timeout's concern)
        self.head_bytes = 0  # request line and headers as counted against max_request_headers_kb
        self.raw_head_bytes = 0  # bytes read while in a head, for a header line that never ends
        self.stop_reply: lr.LocalReply | None = None  # why a callback stopped parsing

    def feed(self, data: bytes) -> lr.LocalReply | None:
        if self.in_head:
            self.raw_head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # What follows the head of an accepted upgrade is the tunnel's: it waits for the upstream's 101
            # (nothing more is read meanwhile). A refused upgrade was answered in begin(): the rest is dropped.
            self.callbacks.upgrade_rest(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            # llhttp rejected the bytes, or a callback stopped parsing (see stop_reply).
            if str(exc) != _DATA_AFTER_CLOSE:
                if self.callbacks.closed:
                    return None
                return self.stop_reply or (lr.LOW_VERSION if str(exc) == "Invalid HTTP version" else lr.BAD_REQUEST)
            # The client said Connection: close and went on sending: what follows is dropped, as Envoy drops it
            # (and read, so closing sends no RST over the answer), and the request before it is answered.
        if self.in_head:
            if self.stream is not None and b"\n" in data and self.parser.get_http_version() == "0.0":
                # A request line that ended without a version: HTTP/0.9, which llhttp would hold
                # waiting for headers that never come. Envoy answers 426 at once.
                return lr.LOW_VERSION
            if self.raw_head_bytes > self.hcm.max_header_bytes + _HEAD_SLACK:
                # One header line that never ends: llhttp buffers it until it is complete,
                # so cap what a head may cost before the exact per-header check can run.
                return lr.HEADERS_TOO_LARGE
        return None

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        if self.callbacks.closed:
            # The previous request closed the connection (an error reply, Connection: close):
            # whatever follows in this read must not be parsed, let alone forwarded.
            raise StopParsing()
        self.stream = self.callbacks.new_stream()
        self.in_head = True
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        stream = self.stream
        assert stream is not None
        stream.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.hcm.max_header_bytes:
            self.stop_reply = lr.HEADERS_TOO_LARGE
            raise StopParsing()

    def on_header(self, name: bytes, value: bytes) -> None:
        stream = self.stream
        assert stream is not None
        hcm = self.hcm
        if not self.in_head:
            return self._on_trailer(stream, name, value)
        if hcm.underscores and b"_" in name:
            return self._drop_underscored()
        headers = stream.headers  # the fields kept so far are the count (underscored ones dropped are not)
        headers.append((name.lower(), value))
        self.head_bytes += len(name) + len(value) + 4
        if len(headers) > hcm.max_headers_count or self.head_bytes > hcm.max_header_bytes:
            self.stop_reply = lr.HEADERS_TOO_LARGE
            raise StopParsing()

    def _drop_underscored(self) -> None:
        """A field name with an underscore under `headers_with_underscores_action`: the request is refused
        (REJECT_REQUEST) or the field dropped (DROP_HEADER), counted as Envoy counts them."""
        hcm = self.hcm
        if hcm.underscores == 2:
            hcm.rejected_underscores.value += 1
            self.stop_reply = lr.UNDERSCORE_IN_HEADER
            raise StopParsing()
        hcm.dropped_underscores.value += 1

    def _on_trailer(self, stream: "Stream", name: bytes, value: bytes) -> None:
        """A trailer field: kept for the stream with enable_trailers (under the head's limits), else dropped."""
        hcm = self.hcm
        if not hcm.enable_trailers:
            return
        if hcm.underscores and b"_" in name:
            return self._drop_underscored()
        trailers = stream.req_trailers
        if trailers is None:
            trailers = stream.req_trailers = []
        trailers.append((name.lower(), value))
        self.head_bytes += len(name) + len(value) + 4
        if len(trailers) > hcm.max_headers_count or self.head_bytes > hcm.max_header_bytes:
            self.stop_reply = lr.HEADERS_TOO_LARGE
            raise StopParsing()

    def on_headers_complete(self) -> None:
        stream = self.stream
        assert stream is not None
        self.in_head = False
        self.head_bytes = 0
        self.raw_head_bytes = 0
        parser = self.parser
        method = parser.get_method()
        stream.method = method
        stream.is_head = method == b"HEAD"
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0" or not self.hcm.accept_http_10:
                # Envoy's HTTP/1 codec: 1.1 only, and 1.0 where accept_http_10 allows it.
                self.stop_reply = lr.LOW_VERSION
                raise StopParsing()
            stream.http10 = True
        stream.keep_alive = parser.should_keep_alive()
        stream.upgrade = parser.should_upgrade() or method == b"CONNECT"
        for name, value in stream.headers:
            if name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    # Only plain chunked framing is understood (as in Envoy); llhttp would
                    # complain only after this callback, when the head could already be gone.
                    self.stop_reply = lr.UNSUPPORTED_TRANSFER_ENCODING
                    raise StopParsing()
                stream.req_chunked = True
            elif name == b"content-length":
                stream.req_length = int(value)
        self.callbacks.request_head_complete(stream)

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream.on_body(body)

    def on_message_complete(self) -> None:
        stream = self.stream
        self.stream = None
        self.in_head = True
        if stream is not None:
            stream.on_complete()


class CasePreservingRequestDecoder(Http1RequestDecoder):
    """The decoder of an HCM whose header_key_format is preserve_case: each request's names are recorded as they
    came (`stream.header_case`), for the upstream request to carry (a subclass: the plain decoder pays nothing)."""

    __slots__ = ("fallback_proper",)

    def __init__(self, hcm: "HcmRuntime", callbacks: RequestCallbacks, fallback_proper: bool) -> None:
        super().__init__(hcm, callbacks)
        self.fallback_proper = fallback_proper

    def on_header(self, name: bytes, value: bytes) -> None:
        stream = self.stream
        if stream is not None and self.in_head:
            case = stream.header_case
            if case is None:
                case = stream.header_case = PreservedCase(self.fallback_proper)
            case.record(name)
        super().on_header(name, value)


#: llhttp's error for bytes after a request that said Connection: close.
_DATA_AFTER_CLOSE = "Data after `Connection: close`"
#: How far past max_request_headers_kb an unfinished head may grow before it is refused.
_HEAD_SLACK = 16 * 1024

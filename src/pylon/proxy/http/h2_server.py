"""The downstream HTTP/2 codec's two translations (sans-IO): a request head in, a stream's response out.

`request_head` turns an HTTP/2 request's header block into what the
per-request machinery (`pylon.proxy.stream`) reads from an HTTP/1 request:
method, target, a `host` field made from `:authority`, the other fields with
cookies joined as Envoy joins them (RFC 9113 8.2.3: one `cookie` field, values
separated by "; "), and the declared length. libnghttp2 has already refused
what RFC 9113 forbids (connection-specific fields, `te` other than
`trailers`, upper-case names, pseudo-headers out of place, a length that the
DATA does not match): those end the stream before it gets here.

`Http2ResponseEncoder` is the per-stream counterpart of
`Http1ResponseEncoder`: the same calls from the stream, turned into
submissions on the connection's `H2Connection` (HEADERS with `:status`,
DATA, trailers). Framing is HTTP/2's own, so there is no chunking and no
`connection: close`; connection-specific fields of the upstream's response
are dropped. `out` only says "something was submitted": the stream's flush
(`on_upstream_flush`, `flush_output`) then has the connection write what the
session framed, so one write carries every stream's frames of an event.

A head with a body to follow is held (with the body's first pieces) until the
stream's flush (`commit`) or the body's end: a small response that arrives in
one upstream read, the usual proxied GET, is then submitted whole in one call
(`send_whole`): one call into the shim, which frames the body from its copy.
Nothing is written before the stream's flush anyway, so holding changes no
frame on the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pylon.proxy.http1 import HOP_BY_HOP, HTTP_DATE

if TYPE_CHECKING:
    from pylon.proxy.http.h2_session import H2Connection

Headers = list[tuple[bytes, bytes]]

#: Fields HTTP/2 forbids in a message (RFC 9113 8.2.2), besides the hop-by-hop ones the stream drops already.
CONNECTION_SPECIFIC = HOP_BY_HOP | {b"host"}

_CONTINUE = [(b":status", b"100")]
_ZERO_LENGTH = (b"content-length", b"0")
#: drop set -> it and CONNECTION_SPECIFIC: the fields a response head leaves out (a connection manager has one drop
#: set, so this holds one or two entries)
_NOT_SENT: dict[frozenset[bytes], frozenset[bytes]] = {}


class RequestHead:
    """An HTTP/2 request head as the stream reads an HTTP/1 one."""

    __slots__ = ("method", "path", "protocol", "headers", "length", "rejected", "dropped")

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.protocol = b""  # an extended CONNECT's `:protocol` (RFC 8441; nghttp2 admits it under allow_connect)
        self.headers: Headers = []  # `host` first (from :authority), then the fields in order
        self.length: int | None = None  # content-length, when given
        self.rejected = ""  # why the stream is refused (a name with an underscore under REJECT_REQUEST)
        self.dropped = 0  # fields left out for an underscore in their name (DROP_HEADER)


def request_head(fields: Headers, underscores: int) -> RequestHead:
    """Translate a request's header block (`dropped` says how many underscored names were left out).

    `underscores` is the HCM's headers_with_underscores_action (0 allow, 1 drop the field, 2 refuse the
    request). `:authority` becomes the `host` field, a `host` field stands in for a missing `:authority`
    (RFC 9113 8.3.1), and a second one is dropped, as Envoy keeps one authority.
    """
    head = RequestHead()
    authority: bytes | None = None
    host: bytes | None = None
    headers: Headers = [(b"host", b"")]  # its place, first: filled (or removed) at the end, not inserted there
    cookie_at = -1
    for pair in fields:
        name = pair[0]
        if name[0] == 58:  # b":" (nghttp2 admits no empty name)
            if name == b":method":
                head.method = pair[1]
            elif name == b":path":
                head.path = pair[1]
            elif name == b":authority":
                authority = pair[1]
            elif name == b":protocol":
                head.protocol = pair[1]
            continue  # :scheme: the connection's own scheme is what x-forwarded-proto says, as Envoy
        if underscores and b"_" in name:
            if underscores == 2:
                head.rejected = "underscore"
                return head
            head.dropped += 1
            continue
        if name == b"cookie":
            if cookie_at >= 0:
                headers[cookie_at] = (name, headers[cookie_at][1] + b"; " + pair[1])
                continue
            cookie_at = len(headers)
        elif name == b"host":
            if host is None:
                host = pair[1]
            continue
        elif name == b"content-length":
            head.length = int(pair[1])
        headers.append(pair)
    authority = authority if authority is not None else host
    if authority is not None:
        headers[0] = (b"host", authority)
    else:
        del headers[0]
    head.headers = headers
    return head



def _joined(pieces: list[bytes]) -> bytes:
    """Held body pieces as one buffer (most responses hold just one: no copy then)."""
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)

class Http2ResponseEncoder:
    """Encodes one HTTP/2 stream's response into its connection's session (the stream's `encoder`)."""

    __slots__ = ("out", "session", "stream_id", "server_name", "ended", "headers_only", "held", "held_body", "queued")
    tunnels = False  # its stream's CONNECT payload is DATA frames, not the connection's bytes (h2_tunnel.py)

    def __init__(self, session: "H2Connection", stream_id: int, server_name: bytes | None) -> None:
        self.out: list[bytes] = []  # non-empty: frames were submitted, the connection has something to write
        self.session = session
        self.stream_id = stream_id
        self.server_name = server_name
        self.ended = False  # the response's last frame was submitted (or the stream is gone)
        # The upstream's response ended with its head (an HTTP/2 upstream's trailers-only gRPC error): the head
        # goes with END_STREAM, as Envoy relays it; gRPC clients read its grpc-status only from such a frame.
        self.headers_only = False
        self.held: tuple[bytes, int] | None = None  # a response head not submitted yet (its block, its field count)
        self.held_body: list[bytes] | None = None  # body pieces that came after the held head
        # What the stream had queued in the session after the latest body submission, until the stream's write
        # checks it against the buffer limit (H2StreamConn.write): only a submission can raise it.
        self.queued = 0

    def commit(self) -> None:
        """Submit a held head and the body held behind it: the stream flushes, resets, or its body goes on."""
        held = self.held
        if held is None:
            return
        self.held = None
        session, stream_id = self.session, self.stream_id
        session.send_response_block(stream_id, held[0], held[1])
        body = self.held_body
        if body is not None:
            self.held_body = None
            self.queued = session.send_data(stream_id, _joined(body))

    def drop(self) -> None:
        """The stream is gone: nothing more is submitted for it."""
        self.ended = True
        self.held = self.held_body = None

    def encode_continue(self) -> None:
        """`100 Continue` as an informational HEADERS frame."""
        if not self.ended:
            self.session.send_informational(self.stream_id, _CONTINUE)
            self.out.append(b"")

    def encode_headers(self, status: int, headers: Headers, *, close: bool, http10: bool, head_request: bool,
                       drop: frozenset[bytes] = HOP_BY_HOP, extra: Headers | None = None) -> bool:
        """The response head; a HEAD, 204 or 304 response ends with it. Returns `close` as the stream decided:
        the connection reads it as "the request was not read whole" (see `Http2Connection.stream_done`)."""
        if self.ended:
            return close
        # The head straight as the session's block (`name\0value\0...`): one pass, no list of pairs in between.
        flat = [b":status", b"%d" % status]
        dropped = _NOT_SENT.get(drop)
        if dropped is None:
            dropped = _NOT_SENT[drop] = drop | CONNECTION_SPECIFIC
        for name, value in headers:
            if name not in dropped:
                flat += (name, value)
        if extra:
            for pair in extra:
                flat += pair
        # content-length: 0 (neither drop set holds content-length: every field of that name went into `flat`)
        empty = _ZERO_LENGTH in headers or (extra is not None and _ZERO_LENGTH in extra)
        count = len(flat) // 2
        flat.append(b"")
        block = b"\0".join(flat)
        # A head that says no body follows ends the stream: an HTTP/2 upstream's head that ended its stream
        # (headers_only), or a length of 0, as Envoy relays an HTTP/1.1 upstream's (a gRPC server's trailers-only
        # answer: a client reads its grpc-status only from a HEADERS frame with END_STREAM)
        if head_request or status == 204 or status == 304 or self.headers_only or empty:
            self.session.send_response_block(self.stream_id, block, count, end_stream=True)
            self.ended = True
        else:
            self.held = (block, count)  # submitted by commit, or whole with its body by encode_end
        self.out.append(b"")
        return close

    def encode_data(self, data: bytes) -> None:
        if data and not self.ended:
            if self.held is not None:
                if self.held_body is None:
                    self.held_body = [data]
                else:
                    self.held_body.append(data)
            else:
                self.queued = self.session.send_data(self.stream_id, data)
            if not self.out:
                self.out.append(b"")

    def encode_end(self, trailers: Headers | None = None) -> None:
        """The body is complete: its trailers (HTTP/2 always carries them), else an empty DATA with END_STREAM."""
        if self.ended:
            return
        held = self.held
        if held is not None:  # the whole response in one submission, its trailers too
            body = self.held_body
            self.held = self.held_body = None
            self.session.send_whole(self.stream_id, held[0], held[1], b"" if body is None else _joined(body), trailers)
        else:
            self.commit()
            if trailers:
                self.session.send_trailers(self.stream_id, trailers)
            else:
                self.session.send_data(self.stream_id, b"", end_stream=True)
        self.ended = True
        self.out.append(b"")

    def _date_and_server(self) -> Headers:
        """The date and server fields of the proxy's own replies (no server field when `server_name` is None)."""
        if self.server_name is None:
            return [(b"date", HTTP_DATE.now())]
        return [(b"date", HTTP_DATE.now()), (b"server", self.server_name)]

    def encode_local_reply(self, status: int, body: bytes, *, close: bool, content_type: bytes = b"text/plain",
                           headers: Headers | None = None, head_request: bool = False) -> None:
        """A whole response the proxy makes itself, with the fields Envoy's local replies carry."""
        if self.ended:
            return
        sent = [(b":status", b"%d" % status), (b"content-length", b"%d" % len(body))]
        if body:
            sent.append((b"content-type", content_type))
        sent += self._date_and_server()
        if headers:
            sent += [pair for pair in headers if pair[0] not in CONNECTION_SPECIFIC]
        with_body = bool(body) and not head_request
        self.session.send_response(self.stream_id, sent, end_stream=not with_body)
        if with_body:
            self.session.send_data(self.stream_id, body, end_stream=True)
        self.ended = True
        self.out.append(b"")

    def encode_trailers_only(self, headers: Headers, *, close: bool, head_request: bool = False) -> None:
        """A gRPC local reply: one HEADERS frame with END_STREAM, :status 200 and grpc-status among `headers`."""
        if self.ended:
            return
        sent = [(b":status", b"200")]
        sent += [pair for pair in headers if pair[0] not in CONNECTION_SPECIFIC]
        sent += self._date_and_server()
        self.session.send_response(self.stream_id, sent, end_stream=True)
        self.ended = True
        self.out.append(b"")

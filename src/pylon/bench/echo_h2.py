"""`pylon echo` over HTTP/2: h2c with prior knowledge on the HTTP port, `h2` by ALPN on a TLS one.

Fortio's server answers HTTP/2 the way Go's net/http does with unencrypted
HTTP/2 enabled: a connection that opens with the client preface is HTTP/2
(prior knowledge); there is no `Upgrade: h2c`, so neither is there here (an
upgrade request is answered over HTTP/1.1 without switching). The codec is
pylon's libnghttp2 one (`H2Connection`), so the server costs about what the
HTTP/1.1 path costs. Replies are the HTTP/1.1 ones (`echo_query`): the same
query arguments, `/echo`, `/debug` and `/stats`, framed as HEADERS + DATA;
`close` becomes a GOAWAY after the reply, as Go's server turns
`Connection: close` into one. Every stream but `/stats` counts in
`downstream_rq_total`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

from pylon.bench.echo_query import (
    SERVER_NAME, EchoQueryError, Reply, debug_text, decide, filler, parse_echo_query,
)
from pylon.proxy.http.h2_session import H2Connection, H2Error, Headers

if TYPE_CHECKING:
    from pylon.bench.echo import _Worker

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Request:
    """A stream's request as far as it has arrived."""

    __slots__ = ("method", "path", "block", "body")

    def __init__(self, method: bytes, path: bytes, block: Headers) -> None:
        self.method = method
        self.path = path
        self.block = block  # the header block as received, pseudo-headers first
        self.body: list[bytes] = []

    def fields(self) -> Headers:
        """The request's fields for `/debug`: `host` from `:authority` first, then the regular ones."""
        fields = [(b"host", value) for name, value in self.block if name == b":authority"]
        return fields + [pair for pair in self.block if pair[0][:1] != b":"]


class EchoH2Connection:
    """One HTTP/2 client connection: the owner of its `H2Connection`, writing after each event."""

    def __init__(self, worker: "_Worker", transport: asyncio.Transport, rq_slot: int) -> None:
        self.w = worker
        self.transport = transport
        self.rq_slot = rq_slot
        self.h2 = H2Connection(self, server=True)
        self.requests: dict[int, _Request] = {}
        self.flush()  # our SETTINGS go out first

    def data_received(self, data: bytes) -> None:
        try:
            self.h2.receive(data)
        except H2Error:
            self.h2.terminate()
        self.flush()

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)
        if self.h2.closed or not (self.h2.want_read or self.h2.want_write):
            self.transport.close()

    def connection_lost(self) -> None:
        self.requests.clear()
        self.h2.close()

    # H2Owner calls ------------------------------------------------------------------------------------

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        method = path = b""
        for name, value in headers:  # nghttp2 has checked that the pseudo-headers come first
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name[:1] != b":":
                break
        request = _Request(method, path, headers)
        if end_stream:
            self._answer(stream_id, request)
        else:
            self.requests[stream_id] = request

    def on_data(self, stream_id: int, data: bytes) -> None:
        request = self.requests.get(stream_id)
        if request is not None:
            request.body.append(data)
        self.h2.consume(stream_id, len(data))

    def on_trailers(self, stream_id: int, trailers: Headers) -> None:
        self.on_end_stream(stream_id)

    def on_end_stream(self, stream_id: int) -> None:
        request = self.requests.pop(stream_id, None)
        if request is not None:
            self._answer(stream_id, request)

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        self.requests.pop(stream_id, None)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """Nothing to do: streams already open are answered, and the client opens no more."""

    def on_ping_ack(self) -> None:
        """Nothing to do: the echo server sends no PINGs of its own (an unsolicited ACK is ignored)."""

    # replies ------------------------------------------------------------------------------------------

    def _answer(self, stream_id: int, request: _Request) -> None:
        w = self.w
        path, _, query = request.path.partition(b"?")
        if path == b"/stats":
            self._send(stream_id, 200, w.counters.render(), ())
            return
        w.values[self.rq_slot] += 1
        if not query and path != b"/echo" and path != b"/debug":
            self._send(stream_id, 200, w.body, ())
            return
        try:
            reply = decide(parse_echo_query(query.decode("latin-1")))
        except EchoQueryError as exc:
            self._send(stream_id, 400, f"{exc}\n".encode(), ())
            return
        body = self._body_for(path, request, reply)
        if reply.delay > 0:
            w.loop.call_later(reply.delay, self._delayed, stream_id, reply, body, time.monotonic() + reply.delay)
        else:
            self._send(stream_id, reply.status, body, reply.headers, reply.close)

    def _delayed(self, stream_id: int, reply: Reply, body: bytes, due: float) -> None:
        early = due - time.monotonic()  # uvloop's timers may fire a little early (see echo.py)
        if early > 0:
            self.w.loop.call_later(early, self._delayed, stream_id, reply, body, due)
            return
        if self.h2.closed:
            return
        try:
            self._send(stream_id, reply.status, body, reply.headers, reply.close)
        except H2Error:
            return  # the client reset the stream while we waited
        self.flush()

    def _body_for(self, path: bytes, request: _Request, reply: Reply) -> bytes:
        if reply.body_size is not None:
            return filler(reply.body_size)
        if path == b"/echo":
            return b"".join(request.body)
        if path == b"/debug":
            line = b"%s %s HTTP/2.0" % (request.method, request.path)
            return debug_text(socket.gethostname(), self.transport.get_extra_info("peername"), line,
                              request.fields(), b"".join(request.body))
        return self.w.body

    def _send(self, stream_id: int, status: int, body: bytes, extra: tuple[tuple[str, str], ...],
              close: bool = False) -> None:
        headers = [(b":status", b"%d" % status), (b"server", SERVER_NAME), (b"date", self.w.date),
                   (b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra]
        self.h2.send_response(stream_id, headers, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        if close:
            self.h2.goaway()

"""Which codec serves a downstream HTTP connection: the HCM's `codec_type`, as Envoy chooses.

HTTP1 is always HTTP/1.1 and HTTP2 always HTTP/2. AUTO chooses per
connection: over TLS by the negotiated ALPN protocol (`h2`, else HTTP/1.1),
known once the handshake is done; in plaintext by the first bytes: the HTTP/2
connection preface means h2c with prior knowledge, anything else HTTP/1.1.
The choice costs each connection one look and no request anything: an
HTTP/1 connection, once chosen, is the plain `HttpConnection` with its
HTTP/1 decoder (the preface check steps aside after the first bytes).

Departure: a plaintext client whose preface arrives in pieces is waited for
(bytes that can still become the preface are held); Envoy 1.40 takes a short
first read that is not the whole preface for HTTP/1 and resets the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from pylon.proxy.filters.listener import Detected
from pylon.proxy.h2_connection import Http2Connection
from pylon.proxy.hcm import HcmRuntime, HttpConnection
from pylon.proxy.http.h1_server import Http1RequestDecoder

#: RFC 9113 3.4: what an HTTP/2 client sends first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connection_factory(hcm: HcmRuntime, scheme: bytes, tls: bool, listener: Any
                       ) -> Callable[[Detected | None], asyncio.Protocol]:
    """The protocol factory of an HCM's filter chain: a new connection's protocol, told what the listener found."""
    codec = hcm.config.codec_type
    if codec == "HTTP2":
        kind: type[HttpConnection] = Http2Connection
    else:
        kind = HttpConnection

    def factory(detected: Detected | None = None) -> asyncio.Protocol:
        if codec == "AUTO" and tls:
            return AlpnChoice(hcm, scheme, listener, detected)
        conn = kind(hcm, scheme)
        conn.runtime_listener = listener
        conn.detected = detected
        if codec == "AUTO":
            conn.decoder = PrefaceSniffer(conn, conn.decoder)  # type: ignore[assignment]
        return conn

    return factory


class AlpnChoice(asyncio.Protocol):
    """A TLS connection of an AUTO HCM until its handshake is done: then the codec ALPN chose takes the transport."""

    def __init__(self, hcm: HcmRuntime, scheme: bytes, listener: Any, detected: Detected | None) -> None:
        self.hcm = hcm
        self.scheme = scheme
        self.listener = listener
        self.detected = detected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        conn = (Http2Connection if alpn == "h2" else HttpConnection)(self.hcm, self.scheme)
        conn.runtime_listener = self.listener
        conn.detected = self.detected
        transport.set_protocol(conn)
        conn.connection_made(transport)


class PrefaceSniffer:
    """The decoder of a plaintext AUTO connection until its first bytes say which protocol it speaks.

    Stands in for `Http1RequestDecoder` (the connection's sweep reads `stream` and `in_head`): bytes that can
    still become the HTTP/2 preface are held; the whole preface hands the connection to HTTP/2; anything else
    puts the HTTP/1 decoder back and feeds it what was held.
    """

    __slots__ = ("conn", "decoder", "held")

    stream = None  # no request is being parsed yet
    in_head = False  # nor is a head: the request-headers timeout waits for a request to begin
    choosing = True  # no codec yet: the connection is in neither codec's stats (HttpConnection.count_codec)

    def __init__(self, conn: HttpConnection, decoder: Http1RequestDecoder) -> None:
        self.conn = conn
        self.decoder = decoder
        self.held = b""

    def feed(self, data: bytes) -> Any:
        held = self.held + data
        n = min(len(held), len(PREFACE))
        if held[:n] == PREFACE[:n]:
            if n < len(PREFACE):
                self.held = held
                return None
            _to_http2(self.conn, held)
            return None
        self.held = b""
        self.conn.decoder = self.decoder
        self.conn.count_codec()
        return self.decoder.feed(held)


def _to_http2(conn: HttpConnection, data: bytes) -> None:
    """Hand an accepted HTTP/1 connection that turned out to speak h2c to an `Http2Connection`, which reads on."""
    h2 = Http2Connection(conn.hcm, conn.scheme)
    for name in ("transport", "peer", "peer_ip", "local", "last_activity", "connection_id", "runtime_listener",
                 "detected", "info", "opened_at", "client_cert", "xff_ip"):
        setattr(h2, name, getattr(conn, name))
    conn.closed = True  # the HTTP/1 side is done with: nothing of it may act again
    conn.deadlines.disarm(conn)
    worker = conn.worker
    worker.connections.discard(conn)
    worker.connections.add(h2)
    h2.transport.set_protocol(h2)
    hcm = conn.hcm
    first = min([t for t in (hcm.idle_timeout, hcm.max_connection_duration) if t] or [0.0])
    if first:
        h2.deadlines.arm(h2, h2.opened_at + first)  # its sweep works out the rest from there
    h2.start(data)

"""An HTTP/2 CONNECT stream (RFC 9113 8.5), or a terminated POST on either protocol, joined to a TCP connection
once it is answered 2xx.

The HTTP/1.1 tunnel (tunnel.py) swaps two transports' protocols; an HTTP/2 CONNECT is one stream among others
on its connection, so here only the upstream's protocol is swapped, and the stream's own paths carry the rest:
the client's DATA reaches `write` through the stream's body path (`Stream.on_body` → `flush_upstream`), its
END_STREAM becomes the upstream's half-close (`end_request`), and a reset of the stream abandons the upstream;
the upstream's bytes go out as DATA, its EOF as END_STREAM, and a close without EOF resets the stream. Flow
control is HTTP/2's: a full upstream socket stops crediting the stream's DATA, a client that does not read stops
reading the upstream (the stream's existing `on_downstream_pause`).

A POST a route terminates (connect_config.allow_post) goes the same way, over HTTP/1.1 too: there the request's
body is decoded as any (content-length or chunked) and the response is chunked, so the HTTP/1 codec stays on the
connection and only the stream's body paths carry the bytes, as here. One difference, Envoy's: a POST's response
ends with the upstream's EOF, so the stream ends then (a request still coming is reset, as any request answered
early), where a CONNECT stays half-open for the client's remaining bytes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pylon.proxy.stream_states import RQ_DONE, RS_DONE

if TYPE_CHECKING:
    from pylon.proxy.stream import Stream


class H2Tunnel(asyncio.Protocol):
    """The upstream connection's protocol, and the stream's `upstream`, for the life of the tunnel."""

    def __init__(self, stream: "Stream", upstream: Any, rest: bytes) -> None:
        self.stream = stream
        self.upstream = upstream  # the pool's connection or the TerminatedConnect: told when the socket closes
        transport: asyncio.Transport = upstream.transport
        self.transport = transport
        self.stats = stream.cluster.stats  # upstream_cx_rx/tx_bytes_total count the tunnel's bytes, as any upstream's
        self.upstream_done = False  # the upstream sent its EOF (the stream's END_STREAM went out)
        transport.set_protocol(self)
        stream.upstream = self  # type: ignore[assignment]
        if stream.request_encoder is not None:
            stream.request_encoder.chunked = False  # DATA is the payload as is
        if stream.waiting_body:  # DATA that came before the tunnel was up
            self.write(b"".join(stream.waiting_body))
            stream.waiting_body = []
        if stream.paused_downstream:  # that DATA filled the buffer: the stream's DATA is credited again
            stream.paused_downstream = False
            stream.conn.transport.resume_reading()
        if rest:  # read (and counted) before the tunnel was up
            self._relay(rest)
        if stream.rq_state == RQ_DONE:
            self.end_request()
        if not transport.is_reading():
            transport.resume_reading()

    # ------------------------------------------------------------------ the stream's side
    def write(self, data: bytes) -> None:
        self.stats.upstream_cx_tx_bytes_total.value += len(data)
        self.transport.write(data)

    def end_request(self) -> None:
        """The client's END_STREAM: half-close the upstream; with both sides done, the stream ends."""
        self.stream.flush_upstream()  # the body's last piece, read with its end, goes before the half-close
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.upstream_done:
            self._finish()

    def abandon(self) -> None:
        """The stream ended first (the client reset it, a timeout): close the upstream."""
        if self.stream.upgrade_accepted:  # (a terminated POST is no upgrade)
            self.stream.hcm.upgrades_active.dec()
        self.transport.close()

    # ------------------------------------------------------------------ asyncio.Protocol (the upstream's)
    def data_received(self, data: bytes) -> None:
        self.stats.upstream_cx_rx_bytes_total.value += len(data)
        self._relay(data)

    def _relay(self, data: bytes) -> None:
        """The upstream's bytes to the client, as the stream's response body."""
        stream = self.stream
        if stream.rs_state >= RS_DONE:
            return
        stream.bytes_sent += len(data)
        stream.last_activity = stream.conn.loop_time()
        stream.encoder.encode_data(data)
        stream.on_upstream_flush()

    def eof_received(self) -> bool:
        stream = self.stream
        self.upstream_done = True
        if stream.rs_state < RS_DONE:
            stream.encoder.encode_end()
            stream.on_upstream_flush()
            if stream.rq_state == RQ_DONE or not stream.upgrade_accepted:  # a POST's response is over
                self._finish()
        return True  # the client may still send: keep the upstream's sending side open

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.connection_lost(exc)  # its pool or breaker forgets it
        stream = self.stream
        if stream.rs_state < RS_DONE:
            stream.tunnel_end(reset=not self.upstream_done)

    def pause_writing(self) -> None:
        self.stream.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.stream.conn.transport.resume_reading()

    def _finish(self) -> None:
        self.stream.tunnel_end()
        self.transport.close()

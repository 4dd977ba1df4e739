"""One HTTP/2 upstream stream as an asyncio transport: how CONNECT (and POST) tunnels ride a multiplexed pool.

A tunnel over HTTP/1.1 owns a whole socket, and every tunnel end pylon has (tcp_proxy's session, `tunnel.py`'s
byte pipe, `h2_tunnel.py`'s HTTP/2 downstream stream) is an `asyncio.Protocol` joined to a transport. Over an
HTTP/2 cluster the tunnel is one stream among others on a pooled connection (Envoy's tcp_proxy and router do the
same), so rather than teach each tunnel end about streams, the stream is made to look like a transport:

- `write` is DATA on the stream, `write_eof` its END_STREAM (a half-close; the server may go on sending);
- the server's DATA is `data_received`, its END_STREAM `eof_received`, a reset or a lost connection
  `connection_lost` with an error, the stream closing after both END_STREAMs `connection_lost(None)`;
- back-pressure both ways is the stream's own: `pause_reading` stops crediting its DATA (only this stream's
  window closes), and DATA waiting behind the server's window past the cluster's buffer limit calls
  `pause_writing` on the protocol (`H2UpstreamStream.write`'s check, released by the connection's flush);
- `close` resets the stream (CANCEL) unless the server ended its side (then it ends ours: END_STREAM).

`TunnelStream` is the pool's `H2UpstreamStream` with one difference once joined: the server's END_STREAM is a
half-close, not the end of an exchange (the base class would reset the unfinished request side).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pylon.proxy.http.h2_client import response_head
from pylon.proxy.http.h2_session import Headers
from pylon.proxy.upstream.h2_pool import H2UpstreamStream


class TunnelStream(H2UpstreamStream):
    """An upstream stream that becomes a tunnel once answered: then its events go to an `H2StreamTransport`."""

    __slots__ = ()

    @classmethod
    def taking_over(cls, stream: H2UpstreamStream) -> "TunnelStream":
        """The same slot as `stream`, which the pool just assigned and nothing else holds yet (no stream id)."""
        assert not stream.stream_id and stream.exchange is not None
        return cls(stream.connection, stream.exchange)

    def joined(self) -> "H2StreamTransport | None":
        exchange = self.exchange
        return exchange if isinstance(exchange, H2StreamTransport) else None

    def on_headers(self, fields: Headers, end_stream: bool) -> None:
        """A proxied CONNECT's 2xx: the router's exchange relays the head and joins its client to this stream (as
        an HTTP/1.1 upstream's 2xx does); any other answer is an ordinary response. An upgrade sent as extended
        CONNECT is relayed as the 101 of an HTTP/1.1 upgrade (`upgrade: <protocol>`), as Envoy's codec turns it."""
        exchange = self.exchange
        if exchange is None or self.joined() is not None or not exchange.upgrade_accepted:
            return super().on_headers(fields, end_stream)
        status, headers = response_head(fields)
        if not 200 <= status < 300:
            return super().on_headers(fields, end_stream)
        self.answered = True
        transport = H2StreamTransport(self)
        if exchange.method != b"CONNECT":
            # the router's Stream (only it accepts upgrades) holds the client's `upgrade`
            fields: Headers = exchange.headers  # type: ignore[attr-defined]
            protocol = next(value for name, value in fields if name == b"upgrade")
            headers = [pair for pair in headers if pair[0] != b"content-length"] + [(b"upgrade", protocol)]
            status = 101
        exchange.on_upstream_upgraded(transport, headers, b"", status)  # type: ignore[arg-type]
        if end_stream:
            transport.on_upstream_eof()

    def _complete(self) -> None:
        transport = self.joined()
        if transport is None:
            super()._complete()
        else:
            transport.on_upstream_eof()

    def on_closed(self, error_code: int) -> None:
        transport = self.joined()
        if transport is None:
            super().on_closed(error_code)
        else:
            self._detach()
            transport.on_stream_closed(error_code)

    def on_lost(self) -> None:
        transport = self.joined()
        if transport is None:
            super().on_lost()
        else:
            self._detach()
            transport.on_stream_closed(-1)


class H2StreamTransport(asyncio.Transport):
    """The bytes of one answered `TunnelStream`, for whatever protocol the tunnel's other end sets."""

    def __init__(self, stream: TunnelStream, protocol: asyncio.BaseProtocol | None = None) -> None:
        super().__init__()
        self.stream = stream
        stream._detach()  # the exchange that opened it lets go (the router gets its HTTP/1 encoder back)
        stream.exchange = self  # type: ignore[assignment]  # the stream's events come here from now on
        self.protocol: Any = protocol
        self.closed = False
        self.sent_eof = False  # our END_STREAM went (the client half-closed)
        self.got_eof = False  # the server's END_STREAM came
        self.lost_told = False
        self.connection = stream.connection
        self.loop = stream.pool.loop

    @property
    def transport(self) -> "H2StreamTransport":
        """What `stream.on_upstream_upgraded` and `h2_tunnel.H2Tunnel` read as their upstream's socket."""
        return self

    def connection_lost(self, exc: Exception | None) -> None:
        """The tunnel ended (its upstream's bookkeeping hook): the stream's slot frees when the stream closes."""

    # ------------------------------------------------------------------ asyncio.Transport
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.connection.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def is_closing(self) -> bool:
        return self.closed

    def write(self, data: bytes) -> None:
        if self.closed or self.sent_eof or not data:
            return
        encoder = self.stream.encoder
        assert encoder is not None
        encoder.encode_data(data)
        self.stream.write(b"")  # frames it soon; past the buffer limit, `on_upstream_pause` pauses the protocol

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.closed or self.sent_eof:
            return
        self.sent_eof = True
        encoder = self.stream.encoder
        assert encoder is not None
        encoder.encode_end()
        self.stream.write(b"")

    def get_write_buffer_size(self) -> int:
        stream = self.stream
        return stream.connection.codec.pending(stream.stream_id) if not self.closed else 0

    def pause_reading(self) -> None:
        self.stream.pause_reading()

    def resume_reading(self) -> None:
        self.stream.resume_reading()

    def is_reading(self) -> bool:
        return not self.stream.reading_paused

    def close(self) -> None:
        """Reset the stream unless both sides ended it; the protocol hears `connection_lost` soon after, once."""
        if self.closed:
            return
        if self.got_eof and not self.sent_eof:
            self.write_eof()  # the server had finished: end our side too, rather than reset a finished tunnel
        self.closed = True
        if not (self.sent_eof and self.got_eof):
            self.stream.abandon()  # RST_STREAM CANCEL (the stream's close then frees its slot)
        self._tell_lost(None)

    def abort(self) -> None:
        self.close()

    # ------------------------------------------------------------------ the stream's calls (as its exchange)
    def on_upstream_body(self, data: bytes) -> None:
        if not self.closed:
            self.protocol.data_received(data)

    def on_upstream_flush(self) -> None:
        """Nothing is batched here: each DATA was handed on as it came."""

    def on_upstream_trailers(self, trailers: Headers) -> None:
        """Trailers end the server's side (the stream calls `_complete` next); a tunnel has nothing to relay."""

    def on_upstream_pause(self, paused: bool) -> None:
        if not self.closed:
            if paused:
                self.protocol.pause_writing()
            else:
                self.protocol.resume_writing()

    def on_upstream_eof(self) -> None:
        if self.closed or self.got_eof:
            return
        self.got_eof = True
        if not self.protocol.eof_received():
            self.close()

    def on_stream_closed(self, error_code: int) -> None:
        """The stream is over: after both END_STREAMs (0) a clean close, else a reset or a lost connection."""
        self.closed = True
        clean = error_code == 0 and self.got_eof
        self._tell_lost(None if clean else ConnectionResetError(f"upstream stream reset (error code {error_code})"))

    def _tell_lost(self, exc: Exception | None) -> None:
        if not self.lost_told:
            self.lost_told = True
            self.loop.call_soon(self.protocol.connection_lost, exc)

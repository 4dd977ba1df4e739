"""An upgraded request (HTTP/1.1 `Upgrade`, e.g. websocket) once the upstream said 101: bytes both ways.

Why swap the transports' protocols instead of teaching the HTTP protocols a
tunnel mode: the HTTP read paths stay exactly as fast as before, and a tunnel
is a plain byte pipe — each end writes what it reads into the other, passes
back-pressure (a full write buffer stops reading the other side), and a close
or EOF on one end reaches the other. The HTTP objects are told when it ends,
so connection stats, the pool and the access log line come out as for any
request (the line is written when the tunnel closes, as Envoy's).
"""

from __future__ import annotations

import asyncio
from typing import Callable


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what arrives here is written to `peer` (the other side's transport)."""

    def __init__(self, transport: asyncio.Transport, peer: asyncio.Transport, on_data: Callable[[int], None],
                 on_closed: Callable[[Exception | None, bool], None]) -> None:
        self.transport = transport
        self.peer = peer
        self.on_data = on_data
        self.on_closed = on_closed
        self.other: TunnelEnd | None = None
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self.on_data(len(data))
        self.peer.write(data)

    def eof_received(self) -> bool:
        """Half-close: pass the EOF on; once both sides have sent theirs, the tunnel is over."""
        self.eof = True
        if (self.other is not None and self.other.eof) or not self.peer.can_write_eof():
            self.peer.close()
            return False
        self.peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()
        self.on_closed(exc, self.eof)  # whether this side's peer had sent its EOF (then the close is the peer's)

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()


def open_tunnel(downstream: asyncio.Transport, upstream: asyncio.Transport, client_rest: bytes, upstream_rest: bytes,
                on_activity: Callable[[int, bool], None],
                on_downstream_closed: Callable[[Exception | None, bool], None],
                on_upstream_closed: Callable[[Exception | None, bool], None]) -> None:
    """Join the two transports; `*_rest` are bytes each side sent right after its HTTP head."""
    client_end = TunnelEnd(downstream, upstream, lambda n: on_activity(n, True), on_downstream_closed)
    server_end = TunnelEnd(upstream, downstream, lambda n: on_activity(n, False), on_upstream_closed)
    client_end.other, server_end.other = server_end, client_end
    downstream.set_protocol(client_end)
    upstream.set_protocol(server_end)
    if upstream_rest:
        downstream.write(upstream_rest)
    if client_rest:
        upstream.write(client_rest)
    for transport in (downstream, upstream):
        if not transport.is_reading():
            transport.resume_reading()

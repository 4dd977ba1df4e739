"""tcp_proxy's upstream half: what it reads goes to the session's client, what the session sends goes up.

A module of its own so that the upstreams that differ only in how they connect (tcp_tunneling_h2's stream on an
HTTP/2 pool) share its relaying.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pylon.proxy.watermarks import apply_buffer_limit

if TYPE_CHECKING:
    from pylon.proxy.tcp_proxy import TcpProxySession
    from pylon.proxy.upstream.cluster import Cluster


class UpstreamBytes:
    """The cluster's upstream_cx_rx_bytes_total and upstream_cx_tx_bytes_total for one upstream connection (none
    without a cluster)."""

    __slots__ = ("rx", "tx")

    def __init__(self, cluster: "Cluster | None") -> None:
        self.rx = cluster.stats.upstream_cx_rx_bytes_total if cluster is not None else None
        self.tx = cluster.stats.upstream_cx_tx_bytes_total if cluster is not None else None

    def received(self, data: bytes) -> None:
        if self.rx is not None:
            self.rx.value += len(data)

    def sent(self, data: bytes) -> None:
        if self.tx is not None:
            self.tx.value += len(data)


class TcpUpstream(asyncio.Protocol):
    """The upstream half: everything it reads goes to the downstream transport."""

    def __init__(self, session: "TcpProxySession") -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.bytes = UpstreamBytes(session.cluster)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cluster = self.session.cluster
        if cluster is not None:
            apply_buffer_limit(transport, cluster.config.per_connection_buffer_limit_bytes)

    def data_received(self, data: bytes) -> None:
        self.bytes.received(data)
        self.session.from_upstream(data)

    def eof_received(self) -> bool:
        self.session.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_closed()

    def pause_writing(self) -> None:
        self.session.downstream.pause_reading()

    def resume_writing(self) -> None:
        self.session.downstream.resume_reading()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.bytes.sent(data)
        self.transport.write(data)

    def send_eof(self) -> bool:
        """Half-close towards the upstream; False when the transport cannot (TLS: only a close can say it)."""
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
            return True
        return False

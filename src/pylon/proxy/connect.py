"""A CONNECT the proxy terminates (a route's `upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]`), and
with `connect_config: {allow_post: true}` a POST on that route too (its body the payload, see h2_tunnel.py).

Envoy's behaviour, observed on 1.40: the proxy opens a plain TCP connection to the host the cluster picks, and
only once it is up answers the client `200` (no framing headers: the bytes after the head are the tunnel's);
from then on the two connections are a byte pipe (tunnel.py), the access log line is written when it closes,
with the payload bytes each way. A failed connect is the ordinary 503 (UF) with the route's retries.

Why an object of its own rather than a pool: a terminated CONNECT's upstream carries no HTTP and is never
reused, so it needs none of the pool's queueing or keep-alive; it plays, for the stream, the two parts the stream
knows (the pool it may `cancel` while connecting, the connection it `abandon`s or that reports `connection_lost`),
and keeps the cluster's connection counters and breaker as every upstream connection does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pylon.proxy.upstream.connect import ConnectError, ConnectTimeout, open_upstream
from pylon.proxy.upstream.host import format_address
from pylon.proxy.watermarks import apply_buffer_limit

if TYPE_CHECKING:
    from pylon.proxy.stream import Stream
    from pylon.proxy.upstream.cluster import Cluster, Host

log = logging.getLogger("pylon.connect")


class _Opening(asyncio.Protocol):
    """The raw connection's protocol until the tunnel takes it over (in the same loop turn as it connects)."""

    def __init__(self, owner: "TerminatedConnect") -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        apply_buffer_limit(transport, self.owner.cluster.config.per_connection_buffer_limit_bytes)

    def data_received(self, data: bytes) -> None:
        self.owner.cluster.stats.upstream_cx_rx_bytes_total.value += len(data)
        self.owner.early.append(data)  # a server that speaks first: its bytes follow the 200

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.connection_lost(exc)


class TerminatedConnect:
    """One terminated CONNECT's upstream connection, from the connect to its close."""

    __slots__ = ("stream", "cluster", "host", "transport", "early", "task", "counted", "cancelled", "started_at")

    def __init__(self, stream: "Stream", cluster: "Cluster", host: "Host") -> None:
        self.stream = stream
        self.cluster = cluster
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.counted = False  # holds a connection slot and the active counters (released once)
        self.cancelled = False
        self.started_at = 0.0  # when the connect began (upstream_cx_connect_ms and _length_ms count from it)

    def start(self) -> None:
        """Open the connection, if the cluster's connection breaker has room (else 503 UO, as a pool's)."""
        if not self.cluster.circuit_breakers.connections.try_acquire():
            self.stream.on_upstream_overflow()
            return
        self.task = self.stream.conn.loop.create_task(self._connect())

    async def _connect(self) -> None:
        cluster, host, stats = self.cluster, self.host, self.cluster.stats
        stats.upstream_cx_total.value += 1
        loop = self.stream.conn.loop
        self.started_at = loop.time()
        try:
            info = self.stream.conn.connection_info()
            transport, _ = await open_upstream(host.address, cluster.tls_for(host), cluster.connect_timeout,
                                               lambda: _Opening(self), cluster.source, cluster.keepalive,
                                               cluster.tap,
                                               cluster.preamble_for(host, (info.remote_address, info.local_address)))
        except (ConnectError, asyncio.CancelledError) as exc:
            cluster.circuit_breakers.connections.release()
            if isinstance(exc, asyncio.CancelledError):
                return  # the client went away while connecting
            if isinstance(exc, ConnectTimeout):
                stats.upstream_cx_connect_timeout.value += 1
            stats.upstream_cx_connect_fail.value += 1
            stats.upstream_cx_destroy.value += 1
            host.record_connect_failure()
            log.debug("CONNECT to %s failed: %s", format_address(host.address), exc)
            self.stream.on_upstream_connect_failure(str(exc))
            return
        self.transport = transport
        self.counted = True
        stats.upstream_cx_connect_ms.record((loop.time() - self.started_at) * 1000.0)
        stats.upstream_rq_total.value += 1  # the request has its connection (Envoy's TCP pool counts it then)
        stats.upstream_cx_active.value += 1
        host.active_connections += 1
        if self.cancelled:
            transport.close()
            return
        stream = self.stream
        stream.upstream_local = transport.get_extra_info("sockname")
        stream.on_upstream_upgraded(self, [], b"".join(self.early), 200)  # the date and server come as relayed
        self.early = []

    # ------------------------------------------------------------------ the pool's part
    def cancel(self, stream: "Stream") -> None:
        """The stream ended (client gone, timeout) before the connection was up."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    # ------------------------------------------------------------------ the connection's part
    def abandon(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed (the tunnel's end, or before it began): give back what it held, once."""
        if not self.counted:
            return
        self.counted = False
        stats = self.cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        stats.upstream_cx_length_ms.record((self.stream.conn.loop.time() - self.started_at) * 1000.0)
        self.host.active_connections -= 1
        self.cluster.circuit_breakers.connections.release()

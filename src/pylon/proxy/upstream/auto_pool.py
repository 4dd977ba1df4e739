"""auto_config: ALPN picks the protocol of a TLS cluster's connections (Envoy's mixed HTTP/1.1 / HTTP/2 pool).

A host's `AutoPool` holds an HTTP/2 pool and an HTTP/1.1 pool. Connections
are opened by the HTTP/2 pool offering ALPN `h2` and `http/1.1`: when the
server picks `h2` the connection stays there and carries many streams; when it
picks HTTP/1.1 (or nothing) the connection, still unused, is handed to the
HTTP/1.1 pool with the requests queued for it, and the host is known to speak
HTTP/1.1: later requests go straight to that pool. The protocol counters
(`upstream_cx_http2_total` / `http1_total`) are counted once ALPN said, as
Envoy's mixed pool does. The two pools report to the AutoPool (their owner),
which reports to the registry as one pool.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pylon.proxy.upstream.h2_pool import H2Pool, H2UpstreamConnection
from pylon.proxy.upstream.pool import HostPool, UpstreamConnection

if TYPE_CHECKING:
    from pylon.proxy.deadlines import Watched
    from pylon.proxy.upstream.auto_sni import UpstreamName
    from pylon.proxy.upstream.cluster import Cluster, Host
    from pylon.proxy.upstream.pool import Exchange, PoolOwner


class AutoPool:
    """One host's connections of an auto_config cluster: HTTP/2 where the server's ALPN says h2, else HTTP/1.1."""

    def __init__(self, cluster: "Cluster", host: "Host", loop: asyncio.AbstractEventLoop, owner: "PoolOwner",
                 key: Any = None, name: "UpstreamName | None" = None) -> None:
        self.cluster = cluster
        self.host = host
        self.key = key if key is not None else host
        self.owner = owner
        self.h2 = H2Pool(cluster, host, loop, self, key, name)  # type: ignore[arg-type]
        self.h2.auto = self
        self.h2.protocol_stat = ""  # counted once ALPN said (`connected`)
        self.h1 = HostPool(cluster, host, loop, self, key, name)  # type: ignore[arg-type]
        self.http1 = False  # the server chose HTTP/1.1: requests go to the HTTP/1.1 pool

    def acquire(self, exchange: "Exchange", fresh: bool = False) -> None:
        (self.h1 if self.http1 else self.h2).acquire(exchange, fresh)

    def cancel(self, exchange: "Exchange") -> None:
        self.h1.cancel(exchange)
        self.h2.cancel(exchange)

    @property
    def empty(self) -> bool:
        return self.h1.empty and self.h2.empty

    def retire(self) -> None:
        self.h1.retire()
        self.h2.retire()

    def close_all(self) -> None:
        self.h1.close_all()
        self.h2.close_all()

    def connected(self, conn: H2UpstreamConnection) -> bool:
        """A connection the HTTP/2 pool opened is up: True when ALPN chose h2 (the HTTP/2 pool keeps it); else it
        goes to the HTTP/1.1 pool, with the requests waiting for it."""
        stats = self.cluster.stats
        if not conn.http1_chosen:
            stats.upstream_cx_http2_total.value += 1
            return True
        stats.upstream_cx_http1_total.value += 1
        self.http1 = True
        h1, h2 = self.h1, self.h2
        transport = conn.transport
        assert transport is not None
        conn.closed = True  # never the HTTP/2 pool's: it forgets nothing, the transport lives on
        upstream = UpstreamConnection(h1)
        transport.set_protocol(upstream)
        upstream.connection_made(transport)
        h1.connecting += 1  # this connection, handed over: the queue moved below needs one connect fewer
        breaker = self.cluster.circuit_breakers.pending_requests
        while h2.pending:
            breaker.release()
            h1.acquire(h2.pending.popleft())
        h1.connecting -= 1
        h1.connected(upstream)
        return False

    # -- PoolOwner of the two pools ------------------------------------------------------------------
    def arm(self, target: "Watched", when: float) -> None:
        self.owner.arm(target, when)

    def disarm(self, target: "Watched") -> None:
        self.owner.disarm(target)

    def maybe_empty(self, pool: Any) -> None:
        if self.empty:
            self.owner.maybe_empty(self)  # type: ignore[arg-type]

"""A worker's connection pools, one per host, made on first use and dropped once they hold nothing.

Without dropping, a worker that talked to many hosts would keep a pool for
each for ever: an ORIGINAL_DST cluster (the mesh's passthrough) makes a host
per destination. A pool says when it may have emptied (`maybe_empty`: its last
connection closed, its last waiting request left); the registry notes it and
asks the worker's deadline wheel for one look at the next slot, where every
pool noted since is dropped if it is still empty. So a request costs nothing
here, a burst of closes costs one look, and a pool that empties and is used
again within the slot (a stale connection's retry) is kept. Nothing else holds
an empty pool: a request takes its pool from the registry each attempt, and
keeps it only while it waits in it or uses one of its connections.

A pool is one host's, except for a cluster with auto_sni / auto_san_validation (`auto_sni.py`): there each
request host names the TLS of its connections, so the pool is the host's and that name's, and a connection
made for one name never serves another. Other clusters pay one attribute test per request for it. So is a
cluster with the upstream PROXY protocol (`proxy_protocol.py`): each connection's header names one downstream
connection's addresses, so its pools are the host's and those addresses'.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy.tls import ClientTls
from pylon.proxy.upstream.auto_pool import AutoPool
from pylon.proxy.upstream.h2_pool import H2Pool
from pylon.proxy.upstream.pool import HostPool

#: A host's pool of either kind (they answer the same calls).
Pool = HostPool | H2Pool | AutoPool

if TYPE_CHECKING:
    from pylon.proxy.deadlines import Watched
    from pylon.proxy.http.h2_session import H2Settings
    from pylon.proxy.upstream.auto_sni import HostedRequest, UpstreamName
    from pylon.proxy.upstream.cluster import Cluster


def _downstream_addresses(request: Any) -> tuple[Any, Any] | None:
    """(client, address it reached) of the downstream connection a request came on (or of the tcp_proxy session
    a tunnel is for); None for a request that came on none (a shadow copy, the proxy's own)."""
    conn = getattr(request, "conn", request)
    if conn is None or not hasattr(conn, "connection_info"):
        return None
    info = conn.connection_info()
    return info.remote_address, info.local_address


class PoolRegistry:
    """The worker's connection pools, one per host (and request host name, see the module docstring), created on
    first use (the `PoolOwner` of each)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, arm: Callable[["Watched", float], None],
                 disarm: Callable[["Watched"], None]) -> None:
        self.loop = loop
        self.pools: dict[Any, Pool] = {}
        self._arm = arm  # the worker's: arms its deadline wheel and keeps the wheel ticking
        self._disarm = disarm
        self._suspects: set[Pool] = set()  # pools that said they may be empty since the last look
        self.wake_at = 0.0  # when the wheel looks at the suspects next (0 = not armed)

    def get(self, cluster: "Cluster", host: Any, request: "HostedRequest | Any | None" = None) -> Pool:
        """The pool for `request` to `host` of `cluster` (the request matters only to auto_sni clusters, and to
        PROXY protocol ones: then a tcp_proxy session may stand for it, for the addresses of its connection)."""
        if cluster.plain_pools:  # the per-request hot path: one attribute test more than a plain lookup
            pool = self.pools.get(host)
            return pool if pool is not None else self._new_pool(cluster, host, host, None, cluster.h2_settings)
        return self._keyed_pool(cluster, host, request)

    def _keyed_pool(self, cluster: "Cluster", host: Any, request: "HostedRequest | None") -> Pool:
        """The pool of a cluster whose requests pick it: an auto_sni cluster's for the request's host name (plain
        TCP hosts have no name), and with use_downstream_protocol_config the HTTP/2 one for HTTP/2 requests."""
        h2 = cluster.h2_settings
        key: Any = host
        if cluster.protocol == "downstream":
            # the client's protocol (a shadow copy or the proxy's own request has no client connection: HTTP/1.1)
            h2 = h2 if getattr(getattr(request, "conn", None), "protocol", None) == "HTTP/2" else None
            key = (host, h2 is not None)
        downstream = None
        if cluster.any_proxy_protocol and cluster.proxy_protocol_for(host) is not None:
            # each connection's PROXY header names one downstream connection's addresses: never shared by two
            downstream = _downstream_addresses(request)
            key = (key, downstream)
        if cluster.auto_sni is None or not hasattr(request, "route") or \
                not isinstance(cluster.tls_for(host), ClientTls):
            pool = self.pools.get(key)
            return pool if pool is not None else self._new_pool(cluster, host, key, None, h2, downstream)
        name = cluster.auto_sni.name_for(request)
        key = (key, name.key)
        pool = self.pools.get(key)
        return pool if pool is not None else self._new_pool(cluster, host, key, name, h2, downstream)

    def _new_pool(self, cluster: "Cluster", host: Any, key: Any, name: "UpstreamName | None",
                  h2: "H2Settings | None", downstream: tuple[Any, Any] | None = None) -> Pool:
        kind = HostPool if h2 is None else AutoPool if cluster.protocol == "auto" else H2Pool
        pool = self.pools[key] = kind(cluster, host, self.loop, self, key, name)
        preamble = cluster.preamble_for(host, downstream)
        if preamble is not None:
            for each in (pool.h1, pool.h2) if isinstance(pool, AutoPool) else (pool,):
                each.preamble = preamble
        # A pool nothing ends up using (the request overflowed the breakers) must go too.
        self.maybe_empty(pool)
        return pool

    # -- PoolOwner -------------------------------------------------------------------------
    def arm(self, target: "Watched", when: float) -> None:
        self._arm(target, when)

    def disarm(self, target: "Watched") -> None:
        self._disarm(target)

    def maybe_empty(self, pool: Pool) -> None:
        self._suspects.add(pool)
        if not self.wake_at:
            self._arm(self, self.loop.time())

    def sweep(self, now: float) -> float:
        """The wheel's look: drop the noted pools that are still empty and still this registry's."""
        suspects, self._suspects = self._suspects, set()
        pools = self.pools
        for pool in suspects:
            if pool.empty and pools.get(pool.key) is pool:
                del pools[pool.key]
        return 0.0

    # -- configuration changes -------------------------------------------------------------
    def retire_cluster(self, cluster: "Cluster") -> None:
        """Forget the pools of a cluster that CDS removed or replaced; their busy connections finish first."""
        for key, pool in list(self.pools.items()):
            if pool.cluster is cluster:
                pool.retire()
                del self.pools[key]

    def retire_hosts(self, cluster: "Cluster") -> None:
        """Forget the pools of hosts an EDS update took out of `cluster`; the pools of hosts that stay are kept."""
        kept = set(cluster.hosts)
        for key, pool in list(self.pools.items()):
            if pool.cluster is cluster and pool.host not in kept:
                pool.retire()
                del self.pools[key]

    def close_all(self) -> None:
        for pool in self.pools.values():
            pool.close_all()
        self._disarm(self)
        self._suspects.clear()

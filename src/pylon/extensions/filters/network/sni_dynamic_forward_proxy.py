"""envoy.filters.network.sni_dynamic_forward_proxy: resolve a TLS connection's SNI before tcp_proxy connects.

As Envoy 1.40 does (observed): on a listener with `tls_inspector`, ahead of a tcp_proxy to a dynamic forward proxy
cluster, the connection's requested server name is loaded into the DNS cache `dns_cache_config` names (the
cluster's, shared by name) on `port_value`, which becomes the connection's upstream port (Envoy's filter state
`envoy.upstream.dynamic_port`, read by the cluster: `ConnectionInfo.dynamic_port`). A name in the cache goes on at
once; a new one holds the connection (its bytes wait) until the first answer. Whatever the answer, the connection
then goes on: tcp_proxy takes the cluster's host for `<sni>:<port_value>`, and a name that did not resolve has
none, so the connection is closed with flag UH and `upstream_cx_none_healthy`, as any connection without a host.
No SNI (none sent, or no tls_inspector): nothing to resolve, the connection goes on (and finds no host). A full
cache (`max_hosts`: `host_overflow`) or more connections waiting at once than `dns_cache_circuit_breaker` allows
(`dns_rq_pending_overflow`) closes the connection at once. The proxy does not terminate TLS: the client's
handshake is with the upstream.

Refused by name: `save_upstream_address` (pylon has no filter state). Only tcp_proxy waits for the filter's
answer: the loader refuses it ahead of the HTTP connection manager (Envoy would run it there too). Departure: a
connection the filter closes logs the tcp_proxy's cluster (Envoy's tcp_proxy, which never saw it, logs none).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, Port
from pylon.config.errors import FieldError
from pylon.extensions.common.dynamic_forward_proxy.config import DnsCacheConfig
from pylon.extensions.common.dynamic_forward_proxy.dns_cache import LOADING, OVERFLOW, DnsCache, worker_caches
from pylon.proxy.connection_info import ConnectionInfo
from pylon.proxy.filters.network import Verdict, register_network_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig"


class FilterConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig."""

    dns_cache_config: DnsCacheConfig | None = None
    port_value: Port = 0  # the oneof port_specifier's one choice; Envoy's default is 0 too
    save_upstream_address: bool = False

    def __post_init__(self) -> None:
        if self.dns_cache_config is None:
            raise FieldError("dns_cache_config", "missing required field")
        if self.save_upstream_address:
            raise FieldError("save_upstream_address", "not supported yet (pylon has no filter state)")


class SniDynamicForwardProxyFilter:
    """One filter chain's filter in one worker; its cache is the worker's of that name, started on first use."""

    def __init__(self, name: str, config: FilterConfig, worker: Any) -> None:
        self.name = name
        self.config = config
        self.port = config.port_value
        self.worker = worker
        self._cache: DnsCache | None = None

    def on_connection(self, info: ConnectionInfo) -> Verdict:
        host = info.inspected_server_name
        if not host:
            return True
        cache = self._cache or self._start_cache()
        pending = cache.pending
        if not pending.try_acquire():
            return False
        info.dynamic_port = self.port
        answered: asyncio.Future[bool] = self.worker.loop.create_future()

        def loaded(_: Any) -> None:
            if not answered.done():  # cancelled: the client left
                answered.set_result(True)

        status, _ = cache.load(host, self.port, loaded)
        if status == LOADING:
            answered.add_done_callback(lambda _: pending.release())  # answered, or the connection gone
            return answered
        pending.release()
        return status != OVERFLOW

    def _start_cache(self) -> DnsCache:
        assert self.config.dns_cache_config is not None
        cache = self._cache = worker_caches(self.worker.singletons).get(self.config.dns_cache_config,
                                                                         self.worker.stats)
        cache.start(self.worker.loop)
        return cache


registry.register_typed(registry.NETWORK_FILTER, TYPE_URL, FilterConfig)
register_network_filter(FilterConfig, SniDynamicForwardProxyFilter, waits=True)

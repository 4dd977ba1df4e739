"""envoy.filters.http.dynamic_forward_proxy: resolve the request's host before the router sends it anywhere.

As Envoy 1.40 does (observed): a request routed to a dynamic forward proxy cluster (any other route goes on
untouched) has its Host/:authority - after the route's `PerRouteConfig` rewrite: `host_rewrite_literal`, or the
first value of the header `host_rewrite_header` names when the request has it - loaded into the DNS cache
`dns_cache_config` names (the cluster's, shared by name), with the cluster's default port (443 when its transport
socket is TLS, else 80). A name in the cache goes on at once; a new one waits for its resolution. A name that does
not resolve is answered 503 "DNS resolution failure" (flag DF, the cache's details, e.g.
`dns_resolution_failure{cares_norecords:Domain_name_not_found}`); a full cache (`max_hosts`) 503 "DNS cache
overflow" (`dns_cache_overflow`); more requests waiting at once than `dns_cache_circuit_breaker` allows 503
"Dynamic forward proxy pending request overflow". The rewrite is the request's new Host: upstream and in the
access log.

Refused by name: `sub_cluster_config`, `save_upstream_address` and `allow_dynamic_host_from_filter_state` (pylon
has no filter state). Departure: a route to weighted clusters goes on untouched (Envoy looks at the weighted pick,
which pylon makes after the filters); the cluster then resolves the name itself.
"""

from __future__ import annotations

from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet
from pylon.config.errors import FieldError
from pylon.extensions.clusters.dynamic_forward_proxy import DynamicForwardProxyCluster
from pylon.extensions.common.dynamic_forward_proxy.config import DnsCacheConfig
from pylon.extensions.common.dynamic_forward_proxy.dns_cache import LOADING, OVERFLOW, DnsCache, HostInfo, worker_caches
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.stream_states import RS_DONE

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig"

CACHE_OVERFLOW = lr.LocalReply(503, "-", b"DNS cache overflow", "dns_cache_overflow")
PENDING_OVERFLOW = lr.LocalReply(503, "-", b"Dynamic forward proxy pending request overflow",
                                 "dynamic_forward_proxy_pending_request_overflow")


class FilterConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig."""

    dns_cache_config: DnsCacheConfig | None = None
    sub_cluster_config: NotSupportedYet | None = None
    save_upstream_address: bool = False
    allow_dynamic_host_from_filter_state: bool = False

    def __post_init__(self) -> None:
        if self.dns_cache_config is None:
            raise FieldError("dns_cache_config", "missing required field (sub_cluster_config is not supported yet)")
        for field in ("save_upstream_address", "allow_dynamic_host_from_filter_state"):
            if getattr(self, field):
                raise FieldError(field, "not supported yet (pylon has no filter state)")


class PerRouteConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig: the host a route's requests resolve and
    carry upstream instead of their own."""

    host_rewrite_literal: str = ""
    host_rewrite_header: str = ""

    def __post_init__(self) -> None:
        if self.host_rewrite_literal and self.host_rewrite_header:
            raise ValueError("at most one of host_rewrite_literal, host_rewrite_header may be set "
                             "(host_rewrite_specifier)")


class DynamicForwardProxyFilter:
    """One connection manager's filter in one worker; its cache is the worker's of that name, found when the first
    request needs it."""

    def __init__(self, name: str, config: FilterConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        self.loop = loop
        self._cache: DnsCache | None = None

    def decode_headers(self, stream: Any) -> bool:
        route = stream.route
        cluster = stream.hcm.clusters.get(route.cluster) if route is not None and route.cluster else None
        if not isinstance(cluster, DynamicForwardProxyCluster):
            return True  # other clusters find their hosts themselves
        rewrite = route.filter_config(self.name)
        if rewrite is not None:
            self._rewrite(stream, rewrite)
        cache = self._cache or self._find_cache(stream)
        pending = cache.pending
        if not pending.try_acquire():
            stream.local(PENDING_OVERFLOW)
            return False
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                pending.release()

        def loaded(info: HostInfo) -> None:
            release()
            if stream.rs_state < RS_DONE and self._resolved(stream, info):
                stream.continue_decoding()

        status, info = cache.load(stream.authority.decode("latin-1"), cluster.default_port, loaded)
        if status == LOADING:
            stream.on_finish(release)  # a request gone before the answer frees its place
            return False
        release()
        if status == OVERFLOW:
            stream.local(CACHE_OVERFLOW)
            return False
        assert info is not None
        return self._resolved(stream, info)

    @staticmethod
    def _resolved(stream: Any, info: HostInfo) -> bool:
        """Go on with a name that has an address; answer Envoy's DNS resolution failure for one that has none."""
        if info.address is not None:
            return True
        stream.local(lr.LocalReply(503, "DF", b"DNS resolution failure", info.details))
        return False

    @staticmethod
    def _rewrite(stream: Any, config: PerRouteConfig) -> None:
        if config.host_rewrite_literal:
            stream.set_authority(config.host_rewrite_literal.encode("latin-1"))
        elif config.host_rewrite_header:
            wanted = config.host_rewrite_header.lower().encode("latin-1")
            value = next((v for n, v in stream.headers if n == wanted), None)  # its first value only, as Envoy
            if value is not None:
                stream.set_authority(value)

    def _find_cache(self, stream: Any) -> DnsCache:
        assert self.config.dns_cache_config is not None
        cache = self._cache = worker_caches(stream.hcm.worker.singletons).get(self.config.dns_cache_config, self.stats)
        cache.start(self.loop)
        return cache


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, FilterConfig)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, PerRouteConfig)
register_filter(FilterConfig, DynamicForwardProxyFilter)

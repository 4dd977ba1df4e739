"""envoy.clusters.dynamic_forward_proxy: a cluster whose hosts are the names requests bring, from a DNS cache.

As Envoy 1.40 does: `cluster_type: {name: envoy.clusters.dynamic_forward_proxy, typed_config: ClusterConfig}` with
`lb_policy: CLUSTER_PROVIDED`. The cluster has a host per `host:port` its DNS cache (named by `dns_cache_config`,
the one the dynamic forward proxy HTTP filter names) resolved, and sends a request to the host of its Host /
:authority (after the route's host rewrite; the port defaults to 443 when the cluster's transport socket is TLS,
else 80). A request whose name the cache has no host for makes the cluster resolve it (Envoy 1.40's default,
`dfp_cluster_resolves_hosts`): the attempt waits and starts again when the answer is in; a name that does not
resolve gets 503 "no healthy upstream" (flag UH) with the cache's details. With the filter in front, the name is
in the cache before the router asks. Hosts the cache forgets (host_ttl) leave the cluster, their pools with them.

Upstream TLS follows each host name: without upstream HTTP protocol options of its own the cluster gets
`auto_sni` and `auto_san_validation` (Envoy's factory sets them), and both are required unless
`allow_insecure_cluster_options`. `allow_coalesced_connections` shares HTTP/2 and HTTP/3 connections between
names; pylon's upstream connections are HTTP/1.1, where Envoy does not coalesce either.

A name's host has no metadata: of `transport_socket_matches` (Istio's auto mTLS) only a match asking none applies.
Outlier detection ejects a name's host; while ejected its requests get 503 UH, as Envoy's cluster gives no host.

tcp_proxy to such a cluster takes the host of the connection's SNI (from tls_inspector) on the port the SNI dynamic
forward proxy filter resolved it for (`port_value`; without the filter the default port).

Refused by name: `sub_clusters_config`, and on such a cluster endpoints (it has none) and health checks. Departure:
tcp_proxy without the SNI filter takes the SNI's host only when the cache already has it (Envoy's cluster would
resolve it too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from pylon.config import registry
from pylon.config.envoy import AutoSniOptions, ClusterTypeConfig, NotSupportedYet
from pylon.config.envoy import Cluster as EnvoyCluster
from pylon.config.errors import FieldError
from pylon.config.secrets import tls_context
from pylon.extensions.common.dynamic_forward_proxy.config import DnsCacheConfig
from pylon.extensions.common.dynamic_forward_proxy.dns_cache import LOADING, HostInfo, worker_caches
from pylon.extensions.common.dynamic_forward_proxy.hosts import cache_key
from pylon.proxy import local_reply as lr
from pylon.proxy.upstream.cluster import PENDING, Cluster, register_cluster_type
from pylon.proxy.upstream.host import Host
from pylon.proxy.upstream.tls_factory import matching_socket

if TYPE_CHECKING:
    from pylon.proxy.connection_info import ConnectionInfo
    from pylon.stats.store import StatsStore

TYPE_URL = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
_AUTO_SNI = AutoSniOptions(auto_sni=True, auto_san_validation=True)


class ClusterConfig(ClusterTypeConfig, kw_only=True):
    """extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig."""

    dns_cache_config: DnsCacheConfig | None = None
    sub_clusters_config: NotSupportedYet | None = None
    allow_insecure_cluster_options: bool = False
    allow_coalesced_connections: bool = False  # HTTP/2 and HTTP/3 only (see the module docstring)

    def __post_init__(self) -> None:
        if self.dns_cache_config is None:
            raise FieldError("dns_cache_config", "missing required field (sub_clusters_config is not supported yet)")

    def implied_upstream_options(self) -> AutoSniOptions:
        return _AUTO_SNI

    def check_cluster(self, cluster: EnvoyCluster) -> None:
        if cluster.load_assignment is not None and cluster.load_assignment.endpoints:
            raise FieldError("load_assignment", "a dynamic forward proxy cluster has no endpoints: its hosts are the "
                                                "names requests bring")
        if cluster.health_checks:
            raise FieldError("health_checks", "not supported yet on a dynamic forward proxy cluster")
        options = cluster.auto_sni_options
        if not self.allow_insecure_cluster_options and (
                options is None or not (options.auto_sni and options.auto_san_validation)):
            field = "upstream_http_protocol_options" if cluster.upstream_http_protocol_options is not None else \
                "typed_extension_protocol_options"
            raise FieldError(field, "dynamic_forward_proxy cluster must have auto_sni and auto_san_validation true "
                                    "unless allow_insecure_cluster_options is set.")


class DynamicForwardProxyCluster(Cluster):
    """One worker's cluster: a `Host` per resolved cache entry (`hostname` is its `host:port`), picked by name."""

    def __init__(self, config: Any, stats: StatsStore, worker_id: int, secrets: Mapping[str, Any],
                 singletons: dict[str, Any]) -> None:
        super().__init__(config, stats, worker_id, secrets=secrets)
        self.dns_cache = worker_caches(singletons).get(config.cluster_type.typed_config.dns_cache_config, stats)
        # The port of a host named without one, by the cluster's own transport socket (Envoy's default port).
        self.default_port = 443 if tls_context(config.transport_socket) is not None else 80
        self._by_key: dict[str, tuple[Host, HostInfo]] = {}

    def start(self, loop: Any) -> None:
        super().start(loop)
        self.dns_cache.start(loop)
        self.dns_cache.listeners.append(self)
        for info in self.dns_cache.resolved():  # a cache other users filled already
            self.on_host_added_or_updated(info)

    async def stop(self) -> None:
        if self in self.dns_cache.listeners:
            self.dns_cache.listeners.remove(self)
        await super().stop()

    # -- the cache's news ---------------------------------------------------------------------------
    def on_host_added_or_updated(self, info: HostInfo) -> None:
        assert info.address is not None
        entry = self._by_key.get(info.key)
        if entry is not None:
            entry[0].address = info.address  # Envoy's logical host: new connections go to the new address
            return
        host = Host(info.address, hostname=info.key)
        # Its transport socket: a match that asks no metadata, else the cluster's (a name's host has no metadata).
        host.socket = matching_socket(self.socket_matches, {}) if self.socket_matches else -1
        if self.outlier is not None:
            self.outlier.add_host(host)
        host.on_health_change = self._on_health_change
        self._by_key[info.key] = (host, info)
        self.hosts.append(host)
        self.stats.membership_change.value += 1
        self._refresh()

    def on_host_removed(self, info: HostInfo) -> None:
        entry = self._by_key.pop(info.key, None)
        if entry is None:
            return
        host = entry[0]
        host.on_health_change = None
        if self.outlier is not None:
            self.outlier.remove_host(host)
        self.hosts.remove(host)
        self.stats.membership_change.value += 1
        self._refresh()
        if self.on_hosts_removed is not None:
            self.on_hosts_removed(self)  # the worker retires the host's pools

    # -- picking hosts ------------------------------------------------------------------------------
    def request_host(self, stream: Any) -> Host | None:
        raw = self._request_name(stream)
        entry = self._by_key.get(cache_key(raw, self.default_port))
        if entry is not None:
            self.dns_cache.touch(entry[1])
            return entry[0] if entry[0].healthy else None  # ejected by outlier detection: no host, as Envoy
        status, _ = self.dns_cache.load(raw, self.default_port, lambda _: stream.attempt_now())
        return PENDING if status == LOADING else None

    def connection_host(self, info: ConnectionInfo) -> Host | None:
        """The host of the connection's SNI, on the port the SNI filter resolved it for (else the default port)."""
        port = info.dynamic_port if 0 < info.dynamic_port <= 65535 else self.default_port
        entry = self._by_key.get(cache_key(info.inspected_server_name, port))
        if entry is None:
            return None
        self.dns_cache.touch(entry[1])
        return entry[0] if entry[0].healthy else None

    def no_host_reply(self, stream: Any) -> lr.LocalReply:
        """Envoy's 503 UH, with the cache's reason when the name did not resolve (not counted as none healthy)."""
        info = self.dns_cache.hosts.get(cache_key(self._request_name(stream), self.default_port))
        if info is not None and info.address is None and info.details:
            return lr.NO_HEALTHY_UPSTREAM._replace(details=info.details)
        return lr.NO_HEALTHY_UPSTREAM

    @staticmethod
    def _request_name(stream: Any) -> str:
        """The host the router sends the request to: the route's host rewrite, else its Host/:authority."""
        return (stream.route.host_rewrite or stream.authority).decode("latin-1")


registry.register_typed(registry.CLUSTER_TYPE, TYPE_URL, ClusterConfig)
register_cluster_type(ClusterConfig, DynamicForwardProxyCluster)

"""The dynamic forward proxy's config: what loads, what Envoy refuses, what pylon refuses, each naming its field.

Envoy 1.40's messages where it refuses (checked with `envoy --mode validate`: tests/config/envoy_cases.py has
these cases too); pylon's own refusals name the field it does not implement.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

from pylon.config.discovery import CLUSTERS, Discovered, Update
from pylon.config.envoy import Cluster as EnvoyCluster
from pylon.config.envoy import convert
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.clusters.dynamic_forward_proxy import DynamicForwardProxyCluster
from pylon.extensions.common.dynamic_forward_proxy.dns_cache import HostInfo
from pylon.proxy.dynamic import DynamicConfig
from pylon.proxy.upstream.cluster import build_cluster
from pylon.stats.store import StatsStore
from tests.proxy.conftest import HCM_TYPE, ROUTER_TYPE, UPSTREAM_TLS_TYPE

CLUSTER_CONFIG = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
FILTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CLUSTER = "static_resources.clusters[0]"
FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"


def bootstrap(cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """A listener whose DFP filter and cluster name the same cache."""
    cache = cache or {"name": "dfp", "dns_lookup_family": "V4_ONLY"}
    hcm = {"@type": HCM_TYPE, "stat_prefix": "main",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "dfp"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.dynamic_forward_proxy",
                             "typed_config": {"@type": FILTER_CONFIG, "dns_cache_config": dict(cache)}},
                            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {"static_resources": {
        "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [{"name": "dfp", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {"@type": CLUSTER_CONFIG, "dns_cache_config": dict(cache)}}}]}}


def cluster_of(data: dict[str, Any]) -> dict[str, Any]:
    return data["static_resources"]["clusters"][0]


def filter_of(data: dict[str, Any]) -> dict[str, Any]:
    return data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]["typed_config"]


def test_envoys_shape_loads_with_auto_sni_and_san_validation_implied() -> None:
    config = parse_bootstrap(bootstrap(), "test").static_resources.clusters[0]
    assert config.type is None and config.auto_sni_options is not None
    assert config.auto_sni_options.auto_sni and config.auto_sni_options.auto_san_validation
    cluster = build_cluster(config, StatsStore(), 0, secrets={}, singletons={})
    assert isinstance(cluster, DynamicForwardProxyCluster) and cluster.provided and cluster.default_port == 80


def test_a_tls_cluster_defaults_to_port_443() -> None:
    data = bootstrap()
    cluster_of(data)["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS_TYPE}}
    config = parse_bootstrap(data, "test").static_resources.clusters[0]
    assert build_cluster(config, StatsStore(), 0, secrets={}, singletons={}).default_port == 443


def test_filter_and_cluster_share_the_workers_cache_of_their_name() -> None:
    config = parse_bootstrap(bootstrap(), "test").static_resources.clusters[0]
    singletons: dict[str, Any] = {}
    one = build_cluster(config, StatsStore(), 0, secrets={}, singletons=singletons)
    two = build_cluster(config, StatsStore(), 0, secrets={}, singletons=singletons)
    assert isinstance(one, DynamicForwardProxyCluster) and isinstance(two, DynamicForwardProxyCluster)
    assert one.dns_cache is two.dns_cache


def _set(path: list[str], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = cluster_of(target) if key == "@cluster" else filter_of(target) if key == "@filter" else \
                target.setdefault(key, {})
        target[path[-1]] = value
    return change


TYPED_OPTIONS = {HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                                "explicit_http_config": {"http_protocol_options": {}}}}


@pytest.mark.parametrize(("change", "path", "message"), [
    # Envoy's refusals
    (_set(["@cluster", "lb_policy"], "ROUND_ROBIN"), f"{CLUSTER}.lb_policy", "cluster provided LB not specified"),
    (_set(["@cluster", "type"], "STRICT_DNS"), f"{CLUSTER}.type", "type and cluster_type are one choice"),
    (_set(["@cluster", "typed_extension_protocol_options"], TYPED_OPTIONS),
     f"{CLUSTER}.typed_extension_protocol_options",
     "dynamic_forward_proxy cluster must have auto_sni and auto_san_validation true unless "
     "allow_insecure_cluster_options is set."),
    (_set(["@filter", "dns_cache_config", "max_hosts"], 5), f"{FILTER}.dns_cache_config",
     "config specified DNS cache 'dfp' with different settings"),
    (_set(["@filter", "dns_cache_config", "name"], ""), f"{FILTER}.dns_cache_config.name", "length >= 1"),
    (_set(["@filter", "dns_cache_config", "dns_min_refresh_rate"], "0.5s"),
     f"{FILTER}.dns_cache_config.dns_min_refresh_rate", "at least 1s"),
    (_set(["@filter", "dns_cache_config", "host_ttl"], "0s"), f"{FILTER}.dns_cache_config.host_ttl", "greater than"),
    (_set(["@filter", "dns_cache_config", "max_hosts"], 0), f"{FILTER}.dns_cache_config.max_hosts", ">= 1"),
    (_set(["@filter", "dns_cache_config", "dns_failure_refresh_rate"], {"base_interval": "2s", "max_interval": "1s"}),
     f"{FILTER}.dns_cache_config.dns_failure_refresh_rate.max_interval", "greater than or equal to the base_interval"),
    (lambda data: filter_of(data)["dns_cache_config"].update(
        max_hosts=1, preresolve_hostnames=[{"address": "localhost", "port_value": 80}] * 2),
     f"{FILTER}.dns_cache_config.preresolve_hostnames",
     "DNS Cache [dfp] configured with preresolve_hostnames=2 larger than max_hosts=1"),
    # what pylon does not implement, by name
    (_set(["@filter", "dns_cache_config", "typed_dns_resolver_config"], {"name": "envoy.network.dns_resolver.cares"}),
     f"{FILTER}.dns_cache_config.typed_dns_resolver_config.typed_config", "missing required field"),
    (_set(["@filter", "dns_cache_config", "typed_dns_resolver_config"], {"name": "c", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
        "filter_unroutable_families": True}}),
     f"{FILTER}.dns_cache_config.typed_dns_resolver_config.typed_config.filter_unroutable_families",
     "not supported yet"),
    (_set(["@filter", "dns_cache_config", "key_value_config"], {}), f"{FILTER}.dns_cache_config.key_value_config",
     "not supported yet"),
    (_set(["@filter", "dns_cache_config", "disable_dns_refresh_on_failure"], True),
     f"{FILTER}.dns_cache_config.disable_dns_refresh_on_failure", "not supported yet"),
    (_set(["@filter", "save_upstream_address"], True), f"{FILTER}.save_upstream_address", "not supported yet"),
    (_set(["@filter", "sub_cluster_config"], {}), f"{FILTER}.sub_cluster_config", "not supported yet"),
    (_set(["@cluster", "cluster_type", "typed_config", "sub_clusters_config"], {}),
     f"{CLUSTER}.cluster_type.typed_config.sub_clusters_config", "not supported yet"),
    (_set(["@cluster", "health_checks"], [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                                           "healthy_threshold": 1, "tcp_health_check": {}}]),
     f"{CLUSTER}.health_checks", "not supported yet on a dynamic forward proxy cluster"),
    (_set(["@cluster", "load_assignment"], {"cluster_name": "dfp", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}),
     f"{CLUSTER}.load_assignment", "has no endpoints"),
])  # fmt: skip
def test_config_errors_name_their_field(change: Callable[[dict[str, Any]], None], path: str, message: str) -> None:
    data = copy.deepcopy(bootstrap())
    change(data)
    with pytest.raises(ConfigError) as caught:
        parse_bootstrap(data, "test")
    assert caught.value.path == path and message in caught.value.message


def test_insecure_options_may_turn_the_implied_ones_off() -> None:
    data = bootstrap()
    cluster_of(data)["typed_extension_protocol_options"] = TYPED_OPTIONS
    cluster_of(data)["cluster_type"]["typed_config"]["allow_insecure_cluster_options"] = True
    assert parse_bootstrap(data, "test").static_resources.clusters[0].auto_sni_options is None


def test_per_route_config_takes_one_rewrite() -> None:
    data = bootstrap()
    vhost = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]
    vhost["typed_per_filter_config"] = {"envoy.filters.http.dynamic_forward_proxy": {
        "@type": PER_ROUTE, "host_rewrite_literal": "a", "host_rewrite_header": "x-host"}}
    with pytest.raises(ConfigError) as caught:
        parse_bootstrap(data, "test")
    assert "at most one of host_rewrite_literal, host_rewrite_header" in caught.value.message
    assert caught.value.path.endswith("virtual_hosts[0].typed_per_filter_config[envoy.filters.http.dynamic_forward_proxy]")


def test_a_cds_update_giving_a_cache_other_settings_than_a_listeners_filter_is_refused() -> None:
    """The supervisor's check of an update (a NACK over xDS): the static listener's filter names cache `dfp`."""
    data = bootstrap()
    cds_cluster = cluster_of(data)
    data["static_resources"]["clusters"] = []
    data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "validate_clusters"] = False  # its cluster comes by CDS
    dynamic = DynamicConfig(parse_bootstrap(data, "b.yaml"), StatsStore())
    same = convert(cds_cluster, EnvoyCluster)
    dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("1", {"dfp": same}), frozenset(), "ads"))
    other = copy.deepcopy(cds_cluster)
    other["cluster_type"]["typed_config"]["dns_cache_config"]["max_hosts"] = 9
    changed = convert(other, EnvoyCluster)
    with pytest.raises(ConfigError) as caught:
        dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("2", {"dfp": changed}), frozenset(), "ads"))
    assert caught.value.path == "resources[0].cluster_type.typed_config.dns_cache_config"
    assert caught.value.message == "config specified DNS cache 'dfp' with different settings"
    assert dynamic.version == 1


def test_a_names_host_takes_the_match_asking_no_metadata_and_leaves_when_ejected() -> None:
    """Istio's auto mTLS shape: a `tlsMode: istio` match and a plaintext one asking nothing; outlier detection."""
    data = bootstrap()
    cluster_of(data)["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
            "name": "envoy.transport_sockets.tls", "typed_config": {"@type": UPSTREAM_TLS_TYPE}}},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {
            "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]
    cluster_of(data)["outlier_detection"] = {"consecutive_5xx": 1, "max_ejection_percent": 100}
    cluster = build_cluster(parse_bootstrap(data, "test").static_resources.clusters[0], StatsStore(), 0, secrets={},
                            singletons={})
    assert isinstance(cluster, DynamicForwardProxyCluster)
    info = HostInfo("a.localhost:80", "a.localhost", 80, 0.0, None)
    info.address = ("127.0.0.1", 80)
    cluster.dns_cache.loop = type("Clock", (), {"time": lambda self: 1.0})()  # touch() reads the loop's time
    cluster.on_host_added_or_updated(info)
    host = cluster.hosts[0]
    assert host.socket == 1 and cluster.tls_for(host) is None  # plain TCP
    stream = type("Stream", (), {"route": type("Route", (), {"host_rewrite": None})(), "authority": b"a.localhost"})()
    assert cluster.request_host(stream) is host
    host.record_response(503)  # consecutive_5xx 1: ejected
    assert not host.healthy and cluster.request_host(stream) is None
    cluster.on_host_removed(info)
    assert cluster.hosts == [] and cluster.outlier is not None and not cluster.outlier.monitors

"""The bootstrap's ADS fields, checked as Envoy checks them, and HTTP/2 only towards the xDS cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pylon.config.discovery import CLUSTERS, ROUTE_CONFIGURATIONS, Discovered, Update
from pylon.config.envoy import Cluster, RouteConfiguration, convert
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.proxy.dynamic import DynamicConfig
from pylon.stats.store import StatsStore
from tests.xds.test_ads_interop import ads_bootstrap, rds_listener
from tests.xds.test_resources import cluster

ADS = "dynamic_resources.ads_config"


def bootstrap() -> dict[str, Any]:
    extra, xds = ads_bootstrap(15010)
    return {"static_resources": {"clusters": [xds], "listeners": [rds_listener(8080)]}, **copy.deepcopy(extra)}


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "b.yaml")
    return f"{info.value.path}: {info.value.message}"


def test_transport_api_version_auto_is_v3_as_in_envoy() -> None:
    data = bootstrap()
    data["dynamic_resources"]["ads_config"].pop("transport_api_version", None)
    assert parse_bootstrap(data, "b.yaml").dynamic_resources.ads_config.transport_api_version == "AUTO"


def test_istio_shaped_bootstrap_loads() -> None:
    loaded = parse_bootstrap(bootstrap(), "b.yaml")
    ads = loaded.dynamic_resources.ads_config
    assert (ads.cluster_name, ads.set_node_on_first_message_only) == ("xds-grpc", True)
    assert loaded.dynamic_resources.cds_config.initial_fetch_timeout == 5


@pytest.mark.parametrize(("change", "expected"), [
    ({"api_type": "REST"}, f"{ADS}.api_type: only GRPC and DELTA_GRPC are supported, got REST"),
    ({"api_type": "AGGREGATED_GRPC"}, f"{ADS}.api_type: only GRPC and DELTA_GRPC are supported, got AGGREGATED_GRPC"),
    ({"transport_api_version": "V2"}, f"{ADS}.transport_api_version: V2 xDS is no longer supported: use V3 (or leave it unset)"),
    ({"grpc_services": []}, f"{ADS}.grpc_services: exactly one gRPC service is required, got 0"),
    ({"grpc_services": [{"google_grpc": {}}]}, f"{ADS}.grpc_services[0].google_grpc: not supported yet"),
    ({"grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}, "timeout": "5s"}]},
     f"{ADS}.grpc_services[0].timeout: not supported yet"),
    ({"grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc", "authority": "istiod"}}]},
     f"{ADS}.grpc_services[0].envoy_grpc.authority: not supported yet"),
    ({"grpc_services": [{"envoy_grpc": {"cluster_name": "nope"}}]},
     f"{ADS}.grpc_services[0].envoy_grpc.cluster_name: unknown cluster 'nope' (a gRPC config source's cluster must be a static cluster)"),
])  # fmt: skip
def test_ads_config_errors(change: dict[str, Any], expected: str) -> None:
    data = bootstrap()
    data["dynamic_resources"]["ads_config"].update(change)
    assert error(data) == expected


def test_xds_cluster_needs_an_endpoint() -> None:
    data = bootstrap()
    data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = []
    assert error(data) == f"{ADS}.grpc_services[0].envoy_grpc.cluster_name: cluster 'xds-grpc' has no endpoint"


def test_ads_source_without_ads_config() -> None:
    data = bootstrap()
    del data["dynamic_resources"]["ads_config"]
    assert error(data) == "dynamic_resources.cds_config.ads: needs dynamic_resources.ads_config"


def test_config_source_takes_exactly_one_source() -> None:
    data = bootstrap()
    data["dynamic_resources"]["cds_config"]["path"] = "/x.yaml"
    assert error(data).endswith("exactly one of path, path_config_source, ads, api_config_source is required (got path, ads)")


def test_a_route_to_the_xds_cluster_is_an_error() -> None:
    data = bootstrap()
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "xds-grpc"}}]}]}
    assert error(data).endswith("route_config.virtual_hosts[0].routes[0].route.cluster: cluster 'xds-grpc' is for "
                                "pylon's gRPC client only (xDS, SDS: a config source names it, or it has pipe "
                                "endpoints); routes and tcp_proxy cannot use it")


def dynamic_config() -> DynamicConfig:
    return DynamicConfig(parse_bootstrap(bootstrap(), "b.yaml"), StatsStore())


def test_dynamic_rejects_pipe_clusters_and_routes_to_the_xds_cluster() -> None:
    dynamic = dynamic_config()
    pipe = cluster("web", http2_protocol_options={})
    pipe["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {"pipe": {"path": "/tmp/x"}}
    h2 = convert(pipe, Cluster)
    with pytest.raises(ConfigError, match=r"resources\[0\].load_assignment: pipe endpoints are supported only"):
        dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("1", {"web": h2}), frozenset(), "ads"))
    routes = convert({"name": "main_routes", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "xds-grpc"}}]}]}, RouteConfiguration)
    with pytest.raises(ConfigError, match=r"resources\[0\].virtual_hosts\[0\].routes\[0\].route.cluster"):
        dynamic.offer(ROUTE_CONFIGURATIONS, ["main_routes"],
                      lambda: Update(ROUTE_CONFIGURATIONS, Discovered("1", {"main_routes": routes}), frozenset(), "ads"))
    counters = dynamic.stats.snapshot()["counters"]
    assert dynamic.version == 0 and not dynamic.clusters and not dynamic.routes
    assert counters["cluster_manager.cds.update_rejected"] == 1
    assert counters["http.main.rds.main_routes.update_rejected"] == 1

"""DynamicConfig.changes(): after the first push, workers are sent only what changed (no sockets)."""

from __future__ import annotations

from pylon.config.discovery import CLUSTERS, ROUTE_CONFIGURATIONS, Discovered, Update
from pylon.config.envoy import Cluster, RouteConfiguration, convert
from tests.proxy.conftest import static_cluster
from tests.xds.test_bootstrap_ads import dynamic_config


def offer_clusters(dynamic, *names: str, port: int = 9000) -> None:  # type: ignore[no-untyped-def]
    resources = {name: convert(static_cluster(name, [port]), Cluster) for name in names}
    dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("v", resources), frozenset(dynamic.clusters), "ads"))


def offer_routes(dynamic, cluster: str) -> None:  # type: ignore[no-untyped-def]
    routes = convert({"name": "main_routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}, RouteConfiguration)
    dynamic.offer(ROUTE_CONFIGURATIONS, ["main_routes"],
                  lambda: Update(ROUTE_CONFIGURATIONS, Discovered("r", {"main_routes": routes}), frozenset(), "ads"))


def test_only_what_changed_is_sent_after_the_first_push() -> None:
    dynamic = dynamic_config()
    offer_clusters(dynamic, *(f"c{i}" for i in range(100)))
    offer_routes(dynamic, "c0")
    first = dynamic.changes()
    assert len(first["clusters"]) == 100 and list(first["routes"]) == ["main_routes"]
    unchanged = dynamic.changes()
    assert unchanged["clusters"] == {} and unchanged["routes"] == {}
    assert unchanged["names"]["clusters"] is None  # not worked out again: nothing of it goes

    offer_routes(dynamic, "c1")  # a route swap: one route configuration, no cluster
    swap = dynamic.changes()
    assert (swap["clusters"], list(swap["routes"])) == ({}, ["main_routes"])
    assert swap["names"]["clusters"] is None and swap["names"]["routes"] == ["main_routes"]

    offer_clusters(dynamic, *(f"c{i}" for i in range(99)), "c0")  # c99 removed; the rest resent unchanged
    removal = dynamic.changes()
    assert removal["clusters"] == {} and "c99" not in removal["names"]["clusters"]  # workers drop it

    whole = dynamic.document()  # what a worker that starts gets: everything
    assert len(whole["clusters"]) == 99 and list(whole["routes"]) == ["main_routes"]


def test_an_endpoint_change_sends_that_assignment_alone() -> None:
    from pylon.config.discovery import ENDPOINTS
    from pylon.config.envoy import ClusterLoadAssignment

    def eds(name: str) -> dict:  # type: ignore[type-arg]
        return {"name": name, "type": "EDS", "connect_timeout": "1s",
                "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": name}}

    def offer_endpoints(dynamic, ports: dict[str, int]) -> None:  # type: ignore[no-untyped-def]
        resources = {name: convert({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}, ClusterLoadAssignment)
            for name, port in ports.items()}  # fmt: skip
        dynamic.offer(ENDPOINTS, list(ports), lambda: Update(ENDPOINTS, Discovered("e", resources), frozenset(), "ads"))

    dynamic = dynamic_config()
    resources = {f"e{i}": convert(eds(f"e{i}"), Cluster) for i in range(50)}
    dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("c", resources), frozenset(), "ads"))
    offer_endpoints(dynamic, {f"e{i}": 9000 for i in range(50)})
    assert len(dynamic.changes()["endpoints"]) == 50
    offer_endpoints(dynamic, {f"e{i}": 9001 if i == 7 else 9000 for i in range(50)})  # all resent, one moved
    change = dynamic.changes()
    assert (change["clusters"], list(change["endpoints"])) == ({}, ["e7"])
    assert len(change["names"]["endpoints"]) == 50
    assert dynamic.document()["endpoints"]["e7"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["port_value"] == 9001

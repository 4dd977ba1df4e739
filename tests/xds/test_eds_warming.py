"""DynamicConfig and EDS (no sockets): warming, endpoints kept by service name, Envoy's per-cluster stats."""

from __future__ import annotations

from pylon.config.discovery import CLUSTERS, ENDPOINTS, Discovered, Update
from pylon.config.envoy import Cluster, ClusterLoadAssignment, convert
from tests.xds.test_bootstrap_ads import dynamic_config
from tests.xds.test_eds_interop import assignment, eds_cluster


def offer_clusters(dynamic, *clusters: dict) -> None:  # type: ignore[no-untyped-def]
    resources = {c["name"]: convert(c, Cluster) for c in clusters}
    dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("c", resources), frozenset(dynamic.clusters), "ads"))


def offer_endpoints(dynamic, *ports: int) -> None:  # type: ignore[no-untyped-def]
    cla = convert(assignment(*ports), ClusterLoadAssignment)
    names = [n for names in dynamic.eds_services().values() for n in names]
    dynamic.offer(ENDPOINTS, names, lambda: Update(ENDPOINTS, Discovered("e", {cla.name: cla}), frozenset(), "ads"))


def test_an_eds_cluster_reaches_workers_once_its_endpoints_come() -> None:
    dynamic = dynamic_config()
    offer_clusters(dynamic, eds_cluster("e"), eds_cluster("f"))
    assert dynamic.eds_services() == {"svc-e": ["e", "f"]}
    assert dynamic.document()["clusters"] == {} and dynamic.stats.gauge("cluster_manager.warming_clusters").value == 2
    offer_endpoints(dynamic, 9001)
    document = dynamic.document()
    assert list(document["clusters"]) == ["e", "f"]
    assert document["endpoints"]["e"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["port_value"] == 9001
    counters = dynamic.stats.snapshot()["counters"]
    assert (counters["cluster.e.update_success"], counters["cluster.f.update_success"]) == (1, 1)
    # A modified cluster serves the known endpoints at once (kept by service name, as Envoy's EDS cache).
    offer_clusters(dynamic, eds_cluster("e", initial_fetch_timeout="1s"))
    assert list(dynamic.document()["clusters"]) == ["e"]
    # Removed: its endpoints are forgotten.
    offer_clusters(dynamic)
    assert dynamic.endpoints == {} and dynamic.eds_services() == {}


def test_initial_fetch_timeout_serves_the_cluster_without_hosts() -> None:
    dynamic = dynamic_config()
    offer_clusters(dynamic, eds_cluster("e"))
    assert dynamic.expire_eds("svc-e") and not dynamic.expire_eds("svc-e")
    assert dynamic.document()["endpoints"] == {"e": {"cluster_name": "svc-e"}}
    assert dynamic.stats.snapshot()["counters"]["cluster.e.init_fetch_timeout"] == 1


def test_config_dump_shows_warming_clusters_apart() -> None:
    """Envoy's ClustersConfigDump: a cluster waiting for its endpoints is in dynamic_warming_clusters."""
    dynamic = dynamic_config()
    offer_clusters(dynamic, eds_cluster("e"))

    def sections() -> tuple[list[str], list[str]]:
        dump = next(c for c in dynamic.config_dump() if c["@type"].endswith("ClustersConfigDump"))
        return ([c["cluster"]["name"] for c in dump["dynamic_active_clusters"]],
                [c["cluster"]["name"] for c in dump["dynamic_warming_clusters"]])

    assert sections() == ([], ["e"])
    offer_endpoints(dynamic, 9001)
    assert sections() == (["e"], [])

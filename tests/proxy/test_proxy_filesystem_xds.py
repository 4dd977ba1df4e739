"""Integration: clusters (CDS) and routes (RDS) from watched files, through pylon and Envoy alike.

Each file holds a DiscoveryResponse and is replaced by an atomic rename, as
Envoy documents for `path_config_source`. A valid update takes effect within
a second for new requests; an invalid one is rejected (update_rejected) and
the last good version keeps serving; a route to a cluster that does not exist
answers 503 with flag NC. Requests in flight while files change are not lost.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.proxy.conftest import HCM_TYPE, ROUTER_TYPE, ProxyLauncher, RunningProxy, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
EFFECT_S = 2.0  # a file change must be in force within this (the proxies poll or get inotify events)


def replace_file(path: Path, document: dict[str, Any]) -> None:
    """Write next to the file, then rename over it: the atomic update Envoy documents."""
    staging = path.with_name(f".{path.name}.{time.monotonic_ns()}")
    staging.write_text(yaml.safe_dump(document))
    os.rename(staging, path)


def clusters_file(*clusters: dict[str, Any], version: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": CLUSTER_TYPE, **c} for c in clusters]}


def routes_file(routes: list[dict[str, Any]], version: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{
        "@type": ROUTES_TYPE, "name": "main_routes",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}]}


def to(prefix: str, cluster: str) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster}}


class Setup:
    """A proxy whose clusters come from cds.yaml and whose routes come from rds.yaml."""

    def __init__(self, proxy: RunningProxy, port: int, cds: Path, rds: Path, ups: dict[str, Upstream]) -> None:
        self.proxy, self.port, self.cds, self.rds, self.ups = proxy, port, cds, rds, ups

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def cluster(self, name: str, **extra: Any) -> dict[str, Any]:
        return static_cluster(name, [self.ups[name].port], **extra)


@pytest.fixture
def setup(implementation: str, tmp_path: Path) -> Iterator[Setup]:
    ups = {"a": Upstream(), "b": Upstream()}
    launcher = ProxyLauncher(tmp_path)
    try:
        cds, rds = tmp_path / "cds.yaml", tmp_path / "rds.yaml"
        replace_file(cds, clusters_file(static_cluster("a", [ups["a"].port]), version="1"))
        replace_file(rds, routes_file([to("/b", "b"), to("/", "a")], version="1"))
        port = free_port()
        hcm = {"@type": HCM_TYPE, "stat_prefix": "main",
               "rds": {"route_config_name": "main_routes", "config_source": {"path_config_source": {"path": str(rds)},
                                                                            "resource_api_version": "V3"}},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
        listener = {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": hcm}]}]}
        extra = {"node": {"id": "test", "cluster": "test"},
                 "dynamic_resources": {"cds_config": {"path_config_source": {"path": str(cds)},
                                                      "resource_api_version": "V3"}}}
        proxy = launcher.start([listener], [], implementation=implementation, bootstrap_extra=extra)
        yield Setup(proxy, port, cds, rds, ups)
    finally:
        launcher.close()
        for up in ups.values():
            up.close()


def served_by(setup: Setup, path: str, name: str) -> bool:
    reply = setup.get(path)
    return reply.status_code == 200 and reply.headers.get("x-served-by") == str(setup.ups[name].port)


def test_initial_files_serve_and_a_missing_cluster_is_503(setup: Setup) -> None:
    assert served_by(setup, "/x", "a")
    reply = setup.get("/b")  # the route names cluster b, which CDS has not given
    assert (reply.status_code, reply.content) == (503, b"")
    stats = setup.proxy.stats()
    assert stats["cluster_manager.cds.update_success"] == 1
    assert stats["http.main.rds.main_routes.update_success"] == 1
    dump = {c["@type"].rsplit(".", 1)[-1]: c for c in setup.proxy.admin("/config_dump").json()["configs"]}
    (active,) = dump["ClustersConfigDump"]["dynamic_active_clusters"]
    assert (active["cluster"]["name"], active["version_info"]) == ("a", "1")
    (routes,) = dump["RoutesConfigDump"]["dynamic_route_configs"]
    assert (routes["route_config"]["name"], routes["version_info"]) == ("main_routes", "1")


def test_cluster_added_then_routes_swapped(setup: Setup) -> None:
    replace_file(setup.cds, clusters_file(setup.cluster("a"), setup.cluster("b"), version="2"))
    assert wait_until(lambda: served_by(setup, "/b", "b"), timeout=EFFECT_S)
    replace_file(setup.rds, routes_file([to("/", "b")], version="2"))
    assert wait_until(lambda: served_by(setup, "/x", "b"), timeout=EFFECT_S)
    stats = setup.proxy.stats()
    assert stats["cluster_manager.cluster_added"] == 2
    assert stats["http.main.rds.main_routes.update_success"] == 2


def test_invalid_update_is_rejected_and_the_last_good_version_serves(setup: Setup) -> None:
    bad = setup.cluster("a")
    bad["connect_timeout"] = "-1s"
    replace_file(setup.cds, clusters_file(bad, version="bad"))
    assert wait_until(lambda: setup.proxy.stats().get("cluster_manager.cds.update_rejected") == 1, timeout=EFFECT_S)
    assert served_by(setup, "/x", "a")
    replace_file(setup.rds, {"version_info": "bad", "resources": [{"@type": ROUTES_TYPE, "name": "main_routes",
                                                                   "virtual_hosts": [{"domains": ["*"]}]}]})
    assert wait_until(lambda: setup.proxy.stats().get("http.main.rds.main_routes.update_rejected") == 1,
                      timeout=EFFECT_S)
    assert served_by(setup, "/x", "a")


def test_removed_cluster_answers_503(setup: Setup) -> None:
    replace_file(setup.cds, clusters_file(setup.cluster("b"), version="2"))
    assert wait_until(lambda: setup.get("/x").status_code == 503, timeout=EFFECT_S)
    assert setup.proxy.stats()["cluster_manager.cluster_removed"] == 1


def test_changes_under_load_lose_no_request(setup: Setup) -> None:
    replace_file(setup.cds, clusters_file(setup.cluster("a"), setup.cluster("b"), version="2"))
    assert wait_until(lambda: served_by(setup, "/b", "b"), timeout=EFFECT_S)
    stop = threading.Event()

    def client() -> list[int]:
        statuses = []
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                statuses.append(http.get(f"http://127.0.0.1:{setup.port}/x").status_code)
        return statuses

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        for step in range(12):  # every 0.25 s: the route flips between a and b, a cluster is modified
            target = "ab"[step % 2]
            replace_file(setup.rds, routes_file([to("/", target)], version=f"r{step}"))
            replace_file(setup.cds, clusters_file(setup.cluster("a", connect_timeout=f"{1 + step % 2}s"),
                                                  setup.cluster("b"), version=f"c{step}"))
            time.sleep(0.25)
        stop.set()
        statuses = [s for f in futures for s in f.result()]
    assert len(statuses) > 100 and set(statuses) == {200}, sorted(set(statuses))
    assert wait_until(lambda: setup.proxy.stats().get("cluster_manager.cluster_modified", 0) >= 6, timeout=EFFECT_S)

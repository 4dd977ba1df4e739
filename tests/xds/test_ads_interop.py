"""Integration: clusters and routes over ADS from a scripted management server, through pylon and Envoy alike.

One scripted sequence — initial config, a cluster added and routes swapped, an
invalid cluster (NACK, the last good version serving), a cluster removed (503,
NC), the management server gone and back — runs against `pylon proxy` and
real Envoy 1.40 (the reference); every served response is compared with what
Envoy serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import HCM_TYPE, ROUTER_TYPE, ProxyLauncher, RunningProxy, static_cluster, wait_until
from tests.proxy.upstreams import Upstream
from tests.xds.management import CDS, RDS, ScriptedAds

EFFECT_S = 5.0
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def ads_bootstrap(xds_port: int, initial_fetch_timeout: str = "5s") -> tuple[dict[str, Any], dict[str, Any]]:
    """(bootstrap extra fields, the xds-grpc static cluster) as Istio's agent writes them, over TCP."""
    ads = {"ads": {}, "initial_fetch_timeout": initial_fetch_timeout, "resource_api_version": "V3"}
    extra = {
        "node": {"id": "router~127.0.0.1~gw.default~default.svc.cluster.local", "cluster": "gw",
                 "metadata": {"NAMESPACE": "default"}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": ads},
    }
    xds = static_cluster("xds-grpc", [xds_port], typed_extension_protocol_options={HTTP_OPTIONS: {
        "@type": f"type.googleapis.com/{HTTP_OPTIONS}", "explicit_http_config": {"http2_protocol_options": {}}}})
    return extra, xds


def rds_listener(port: int, initial_fetch_timeout: str = "5s") -> dict[str, Any]:
    hcm = {"@type": HCM_TYPE, "stat_prefix": "main",
           "rds": {"route_config_name": "main_routes",
                   "config_source": {"ads": {}, "initial_fetch_timeout": initial_fetch_timeout,
                                     "resource_api_version": "V3"}},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def routes(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": "main_routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": prefix}, "route": {"cluster": cluster}} for prefix, cluster in pairs]}]}]


class Setup:
    def __init__(self, proxy: RunningProxy, ads: ScriptedAds, ups: dict[str, Upstream], implementation: str) -> None:
        self.proxy, self.ads, self.ups, self.implementation = proxy, ads, ups, implementation

    def cluster(self, name: str, **extra: Any) -> dict[str, Any]:
        return static_cluster(name, [self.ups[name].port], **extra)

    def answer(self, path: str) -> tuple[int, str]:
        """(status, which upstream served it: "a", "b" or "" for the proxy itself)."""
        reply = httpx.get(self.proxy.url("main", path), timeout=5)
        by = {str(up.port): name for name, up in self.ups.items()}.get(reply.headers.get("x-served-by", ""), "")
        return reply.status_code, by


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    yield from start(request.param, tmp_path)


@pytest.fixture
def pylon_setup(tmp_path: Path) -> Iterator[Setup]:
    yield from start("pylon", tmp_path)


def start(implementation: str, tmp_path: Path) -> Iterator[Setup]:
    """A proxy whose clusters and routes come from a scripted management server (a, and routes /b->b, /->a)."""
    def script(ads: ScriptedAds, ups: dict[str, Upstream]) -> None:
        ads.set(CDS, "1", [static_cluster("a", [ups["a"].port])])
        ads.set(RDS, "1", routes(("/b", "b"), ("/", "a")))

    yield from proxy_on_ads(implementation, tmp_path, script)


def proxy_on_ads(implementation: str, tmp_path: Path,
                 script: Callable[[ScriptedAds, dict[str, Upstream]], None]) -> Iterator[Setup]:
    """Upstreams a and b, a scripted management server given its first resources by `script`, and a proxy
    (pylon or Envoy) on it with an RDS listener; everything is stopped afterwards."""
    ups = {"a": Upstream(), "b": Upstream()}
    ads = ScriptedAds(free_port())
    launcher = ProxyLauncher(tmp_path)
    try:
        ads.start()
        script(ads, ups)
        extra, xds = ads_bootstrap(ads.port)
        proxy = launcher.start([rds_listener(free_port())], [xds], implementation=implementation,
                               bootstrap_extra=extra)
        yield Setup(proxy, ads, ups, implementation)
    finally:
        launcher.close()
        ads.stop()
        for up in ups.values():
            up.close()


def test_scripted_sequence_serves_as_envoy(setup: Setup) -> None:
    # Initial config: / goes to a; /b names a cluster CDS has not given: 503 (NC).
    assert setup.answer("/x") == (200, "a")
    assert setup.answer("/b") == (503, "")
    (first_cds, *_) = setup.ads.requests_for(CDS)
    assert first_cds.node.id.startswith("router~") and list(first_cds.resource_names) == []  # wildcard
    assert list(setup.ads.requests_for(RDS)[0].resource_names) == ["main_routes"]

    # A cluster added, then the routes swapped.
    setup.ads.set(CDS, "2", [setup.cluster("a"), setup.cluster("b")])
    assert wait_until(lambda: setup.answer("/b") == (200, "b"), timeout=EFFECT_S)
    setup.ads.set(RDS, "2", routes(("/", "b")))
    assert wait_until(lambda: setup.answer("/x") == (200, "b"), timeout=EFFECT_S)

    # An invalid cluster: NACKed (nonce of that response, version still 2, error_detail), the old config serves.
    bad = setup.cluster("a", connect_timeout="-1s")
    nonce = setup.ads.set(CDS, "3", [bad, setup.cluster("b")])
    nack = wait_until(lambda: next((r for r in setup.ads.requests_for(CDS) if r.response_nonce == nonce), None),
                      timeout=EFFECT_S)
    assert nack is not None and nack.version_info == "2" and nack.error_detail.message
    assert setup.answer("/x") == (200, "b")

    # A cluster removed: its route answers 503 (NC).
    setup.ads.set(CDS, "4", [setup.cluster("a")])
    assert wait_until(lambda: setup.answer("/x") == (503, ""), timeout=EFFECT_S)

    # The management server gone: the last config keeps serving; back: the proxy reconnects and takes updates.
    asked = len(setup.ads.requests_for(RDS))
    setup.ads.stop()
    assert setup.answer("/b") == (503, "") and setup.answer("/x") == (503, "")
    setup.ads.start()
    assert wait_until(lambda: setup.ads.stream_count == 1, timeout=EFFECT_S)
    # The new stream's RDS request first (else version 5 would be its first answer, not a second one).
    assert wait_until(lambda: len(setup.ads.requests_for(RDS)) > asked, timeout=EFFECT_S)
    setup.ads.set(RDS, "5", routes(("/", "a")))
    assert wait_until(lambda: setup.answer("/x") == (200, "a"), timeout=EFFECT_S)
    # Envoy's counts: a new stream gets the current versions again (one more success each); an attempt is
    # the subscription's start plus every outcome. Envoy itself counts the re-sent, unchanged CDS version in
    # some runs and not in others (3 or 4 successes, seen across CI runs); pylon always counts it.
    wait_until(lambda: setup.proxy.stats()["cluster_manager.cds.update_success"] >= 4, timeout=EFFECT_S)
    stats = setup.proxy.stats()
    assert stats["control_plane.connected_state"] == 1
    for prefix, rejected in (("cluster_manager.cds.", 1), ("http.main.rds.main_routes.", 0)):
        success, failure = stats[prefix + "update_success"], stats[prefix + "update_failure"]
        allowed = {3, 4} if setup.implementation == "envoy" and prefix.startswith("cluster") else {4}
        assert success in allowed and stats[prefix + "update_rejected"] == rejected and failure >= 1
        assert stats[prefix + "update_attempt"] == 1 + success + rejected + failure


def test_nack_names_resource_and_field_path(pylon_setup: Setup) -> None:
    setup = pylon_setup
    nonce = setup.ads.set(CDS, "bad", [setup.cluster("a", connect_timeout="-1s")])
    nack = wait_until(lambda: next((r for r in setup.ads.requests_for(CDS) if r.response_nonce == nonce), None),
                      timeout=EFFECT_S)
    assert nack.error_detail.code == 13
    assert nack.error_detail.message.startswith("cluster 'a': config error in ads: resources[0].connect_timeout: ")


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_initial_fetch_timeout_starts_without_the_resources(implementation: str, tmp_path: Path) -> None:
    """No management server: after initial_fetch_timeout the proxy serves, with no routes yet (404), as Envoy."""
    launcher = ProxyLauncher(tmp_path)
    try:
        extra, xds = ads_bootstrap(free_port(), initial_fetch_timeout="0.5s")
        proxy = launcher.start([rds_listener(free_port(), initial_fetch_timeout="0.5s")], [xds],
                               implementation=implementation, bootstrap_extra=extra)
        assert httpx.get(proxy.url("main", "/x"), timeout=5).status_code == 404
        stats = proxy.stats()
        assert stats["cluster_manager.cds.init_fetch_timeout"] == 1
        assert stats["http.main.rds.main_routes.init_fetch_timeout"] == 1
        assert stats["control_plane.connected_state"] == 0
    finally:
        launcher.close()

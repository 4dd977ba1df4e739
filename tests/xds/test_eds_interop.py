"""Integration: an EDS cluster over ADS from a scripted management server, through pylon and Envoy alike.

The cluster `e` comes over CDS with `service_name` svc-e; its endpoints come
over EDS, asked for after CDS. The same sequence runs against `pylon proxy`
and real Envoy 1.40 (the reference): initial endpoints, an endpoint change
that moves traffic (the host that stays keeps its pooled connection), an
assignment with a host name instead of an IP (NACK, the last good endpoints
serve), and a cluster whose endpoints never come (warming, then no hosts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy.conftest import wait_until
from tests.proxy.upstreams import Upstream
from tests.xds.management import CDS, EDS, RDS, ScriptedAds
from tests.xds.test_ads_interop import EFFECT_S, Setup, proxy_on_ads, routes

SERVICE = "svc-e"


def eds_cluster(name: str = "e", initial_fetch_timeout: str = "5s") -> dict[str, Any]:
    source = {"ads": {}, "initial_fetch_timeout": initial_fetch_timeout, "resource_api_version": "V3"}
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": source, "service_name": SERVICE}}


def assignment(*ports: int, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"cluster_name": SERVICE, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}} for port in ports]}]}


def launch(implementation: str, tmp_path: Path, endpoints: bool = True, timeout: str = "5s") -> Iterator[Setup]:
    """A proxy routing / to the EDS cluster `e`; its endpoints are upstream a (unless `endpoints` is False)."""
    def script(ads: ScriptedAds, ups: dict[str, Upstream]) -> None:
        ads.set(CDS, "1", [eds_cluster(initial_fetch_timeout=timeout)])
        if endpoints:
            ads.set(EDS, "1", [assignment(ups["a"].port)])
        ads.set(RDS, "1", routes(("/", "e")))

    yield from proxy_on_ads(implementation, tmp_path, script)


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    yield from launch(request.param, tmp_path)


def test_eds_sequence_serves_as_envoy(setup: Setup) -> None:
    ads, ups = setup.ads, setup.ups
    # Initial endpoints: served by a. EDS was asked for by service name, after CDS.
    assert setup.answer("/x") == (200, "a")
    first_eds = ads.requests_for(EDS)[0]
    assert list(first_eds.resource_names) == [SERVICE]
    assert ads.requests.index(first_eds) > ads.requests.index(ads.requests_for(CDS)[0])

    # An endpoint change adds b: traffic moves to both, and a's pooled connection is kept.
    (first_a,) = ups["a"].requests
    ads.set(EDS, "2", [assignment(ups["a"].port, ups["b"].port)])
    assert wait_until(lambda: setup.answer("/x") == (200, "b"), timeout=EFFECT_S)
    assert wait_until(lambda: setup.answer("/x") == (200, "a"), timeout=EFFECT_S)
    assert ups["a"].requests[-1]["client_port"] == first_a["client_port"]
    # Then a goes: only b serves.
    ads.set(EDS, "3", [assignment(ups["b"].port)])
    assert wait_until(lambda: all(setup.answer("/x") == (200, "b") for _ in range(4)), timeout=EFFECT_S)

    # An assignment with a host name: NACKed (that nonce, version still 3, error_detail); b keeps serving.
    nonce = ads.set(EDS, "4", [assignment(ups["a"].port, address="localhost")])
    nack = wait_until(lambda: next((r for r in ads.requests_for(EDS) if r.response_nonce == nonce), None),
                      timeout=EFFECT_S)
    assert nack is not None and nack.version_info == "3" and nack.error_detail.message
    assert setup.answer("/x") == (200, "b")

    stats = setup.proxy.stats()
    # Envoy's EDS stats are the cluster's: its subscription started, three updates taken, one refused.
    assert (stats["cluster.e.update_success"], stats["cluster.e.update_rejected"]) == (3, 1)
    assert stats["cluster.e.update_attempt"] == 1 + 3 + 1


def test_nack_names_the_assignment_and_field(tmp_path: Path) -> None:
    for setup in launch("pylon", tmp_path):
        nonce = setup.ads.set(EDS, "bad", [assignment(setup.ups["a"].port, address="localhost")])
        nack = wait_until(lambda: next((r for r in setup.ads.requests_for(EDS) if r.response_nonce == nonce), None),
                          timeout=EFFECT_S)
        assert nack.error_detail.message == (
            "cluster load assignment 'svc-e': config error in ads: resources[0].endpoints[0].lb_endpoints[0]"
            ".endpoint.address.socket_address.address: 'localhost' is not an IP address (EDS endpoints need IPs)")


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_endpoints_that_never_come_leave_the_cluster_without_hosts(implementation: str, tmp_path: Path) -> None:
    """The cluster warms until its initial_fetch_timeout, then serves with no hosts: 503 (UH), as Envoy."""
    for setup in launch(implementation, tmp_path, endpoints=False, timeout="0.5s"):
        assert httpx.get(setup.proxy.url("main", "/x"), timeout=5).status_code == 503
        stats = setup.proxy.stats()
        assert stats["cluster.e.init_fetch_timeout"] == 1
        assert stats["cluster.e.upstream_cx_none_healthy"] >= 1
        # Endpoints arriving later are taken.
        setup.ads.set(EDS, "1", [assignment(setup.ups["a"].port)])
        assert wait_until(lambda: setup.answer("/x") == (200, "a"), timeout=EFFECT_S)

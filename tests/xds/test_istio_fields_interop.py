"""Integration over ADS, through pylon and Envoy 1.40 alike: EDS health_status and RDS validate_clusters.

An lb_endpoint whose health_status is UNHEALTHY, TIMEOUT or DRAINING takes no traffic (HEALTHY and
UNKNOWN do), and an assignment changing it moves traffic in place; /clusters names the flag as Envoy
does. A route configuration with `validate_clusters: true` naming a cluster the proxy does not know is
NACKed (the last good routes serve); without it the same routes are taken and that route answers 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.conftest import wait_until
from tests.xds.management import EDS, RDS
from tests.xds.test_ads_interop import EFFECT_S, Setup, routes
from tests.xds.test_ads_interop import start as start_ads
from tests.xds.test_eds_interop import SERVICE, launch


@pytest.fixture(params=["pylon", "envoy"])
def eds(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    yield from launch(request.param, tmp_path)


@pytest.fixture(params=["pylon", "envoy"])
def ads(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    yield from start_ads(request.param, tmp_path)


def assignment(**statuses: tuple[int, str]) -> dict[str, Any]:
    """svc-e's endpoints: {name: (port, health_status)}."""
    return {"cluster_name": SERVICE, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
         "health_status": status} for port, status in statuses.values()]}]}


def only(setup: Setup, upstream: str) -> bool:
    return all(setup.answer("/x") == (200, upstream) for _ in range(6))


def flags(setup: Setup, upstream: str) -> str:
    return setup.proxy.clusters()[f"e::127.0.0.1:{setup.ups[upstream].port}::health_flags"]


@pytest.mark.parametrize(("status", "flag"), [
    ("UNHEALTHY", "/failed_eds_health"), ("TIMEOUT", "/failed_eds_health"), ("DRAINING", "/eds_status_draining"),
])  # fmt: skip
def test_eds_health_status_keeps_hosts_out(eds: Setup, status: str, flag: str) -> None:
    a, b = eds.ups["a"].port, eds.ups["b"].port
    eds.ads.set(EDS, "2", [assignment(a=(a, status), b=(b, "HEALTHY"))])
    assert wait_until(lambda: only(eds, "b"), timeout=EFFECT_S)
    assert (flags(eds, "a"), flags(eds, "b")) == (flag, "healthy")
    # The status changes in place: now b is out and a (UNKNOWN: as healthy) takes everything.
    eds.ads.set(EDS, "3", [assignment(a=(a, "UNKNOWN"), b=(b, status))])
    assert wait_until(lambda: only(eds, "a"), timeout=EFFECT_S)
    assert (flags(eds, "a"), flags(eds, "b")) == ("healthy", flag)
    stats = eds.proxy.stats()
    assert (stats["cluster.e.membership_total"], stats["cluster.e.membership_healthy"]) == (2, 1)


def test_validate_clusters_rejects_routes_to_unknown_clusters(ads: Setup) -> None:
    checked = routes(("/b", "b"), ("/", "a"))
    checked[0]["validate_clusters"] = True
    nonce = ads.ads.set(RDS, "2", checked)
    nack = wait_until(lambda: next((r for r in ads.ads.requests_for(RDS) if r.response_nonce == nonce), None),
                      timeout=EFFECT_S)
    assert nack is not None and nack.version_info == "1" and "b" in nack.error_detail.message
    # Known clusters only: accepted.
    checked = routes(("/", "a"))
    checked[0]["validate_clusters"] = True
    ads.ads.set(RDS, "3", checked)
    assert wait_until(lambda: ads.ads.requests_for(RDS)[-1].version_info == "3", timeout=EFFECT_S)
    # Envoy's default for RDS (false): the unknown cluster's route loads and answers 503.
    ads.ads.set(RDS, "4", routes(("/b", "b"), ("/", "a")))
    assert wait_until(lambda: ads.ads.requests_for(RDS)[-1].version_info == "4", timeout=EFFECT_S)
    assert ads.answer("/b") == (503, "") and ads.answer("/x") == (200, "a")
    assert ads.proxy.stats()["http.main.rds.main_routes.update_rejected"] == 1

"""Integration: priorities and `locality_weighted_lb_config` (Envoy's locality-load-balancing example's shape)
through pylon and Envoy alike.

Four upstreams: priority 0 (one locality), priority 1 (localities of weight 1 and 3), priority 2. Active
health checks take hosts out as their /healthz turns 503; after each change the share of 400 requests each
upstream serves must be what Envoy 1.40 serves, within a tolerance for its random priority pick.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, wait_until
from tests.proxy.upstreams import Upstream

REQUESTS = 400


def locality(priority: int, zone: str, weight: int, port: int) -> dict[str, Any]:
    return {"locality": {"region": "r", "zone": zone}, "load_balancing_weight": weight, "priority": priority,
            "lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                                           "health_check_config": {"port_value": port}}}]}


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningProxy, list[Upstream]]]:
    ups = [Upstream() for _ in range(4)]
    launcher = ProxyLauncher(tmp_path)
    try:
        cluster = {
            "name": "lb", "connect_timeout": "1s", "type": "STATIC", "lb_policy": "ROUND_ROBIN",
            "common_lb_config": {"locality_weighted_lb_config": {}},
            "health_checks": [{"interval": "0.1s", "timeout": "3s", "no_traffic_interval": "0.1s",
                               "no_traffic_healthy_interval": "0.1s", "unhealthy_threshold": 1,
                               "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}],
            "load_assignment": {"cluster_name": "lb", "endpoints": [
                locality(0, "a", 1, ups[0].port), locality(1, "b", 1, ups[1].port),
                locality(1, "c", 3, ups[2].port), locality(2, "d", 1, ups[3].port)]},
        }
        proxy = launcher.start([http_listener("main", free_port(), [route("/", "lb")])], [cluster],
                               implementation=request.param)
        yield proxy, ups
    finally:
        launcher.close()
        for up in ups:
            up.close()


def shares(proxy: RunningProxy, ups: list[Upstream]) -> list[float]:
    names = {up.port: i for i, up in enumerate(ups)}
    served: Counter[int] = Counter()
    with httpx.Client(timeout=5) as client:
        for _ in range(REQUESTS):
            reply = client.get(proxy.url("main", "/"))
            assert reply.status_code == 200
            served[names[int(reply.headers["x-served-by"])]] += 1
    return [served[i] / REQUESTS for i in range(len(ups))]


def health(proxy: RunningProxy, ups: list[Upstream]) -> list[bool]:
    """Each upstream's health as the proxy's /clusters lists it: per host, not a count, since on a loaded machine
    another host's check can time out and leave the count right with the wrong hosts in it."""
    listed = proxy.clusters()
    return [listed.get(f"lb::127.0.0.1:{up.port}::health_flags") == "healthy" for up in ups]


def settles_at(proxy: RunningProxy, ups: list[Upstream], health_now: list[bool], expected: list[float],
               tolerance: float) -> None:
    """Once /clusters lists each host's health as `health_now`, the shares reach `expected` (each within
    `tolerance`; a host owed none or all exactly so) within a few measurements. Envoy lists a health change on its main thread before its workers'
    load balancers have it (measured: the first 400 requests after the listing may still go the old way), so
    a share taken at once is not yet the answer; one taken while a check flapped is taken again."""
    got: list[float] = []
    for _ in range(6):
        assert wait_until(lambda: health(proxy, ups) == health_now, timeout=10), health(proxy, ups)
        got = shares(proxy, ups)
        if all(g == e if e in (0.0, 1.0) else abs(g - e) <= tolerance for g, e in zip(got, expected)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the shares stayed {got}, not {expected} (within {tolerance})")


def test_priorities_and_locality_weights_as_envoy(setup: tuple[RunningProxy, list[Upstream]]) -> None:
    proxy, ups = setup
    settles_at(proxy, ups, [True, True, True, True], [1.0, 0.0, 0.0, 0.0], 0.0)
    listed = proxy.clusters()  # /clusters: each host's locality and priority, as Envoy lists them
    host = f"lb::127.0.0.1:{ups[2].port}"
    assert [listed[f"{host}::{key}"] for key in ("region", "zone", "sub_zone", "priority")] == ["r", "c", "", "1"]

    ups[0].health_status = 503  # priority 0 gone: priority 1 takes it all, its localities 1:3
    settles_at(proxy, ups, [False, True, True, True], [0.0, 0.25, 0.75, 0.0], 0.03)

    ups[1].health_status = 503  # priority 1 at health 70 (1 of 2 hosts): 30% spill to priority 2
    settles_at(proxy, ups, [False, False, True, True], [0.0, 0.0, 0.70, 0.30], 0.08)

    ups[0].health_status = 200  # back: priority 0 takes everything again
    settles_at(proxy, ups, [True, False, True, True], [1.0, 0.0, 0.0, 0.0], 0.0)

"""Integration: priorities and `locality_weighted_lb_config` (Envoy's locality-load-balancing example's shape)
through pylon and Envoy alike.

Four upstreams: priority 0 (one locality), priority 1 (localities of weight 1 and 3), priority 2. Active
health checks take hosts out as their /healthz turns 503; after each change the share of 400 requests each
upstream serves must be what Envoy 1.40 serves, within a tolerance for its random priority pick.
"""

from __future__ import annotations

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
            "health_checks": [{"interval": "0.1s", "timeout": "1s", "no_traffic_interval": "0.1s",
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


def healthy(proxy: RunningProxy, count: int) -> bool:
    return proxy.stats().get("cluster.lb.membership_healthy") == count


def test_priorities_and_locality_weights_as_envoy(setup: tuple[RunningProxy, list[Upstream]]) -> None:
    proxy, ups = setup
    assert wait_until(lambda: healthy(proxy, 4), timeout=10)
    assert shares(proxy, ups) == [1.0, 0.0, 0.0, 0.0]
    listed = proxy.clusters()  # /clusters: each host's locality and priority, as Envoy lists them
    host = f"lb::127.0.0.1:{ups[2].port}"
    assert [listed[f"{host}::{key}"] for key in ("region", "zone", "sub_zone", "priority")] == ["r", "c", "", "1"]

    ups[0].health_status = 503  # priority 0 gone: priority 1 takes it all, its localities 1:3
    assert wait_until(lambda: healthy(proxy, 3), timeout=10)
    got = shares(proxy, ups)
    assert got[0] == 0 and got[3] == 0
    assert got[1] == pytest.approx(0.25, abs=0.03) and got[2] == pytest.approx(0.75, abs=0.03)

    ups[1].health_status = 503  # priority 1 at health 70 (1 of 2 hosts): 30% spill to priority 2
    assert wait_until(lambda: healthy(proxy, 2), timeout=10)
    got = shares(proxy, ups)
    assert got[0] == 0 and got[1] == 0
    assert got[2] == pytest.approx(0.70, abs=0.08) and got[3] == pytest.approx(0.30, abs=0.08)

    ups[0].health_status = 200  # back: priority 0 takes everything again
    assert wait_until(lambda: healthy(proxy, 3), timeout=10)
    assert shares(proxy, ups) == [1.0, 0.0, 0.0, 0.0]

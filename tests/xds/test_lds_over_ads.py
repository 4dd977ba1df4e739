"""Integration: listeners (LDS) over ADS, their routes by RDS following them, through pylon and Envoy alike.

The bootstrap has no static listener, as Istio's: every listener comes from the
management server. A listener that takes its routes by RDS warms until they come;
a listener added later starts RDS for its route name; an invalid listener is
NACKed naming it while the last good listeners serve; a removed listener's port
refuses new connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, refuses_connections
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, static_cluster, wait_until
from tests.proxy.test_proxy_worker_restart import direct
from tests.proxy.upstreams import Upstream
from tests.xds.management import CDS, LDS, RDS, ScriptedAds
from tests.xds.test_ads_interop import EFFECT_S, ads_bootstrap, rds_listener, routes


class Setup:
    def __init__(self, proxy: RunningProxy, ads: ScriptedAds, up: Upstream, ports: dict[str, int]) -> None:
        self.proxy, self.ads, self.up, self.ports = proxy, ads, up, ports

    def answer(self, name: str) -> str | None:
        """"upstream a", "<status> <body>" from the proxy itself, or None when nothing answers on `name`'s port."""
        try:
            reply = httpx.get(f"http://127.0.0.1:{self.ports[name]}/", timeout=5)
        except httpx.TransportError:
            return None
        return "upstream a" if reply.headers.get("x-served-by") == str(self.up.port) else f"{reply.status_code} {reply.text}"

    def refuses(self, name: str) -> bool:
        return refuses_connections(self.ports[name])


def second(port: int, body: str) -> dict[str, Any]:
    return http_listener("second", port, [direct(body)])


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    up = Upstream()
    ads = ScriptedAds(free_port())
    launcher = ProxyLauncher(tmp_path)
    ports = {"main": free_port(), "second": free_port()}
    try:
        ads.start()
        ads.set(CDS, "1", [static_cluster("a", [up.port])])
        ads.set(LDS, "1", [rds_listener(ports["main"])])
        ads.set(RDS, "1", routes(("/", "a")))
        extra, xds = ads_bootstrap(ads.port)
        extra["dynamic_resources"]["lds_config"] = {"ads": {}, "initial_fetch_timeout": "5s",
                                                    "resource_api_version": "V3"}
        proxy = launcher.start([], [xds], implementation=request.param, bootstrap_extra=extra)
        yield Setup(proxy, ads, up, ports)
    finally:
        launcher.close()
        ads.stop()
        up.close()


def test_listeners_come_add_change_and_go_over_ads(setup: Setup) -> None:
    # The first listener warmed with its routes (RDS asked for the name LDS gave) before serving.
    assert setup.answer("main") == "upstream a"
    assert [list(r.resource_names) for r in setup.ads.requests_for(RDS)][0] == ["main_routes"]
    assert list(setup.ads.requests_for(LDS)[0].resource_names) == []  # wildcard

    setup.ads.set(LDS, "2", [rds_listener(setup.ports["main"]), second(setup.ports["second"], "second v1")])
    assert wait_until(lambda: setup.answer("second") == "200 second v1", timeout=EFFECT_S)
    setup.ads.set(LDS, "3", [rds_listener(setup.ports["main"]), second(setup.ports["second"], "second v2")])
    assert wait_until(lambda: setup.answer("second") == "200 second v2", timeout=EFFECT_S)
    assert setup.answer("main") == "upstream a"

    # Two listeners on one address: NACKed naming the listener, the last good ones serve.
    clash = http_listener("clash", setup.ports["second"], [direct("clash")])
    nonce = setup.ads.set(LDS, "4", [rds_listener(setup.ports["main"]), second(setup.ports["second"], "second v2"),
                                      clash])
    nack = wait_until(lambda: next((r for r in setup.ads.requests_for(LDS) if r.response_nonce == nonce), None),
                      timeout=EFFECT_S)
    assert nack is not None and nack.version_info == "3" and "clash" in nack.error_detail.message
    assert setup.answer("second") == "200 second v2"

    setup.ads.set(LDS, "5", [rds_listener(setup.ports["main"])])
    assert wait_until(lambda: setup.refuses("second"), timeout=EFFECT_S)
    assert setup.answer("main") == "upstream a"
    stats = setup.proxy.stats()
    assert [stats[f"listener_manager.{name}"] for name in (
        "lds.update_success", "lds.update_rejected", "listener_added", "listener_modified", "listener_removed",
        "total_listeners_active")] == [4, 1, 2, 1, 1, 1]


def test_listener_waits_for_its_routes_then_serves_without_them(setup: Setup) -> None:
    """A listener whose route configuration never comes warms for its initial_fetch_timeout, then answers 404."""
    late = rds_listener(setup.ports["second"], initial_fetch_timeout="1s")
    late["name"] = "late"
    late["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"] = "never_sent"
    setup.ads.set(LDS, "2", [rds_listener(setup.ports["main"]), late])
    assert wait_until(lambda: any("never_sent" in r.resource_names for r in setup.ads.requests_for(RDS)),
                      timeout=EFFECT_S)
    assert setup.refuses("second") or setup.answer("second") is None  # warming: not serving yet
    assert wait_until(lambda: setup.answer("second") == "404 ", timeout=EFFECT_S)
    assert setup.answer("main") == "upstream a"

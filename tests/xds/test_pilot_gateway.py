"""Integration: `pylon pilot` configures `pylon proxy` as an Istio gateway over ADS (CDS, EDS, RDS).

pilot serves a Gateway, a VirtualService, a ServiceEntry (STATIC, endpoints on local test upstreams) and a
DestinationRule with subsets. The proxy's bootstrap is what Istio's agent writes for a router (node id
router~…, ADS to pilot, cds_config over ADS) plus a static listener whose HCM takes pilot's gateway route
configuration `http.<port>` over ADS (pylon has no LDS yet). Requests are routed as the VirtualService says.
The same bootstrap runs through Envoy 1.40, the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from tests.pilot.builders import gateway, service_entry, subsets_rule, virtual_service, write_yaml
from tests.pilot.harness import pilot_cmd
from tests.proxy.conftest import HCM_TYPE, ROUTER_TYPE, ProxyLauncher, RunningProxy, wait_until
from tests.proxy.upstreams import Upstream
from tests.xds.test_ads_interop import ads_bootstrap

HOST = "echo.example.com"
NODE = "router~127.0.0.1~gw.default~default.svc.cluster.local"


def gateway_listener(port: int) -> dict[str, Any]:
    """A static listener on the Gateway server's port whose routes are pilot's `http.<port>`, over ADS."""
    hcm = {"@type": HCM_TYPE, "stat_prefix": "outbound_0.0.0.0_%d" % port,
           "rds": {"route_config_name": f"http.{port}", "config_source": {"ads": {}, "resource_api_version": "V3"}},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {"name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def mesh_config(gateway_port: int, ups: dict[str, Upstream]) -> list[dict[str, Any]]:
    """x-version: v2 and /api/ (rewritten to /) go to subset v2, everything else to v1."""
    endpoints = [("127.0.0.1", up.port, {"version": name}) for name, up in ups.items()]
    http = [
        {"match": [{"headers": {"x-version": {"exact": "v2"}}}], "route": [{"destination": {"host": HOST, "subset": "v2"}}],
         "headers": {"response": {"set": {"x-routed": "v2"}}}},
        {"match": [{"uri": {"prefix": "/api/"}}], "rewrite": {"uri": "/"}, "route": [{"destination": {"host": HOST, "subset": "v2"}}]},
        {"route": [{"destination": {"host": HOST, "subset": "v1"}}]},
    ]  # fmt: skip
    gw = gateway(gateway_port)
    gw["metadata"]["namespace"] = "default"
    return [gw, service_entry(HOST, endpoints), subsets_rule(HOST, list(ups)),
            virtual_service(http, gateways=["default/gw"])]


class Gateway:
    def __init__(self, proxy: RunningProxy, port: int, ups: dict[str, Upstream]) -> None:
        self.proxy, self.port, self.ups = proxy, port, ups

    def get(self, path: str, **headers: str) -> tuple[httpx.Response, str]:
        """The response and which upstream served it ("" for the proxy itself)."""
        reply = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)
        by = {str(up.port): name for name, up in self.ups.items()}.get(reply.headers.get("x-served-by", ""), "")
        return reply, by


@pytest.fixture(params=["pylon", "envoy"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    ups = {"v1": Upstream(), "v2": Upstream()}
    launcher = ProxyLauncher(tmp_path)
    try:
        gateway_port, xds_port = free_port(), free_port()
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        write_yaml(config_dir / "mesh.yaml", *mesh_config(gateway_port, ups))
        pilot = launcher.spawn(pilot_cmd(config_dir, tmp_path, xds_port, free_port(), free_port()))
        wait_for_port(xds_port, proc=pilot)
        extra, xds = ads_bootstrap(xds_port)
        extra["node"] = {"id": NODE, "cluster": "gw.default",
                         "metadata": {"NAMESPACE": "default", "LABELS": {"istio": "ingressgateway"}}}
        proxy = launcher.start([gateway_listener(gateway_port)], [xds], implementation=request.param,
                               bootstrap_extra=extra)
        yield Gateway(proxy, gateway_port, ups)
    finally:
        launcher.close()
        for up in ups.values():
            up.close()


def test_routes_as_the_virtual_service_says(gw: Gateway) -> None:
    assert wait_until(lambda: gw.get("/x")[1] == "v1", timeout=10)
    reply, by = gw.get("/x", **{"x-version": "v2"})
    assert (reply.status_code, by, reply.headers["x-routed"]) == (200, "v2", "v2")
    reply, by = gw.get("/api/items")
    assert (reply.status_code, by) == (200, "v2")
    assert gw.ups["v2"].requests[-1]["path"] == "/items"
    # Istio's gateway config: the attempt count on upstream requests; the cluster's remaining_* gauges.
    assert gw.ups["v1"].requests[-1]["headers"]["x-envoy-attempt-count"] == "1"
    stats = gw.proxy.stats()
    cluster = "cluster.outbound|80|v1|echo.example.com."
    assert stats[cluster + "circuit_breakers.default.remaining_rq"] == 4294967295
    assert stats["cluster_manager.cds.update_rejected"] == 0


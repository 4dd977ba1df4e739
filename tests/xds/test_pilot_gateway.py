"""Integration: `pylon pilot` configures `pylon proxy` as an Istio gateway over ADS (LDS, CDS, EDS, RDS).

pilot serves a Gateway, a VirtualService, a ServiceEntry (STATIC, endpoints on local test upstreams) and a
DestinationRule with subsets. The proxy's bootstrap is what Istio's agent writes for a router (node id
router~…, ADS to pilot, lds_config and cds_config over ADS, no static listener): the gateway listener —
fault filter, XFCC sanitising, escaped-slash handling, websocket upgrades — and its route configuration
`http.<port>` come from pilot. Requests are routed as the VirtualService says. The same bootstrap runs
through Envoy 1.40, the reference, each over state-of-the-world and delta ADS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.pilot.builders import gateway, service_entry, subsets_rule, virtual_service
from tests.pilot.harness import gateway_on_pilot
from tests.proxy.conftest import ProxyLauncher, RunningProxy, wait_until
from tests.proxy.upstreams import Upstream

HOST = "echo.example.com"


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

    def answers_with(self, upstream: str) -> bool:
        """Whether GET /x is served by `upstream` (False while the listener is not there yet)."""
        try:
            return self.get("/x")[1] == upstream
        except httpx.TransportError:
            return False

    def get(self, path: str, **headers: str) -> tuple[httpx.Response, str]:
        """The response and which upstream served it ("" for the proxy itself)."""
        reply = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)
        by = {str(up.port): name for name, up in self.ups.items()}.get(reply.headers.get("x-served-by", ""), "")
        return reply, by


@pytest.fixture(params=[("pylon", "GRPC"), ("pylon", "DELTA_GRPC"), ("envoy", "GRPC"), ("envoy", "DELTA_GRPC")],
                ids=lambda p: "-".join(p))
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway proxy on pilot, over state-of-the-world or delta ADS (Istio's default)."""
    implementation, api_type = request.param
    ups = {"v1": Upstream(), "v2": Upstream()}
    launcher = ProxyLauncher(tmp_path)
    try:
        gateway_port = free_port()
        proxy = gateway_on_pilot(launcher, tmp_path, mesh_config(gateway_port, ups), implementation,
                                 api_type=api_type)
        yield Gateway(proxy, gateway_port, ups)
    finally:
        launcher.close()
        for up in ups.values():
            up.close()


def test_routes_as_the_virtual_service_says(gw: Gateway) -> None:
    assert wait_until(lambda: gw.answers_with("v1"), timeout=10)
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
    assert stats["listener_manager.lds.update_rejected"] == 0 and stats["listener_manager.total_listeners_active"] == 1
    # pilot's gateway sets SANITIZE_SET: a plaintext client's forged x-forwarded-client-cert never reaches upstream.
    gw.get("/x", **{"x-forwarded-client-cert": "By=forged;Hash=0"})
    assert "x-forwarded-client-cert" not in gw.ups["v1"].requests[-1]["headers"]


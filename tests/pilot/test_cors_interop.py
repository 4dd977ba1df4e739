"""Interop: VirtualService `corsPolicy` from `pylon pilot`, served by a gateway on real Envoy 1.40 and on pylon proxy.

pilot writes the CORS filter into the gateway's connection manager (after fault, as istiod) and each route's
policy into its typed_per_filter_config; the same requests through either proxy get the same answers: preflights
from allowed origins answered by the gateway with istiod's header values (lists joined with ",", maxAge in
seconds), others forwarded unless `unmatchedPreflights: IGNORE`, actual requests given the allow-origin,
credentials and expose headers, routes without a policy left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.pilot.builders import gateway, service_entry, virtual_service
from tests.pilot.harness import gateway_on_pilot
from tests.proxy.conftest import ProxyLauncher, RunningProxy, wait_until
from tests.proxy.upstreams import Upstream

HOST = "echo.example.com"
A, B, C = "https://a.example", "https://b.example", "https://c.example"


def mesh_config(gateway_port: int, upstream: Upstream) -> list[dict[str, Any]]:
    to_echo = [{"destination": {"host": HOST}}]
    http = [
        {"match": [{"uri": {"prefix": "/api"}}], "route": to_echo, "corsPolicy": {
            "allowOrigins": [{"exact": A}, {"regex": r"https://[a-z]+\.allowed"}], "allowMethods": ["GET", "POST"],
            "allowHeaders": ["x-a", "x-b"], "exposeHeaders": ["x-e"], "maxAge": "1h", "allowCredentials": True}},
        {"match": [{"uri": {"prefix": "/strict"}}], "route": to_echo,
         "corsPolicy": {"allowOrigin": [B], "unmatchedPreflights": "IGNORE", "allowMethods": ["PUT"]}},
        {"route": to_echo},
    ]
    gw = gateway(gateway_port)
    gw["metadata"]["namespace"] = "default"
    return [gw, service_entry(HOST, [("127.0.0.1", upstream.port, {})]), virtual_service(http, gateways=["default/gw"])]


class Gateway:
    def __init__(self, proxy: RunningProxy, port: int, upstream: Upstream) -> None:
        self.proxy, self.port, self.upstream = proxy, port, upstream

    def ask(self, method: str, path: str, origin: str | None = A, preflight: str | None = None
            ) -> tuple[int, dict[str, str], bool]:
        """(status, the access-control-* response headers, whether the upstream saw the request)."""
        headers = {}
        if origin is not None:
            headers["origin"] = origin
        if preflight is not None:
            headers["access-control-request-method"] = preflight
        before = len(self.upstream.requests)
        reply = httpx.request(method, f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)
        cors = {k: v for k, v in reply.headers.items() if k.startswith("access-control-")}
        return reply.status_code, cors, len(self.upstream.requests) > before

    def serving(self) -> bool:
        try:
            return self.ask("GET", "/", origin=None)[0] == 200
        except httpx.TransportError:
            return False


@pytest.fixture(params=["pylon", "envoy"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        gateway_port = free_port()
        proxy = gateway_on_pilot(launcher, tmp_path, mesh_config(gateway_port, upstream), request.param,
                                 api_type="DELTA_GRPC")  # Istio's default
        gateway_ = Gateway(proxy, gateway_port, upstream)
        assert wait_until(gateway_.serving, timeout=10)
        yield gateway_
    finally:
        launcher.close()
        upstream.close()


def test_cors_policy_as_istiod_configures_it(gw: Gateway) -> None:
    preflight = {"access-control-allow-origin": A, "access-control-allow-credentials": "true",
                 "access-control-allow-methods": "GET,POST", "access-control-allow-headers": "x-a,x-b",
                 "access-control-max-age": "3600", "access-control-expose-headers": "x-e"}
    assert gw.ask("OPTIONS", "/api", preflight="PUT") == (200, preflight, False)
    regex = gw.ask("OPTIONS", "/api", origin="https://q.allowed", preflight="PUT")
    assert regex == (200, {**preflight, "access-control-allow-origin": "https://q.allowed"}, False)
    assert gw.ask("GET", "/api") == (200, {"access-control-allow-origin": A, "access-control-allow-credentials": "true",
                                           "access-control-expose-headers": "x-e"}, True)
    assert gw.ask("OPTIONS", "/api", origin=C, preflight="PUT") == (200, {}, True)  # forwarded (FORWARD, the default)
    assert gw.ask("GET", "/api", origin=C) == (200, {}, True)
    # unmatchedPreflights IGNORE: answered by the gateway, without an allowed origin
    assert gw.ask("OPTIONS", "/strict", origin=C, preflight="PUT") == (
        200, {"access-control-allow-methods": "PUT"}, False)
    assert gw.ask("OPTIONS", "/strict", origin=B, preflight="PUT") == (
        200, {"access-control-allow-origin": B, "access-control-allow-methods": "PUT"}, False)
    assert gw.ask("OPTIONS", "/", preflight="PUT") == (200, {}, True)  # no policy on the route: the filter does nothing
    stats = gw.proxy.stats()
    [valid] = [v for k, v in stats.items() if k.startswith("http.") and k.endswith(".cors.origin_valid")]
    [invalid] = [v for k, v in stats.items() if k.startswith("http.") and k.endswith(".cors.origin_invalid")]
    assert (valid, invalid) == (4, 3)

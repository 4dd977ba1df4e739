"""Integration: EnvoyFilter patches from `pylon pilot` reach a gateway over ADS and act there, in Envoy 1.40 (the
reference) and in pylon proxy.

One EnvoyFilter (root namespace, as Istio's users write them) on a gateway with two HTTP servers:
- HTTP_ROUTE MERGE by route name: the VirtualService's route `to-echo` adds a response header;
- VIRTUAL_HOST ADD to the `http.<port>` route configuration: a host answered by the proxy itself;
- NETWORK_FILTER INSERT_BEFORE the HTTP connection manager on the second port: an RBAC filter denying every
  connection, so that port refuses while the first one serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_for_port
from tests.pilot.builders import doc, gateway, service_entry, virtual_service, write_yaml
from tests.pilot.harness import pilot_cmd
from tests.proxy.conftest import ProxyLauncher, wait_until
from tests.proxy.upstreams import Upstream
from tests.xds.test_ads_interop import ads_bootstrap

HOST = "echo.example.com"
NODE = "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local"
HCM = "envoy.filters.network.http_connection_manager"
RBAC_DENY_ALL = {"name": "envoy.filters.network.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "ef.",
    "rules": {"action": "DENY", "policies": {"all": {"permissions": [{"any": True}], "principals": [{"any": True}]}}}}}


def envoy_filter(open_port: int, denied_port: int) -> dict[str, Any]:
    patches = [
        {"applyTo": "HTTP_ROUTE",
         "match": {"context": "GATEWAY", "routeConfiguration": {"portNumber": open_port, "vhost": {
             "route": {"name": "to-echo", "action": "ROUTE"}}}},
         "patch": {"operation": "MERGE", "value": {
             "response_headers_to_add": [{"header": {"key": "x-envoyfilter", "value": "route-merge"}}]}}},
        {"applyTo": "VIRTUAL_HOST",
         "match": {"context": "GATEWAY", "routeConfiguration": {"portNumber": open_port}},
         "patch": {"operation": "ADD", "value": {"name": "ef", "domains": ["ef.example.com"], "routes": [
             {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "from-envoyfilter"}}}]}}},
        {"applyTo": "NETWORK_FILTER",
         "match": {"context": "GATEWAY", "listener": {"portNumber": denied_port, "filterChain": {"filter": {"name": HCM}}}},
         "patch": {"operation": "INSERT_BEFORE", "value": RBAC_DENY_ALL}},
    ]  # fmt: skip
    return doc("EnvoyFilter", "gateway-patches", {"workloadSelector": {"labels": {"istio": "ingressgateway"}},
                                                  "configPatches": patches},
               namespace="istio-system", api_version="networking.istio.io/v1alpha3")  # fmt: skip


@pytest.fixture(params=["envoy", "pylon"])
def ports(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """(open port, denied port) of a gateway proxy configured by pilot with the EnvoyFilter."""
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        open_port, denied_port, xds_port = free_port(), free_port(), free_port()
        config_dir = tmp_path / "config"
        config_dir.mkdir()
        route = [{"name": "to-echo", "route": [{"destination": {"host": HOST}}]}]
        write_yaml(config_dir / "mesh.yaml", gateway(open_port), gateway(denied_port, name="other"),
                   service_entry(HOST, [("127.0.0.1", upstream.port, {})]),
                   virtual_service(route, gateways=["istio-system/gw", "istio-system/other"]),
                   envoy_filter(open_port, denied_port))  # fmt: skip
        pilot = launcher.spawn(pilot_cmd(config_dir, tmp_path, xds_port, free_port(), free_port()))
        wait_for_port(xds_port, proc=pilot)
        extra, xds = ads_bootstrap(xds_port)
        extra["node"] = {"id": NODE, "cluster": "gw.istio-system",
                         "metadata": {"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"}}}
        extra["dynamic_resources"]["lds_config"] = {"ads": {}, "initial_fetch_timeout": "5s",
                                                    "resource_api_version": "V3"}
        launcher.start([], [xds], implementation=request.param, bootstrap_extra=extra)
        yield open_port, denied_port
    finally:
        launcher.close()
        upstream.close()


def get(port: int, host: str = HOST) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/x", headers={"host": host}, timeout=5)


def serves(port: int) -> bool:
    try:
        return get(port).status_code == 200
    except httpx.TransportError:
        return False


def test_envoyfilter_patches_act_in_the_gateway(ports: tuple[int, int]) -> None:
    open_port, denied_port = ports
    assert wait_until(lambda: serves(open_port), timeout=10)
    reply = get(open_port)
    assert reply.headers["x-envoyfilter"] == "route-merge"  # HTTP_ROUTE MERGE
    reply = get(open_port, host="ef.example.com")
    assert (reply.status_code, reply.text) == (200, "from-envoyfilter")  # VIRTUAL_HOST ADD
    assert "x-envoyfilter" not in reply.headers
    # NETWORK_FILTER INSERT_BEFORE: the listener is there (the connection is accepted), RBAC closes it
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        get(denied_port)

"""Integration: access-log operators in a route configuration's request/response_headers_to_add, through pylon and
Envoy 1.40 alike (Envoy's docs' header_formatters.yaml puts %RESPONSE_CODE% in request_headers_to_add).

Request headers are made before any response: %RESPONSE_CODE% is 0 and %RESPONSE_FLAGS% `-`; the metadata a
filter set is there. Response headers of a relayed response see its code, host and details; those of the proxy's
own replies (direct response, no healthy upstream) are made before Envoy sets the code: 0, with the reply's
details and flags. An unset value leaves the header out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, static_cluster
from tests.proxy.upstreams import Upstream

SET_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _add(**headers: str) -> list[dict[str, Any]]:
    return [{"header": {"key": key.replace("_", "-"), "value": value}} for key, value in headers.items()]


def listener(port: int) -> dict[str, Any]:
    config = http_listener("main", port, [])
    hcm = config["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"] = {
        "request_headers_to_add": _add(response_code="%RESPONSE_CODE%", rq_flags="%RESPONSE_FLAGS%",
                                       rq_host="%UPSTREAM_HOST%", rq_md="%DYNAMIC_METADATA(ns:s)%"),
        "response_headers_to_add": _add(x_code="%RESPONSE_CODE%", x_flags="%RESPONSE_FLAGS%",
                                        x_details="%RESPONSE_CODE_DETAILS%", x_cluster="%UPSTREAM_CLUSTER%",
                                        x_mix="c=%RESPONSE_CODE% md=%DYNAMIC_METADATA(ns:s)% %REQ(x-a)%",
                                        x_none="%DYNAMIC_METADATA(ns:nothing)%"),
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "OK"}}},
            {"match": {"prefix": "/empty"}, "route": {"cluster": "empty"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"},
             "response_headers_to_add": _add(x_host="%UPSTREAM_HOST%")},
        ]}]}
    hcm["http_filters"] = [
        {"name": "set", "typed_config": {"@type": SET_METADATA_TYPE,
                                         "metadata": [{"metadata_namespace": "ns", "value": {"s": "hello"}}]}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return config


NAMES = ("x-code", "x-flags", "x-details", "x-cluster", "x-mix", "x-none", "x-host")


@pytest.mark.parametrize(("path", "status", "expected"), [
    ("/ok", 200, {"x-code": "200", "x-flags": "-", "x-details": "via_upstream", "x-cluster": "up",
                  "x-mix": "c=200 md=hello A", "x-host": "HOST"}),
    ("/status/503", 503, {"x-code": "503", "x-flags": "-", "x-details": "via_upstream", "x-cluster": "up",
                          "x-mix": "c=503 md=hello A", "x-host": "HOST"}),
    ("/direct", 200, {"x-code": "0", "x-flags": "-", "x-details": "direct_response", "x-mix": "c=0 md=hello A"}),
    ("/empty", 503, {"x-code": "0", "x-flags": "UH", "x-details": "no_healthy_upstream", "x-cluster": "empty",
                     "x-mix": "c=0 md=hello A"}),
])
def test_operators_in_route_header_rules(implementation: str, tmp_path: Path, path: str, status: int,
                                         expected: dict[str, str]) -> None:
    empty = {"name": "empty", "connect_timeout": "1s", "type": "STATIC",
             "load_assignment": {"cluster_name": "empty", "endpoints": []}}
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        launcher.start([listener(port)], [static_cluster("up", [upstream.port]), empty], implementation=implementation)
        response = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"x-a": "A"}, timeout=10)
        assert response.status_code == status
        want = {name: value.replace("HOST", f"127.0.0.1:{upstream.port}") for name, value in expected.items()}
        assert {name: response.headers[name] for name in NAMES if name in response.headers} == want
        if path == "/ok":
            [seen] = upstream.requests
            assert {name: seen["headers"].get(name) for name in ("response-code", "rq-flags", "rq-host", "rq-md")} \
                == {"response-code": "0", "rq-flags": "-", "rq-host": None, "rq-md": "hello"}
    finally:
        launcher.close()
        upstream.close()

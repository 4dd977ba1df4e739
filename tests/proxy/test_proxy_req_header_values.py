"""Integration: `%REQ(...)%` in request_headers_to_add / response_headers_to_add, through pylon and Envoy 1.40.

Envoy's zipkin front-proxy example echoes the trace back with `%REQ(x-b3-traceid)%` in response headers: the
response rules read the request as it went upstream (the tracer's context included), the request rules read it
before the tracer wrote its context but after the trace status went into x-request-id. A missing header is empty
(the header is skipped), `?` names an alternative, `:N` truncates.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, static_cluster
from tests.proxy.test_proxy_tracing import ZIPKIN, Collector
from tests.proxy.upstreams import Upstream


def _h(key: str, value: str) -> dict[str, dict[str, str]]:
    return {"header": {"key": key, "value": value}}


def test_req_header_values_as_envoy(implementation: str, tmp_path: Path) -> None:
    up, collector, launcher = Upstream(), Collector(), ProxyLauncher(tmp_path)
    try:
        port = free_port()
        routes = [
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 200},
             "response_headers_to_add": [_h("x-r-ua", "%REQ(user-agent)%")]},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"},
             "request_headers_to_add": [
                 _h("x-ua", "%REQ(user-agent)%"), _h("x-missing", "%REQ(x-nope)%"), _h("x-alt", "%REQ(x-nope?user-agent)%"),
                 _h("x-trunc", "%REQ(user-agent):4%"), _h("x-mix", "a-%REQ(x-b3-traceid)%-b"),
                 _h("x-rid", "%REQ(x-request-id)%"), _h("x-path", "%REQ(:path)%")],
             "response_headers_to_add": [
                 _h("x-b3-traceid", "%REQ(x-b3-traceid)%"), _h("x-request-id", "%REQ(x-request-id)%"),
                 _h("x-r-missing", "%REQ(x-nope)%"), _h("x-r-ua", "%REQ(USER-AGENT)%")]}]
        listener = http_listener("main", port, routes, tracing={"provider": {"name": "envoy.tracers.zipkin", "typed_config": {
            "@type": ZIPKIN, "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
            "collector_endpoint_version": "HTTP_JSON"}}})
        launcher.start([listener], [static_cluster("up", [up.port]), static_cluster("zipkin", [collector.port])],
                       implementation=implementation)

        response = httpx.get(f"http://127.0.0.1:{port}/p?q", headers={"user-agent": "agent007"}, timeout=5)
        sent = up.requests[-1]["headers"]
        assert (sent["x-ua"], sent["x-alt"], sent["x-trunc"], sent["x-mix"], sent["x-path"]) == (
            "agent007", "agent007", "agen", "a--b", "/p?q")
        assert "x-missing" not in sent and sent["x-rid"] == sent["x-request-id"]
        assert response.headers["x-b3-traceid"] == sent["x-b3-traceid"]  # the trace the proxy started
        assert response.headers["x-request-id"] == sent["x-request-id"] and response.headers["x-r-ua"] == "agent007"
        assert "x-r-missing" not in response.headers

        response = httpx.get(f"http://127.0.0.1:{port}/p", timeout=5, headers={
            "x-b3-traceid": "463ac35c9f6413ad", "x-b3-spanid": "a2fb4a1d1a96d312", "x-request-id": "myid"})
        sent = up.requests[-1]["headers"]
        assert sent["x-mix"] == "a-463ac35c9f6413ad-b" and sent["x-rid"] == "myid"
        assert (response.headers["x-b3-traceid"], response.headers["x-request-id"]) == ("463ac35c9f6413ad", "myid")

        direct = httpx.get(f"http://127.0.0.1:{port}/direct", headers={"user-agent": "ua2"}, timeout=5)
        assert direct.headers["x-r-ua"] == "ua2"
    finally:
        launcher.close()
        collector.close()
        up.close()

"""Integration: HCM tracing with the Zipkin provider, through pylon and through Envoy 1.40 with one scenario.

A collector (a small HTTP server here) stands behind `collector_cluster`; the upstream records the B3
headers it gets. Both implementations must continue an incoming context (shared span on ingress, a child
on egress), start traces under the sampling settings, carry the proxy's (or the router's child) span
upstream, and report the sampled spans with Envoy's names, kinds and tags.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import ROUTER_TYPE, ProxyLauncher, http_listener, static_cluster
from tests.proxy.upstreams import Upstream

ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
TRACE = "463ac35c9f6413ad48485a3953bb6124"


class Collector:
    """Records the JSON span lists POSTed to it (chunked or not) and answers 202, as Zipkin does."""

    def __init__(self) -> None:
        spans: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                spans.extend(json.loads(body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.spans = spans
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 12.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _listener(name: str, port: int, direction: str, zipkin: dict[str, Any], child: bool = False,
              **tracing: Any) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/dec"}, "route": {"cluster": "up"}, "decorator": {"operation": "myop"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    listener = http_listener(name, port, routes, tracing={"provider": {"name": "envoy.tracers.zipkin", "typed_config": {
        "@type": ZIPKIN, "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
        "collector_endpoint_version": "HTTP_JSON", **zipkin}}, **tracing},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": {"@type": ROUTER_TYPE, "start_child_span": child}}])
    listener["traffic_direction"] = direction
    return listener


def test_zipkin_tracing_as_envoy(implementation: str, tmp_path: Path) -> None:
    up, collector, launcher = Upstream(), Collector(), ProxyLauncher(tmp_path)
    try:
        ports = {"ingress": free_port(), "egress": free_port()}
        proxy = launcher.start(
            [_listener("ingress", ports["ingress"], "INBOUND", {}),
             _listener("egress", ports["egress"], "OUTBOUND", {"shared_span_context": False, "trace_id_128bit": True},
                       child=True, random_sampling={"value": 0})],
            [static_cluster("up", [up.port]), static_cluster("zipkin", [collector.port])],
            implementation=implementation,
            bootstrap_extra={"node": {"id": "node-1", "cluster": "front", "locality": {"zone": "z1"}}})

        def send(listener: str, path: str, **headers: str) -> dict[str, str]:
            httpx.get(f"http://127.0.0.1:{ports[listener]}{path}", headers=headers, timeout=5)
            return up.requests[-1]["headers"]

        # Ingress, new trace (random_sampling 100 %): a 64-bit root whose span id is the trace id.
        root = send("ingress", "/a?q=1", **{"user-agent": "ua1"})
        assert root["x-b3-traceid"] == root["x-b3-spanid"] and len(root["x-b3-traceid"]) == 16
        assert root["x-b3-sampled"] == "1" and "x-b3-parentspanid" not in root
        assert root["x-request-id"][14] == "9"  # trace status: sampled
        # Ingress, incoming context: the shared span keeps the client's span id and parent.
        shared = send("ingress", "/dec", **{"x-b3-traceid": TRACE, "x-b3-spanid": "a2fb4a1d1a96d312",
                                           "x-b3-parentspanid": "1111111111111111", "x-b3-sampled": "1"})
        assert (shared["x-b3-traceid"], shared["x-b3-spanid"], shared["x-b3-parentspanid"]) == (
            TRACE, "a2fb4a1d1a96d312", "1111111111111111")
        assert "x-envoy-decorator-operation" not in shared  # only egress requests carry the decorator
        # Egress, random_sampling 0: not sampled, the router's child span goes upstream under the proxy's.
        unsampled = send("egress", "/a")
        assert unsampled["x-b3-sampled"] == "0" and len(unsampled["x-b3-traceid"]) == 32
        assert unsampled["x-b3-parentspanid"] == unsampled["x-b3-traceid"][16:]
        assert unsampled["x-request-id"][14] == "4"
        # Egress: x-client-trace-id samples; an incoming sampled flag wins; single b3 in, single b3 out.
        client = send("egress", "/c", **{"x-client-trace-id": "1"})
        assert client["x-b3-sampled"] == "1" and client["x-request-id"][14] == "b"
        child = send("egress", "/dec", **{"x-b3-traceid": TRACE, "x-b3-spanid": "a2fb4a1d1a96d312", "x-b3-sampled": "1"})
        assert child["x-b3-traceid"] == TRACE and child["x-b3-spanid"] != "a2fb4a1d1a96d312"
        assert child["x-envoy-decorator-operation"] == "myop"
        single = send("egress", "/e", b3="80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        trace_id, span_id, sampled, parent = single["b3"].split("-")
        assert (trace_id, sampled) == ("80f198ee56343ba864fe8b2a57d3eff7", "1") and not any(
            k.startswith("x-b3-") for k in single)

        # Reported: 2 ingress spans, and on egress 3 sampled requests of 2 spans each (the unsampled one is not).
        spans = collector.wait(8)
        assert len(spans) == 8
        by_id = {s["id"]: s for s in spans}
        server = by_id[root["x-b3-spanid"]]
        assert (server["name"], server["kind"], server["shared"], server["annotations"][0]["value"]) == (
            f"127.0.0.1:{ports['ingress']}", "SERVER", True, "ss")
        assert server["localEndpoint"]["serviceName"] == "front"
        tags = server["tags"]
        assert {k: tags[k] for k in ("node_id", "zone", "component", "http.method", "http.protocol", "user_agent",
                                     "upstream_cluster", "http.status_code", "downstream_cluster", "request_size",
                                     "response_size")} == {
            "node_id": "node-1", "zone": "z1", "component": "proxy", "http.method": "GET",
            "http.protocol": "HTTP/1.1", "user_agent": "ua1", "upstream_cluster": "up", "http.status_code": "200",
            "downstream_cluster": "-", "request_size": "0", "response_size": "3"}
        assert tags["http.url"] == f"http://127.0.0.1:{ports['ingress']}/a?q=1"
        assert tags["guid:x-request-id"] == root["x-request-id"]
        assert by_id["a2fb4a1d1a96d312"]["name"] == "myop"
        assert by_id["a2fb4a1d1a96d312"]["parentId"] == "1111111111111111"
        router = by_id[child["x-b3-spanid"]]
        proxy_span = by_id[router["parentId"]]
        assert (router["name"], router["kind"], router["tags"]["upstream_address"]) == (
            "router up egress", "CLIENT", f"127.0.0.1:{up.port}")
        assert (proxy_span["name"], proxy_span["kind"], proxy_span["parentId"]) == ("myop", "CLIENT", "a2fb4a1d1a96d312")
        assert "shared" not in proxy_span
        assert by_id[parent]["parentId"] == "e457b5a2e4d86bd1"
        stats = proxy.stats()
        assert stats["tracing.zipkin.spans_sent"] == 8
        assert stats["http.egress.tracing.not_traceable"] == 3 and stats["http.egress.tracing.client_enabled"] == 1
        assert stats["http.ingress.tracing.random_sampling"] == 2
    finally:
        launcher.close()
        collector.close()
        up.close()


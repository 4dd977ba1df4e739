"""Integration: HCM tracing with the Datadog provider, through pylon and through Envoy 1.40 with one scenario.

A test agent behind `collector_cluster` decodes the msgpack traces POSTed to /v0.4/traces. Both implementations
must continue Datadog headers (or a W3C traceparent), keep an incoming sampling priority, decide one otherwise
(1 traced, -1 not), send Datadog and W3C headers upstream, and report every span with Datadog's fields.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tests.conftest import free_port
from tests.proxy.conftest import ROUTER_TYPE, ProxyLauncher, http_listener, static_cluster
from tests.proxy.upstreams import Upstream

DATADOG = "type.googleapis.com/envoy.config.trace.v3.DatadogConfig"


class Agent:
    """Records the traces of each /v0.4/traces POST (chunked or not) and answers 200 as the Datadog agent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                agent.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                for trace in msgspec.msgpack.decode(body):
                    agent.spans.extend(trace)
                answer = b'{"rate_by_service":{"service:,env:":1}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

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


def _listener(name: str, port: int, direction: str, child: bool = False, **tracing: Any) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/dec"}, "route": {"cluster": "up"}, "decorator": {"operation": "myop"}},
              {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    listener = http_listener(name, port, routes, tracing={"provider": {"name": "envoy.tracers.datadog", "typed_config": {
        "@type": DATADOG, "collector_cluster": "agent", "service_name": f"svc-{name}"}}, **tracing},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": {"@type": ROUTER_TYPE, "start_child_span": child}}])
    listener["traffic_direction"] = direction
    return listener


def test_datadog_tracing_as_envoy(implementation: str, tmp_path: Path) -> None:
    up, agent, launcher = Upstream(), Agent(), ProxyLauncher(tmp_path)
    try:
        ports = {"ingress": free_port(), "egress": free_port()}
        proxy = launcher.start(
            [_listener("ingress", ports["ingress"], "INBOUND"),
             _listener("egress", ports["egress"], "OUTBOUND", child=True, random_sampling={"value": 0})],
            [static_cluster("up", [up.port]), static_cluster("agent", [agent.port]),
             static_cluster("dead", [free_port()])],
            implementation=implementation,
            bootstrap_extra={"node": {"id": "node-1", "cluster": "front", "locality": {"zone": "z1"}}})

        def send(listener: str, path: str, **headers: str) -> dict[str, str]:
            httpx.get(f"http://127.0.0.1:{ports[listener]}{path}", headers=headers, timeout=5)
            return up.requests[-1]["headers"]

        # A new trace, sampled: the root span id is the trace id's low half; the high half is _dd.p.tid.
        root = send("ingress", "/a")
        tid = root["x-datadog-tags"].split(",")[0].removeprefix("_dd.p.tid=")
        assert root["x-datadog-trace-id"] == root["x-datadog-parent-id"] and root["x-datadog-sampling-priority"] == "1"
        assert root["x-datadog-tags"] == f"_dd.p.tid={tid},_dd.p.dm=-0" and len(tid) == 16
        low = f"{int(root['x-datadog-trace-id']):016x}"
        assert root["traceparent"] == f"00-{tid}{low}-{low}-01" and root["tracestate"] == f"dd=s:1;p:{low};t.dm:-0"
        # Datadog headers continued, their priority kept (0 too); a W3C traceparent continued.
        kept = send("ingress", "/dec", **{"x-datadog-trace-id": "1234567890", "x-datadog-parent-id": "987654321",
                                          "x-datadog-sampling-priority": "0"})
        assert (kept["x-datadog-trace-id"], kept["x-datadog-sampling-priority"]) == ("1234567890", "0")
        assert kept["traceparent"].startswith("00-000000000000000000000000499602d2-") and kept["traceparent"][-2:] == "00"
        assert "x-datadog-tags" not in kept
        w3c = send("ingress", "/b", traceparent="00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01")
        assert (w3c["x-datadog-trace-id"], w3c["x-datadog-tags"]) == (str(0x48485a3953bb6124), "_dd.p.tid=463ac35c9f6413ad")
        assert send("ingress", "/dead")  # a 503: the span's error field
        # Egress, random_sampling 0: priority -1; the router's child span goes upstream.
        rejected = send("egress", "/dec", **{"x-datadog-trace-id": "111", "x-datadog-parent-id": "222"})
        assert (rejected["x-datadog-trace-id"], rejected["x-datadog-sampling-priority"]) == ("111", "-1")
        assert rejected["tracestate"].startswith("dd=s:-1;p:") and rejected["traceparent"].endswith("-00")

        # Every span is reported, whatever its priority: 4 ingress requests, 1 egress request of 2 spans.
        spans = agent.wait(6)
        assert len(spans) == 6
        by_id = {s["span_id"]: s for s in spans}
        first = by_id[int(root["x-datadog-parent-id"])]
        assert (first["service"], first["name"], first["resource"], first["type"], first["parent_id"], first["error"]) == (
            "svc-ingress", "envoy.proxy", "ingress", "web", 0, 0)
        assert first["metrics"]["_sampling_priority_v1"] == 1.0 and first["metrics"]["_dd.agent_psr"] == 1.0
        assert (first["meta"]["_dd.p.tid"], first["meta"]["_dd.p.dm"], first["meta"]["node_id"],
                first["meta"]["http.status_code"]) == (tid, "-0", "node-1", "200")
        assert first["duration"] > 0 and first["start"] > 0
        zero = by_id[int(kept["x-datadog-parent-id"])]
        assert (zero["trace_id"], zero["parent_id"], zero["resource"], zero["metrics"]["_sampling_priority_v1"]) == (
            1234567890, 987654321, "myop", 0.0)
        assert by_id[int(w3c["x-datadog-parent-id"])]["parent_id"] == 0xa2fb4a1d1a96d312
        dead = next(s for s in spans if s["meta"].get("http.status_code") == "503")
        assert dead["error"] == 1 and "error" not in dead["meta"]
        router = by_id[int(rejected["x-datadog-parent-id"])]
        proxy_span = by_id[router["parent_id"]]
        assert (router["resource"], router["trace_id"], proxy_span["parent_id"], proxy_span["resource"]) == (
            "router up egress", 111, 222, "myop")
        assert proxy_span["metrics"]["_sampling_priority_v1"] == -1.0 and "_sampling_priority_v1" not in router["metrics"]
        path, headers = agent.requests[0]
        assert (path, headers["content-type"], headers["host"]) == ("/v0.4/traces", "application/msgpack", "agent")
        assert int(headers["x-datadog-trace-count"]) >= 1
        stats = proxy.stats()
        assert stats["tracing.datadog.reports_sent"] >= 2 and stats["tracing.datadog.reports_failed"] == 0
    finally:
        launcher.close()
        agent.close()
        up.close()

"""Integration: HCM tracing with the OpenTelemetry provider, through pylon and through Envoy 1.40 with one scenario.

Two test collectors decode what each proxy exports with opentelemetry-proto: an OTLP/HTTP receiver behind the
ingress listener's `http_service` and an OTLP/gRPC receiver (grpcio) behind the egress listener's `grpc_service`.
Both implementations must continue a W3C traceparent (same trace, the caller's span as parent, its sampled flag
and tracestate), leave a malformed one alone, start traces under the sampling settings, send the proxy's (or the
router's child) span upstream, and export sampled spans with Envoy's names, kinds, parents and attributes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import ROUTER_TYPE, ProxyLauncher, http_listener, static_cluster
from tests.proxy.otlp_collectors import GrpcCollector, HttpCollector
from tests.proxy.upstreams import Upstream

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
TRACE = "463ac35c9f6413ad48485a3953bb6124"
PARENT = "a2fb4a1d1a96d312"
H2 = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}}


def _listener(name: str, port: int, direction: str, otel: dict[str, Any], child: bool = False,
              **tracing: Any) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/dec"}, "route": {"cluster": "up"}, "decorator": {"operation": "myop"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    listener = http_listener(name, port, routes, tracing={"provider": {
        "name": "envoy.tracers.opentelemetry", "typed_config": {"@type": OTEL, **otel}}, **tracing},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": {"@type": ROUTER_TYPE, "start_child_span": child}}])
    listener["traffic_direction"] = direction
    return listener


def test_opentelemetry_tracing_as_envoy(implementation: str, tmp_path: Path) -> None:
    up, http_collector, grpc_collector = Upstream(), HttpCollector(), GrpcCollector()
    launcher = ProxyLauncher(tmp_path)
    try:
        ports = {"ingress": free_port(), "egress": free_port()}
        http_service = {"http_uri": {"uri": "http://collector.example:4318/v1/traces", "cluster": "otlp_http",
                                     "timeout": "1s"},
                        "request_headers_to_add": [{"header": {"key": "x-api-key", "value": "k1"}}]}
        grpc_service = {"envoy_grpc": {"cluster_name": "otlp_grpc"}, "timeout": "1s",
                        "initial_metadata": [{"key": "x-tenant", "value": "t1"}]}
        proxy = launcher.start(
            [_listener("ingress", ports["ingress"], "INBOUND", {"service_name": "front", "http_service": http_service}),
             _listener("egress", ports["egress"], "OUTBOUND", {"grpc_service": grpc_service}, child=True)],
            [static_cluster("up", [up.port]), static_cluster("otlp_http", [http_collector.port]),
             static_cluster("otlp_grpc", [grpc_collector.port], **H2)],
            implementation=implementation,
            bootstrap_extra={"node": {"id": "node-1", "cluster": "front", "locality": {"zone": "z1"}}})

        def send(listener: str, path: str, **headers: str) -> dict[str, str]:
            httpx.get(f"http://127.0.0.1:{ports[listener]}{path}", headers=headers, timeout=5)
            return up.requests[-1]["headers"]

        def parent_of(sent: dict[str, str]) -> tuple[str, str, str, str]:
            version, trace_id, span_id, flags = sent["traceparent"].split("-")
            assert version == "00"
            return trace_id, span_id, flags, sent["tracestate"]

        # Ingress, a new trace: 128-bit trace id, sampled, an empty tracestate header.
        root = parent_of(send("ingress", "/a?q=1", **{"user-agent": "ua1"}))
        assert len(root[0]) == 32 and root[2:] == ("01", "")
        # Ingress, a valid context (upper-case hex is read): same trace, a new span id, the tracestate carried.
        cont = parent_of(send("ingress", "/dec", traceparent=f"00-{TRACE.upper()}-{PARENT}-01", tracestate="k=v"))
        assert cont[0] == TRACE and cont[1] != PARENT and cont[2:] == ("01", "k=v")
        # Unsampled flag (bit 0 clear) is followed; a malformed traceparent makes no span and goes up untouched.
        assert parent_of(send("ingress", "/b", traceparent=f"00-{TRACE}-{PARENT}-02"))[2] == "00"
        for bad in ("garbage", f"00-{'0' * 32}-{PARENT}-01", f"01-{TRACE}-{PARENT}-01-extra"):
            sent = send("ingress", "/c", traceparent=bad)
            assert sent["traceparent"] == bad and "tracestate" not in sent
        # Egress with start_child_span: the router's child goes upstream; the decorator is propagated.
        child = send("egress", "/dec")
        assert child["x-envoy-decorator-operation"] == "myop"
        child_ctx = parent_of(child)
        egress_unsampled = parent_of(send("egress", "/d", traceparent=f"00-{TRACE}-{PARENT}-00"))
        assert egress_unsampled[0] == TRACE and egress_unsampled[2] == "00"

        # OTLP/HTTP: the two sampled ingress requests of a context or a new trace (not the unsampled one).
        spans = http_collector.wait(2)
        assert len(spans) == 2
        by_id = {s["span_id"]: s for s in spans}
        server = by_id[root[1]]
        assert (server["trace_id"], server["parent_id"], server["kind"], server["name"]) == (
            root[0], "", "SERVER", "ingress")
        attributes = server["attributes"]
        assert {k: attributes[k] for k in ("node_id", "zone", "component", "http.method", "http.protocol",
                                           "user_agent", "upstream_cluster", "http.status_code",
                                           "downstream_cluster", "request_size", "response_size")} == {
            "node_id": "node-1", "zone": "z1", "component": "proxy", "http.method": "GET",
            "http.protocol": "HTTP/1.1", "user_agent": "ua1", "upstream_cluster": "up", "http.status_code": "200",
            "downstream_cluster": "-", "request_size": "0", "response_size": "3"}
        assert attributes["http.url"] == f"http://127.0.0.1:{ports['ingress']}/a?q=1"
        assert server["resource"]["service.name"] == "front"
        assert {"telemetry.sdk.name", "telemetry.sdk.language", "telemetry.sdk.version"} <= set(server["resource"])
        assert server["end"] >= server["start"] > 0
        continued = by_id[cont[1]]
        assert (continued["trace_id"], continued["parent_id"], continued["name"], continued["trace_state"]) == (
            TRACE, PARENT, "myop", "k=v")
        exported = http_collector.requests[0]
        assert (exported[":path"], exported["host"], exported["content-type"], exported["x-api-key"]) == (
            "/v1/traces", "collector.example:4318", "application/x-protobuf", "k1")

        # OTLP/gRPC: the sampled egress request's proxy span (CLIENT, egress) and the router's child under it.
        spans = grpc_collector.wait(2)
        assert len(spans) == 2
        by_id = {s["span_id"]: s for s in spans}
        router = by_id[child_ctx[1]]
        proxy_span = by_id[router["parent_id"]]
        assert (router["name"], router["kind"], router["trace_id"]) == ("router up egress", "CLIENT", child_ctx[0])
        assert router["attributes"]["upstream_address"] == f"127.0.0.1:{up.port}"
        assert (proxy_span["name"], proxy_span["kind"], proxy_span["parent_id"]) == ("myop", "CLIENT", "")
        assert proxy_span["resource"]["service.name"].startswith("unknown_service:")
        assert grpc_collector.requests[0]["x-tenant"] == "t1"
        assert grpc_collector.requests[0]["user-agent"].startswith("OTel-OTLP-Exporter-")

        stats = proxy.stats()
        assert stats["tracing.opentelemetry.spans_sent"] == 4
        assert stats["tracing.opentelemetry.spans_dropped"] == 0
        assert stats["http.ingress.tracing.random_sampling"] == 6
    finally:
        launcher.close()
        http_collector.close()
        grpc_collector.close()
        up.close()

"""Integration: HCM tracing with the SkyWalking provider, through pylon and through Envoy 1.40 with one scenario.

A grpcio TraceSegmentReportService collector (skywalking_collector.py) decodes the segments each proxy streams
to it. Both implementations must continue an sw8 context (a malformed one starts a new trace), leave sw8-x and
sw8-correlation alone, start traces under the sampling settings (an untraced request without sw8 gets nothing),
send upstream the sw8 of the router's exit span (start_child_span) or, without one, the sw8 that came in, and
report one segment per request with Envoy's spans, names, peers, tags, references and error flags, the
backend_token as `authentication` metadata and Envoy's tracing.skywalking.* counters.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import ROUTER_TYPE, ProxyLauncher, http_listener, static_cluster
from tests.proxy.skywalking_collector import SkyWalkingCollector
from tests.proxy.upstreams import Upstream

SW = "type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig"
H2 = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


INCOMING = f"1-{_b64('trace')}-{_b64('seg1')}-3-{_b64('svc0')}-{_b64('inst0')}-{_b64('/ep0')}-{_b64('target')}"
INCOMING_REF = {"trace_id": "trace", "segment_id": "seg1", "span_id": 3, "service": "svc0", "instance": "inst0",
                "endpoint": "/ep0", "target": "target", "type": "CrossProcess"}


def _listener(name: str, port: int, direction: str, child: bool, client_config: dict[str, Any],
              **tracing: Any) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/dec"}, "route": {"cluster": "up"}, "decorator": {"operation": "myop"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    listener = http_listener(name, port, routes, tracing={"provider": {
        "name": "envoy.tracers.skywalking", "typed_config": {
            "@type": SW, "grpc_service": {"envoy_grpc": {"cluster_name": "skywalking"}, "timeout": "0.250s"},
            "client_config": client_config}}, **tracing},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": {"@type": ROUTER_TYPE, "start_child_span": child}}])
    listener["traffic_direction"] = direction
    return listener


def _entry_tags(port: int, path: str, status: int, size: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    """Envoy's connection manager tags of the entry span, in its order (the request id left as "ID")."""
    tags = [("node_id", "node-1"), ("zone", "z1"), ("guid:x-request-id", "ID"),
            ("url", f"http://127.0.0.1:{port}{path}"), ("http.method", "GET"), ("downstream_cluster", "-"), ("user_agent", "ua1"), ("http.protocol", "HTTP/1.1")]
    tags += [pair for pair in extra if pair[0].startswith("guid:")]
    tags += [("request_size", "0"), ("response_size", str(size)), ("component", "proxy"), ("upstream_cluster", "up"),
             ("upstream_cluster.name", "up"), ("status_code", str(status)), ("response_flags", "-")]
    return tags + [pair for pair in extra if not pair[0].startswith("guid:")]


def _exit_tags(address: str, status: int, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("http.protocol", "HTTP/1.1"), ("upstream_address", address), ("component", "proxy"),
            ("upstream_cluster", "up"), ("upstream_cluster.name", "up"), ("status_code", str(status)),
            ("response_flags", "-"), *extra]


def _span(span_id: int, parent: int, operation: str, peer: str, kind: str, tags: list[tuple[str, str]],
          error: bool = False, refs: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {"span_id": span_id, "parent": parent, "operation": operation, "peer": peer, "type": kind, "layer": "Http",
            "component": 9000, "error": error, "skip": False, "tags": tags, "refs": list(refs)}


def _plain(segment: dict[str, Any]) -> dict[str, Any]:
    """A reported segment without what differs run to run (ids checked apart, times checked apart)."""
    spans = []
    for span in segment["spans"]:
        assert span["end"] >= span["start"] > 1_600_000_000_000  # milliseconds since the epoch
        tags = [(k, "ID" if k == "guid:x-request-id" else v) for k, v in span["tags"]]
        spans.append({k: v for k, v in span.items() if k not in ("start", "end")} | {"tags": tags})
    return {"service": segment["service"], "instance": segment["instance"], "spans": spans}


def test_skywalking_tracing_as_envoy(implementation: str, tmp_path: Path) -> None:
    up, collector = Upstream(), SkyWalkingCollector()
    launcher = ProxyLauncher(tmp_path)
    try:
        ports = {"front": free_port(), "side": free_port()}
        proxy = launcher.start(
            [_listener("front", ports["front"], "OUTBOUND", True, {"service_name": "svc", "backend_token": "tok"},
                       custom_tags=[{"tag": "lit", "literal": {"value": "v"}}]),
             _listener("side", ports["side"], "INBOUND", False, {"backend_token": "tok"},
                       random_sampling={"value": 0})],
            [static_cluster("up", [up.port]), static_cluster("skywalking", [collector.port], **H2)],
            implementation=implementation,
            bootstrap_extra={"node": {"id": "node-1", "cluster": "front", "locality": {"zone": "z1"}}})
        upstream_address = f"127.0.0.1:{up.port}"
        target = upstream_address  # the sw8 target address: the upstream host, as the proxy picked it

        def send(listener: str, path: str, **headers: str) -> dict[str, str]:
            httpx.get(f"http://127.0.0.1:{ports[listener]}{path}", headers={"user-agent": "ua1", **headers},
                      timeout=5)
            return up.requests[-1]["headers"]

        def sent_context(sent: dict[str, str], endpoint: str) -> tuple[str, str]:
            """Check an sw8 the front listener sent; its trace and segment ids."""
            flag, trace_id, segment_id, span_id, service, instance, sent_endpoint, sent_target = sent["sw8"].split("-")
            assert (flag, span_id, service, instance, sent_endpoint, sent_target) == (
                "1", "1", _b64("svc"), _b64("node-1"), _b64(endpoint), _b64(target))
            return base64.b64decode(trace_id).decode(), base64.b64decode(segment_id).decode()

        new = sent_context(send("front", "/new?q=1"), "/new?q=1")
        assert UUID.fullmatch(new[0]) and UUID.fullmatch(new[1])
        continued_headers = send("front", "/dec/cont", sw8=INCOMING, **{"sw8-x": "1", "sw8-correlation": "a:b"})
        continued = sent_context(continued_headers, "/dec/cont")
        assert continued[0] == "trace" and UUID.fullmatch(continued[1])
        assert (continued_headers["sw8-x"], continued_headers["sw8-correlation"]) == ("1", "a:b")
        assert continued_headers["x-envoy-decorator-operation"] == "myop"
        bad = sent_context(send("front", "/bad", sw8="garbage"), "/bad")
        assert UUID.fullmatch(bad[0]) and bad[0] != new[0]
        failed = sent_context(send("front", "/status/503", **{"x-client-trace-id": "ct1"}), "/status/503")
        # The side listener: no exit span, so nothing is injected; an untraced request without sw8 gets no span,
        # one with sw8 is traced whatever the sampling says, and the sw8 goes upstream as it came.
        assert "sw8" not in send("side", "/untraced")
        unsampled = "0" + INCOMING[1:]
        assert send("side", "/side", sw8=unsampled)["sw8"] == unsampled

        segments = {s["spans"][0]["operation"]: s for s in collector.wait(5)}
        assert len(segments) == 5 and "/untraced" not in segments
        for operation, (trace_id, segment_id) in {"/new?q=1": new, "/dec/cont": continued, "/bad": bad,
                                                  "/status/503": failed}.items():
            assert (segments[operation]["trace_id"], segments[operation]["segment_id"]) == (trace_id, segment_id)
        assert segments["/side"]["trace_id"] == "trace" and UUID.fullmatch(segments["/side"]["segment_id"])
        front, lit = ports["front"], ("lit", "v")
        expected = {
            "/new?q=1": [_span(0, -1, "/new?q=1", "127.0.0.1", "Entry", _entry_tags(front, "/new?q=1", 200, 3, lit)),
                         _span(1, 0, "/new?q=1", upstream_address, "Exit", _exit_tags(upstream_address, 200, lit))],
            "/dec/cont": [_span(0, -1, "/dec/cont", "127.0.0.1", "Entry", _entry_tags(front, "/dec/cont", 200, 3, lit),
                                refs=(INCOMING_REF,)),
                          _span(1, 0, "/dec/cont", upstream_address, "Exit", _exit_tags(upstream_address, 200, lit))],
            "/bad": [_span(0, -1, "/bad", "127.0.0.1", "Entry", _entry_tags(front, "/bad", 200, 3, lit)),
                     _span(1, 0, "/bad", upstream_address, "Exit", _exit_tags(upstream_address, 200, lit))],
            "/status/503": [
                _span(0, -1, "/status/503", "127.0.0.1", "Entry", _entry_tags(
                    front, "/status/503", 503, 11, ("guid:x-client-trace-id", "ct1"), ("error", "true"), lit),
                      error=True),
                _span(1, 0, "/status/503", upstream_address, "Exit",
                      _exit_tags(upstream_address, 503, ("error", "true"), lit), error=True)],
            "/side": [_span(0, -1, "/side", "127.0.0.1", "Entry", _entry_tags(ports["side"], "/side", 200, 3),
                            refs=(INCOMING_REF,))],
        }
        for operation, spans in expected.items():
            service = "front" if operation == "/side" else "svc"
            assert _plain(segments[operation]) == {"service": service, "instance": "node-1", "spans": spans}, operation
        assert collector.streams and all(stream["authentication"] == "tok" for stream in collector.streams)

        stats = proxy.stats()
        assert {name: stats[f"tracing.skywalking.{name}"] for name in (
            "segments_sent", "segments_dropped", "cache_flushed", "segments_flushed")} == {
            "segments_sent": 5, "segments_dropped": 0, "cache_flushed": 0, "segments_flushed": 0}
        assert stats["http.side.tracing.not_traceable"] == 2
    finally:
        launcher.close()
        collector.close()
        up.close()

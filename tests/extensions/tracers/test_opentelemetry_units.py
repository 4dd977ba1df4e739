"""Unit tests: W3C trace context parsing and writing, OTLP encoding, and the OpenTelemetry config's refusals."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pylon.config.envoy import convert
from pylon.extensions.tracers import otlp, traceparent
from pylon.extensions.tracers.opentelemetry import OpenTelemetryConfig, resource_attributes
from pylon.proxy.tracing import Span
from tests.proxy.otlp_collectors import by_number, has_scope, scope_spans

TRACE = "463ac35c9f6413ad48485a3953bb6124"
SPAN = "a2fb4a1d1a96d312"


def test_extract_valid_context_lowercases_and_reads_the_sampled_bit() -> None:
    ctx = traceparent.extract([(b"traceparent", f"00-{TRACE.upper()}-{SPAN}-03".encode()),
                               (b"tracestate", b"a=1"), (b"tracestate", b"b=2")])
    assert isinstance(ctx, traceparent.TraceContext)
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.trace_state) == (TRACE, SPAN, True, "a=1,b=2")
    unsampled = traceparent.extract([(b"traceparent", f"ff-{TRACE}-{SPAN}-02".encode())])
    assert isinstance(unsampled, traceparent.TraceContext) and not unsampled.sampled


@pytest.mark.parametrize("value", [b"garbage", f"00-{'0' * 32}-{SPAN}-01".encode(), f"00-{TRACE}-{'0' * 16}-01".encode(),
                                   f"01-{TRACE}-{SPAN}-01-extra".encode(), f"00-{TRACE}-{SPAN}-0g".encode(),
                                   f"00_{TRACE}_{SPAN}_01".encode()])
def test_extract_malformed_is_invalid(value: bytes) -> None:
    assert traceparent.extract([(b"traceparent", value)]) is traceparent.INVALID


def test_extract_without_traceparent_ignores_tracestate() -> None:
    assert traceparent.extract([(b"tracestate", b"k=v")]) is None


def test_inject_replaces_the_incoming_context() -> None:
    out = traceparent.inject([(b"a", b"1"), (b"traceparent", b"old"), (b"tracestate", b"old")], TRACE, SPAN, False, "")
    assert out == [(b"a", b"1"), (b"traceparent", f"00-{TRACE}-{SPAN}-00".encode()), (b"tracestate", b"")]


def test_otlp_encoding_round_trips() -> None:
    span = Span(TRACE, SPAN, "1111111111111111", True, "op", "SERVER", 1_700_000_000_000_000, duration_us=1500,
                tags={"http.status_code": "200"}, trace_state="k=v")
    root = Span(TRACE, "2222222222222222", "", True, "router up egress", "CLIENT", 1_700_000_000_000_100)
    body = otlp.encode([span, root], {"service.name": "svc"}, ("pylon", "0.1.0"))
    request = ExportTraceServiceRequest.FromString(body)
    assert request.SerializeToString() == body  # the hand-written bytes are protobuf's own (canonical) encoding
    (resource_spans,) = request.resource_spans
    assert [(a.key, a.value.string_value) for a in resource_spans.resource.attributes] == [("service.name", "svc")]
    (spans_of_scope,) = scope_spans(resource_spans)
    assert (by_number(spans_of_scope, 1).name, by_number(spans_of_scope, 1).version) == ("pylon", "0.1.0")
    first, second = spans_of_scope.spans
    assert (first.trace_id.hex(), first.span_id.hex(), first.parent_span_id.hex()) == (TRACE, SPAN, "1111111111111111")
    assert (first.kind, first.name, first.trace_state) == (first.SPAN_KIND_SERVER, "op", "k=v")
    assert first.end_time_unix_nano - first.start_time_unix_nano == 1_500_000
    assert [(a.key, a.value.string_value) for a in first.attributes] == [("http.status_code", "200")]
    assert (second.kind, second.parent_span_id) == (second.SPAN_KIND_CLIENT, b"")
    request = ExportTraceServiceRequest.FromString(otlp.encode([span], {}, None))
    assert not has_scope(scope_spans(request.resource_spans[0])[0])


def test_otlp_long_and_empty_attributes_encode_as_protobuf() -> None:
    tags = {"empty": "", "long": "x" * 300, "k" * 130: "v", "ü": "é" * 70}
    span = Span(TRACE, SPAN, "", True, "n" * 200, "CLIENT", 1, tags=tags)
    body = otlp.encode([span], {"service.name": "s" * 1000}, ("", ""))
    request = ExportTraceServiceRequest.FromString(body)
    assert request.SerializeToString() == body
    (decoded,) = scope_spans(request.resource_spans[0])[0].spans
    assert {a.key: a.value.string_value for a in decoded.attributes} == tags and decoded.name == "n" * 200


def _config(**fields: object) -> OpenTelemetryConfig:
    return convert(fields, OpenTelemetryConfig)


def test_resource_attributes_follow_the_switches() -> None:
    assert resource_attributes(_config())["service.name"] == "unknown_service:pylon"
    assert resource_attributes(_config(service_name="s", set_telemetry_sdk_resource_attributes=False)) == {
        "service.name": "s"}
    assert resource_attributes(_config(set_service_name_resource_attribute=False)).get("service.name") is None


@pytest.mark.parametrize("fields, where", [
    ({"sampler": {"name": "envoy.tracers.opentelemetry.samplers.always_on", "typed_config": {}}}, "sampler"),
    ({"resource_detectors": [{"name": "envoy.tracers.opentelemetry.resource_detectors.environment"}]},
     "resource_detectors[0]"),
    ({"exporter": {"name": "x"}}, "exporter"),
    ({"grpc_service": {"google_grpc": {"target_uri": "x", "stat_prefix": "y"}}}, "google_grpc"),
    ({"grpc_service": {"envoy_grpc": {"cluster_name": "c"}},
      "http_service": {"http_uri": {"uri": "http://c/v1/traces", "cluster": "c", "timeout": "1s"}}}, "http_service"),
    ({"http_service": {"http_uri": {"uri": "http://c/v1/traces", "cluster": "c", "timeout": "1s"},
                       "request_headers_to_add": [{"header": {"key": "k", "value": "%ENVIRONMENT(K)%"}}]}},
     "request_headers_to_add[0].header.value"),
    ({"http_service": {"http_uri": {"uri": "http://c/v1/traces", "cluster": "c", "timeout": "1s"},
                       "request_headers_to_add": [{"header": {"key": ":path", "value": "/x"}}]}},
     "request_headers_to_add[0]"),
])
def test_refused_by_name(fields: dict[str, object], where: str) -> None:
    with pytest.raises(Exception) as info:
        _config(**fields)
    assert where in str(info.value) or where in repr(info.value.__cause__)


def _bootstrap(otel: dict[str, object], collector: dict[str, object]) -> dict[str, object]:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager", "stat_prefix": "x",
           "tracing": {"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
               "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", **otel}}},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
           "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": []}]}}
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 4317}}}}
    return {"static_resources": {
        "listeners": [{"address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [{"name": "collector", "load_assignment": {"cluster_name": "collector", "endpoints": [
            {"lb_endpoints": [endpoint]}]}, **collector}]}}


H2 = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}}
TLS = {"transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}}


def test_loader_refuses_collector_clusters_pylon_cannot_reach() -> None:
    from pylon.config.errors import ConfigError
    from pylon.config.loader import parse_bootstrap

    base = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing.provider.typed_config."
            "grpc_service.envoy_grpc.cluster_name")
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(_bootstrap({"grpc_service": {"envoy_grpc": {"cluster_name": "collector"}}}, {**H2, **TLS}),
                        "t.yaml")
    assert info.value.path == base and "TLS" in info.value.message
    parse_bootstrap(_bootstrap({"grpc_service": {"envoy_grpc": {"cluster_name": "collector"}}}, H2), "t.yaml")
    http = {"http_service": {"http_uri": {"uri": "http://c/v1/traces", "cluster": "collector", "timeout": "1s"}}}
    parse_bootstrap(_bootstrap(http, H2), "t.yaml")  # the data plane's pools speak HTTP/2 upstream too
    parse_bootstrap(_bootstrap(http, {}), "t.yaml")

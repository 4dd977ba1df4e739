"""Sans-IO: B3 extraction and injection, the sampling decision, the Zipkin span's ids (as Envoy 1.40 does them)."""

from __future__ import annotations

import json

import pytest

from pylon.config.envoy import Percent, Tracing
from pylon.extensions.tracers.zipkin import ZipkinConfig, encode_json_v2, extract_b3, inject_b3
from pylon.proxy.tracing import CLIENT, NO_TRACE, SAMPLED, Span, Tracer

TRACE = b"463ac35c9f6413ad48485a3953bb6124"


def test_multi_headers_give_the_full_context() -> None:
    ctx = extract_b3([(b"x-b3-traceid", TRACE), (b"x-b3-spanid", b"a2fb4a1d1a96d312"),
                      (b"x-b3-parentspanid", b"1111111111111111"), (b"x-b3-sampled", b"true")])
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id, ctx.sampled, ctx.single) == (
        TRACE.decode(), "a2fb4a1d1a96d312", "1111111111111111", True, False)


def test_single_header_and_sampling_only_forms() -> None:
    ctx = extract_b3([(b"b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")])
    assert (ctx.span_id, ctx.parent_id, ctx.sampled, ctx.single) == ("e457b5a2e4d86bd1", "05e3ac9a4f6e3b90", True, True)
    only = extract_b3([(b"b3", b"0")])
    assert (only.trace_id, only.sampled, only.single) == (None, False, True)
    assert extract_b3([(b"x-b3-sampled", b"0")]).sampled is False


def test_a_malformed_id_is_no_context() -> None:
    assert extract_b3([(b"x-b3-traceid", b"xyz"), (b"x-b3-spanid", b"a2fb4a1d1a96d312")]).trace_id is None


def test_injection_replaces_the_incoming_headers_in_their_style() -> None:
    span = Span("abc0000000000001", "00000000000000aa", "00000000000000bb", False, "n", "CLIENT", 0)
    forward = [(b"x-b3-traceid", b"old"), (b"b3", b"1"), (b"x-b3-flags", b"1"), (b"a", b"b")]
    assert inject_b3(forward, span, single=False) == [
        (b"x-b3-flags", b"1"), (b"a", b"b"), (b"x-b3-traceid", b"abc0000000000001"),
        (b"x-b3-spanid", b"00000000000000aa"), (b"x-b3-parentspanid", b"00000000000000bb"), (b"x-b3-sampled", b"0")]
    assert inject_b3([], span, single=True) == [(b"b3", b"abc0000000000001-00000000000000aa-0-00000000000000bb")]


def test_json_v2_has_envoys_fields() -> None:
    span = Span("t" * 16, "s" * 16, "", True, "op", "SERVER", 100, shared=True, duration_us=5, tags={"a": "b"})
    [item] = json.loads(encode_json_v2([span], {"serviceName": "c"}))
    assert item == {"traceId": "t" * 16, "id": "s" * 16, "name": "op", "kind": "SERVER", "timestamp": 100,
                    "duration": 5, "localEndpoint": {"serviceName": "c"}, "tags": {"a": "b"},
                    "annotations": [{"timestamp": 105, "value": "ss"}], "shared": True}


class _Decider(Tracer):
    """Only the sampling decision of a Tracer (no HCM behind it)."""

    def __init__(self, random: float, client: float = 100.0, overall: float = 100.0) -> None:
        self.random, self.client, self.overall = random, client, overall


@pytest.mark.parametrize("random,headers,expected", [
    (100.0, [], SAMPLED),
    (0.0, [], NO_TRACE),
    (0.0, [(b"x-client-trace-id", b"1")], CLIENT),
    (0.0, [(b"x-envoy-force-trace", b"1")], NO_TRACE),  # only an internal request may force a trace
])
def test_the_decision_follows_envoys_order(random: float, headers: list, expected: str) -> None:
    assert _Decider(random).decide(b"1e5eb528-0c28-446d-ba31-3d3a85588bfc", headers) == expected


def test_random_sampling_is_stable_on_the_request_id_and_overall_caps_it() -> None:
    decider = _Decider(50.0)
    assert decider.decide(b"00000001-0000-4000-8000-000000000000", []) == SAMPLED  # 1 % 10000 < 5000
    assert decider.decide(b"00001388-0000-4000-8000-000000000000", []) == NO_TRACE  # 5000
    assert _Decider(100.0, overall=0.0).decide(b"00000001-0000-4000-8000-000000000000", []) == NO_TRACE
    assert _Decider(100.0).decide(b"not-a-uuid", []) == NO_TRACE


def _tracing(**fields: object) -> dict:
    return {"provider": {"name": "envoy.tracers.zipkin", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig", "collector_cluster": "z",
        "collector_endpoint": "/api/v2/spans", **fields}}}


@pytest.mark.parametrize("fields,named", [
    ({"collector_endpoint_version": "HTTP_PROTO"}, "collector_endpoint_version"),
    ({"split_spans_for_request": True}, "split_spans_for_request"),
    ({"trace_context_option": "USE_B3_WITH_W3C_PROPAGATION"}, "trace_context_option"),
])
def test_unsupported_zipkin_fields_are_errors_naming_them(fields: dict, named: str) -> None:
    from pylon.config.envoy import convert
    with pytest.raises(Exception) as info:
        convert(_tracing(**fields), Tracing)
    assert named in str(info.value)


@pytest.mark.parametrize("tracing,named", [
    ({"verbose": True, **_tracing()}, "verbose"),
    ({"spawn_upstream_span": True, **_tracing()}, "spawn_upstream_span"),
    ({"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "grpc_service": {"envoy_grpc": {"cluster_name": "c"}},
        "sampler": {"name": "envoy.tracers.opentelemetry.samplers.always_on"}}}}, "sampler"),
    ({"provider": {"name": "envoy.tracers.datadog", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig"}}}, "collector_cluster"),
])
def test_refused_tracing_configs_say_why(tracing: dict, named: str) -> None:
    from pylon.config.envoy import convert
    with pytest.raises(Exception) as info:
        convert(tracing, Tracing)
    assert named in str(info.value)


def test_a_zipkin_config_parses() -> None:
    from pylon.config.envoy import convert
    config = convert({**_tracing(trace_id_128bit=True), "random_sampling": {"value": 10}}, Tracing)
    assert isinstance(config.provider.typed_config, ZipkinConfig)
    assert config.random_sampling == Percent(value=10.0)

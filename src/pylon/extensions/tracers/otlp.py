"""Finished spans as an OTLP `ExportTraceServiceRequest` (opentelemetry-proto messages), as Envoy 1.40 fills one.

One ResourceSpans per report: the resource's string attributes (service.name, and
Envoy's telemetry.sdk.* unless turned off, here naming pylon), one ScopeSpans (the
instrumentation scope, unless turned off), and per span its ids (bytes), name,
kind (SERVER / CLIENT), times in nanoseconds, tracestate and every tag as a string
attribute, Envoy's setTag. Sans-IO: bytes out, for the HTTP body or the gRPC call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span as OtlpSpan

if TYPE_CHECKING:
    from pylon.proxy.tracing import Span

_KINDS = {"SERVER": OtlpSpan.SPAN_KIND_SERVER, "CLIENT": OtlpSpan.SPAN_KIND_CLIENT}


def _attributes(pairs: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in pairs.items() if key]


def encode(spans: list["Span"], resource: dict[str, str], scope: tuple[str, str] | None) -> bytes:
    """The serialized ExportTraceServiceRequest of `spans` under one resource and scope."""
    otlp = []
    for span in spans:
        start = span.start_us * 1000
        otlp.append(OtlpSpan(
            trace_id=bytes.fromhex(span.trace_id), span_id=bytes.fromhex(span.span_id),
            parent_span_id=bytes.fromhex(span.parent_id) if span.parent_id else b"", trace_state=span.trace_state,
            name=span.name, kind=_KINDS[span.kind], start_time_unix_nano=start,
            end_time_unix_nano=start + span.duration_us * 1000, attributes=_attributes(span.tags)))
    scope_spans = ScopeSpans(spans=otlp)
    if scope is not None:
        scope_spans.scope.CopyFrom(InstrumentationScope(name=scope[0], version=scope[1]))
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=_attributes(resource)), scope_spans=[scope_spans])])
    return request.SerializeToString()

"""A request's spans as a SkyWalking `SegmentObject` in protobuf wire format, as Envoy 1.40 fills one (sans-IO).

One segment per traced request: the entry span (span id 0, parent -1, with a
cross-process reference to the caller's segment when an sw8 header came in) and the
router's exit span (1, parent 0) with start_child_span. Every span has Envoy's
layer HTTP and component id 9000 (SkyWalking's "Envoy"), times in milliseconds, its
tags in order, `isError` when Envoy's `error` tag was set, and `peer` when known.

As otlp.py does for OTLP, the bytes are written field by field in field-number
order and proto3's default values left out, which is what protobuf's own serializer
emits (checked against apache-skywalking's generated classes in
tests/extensions/tracers). Field numbers are those of skywalking's
language-agent/Tracing.proto (v3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pylon.extensions.tracers.sw8 import SpanContext

COMPONENT_ENVOY = 9000  # SkyWalking's component-libraries.yml: "Envoy"
SPAN_ENTRY, SPAN_EXIT = 0, 1
LAYER_HTTP = 3


@dataclass(slots=True)
class SegmentSpan:
    """One SpanObject's values."""

    span_id: int
    parent_span_id: int
    start_ms: int
    end_ms: int
    operation: str
    span_type: int
    tags: list[tuple[str, str]] = field(default_factory=list)
    peer: str = ""
    is_error: bool = False
    ref: SpanContext | None = None  # the caller's context (the entry span of a continued trace)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 go as ten-byte two's complement, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(number: int, text: str) -> bytes:
    """A length-delimited field; nothing for "" (proto3's default)."""
    if not text:
        return b""
    return _bytes(number, text.encode("utf-8", "surrogateescape"))


def _bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def _reference(ref: SpanContext) -> bytes:
    """SegmentReference (refType CrossProcess, 0, left out)."""
    return b"".join((_string(2, ref.trace_id), _string(3, ref.segment_id), _int(4, ref.span_id),
                     _string(5, ref.service), _string(6, ref.instance), _string(7, ref.endpoint),
                     _string(8, ref.target)))


def _span(span: SegmentSpan) -> bytes:
    parts = [_int(1, span.span_id), _int(2, span.parent_span_id), _int(3, span.start_ms), _int(4, span.end_ms)]
    if span.ref is not None:
        parts.append(_bytes(5, _reference(span.ref)))
    parts += [_string(6, span.operation), _string(7, span.peer), _int(8, span.span_type), _int(9, LAYER_HTTP),
              _int(10, COMPONENT_ENVOY), _int(11, int(span.is_error))]
    parts += [_bytes(12, _string(1, key) + _string(2, value)) for key, value in span.tags]
    return b"".join(parts)


def encode(trace_id: str, segment_id: str, service: str, instance: str, spans: list[SegmentSpan]) -> bytes:
    """The serialized SegmentObject."""
    return b"".join([_string(1, trace_id), _string(2, segment_id)] + [_bytes(3, _span(span)) for span in spans]
                    + [_string(4, service), _string(5, instance)])

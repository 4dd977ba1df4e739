"""SkyWalking's cross-process propagation header `sw8` (protocol v3), as Envoy 1.40 reads and writes it (sans-IO).

A value is eight fields joined by "-": sample flag ("0" or "1"), trace id, parent
segment id, parent span id (an integer), parent service, parent instance, parent
endpoint and the target address the caller used; every field but the flag and the
span id is base64. Envoy (through cpp2sky) refuses a value without exactly eight
fields, with a flag other than 0/1 or a span id that is not an int32; a field that
is not valid base64 decodes to "" rather than failing. It writes "1" as the flag
always (SkyWalking agents trace whatever carries the header) and base64 with padding.
`sw8-x` and `sw8-correlation` are neither read nor written: they pass through as any header.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

HEADER = b"sw8"
_SPAN_ID = re.compile(rb"\s*[+-]?[0-9]+\s*")
_INT32 = range(-(2**31), 2**31)


@dataclass(frozen=True, slots=True)
class SpanContext:
    """The caller's context: where the request came from in its trace."""

    trace_id: str
    segment_id: str
    span_id: int
    service: str
    instance: str
    endpoint: str
    target: str


def _decode(field: bytes) -> str:
    """A base64 field, padded or not; "" when it is not base64 (cpp2sky's decodeWithoutPadding)."""
    stripped = field.rstrip(b"=")
    if len(field) - len(stripped) > 2:
        return ""
    try:
        raw = base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        return ""
    return raw.decode("utf-8", "surrogateescape")


def parse(value: bytes) -> SpanContext | None:
    """The context of an sw8 value, or None when Envoy would refuse it."""
    fields = value.split(b"-")
    if len(fields) != 8 or fields[0] not in (b"0", b"1") or not _SPAN_ID.fullmatch(fields[3]):
        return None
    span_id = int(fields[3])
    if span_id not in _INT32:
        return None
    trace_id, segment_id, service, instance, endpoint, target = (_decode(fields[i]) for i in (1, 2, 4, 5, 6, 7))
    return SpanContext(trace_id, segment_id, span_id, service, instance, endpoint, target)


def _encode(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8", "surrogateescape"))


def encode(context: SpanContext) -> bytes:
    """The sw8 value that makes `context` the callee's parent (flag always 1, as Envoy sends)."""
    return b"-".join((b"1", _encode(context.trace_id), _encode(context.segment_id), b"%d" % context.span_id,
                      _encode(context.service), _encode(context.instance), _encode(context.endpoint),
                      _encode(context.target)))

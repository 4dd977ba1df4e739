"""W3C trace context (`traceparent`, `tracestate`) as Envoy 1.40's OpenTelemetry tracer reads and writes it (sans-IO).

Reading (observed with Envoy 1.40): a `traceparent` is 55 characters, four
dash-separated hex fields of 2, 32, 16 and 2 digits (either letter case; ids are
lower-cased); the version field is not checked (ff passes); an all-zero trace or
span id is invalid. The sampled flag is bit 0 of the flags. A present but invalid
`traceparent` gives no span at all: the request goes upstream with its headers
untouched (`INVALID`). `tracestate` is carried only along a valid traceparent.

Writing: `traceparent: 00-<trace>-<span>-<01|00>` and always a `tracestate`
header, empty when the trace has none, as Envoy sends it.
"""

from __future__ import annotations

from typing import Final

_HEX: Final = frozenset("0123456789abcdef")
TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"


class TraceContext:
    """A valid incoming context: trace id, the caller's span id, its sampled flag, the tracestate."""

    __slots__ = ("trace_id", "span_id", "sampled", "trace_state")

    def __init__(self, trace_id: str, span_id: str, sampled: bool, trace_state: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.trace_state = trace_state


#: `extract`'s answer for a traceparent that is present but malformed (Envoy then makes no span).
INVALID: Final = object()


def _hex(field: str, length: int) -> bool:
    return len(field) == length and set(field) <= _HEX


def extract(headers: list[tuple[bytes, bytes]]) -> TraceContext | object | None:
    """The incoming context; None without a traceparent; INVALID for a malformed one."""
    parent = state = None
    for name, value in headers:
        if name == TRACEPARENT:
            if parent is None:
                parent = value
        elif name == TRACESTATE:
            state = value if state is None else state + b"," + value
    if parent is None:
        return None
    text = parent.decode("latin-1").lower()
    if len(text) != 55:
        return INVALID
    fields = text.split("-")
    if len(fields) != 4 or not all(_hex(f, n) for f, n in zip(fields, (2, 32, 16, 2))):
        return INVALID
    version, trace_id, span_id, flags = fields
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return INVALID
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1),
                        state.decode("latin-1") if state is not None else "")


def inject(forward: list[tuple[bytes, bytes]], trace_id: str, span_id: str, sampled: bool, trace_state: str
           ) -> list[tuple[bytes, bytes]]:
    """`forward` with the incoming traceparent/tracestate replaced by this span's."""
    out = [pair for pair in forward if pair[0] != TRACEPARENT and pair[0] != TRACESTATE]
    out.append((TRACEPARENT, b"00-%s-%s-%s" % (trace_id.encode(), span_id.encode(), b"01" if sampled else b"00")))
    out.append((TRACESTATE, trace_state.encode("latin-1")))
    return out

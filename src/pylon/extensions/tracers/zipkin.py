"""`envoy.tracers.zipkin`: B3 propagation and Zipkin v2 JSON spans, as Envoy 1.40's Zipkin tracer.

Incoming context: the B3 multi headers (x-b3-traceid, x-b3-spanid,
x-b3-parentspanid, x-b3-sampled) or the single `b3` header; the upstream gets the
same style back (single in, single out), with the proxy's span as its parent. An
incoming sampled flag overrides the connection manager's decision, as in Envoy.
With shared_span_context (the default) an ingress (SERVER) span keeps the
incoming span's id, Zipkin's shared span; an egress span is always a child. A
new trace's root span id is the trace id's low 64 bits. Spans are exported as a
JSON array to collector_endpoint on collector_cluster (span_export.py batches and posts).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NonEmptyStr
from pylon.config.errors import FieldError
from pylon.proxy.local_address import envoy_local_address
from pylon.proxy.span_export import SpanBatcher, batcher_for, post_report
from pylon.proxy.tracing import Span, random_hex64, register_driver

if TYPE_CHECKING:
    from pylon.proxy.hcm import HcmRuntime
    from pylon.proxy.worker import Worker

TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


class ZipkinConfig(EnvoyStruct, kw_only=True):
    """config.trace.v3.ZipkinConfig (HTTP_JSON reports over HTTP/1.1 to a cluster of pylon's)."""

    collector_cluster: NonEmptyStr
    collector_endpoint: NonEmptyStr
    trace_id_128bit: bool = False
    shared_span_context: bool = True
    collector_endpoint_version: Literal["DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE", "HTTP_JSON", "HTTP_PROTO",
                                        "GRPC"] = "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE"
    collector_hostname: str = ""
    split_spans_for_request: bool = False
    trace_context_option: Literal["USE_B3", "USE_B3_WITH_W3C_PROPAGATION"] = "USE_B3"

    def __post_init__(self) -> None:
        if self.collector_endpoint_version in ("HTTP_PROTO", "GRPC"):
            raise FieldError("collector_endpoint_version", f"{self.collector_endpoint_version} is not supported "
                                                           "yet; use HTTP_JSON")
        if self.split_spans_for_request:
            raise FieldError("split_spans_for_request", "not supported yet")
        if self.trace_context_option != "USE_B3":
            raise FieldError("trace_context_option", f"{self.trace_context_option} is not supported yet")

    def cluster_references(self) -> Iterator[tuple[str, str, str]]:
        """(field path, cluster, transport) of the collector's cluster, for the loader's checks."""
        yield "collector_cluster", self.collector_cluster, "http"


_B3_HEADERS = frozenset((b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"b3"))
_SAMPLED = {b"1": True, b"true": True, b"d": True, b"0": False, b"false": False}
_HEX = frozenset(b"0123456789abcdef")


def _hex_id(value: bytes | None, *lengths: int) -> str | None:
    """A B3 id if well formed (lower-case hex of one of `lengths`), else None."""
    if value is None or len(value) not in lengths or not set(value.lower()) <= _HEX:
        return None
    return value.lower().decode()


class B3Context:
    """What a request's B3 headers say (absent parts None)."""

    __slots__ = ("trace_id", "span_id", "parent_id", "sampled", "single")

    def __init__(self) -> None:
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.parent_id: str | None = None
        self.sampled: bool | None = None
        self.single = False  # it came in the single `b3` header (and goes upstream the same way)


def extract_b3(headers: list[tuple[bytes, bytes]]) -> B3Context:
    """The incoming B3 context; a malformed trace or span id is no context (a new trace starts)."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _B3_HEADERS:
            found.setdefault(name, value.strip())
    ctx = B3Context()
    single = found.get(b"b3")
    if single is not None:
        ctx.single = True
        parts = single.split(b"-")
        if len(parts) == 1:
            ctx.sampled = _SAMPLED.get(parts[0].lower())
            return ctx
        trace_id, span_id = _hex_id(parts[0], 16, 32), _hex_id(parts[1], 16)
        if trace_id is None or span_id is None:
            return ctx
        ctx.trace_id, ctx.span_id = trace_id, span_id
        if len(parts) > 2:
            ctx.sampled = _SAMPLED.get(parts[2].lower())
        if len(parts) > 3:
            ctx.parent_id = _hex_id(parts[3], 16)
        return ctx
    sampled = found.get(b"x-b3-sampled")
    if sampled is not None:
        ctx.sampled = _SAMPLED.get(sampled.lower())
    trace_id = _hex_id(found.get(b"x-b3-traceid"), 16, 32)
    span_id = _hex_id(found.get(b"x-b3-spanid"), 16)
    if trace_id is not None and span_id is not None:
        ctx.trace_id, ctx.span_id = trace_id, span_id
        ctx.parent_id = _hex_id(found.get(b"x-b3-parentspanid"), 16)
    return ctx


def inject_b3(forward: list[tuple[bytes, bytes]], span: Span, single: bool) -> list[tuple[bytes, bytes]]:
    """`forward` without the incoming B3 headers, with `span`'s context in the style it came in."""
    forward = [pair for pair in forward if pair[0] not in _B3_HEADERS]
    sampled = b"1" if span.sampled else b"0"
    if single:
        value = b"%s-%s-%s" % (span.trace_id.encode(), span.span_id.encode(), sampled)
        if span.parent_id:
            value += b"-" + span.parent_id.encode()
        forward.append((b"b3", value))
        return forward
    forward.append((b"x-b3-traceid", span.trace_id.encode()))
    forward.append((b"x-b3-spanid", span.span_id.encode()))
    if span.parent_id:
        forward.append((b"x-b3-parentspanid", span.parent_id.encode()))
    forward.append((b"x-b3-sampled", sampled))
    return forward


def encode_json_v2(spans: list[Span], endpoint: dict[str, Any]) -> bytes:
    """Zipkin's v2 JSON list of spans, with the fields Envoy sends."""
    out = []
    for span in spans:
        item: dict[str, Any] = {"traceId": span.trace_id, "id": span.span_id}
        if span.parent_id:
            item["parentId"] = span.parent_id
        item.update(name=span.name, kind=span.kind, timestamp=span.start_us, duration=span.duration_us,
                    localEndpoint=endpoint, tags=span.tags,
                    annotations=[{"timestamp": span.start_us + span.duration_us,
                                  "value": "ss" if span.kind == "SERVER" else "cr"}])
        if span.shared:
            item["shared"] = True
        out.append(item)
    return json.dumps(out, separators=(",", ":")).encode()


class ZipkinDriver:
    """The Zipkin tracer of one HCM in one worker (its batcher shared with HCMs naming the same collector)."""

    names_by_direction = False

    def __init__(self, config: ZipkinConfig, hcm: "HcmRuntime") -> None:
        self.trace_id_128bit = config.trace_id_128bit
        self.shared = config.shared_span_context
        worker = hcm.worker
        node = worker.node
        endpoint = {"serviceName": node.cluster if node is not None else "", "ipv4": envoy_local_address(),
                    "port": 0}
        self.batcher = batcher_for(worker, f"tracer.zipkin:{config.collector_cluster}:{config.collector_endpoint}",
                                   lambda: SpanBatcher(worker, _Reporter(worker, config, endpoint).export,
                                                       "tracing.zipkin."))

    def start_span(self, headers: list[tuple[bytes, bytes]], traced: bool, name: str, kind: str,
                   start_us: int) -> tuple[Span, bool]:
        ctx = extract_b3(headers)
        sampled = ctx.sampled if ctx.sampled is not None else traced
        shared = self.shared and kind == "SERVER"
        if ctx.trace_id is not None and ctx.span_id is not None:
            if shared:
                span = Span(ctx.trace_id, ctx.span_id, ctx.parent_id or "", sampled, name, kind, start_us, shared)
            else:
                span = Span(ctx.trace_id, random_hex64(), ctx.span_id, sampled, name, kind, start_us)
        else:
            trace_id = random_hex64() + random_hex64() if self.trace_id_128bit else random_hex64()
            span = Span(trace_id, trace_id[-16:], "", sampled, name, kind, start_us, shared)
        return span, ctx.single

    def child_span(self, parent: Span, name: str, start_us: int) -> Span:
        return Span(parent.trace_id, random_hex64(), parent.span_id, parent.sampled, name, "CLIENT", start_us)

    def inject(self, forward: list[tuple[bytes, bytes]], span: Span, style: Any) -> list[tuple[bytes, bytes]]:
        return inject_b3(forward, span, bool(style))

    def report(self, spans: list[Span]) -> None:
        self.batcher.add(spans)


class _Reporter:
    """Posts a batch as Zipkin v2 JSON; Envoy's counters: reports_sent (a 202 answer), reports_dropped (another
    status), reports_failed (no answer), spans_sent, reports_skipped_no_cluster."""

    def __init__(self, worker: "Worker", config: ZipkinConfig, endpoint: dict[str, Any]) -> None:
        self.worker = worker
        self.cluster = config.collector_cluster
        self.path = config.collector_endpoint.encode()
        self.host = (config.collector_hostname or config.collector_cluster).encode()
        self.endpoint = endpoint
        stats = worker.stats
        self.stats = {name: stats.counter("tracing.zipkin." + name) for name in (
            "reports_sent", "reports_dropped", "reports_failed", "reports_skipped_no_cluster", "spans_sent")}

    def export(self, spans: list[Span]) -> None:
        body = encode_json_v2(spans, self.endpoint)
        if not post_report(self.worker, self.cluster, self.path, self.host, [(b"content-type", b"application/json")],
                           body, self._answered):
            self.stats["reports_skipped_no_cluster"].value += 1
            return
        self.stats["spans_sent"].value += len(spans)

    def _answered(self, status: int) -> None:
        if status == 0:
            self.stats["reports_failed"].value += 1
        elif status == 202:
            self.stats["reports_sent"].value += 1
        else:
            self.stats["reports_dropped"].value += 1


registry.register_typed(registry.TRACER, TYPE_URL, ZipkinConfig)
register_driver(ZipkinConfig, ZipkinDriver)

"""Envoy's HTTP tracing in the connection manager: the sampling decision, the request's span, its tags.

An HCM with `tracing` gets a `Tracer` (an HCM without one has `hcm.tracer = None`
and pays nothing: the stream tests that attribute twice). For each routed request
`Tracer.mark` decides, as Envoy's connection manager does, whether the request is
traced (x-envoy-force-trace from an internal client, x-client-trace-id under
client_sampling, random_sampling on the request id, then overall_sampling), and
writes that decision into the x-request-id UUID (Envoy's trace status
nibble) before the route's header rules run; after them `Tracer.start` asks the
provider's `Driver` to continue the incoming context or start a trace, and returns
the upstream headers carrying the proxy's span (or the router's child span with
`start_child_span`). `Tracer.finish` tags the span when the stream ends and hands
it to the driver, which batches and exports it off the request's path.

Providers register a `Driver` factory for their config type (`register_driver`),
as HTTP filters register theirs: this module never imports one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pylon.proxy.connection_info import spell_address
from pylon.proxy.upstream.host import format_address

if TYPE_CHECKING:
    from pylon.proxy.hcm import HcmRuntime
    from pylon.proxy.stream import Stream

# Envoy's trace status, written into the version nibble (index 14) of a UUID x-request-id.
NO_TRACE, SAMPLED, CLIENT, FORCED = "4", "9", "b", "a"
_TRACED = frozenset((SAMPLED, CLIENT, FORCED))


@dataclass(slots=True)
class Span:
    """One span: ids in lower-case hex, times in microseconds since the epoch."""

    trace_id: str
    span_id: str
    parent_id: str
    sampled: bool
    name: str
    kind: str  # "SERVER" (ingress) or "CLIENT" (egress, and the router's child span)
    start_us: int
    shared: bool = False  # a SERVER span that shares the incoming client span's id (Zipkin shared_span_context)
    duration_us: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    start_loop: float = 0.0
    trace_state: str = ""  # W3C tracestate carried with the span (OpenTelemetry)
    extra: Any = None  # the provider's own state of the span (Datadog: sampling priority, _dd.p tags)


class Driver(Protocol):
    """What a tracer provider does: continue or start a trace, inject it upstream, export finished spans."""

    #: An undecorated request's span is named "ingress" / "egress" (OpenTelemetry), not by its authority (Zipkin).
    names_by_direction: bool
    #: The request's span is named by its path, decorator or not (SkyWalking's entry span; an optional attribute).
    names_by_path: bool

    def start_span(self, headers: list[tuple[bytes, bytes]], traced: bool, name: str, kind: str,
                   start_us: int) -> tuple[Span | None, Any]:
        """The request's span, from the incoming context in `headers` if any, or None for no span at all (the
        request goes upstream untouched); and how it propagates (opaque)."""

    def child_span(self, parent: Span, name: str, start_us: int) -> Span:
        """A CLIENT span under `parent` (the router's start_child_span)."""

    def inject(self, forward: list[tuple[bytes, bytes]], span: Span, style: Any) -> list[tuple[bytes, bytes]]:
        """`forward` without the incoming context's headers, with `span` as the upstream's parent."""

    def report(self, spans: list[Span]) -> None:
        """Queue finished, sampled spans for export."""

    def upstream_header(self, span: Span, address: str) -> tuple[bytes, bytes] | None:
        """A header naming the upstream host (`address`, "ip:port") that carries `span`, added to each attempt
        once its host is picked (SkyWalking's sw8 and its target address); optional: most drivers have none."""


DriverFactory = Callable[[Any, "HcmRuntime"], Driver]
_DRIVERS: dict[type, DriverFactory] = {}


def register_driver(config_type: type, factory: DriverFactory) -> None:
    """Make `factory(config, hcm)` the driver of tracer configs of `config_type` (called by provider modules)."""
    _DRIVERS[config_type] = factory


def random_hex64() -> str:
    """A random non-zero 64-bit id in hex (span and trace ids)."""
    while True:
        value = os.urandom(8)
        if any(value):
            return value.hex()


def _percent_passes(percent: float, key: int) -> bool:
    """Envoy's sampling test on a 0..9999 key: `percent` of 100 in hundredths."""
    return key % 10000 < round(percent * 100)


def _request_id_key(request_id: bytes) -> int | None:
    """Envoy's UUID request id's integer for stable sampling (its first 8 hex digits), None if not a UUID."""
    if len(request_id) != 36 or request_id[8:9] != b"-":
        return None
    try:
        return int(request_id[:8], 16)
    except ValueError:
        return None


class Tracer:
    """One HCM's tracing for one worker."""

    def __init__(self, config: Any, egress: bool, start_child_span: bool, hcm: "HcmRuntime") -> None:
        self.driver = _DRIVERS[type(config.provider.typed_config)](config.provider.typed_config, hcm)
        self.random = config.random_sampling.value
        self.client = config.client_sampling.value
        self.overall = config.overall_sampling.value
        self.max_path = config.max_path_tag_length
        self.kind = "CLIENT" if egress else "SERVER"
        self.egress = egress
        self.child = start_child_span
        self.direction_name = ("egress" if egress else "ingress") if self.driver.names_by_direction else None
        self.names_by_path = getattr(self.driver, "names_by_path", False)
        self.names_host = hasattr(self.driver, "upstream_header")
        node = hcm.worker.node
        self.node_tags = {"node_id": node.id if node is not None else "",
                          "zone": node.locality.zone if node is not None and node.locality is not None else ""}
        self.custom_tags = [(tag.tag, _custom_tag_source(tag)) for tag in config.custom_tags]
        prefix = f"http.{hcm.config.stat_prefix}.tracing."
        stats = hcm.worker.stats
        self.stat = {status: stats.counter(prefix + name) for status, name in (
            (SAMPLED, "random_sampling"), (CLIENT, "client_enabled"), (FORCED, "service_forced"),
            (NO_TRACE, "not_traceable"))}
        stats.counter(prefix + "health_check")  # Envoy's, for health-check requests pylon does not tell apart
        self.wall_offset = time.time() - hcm.worker.loop.time()

    # ------------------------------------------------------------------ the decision
    def decide(self, request_id: bytes, headers: list[tuple[bytes, bytes]]) -> str:
        """Envoy's trace status for a request (ConnectionManagerUtility::mutateTracingRequestHeader)."""
        key = _request_id_key(request_id)
        if key is None:
            return NO_TRACE
        forced = internal = client = False
        for name, value in headers:
            if name == b"x-envoy-force-trace":
                forced = True
            elif name == b"x-envoy-internal":
                internal = value == b"true"
            elif name == b"x-client-trace-id":
                client = True
        if forced and internal:
            status = FORCED
        elif client and _percent_passes(self.client, key):
            status = CLIENT
        elif _percent_passes(self.random, key):
            status = SAMPLED
        else:
            status = NO_TRACE
        if status != NO_TRACE and not _percent_passes(self.overall, key):
            status = NO_TRACE
        return status

    # ------------------------------------------------------------------ the stream's hooks
    def mark(self, stream: "Stream", forward: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str]:
        """Decide, and write the decision into x-request-id: the upstream headers and the trace status. The
        connection manager does this before the route's header rules run (they may read x-request-id)."""
        status = self.decide(stream.request_id, stream.headers)
        self.stat[status].value += 1
        if _request_id_key(stream.request_id) is not None and stream.request_id[14:15] != status.encode():
            forward = self._mark_request_id(stream, forward, status.encode())
        return forward, status

    def start(self, stream: "Stream", forward: list[tuple[bytes, bytes]], cluster: str, status: str
              ) -> list[tuple[bytes, bytes]]:
        """Make the request's span (stream.span) under the `mark`ed status; the upstream headers that carry it."""
        route = stream.route
        decorator = route.decorator if route is not None else None
        if self.names_by_path:
            name = stream.path.decode("latin-1")
        elif decorator is not None:
            name = decorator.operation
        else:
            name = self.direction_name or stream.authority.decode("latin-1")
        now = stream.conn.loop_time()
        start_us = int((stream.start + self.wall_offset) * 1_000_000)
        if self.egress and decorator is not None and decorator.propagate is not False:
            forward = [p for p in forward if p[0] != b"x-envoy-decorator-operation"]
            forward.append((b"x-envoy-decorator-operation", decorator.operation.encode()))
        span, style = self.driver.start_span(stream.headers, status in _TRACED, name, self.kind, start_us)
        if span is None:
            return forward
        span.start_loop = stream.start
        outgoing = span
        if self.child:
            outgoing = self.driver.child_span(span, f"router {cluster} egress", int((now + self.wall_offset) * 1e6))
            outgoing.start_loop = now
        stream.span = (span, outgoing if outgoing is not span else None)
        return self.driver.inject(forward, outgoing, style)

    def with_host_header(self, stream: "Stream", head: bytes) -> bytes:
        """An attempt's request head with the driver's header naming its upstream host (Envoy injects the
        context when the upstream request is ready, its host known)."""
        span, child = stream.span
        pair = self.driver.upstream_header(child or span, format_address(stream.host.address))
        if pair is None:
            return head
        return head[:-2] + b"%s: %s\r\n\r\n" % pair  # before the blank line that ends the head

    def _mark_request_id(self, stream: "Stream", forward: list[tuple[bytes, bytes]], nibble: bytes
                         ) -> list[tuple[bytes, bytes]]:
        """Write the trace status into x-request-id, everywhere the stream keeps it."""
        old = stream.request_id
        new = old[:14] + nibble + old[15:]
        stream.request_id = new
        stream.headers = [(n, new) if n == b"x-request-id" and v == old else (n, v) for n, v in stream.headers]
        return [(n, new) if n == b"x-request-id" and v == old else (n, v) for n, v in forward]

    def finish(self, stream: "Stream") -> None:
        """Tag and time the stream's span(s); report them if sampled."""
        span, child = stream.span
        if not span.sampled:
            return
        end = stream.conn.loop_time()
        span.duration_us = int((end - span.start_loop) * 1_000_000)
        status = stream.status
        tags = span.tags
        tags.update(self.node_tags)
        headers = {}
        for name, value in stream.headers:
            headers.setdefault(name, value)
        tags["guid:x-request-id"] = stream.request_id.decode("latin-1")
        client_trace = headers.get(b"x-client-trace-id")
        if client_trace is not None:
            tags["guid:x-client-trace-id"] = client_trace.decode("latin-1")
        scheme = headers.get(b"x-forwarded-proto") or stream.conn.scheme
        path = stream.path
        url = (scheme + b"://" + stream.authority + path).decode("latin-1")
        tags["http.url"] = url[:self.max_path] if len(path) > self.max_path else url
        tags["http.method"] = stream.method.decode("latin-1")
        tags["http.protocol"] = "HTTP/1.0" if stream.http10 else "HTTP/1.1"
        tags["downstream_cluster"] = headers.get(b"x-envoy-downstream-service-cluster", b"-").decode("latin-1")
        tags["user_agent"] = headers.get(b"user-agent", b"-").decode("latin-1")
        tags["peer.address"] = stream.conn.peer[0]
        tags["request_size"] = str(stream.bytes_received)
        tags["response_size"] = str(stream.bytes_sent)
        cluster = stream.cluster.name if stream.cluster is not None else "-"
        tags["upstream_cluster"] = tags["upstream_cluster.name"] = cluster
        tags["http.status_code"] = str(status)
        tags["response_flags"] = stream.flags
        tags["component"] = "proxy"
        if not status or status >= 500:
            tags["error"] = "true"
        for tag, source in self.custom_tags:
            value = source(headers)
            if value is not None:
                tags[tag] = value
        spans = [span]
        if child is not None:
            child.duration_us = int((end - child.start_loop) * 1_000_000)
            ctags = child.tags
            ctags["component"] = "proxy"
            ctags["upstream_cluster"] = ctags["upstream_cluster.name"] = cluster
            ctags["http.protocol"] = tags["http.protocol"]
            ctags["http.status_code"] = str(status)
            ctags["response_flags"] = stream.flags
            host = stream.last_host
            if host is not None:
                ctags["upstream_address"] = ctags["peer.address"] = spell_address(host.address)
            if not status or status >= 500:
                ctags["error"] = "true"
            for tag, source in self.custom_tags:  # Envoy's router tags its span with the custom tags too
                value = source(headers)
                if value is not None:
                    ctags[tag] = value
            spans.insert(0, child)
        self.driver.report(spans)


def _custom_tag_source(tag: Any) -> Callable[[dict[bytes, bytes]], str | None]:
    """How a custom tag finds its value in a request's headers (literal and environment: fixed at load)."""
    if tag.literal is not None:
        literal = tag.literal.value
        return lambda headers: literal
    if tag.environment is not None:
        value = os.environ.get(tag.environment.name, tag.environment.default_value)
        return lambda headers: value or None
    name = tag.request_header.name.lower().encode()
    default = tag.request_header.default_value or None

    def from_header(headers: dict[bytes, bytes]) -> str | None:
        found = headers.get(name)
        return found.decode("latin-1") if found is not None else default
    return from_header

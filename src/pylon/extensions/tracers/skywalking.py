"""`envoy.tracers.skywalking`: sw8 propagation and segments reported over gRPC, as Envoy 1.40's SkyWalking tracer.

Spans: a request with an `sw8` header continues its context (the caller's trace id,
a reference to its segment, span and endpoint; sw8.py) whatever the sampling
decision, since SkyWalking agents trace whatever carries the header; a malformed one
is treated as absent. Without one, a request the connection manager does not trace
gets no span and goes upstream untouched, and a traced one starts a trace (a random
UUID, as cpp2sky). Each request is one segment with its own UUID: the entry span
(0, named by the request's path: Envoy ignores the decorator here) and, with the
router's start_child_span, the exit span (1, named as the entry span, as Envoy's).
Only an exit span propagates: with it the upstream gets a new sw8 (flag 1, this
segment, span 1, the service, instance, the entry span's path as endpoint, and the
upstream host's address as target, written into each attempt once its host is
picked); without it the request goes upstream with whatever sw8 it came with.
Tags keep Envoy's names and order, but `http.url` and `http.status_code`, which
SkyWalking calls `url` and `status_code`, and `peer.address`, which is the span's
peer (the client's address on the entry span, the upstream host's on the exit
span); `error` also marks the span isError (segment.py).

Report: per worker, one client-streaming call `TraceSegmentReportService/collect` to
the grpc_service's cluster (proxy/upstream/grpc_channel.py), a SegmentObject per
finished request, `backend_token` as the `authentication` metadata (after Envoy's
x-envoy-internal / x-forwarded-for and the service's initial_metadata). The
grpc_service's `timeout` does not bound the stream: Envoy starts it without one.
While no stream is open (no host yet, or the collector closed it: retried with Envoy's jittered
backoff, 0.5 s doubling to 30 s), segments wait in a cache of `max_cache_size`
(default 1024; the oldest dropped, counted) and are flushed when a stream opens.
Envoy's counters under tracing.skywalking.: segments_sent, segments_dropped,
cache_flushed, segments_flushed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Final, Iterator

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, UInt32
from pylon.config.services import GrpcClientService
from pylon.extensions.tracers import segment, sw8
from pylon.proxy.span_export import batcher_for
from pylon.proxy.tracing import Span, register_driver

if TYPE_CHECKING:
    from pylon.proxy.hcm import HcmRuntime
    from pylon.proxy.worker import Worker

TYPE_URL = "type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig"
COLLECT_METHOD: Final = "/skywalking.v3.TraceSegmentReportService/collect"
STAT_PREFIX: Final = "tracing.skywalking."
DEFAULT_MAX_CACHE_SIZE: Final = 1024
DEFAULT_SERVICE_AND_INSTANCE: Final = "EnvoyProxy"
RETRY_INITIAL: Final = 0.5
RETRY_MAX: Final = 30.0
#: Envoy's tag names that SkyWalking spells its own way.
_TAG_NAMES = {"http.url": "url", "http.status_code": "status_code"}
#: The order Envoy sets the connection manager's and the router's tags in (what is not here follows, as set).
_TAG_ORDER = {name: k for k, name in enumerate((
    "node_id", "zone", "guid:x-request-id", "http.url", "http.method", "downstream_cluster", "user_agent",
    "http.protocol", "peer.address", "guid:x-client-trace-id", "request_size", "response_size", "upstream_address",
    "component", "upstream_cluster", "upstream_cluster.name", "http.status_code", "response_flags"))}
log = logging.getLogger(__name__)


class ClientConfig(EnvoyStruct, kw_only=True):
    """config.trace.v3.ClientConfig: how the proxy names itself to the collector, its token, its cache."""

    service_name: str = ""
    instance_name: str = ""
    backend_token: str = ""
    max_cache_size: UInt32 | None = None


class SkyWalkingConfig(EnvoyStruct, kw_only=True):
    """config.trace.v3.SkyWalkingConfig: the collector (grpc_service, required) and the client settings."""

    grpc_service: GrpcClientService
    client_config: ClientConfig | None = None

    def cluster_references(self) -> Iterator[tuple[str, str, str]]:
        """(field path, cluster, "grpc") of the collector cluster, for the loader's checks."""
        if self.grpc_service.envoy_grpc is not None:
            yield "grpc_service.envoy_grpc.cluster_name", self.grpc_service.envoy_grpc.cluster_name, "grpc"


@dataclass(slots=True)
class _Segment:
    """What a request's spans share: the segment's id and where its trace came from."""

    segment_id: str
    parent: sw8.SpanContext | None
    endpoint: str  # the entry span's name: the endpoint an sw8 from this segment names


class _Reporter:
    """A worker's stream of segments to one collector, with Envoy's cache, retry and counters."""

    def __init__(self, worker: "Worker", config: SkyWalkingConfig, max_cache_size: int, token: str) -> None:
        from pylon.proxy.upstream.grpc_channel import GrpcClusterClient  # grpcio only for configs that report

        self.worker = worker
        self.client = GrpcClusterClient(worker, config.grpc_service)
        self.metadata = (("authentication", token),) if token else ()
        self.max_cache_size = max_cache_size
        self.cache: deque[bytes] = deque()
        self.queue: asyncio.Queue[bytes | None] | None = None  # the open stream's outbox
        self.call: Any = None
        self.backoff = RETRY_INITIAL
        stats = worker.stats
        self.segments_sent = stats.counter(STAT_PREFIX + "segments_sent")
        self.segments_dropped = stats.counter(STAT_PREFIX + "segments_dropped")
        self.cache_flushed = stats.counter(STAT_PREFIX + "cache_flushed")
        self.segments_flushed = stats.counter(STAT_PREFIX + "segments_flushed")
        worker.loop.call_soon(self._establish)

    def _establish(self) -> None:
        from pylon.proxy.upstream.grpc_channel import NoHost

        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        try:
            call = self.client.open_stream(COLLECT_METHOD, _outbox(queue), self.metadata)
        except NoHost:
            log.debug("SkyWalking: cluster %s has no host to report to", self.client.cluster_name)
            self._retry_later()
            return
        self.call, self.queue = call, queue
        call.add_done_callback(self._closed)
        if self.cache:
            self._flush()
        self.backoff = RETRY_INITIAL

    def _closed(self, call: Any) -> None:
        if call is not self.call:
            return
        log.debug("SkyWalking: the collector stream ended (%s)", call.code() if call.done() else "")
        self.call = self.queue = None
        self._retry_later()

    def _retry_later(self) -> None:
        delay = random.uniform(0, self.backoff)  # Envoy's JitteredExponentialBackOffStrategy
        self.backoff = min(self.backoff * 2, RETRY_MAX)
        self.worker.loop.call_later(delay, self._establish)

    def _flush(self) -> None:
        assert self.queue is not None
        while self.cache:
            self.segments_sent.value += 1
            self.segments_flushed.value += 1
            self.queue.put_nowait(self.cache.popleft())
        self.cache_flushed.value += 1

    def report(self, body: bytes) -> None:
        if self.queue is not None:
            self.segments_sent.value += 1
            self.queue.put_nowait(body)
            return
        self.cache.append(body)
        if len(self.cache) > self.max_cache_size:
            self.segments_dropped.value += 1
            self.cache.popleft()


async def _outbox(queue: "asyncio.Queue[bytes | None]") -> AsyncIterator[bytes]:
    """A stream's messages, as they are queued (None ends the stream)."""
    while (body := await queue.get()) is not None:
        yield body


class SkyWalkingDriver:
    """The SkyWalking tracer of one HCM in one worker (its reporter shared with HCMs of the same config)."""

    names_by_direction = False
    names_by_path = True  # the entry span is named by the request's path

    def __init__(self, config: SkyWalkingConfig, hcm: "HcmRuntime") -> None:
        worker = hcm.worker
        client = config.client_config or ClientConfig()
        node = worker.node
        self.service = client.service_name or (node.cluster if node is not None else "") or DEFAULT_SERVICE_AND_INSTANCE
        self.instance = client.instance_name or (node.id if node is not None else "") or DEFAULT_SERVICE_AND_INSTANCE
        max_cache = client.max_cache_size if client.max_cache_size is not None else DEFAULT_MAX_CACHE_SIZE
        key = "tracer.skywalking:" + msgspec.json.encode(config, enc_hook=repr).decode()
        self.reporter: _Reporter = batcher_for(  # type: ignore[assignment]
            worker, key, lambda: _Reporter(worker, config, max_cache, client.backend_token))

    def start_span(self, headers: list[tuple[bytes, bytes]], traced: bool, name: str, kind: str,
                   start_us: int) -> tuple[Span | None, Any]:
        value = next((v for n, v in headers if n == sw8.HEADER), None)
        parent = sw8.parse(value) if value is not None else None
        if parent is None and not traced:
            return None, None
        trace_id = parent.trace_id if parent is not None else str(uuid.uuid4())
        context = _Segment(str(uuid.uuid4()), parent, name)
        return Span(trace_id, "0", "-1", True, name, kind, start_us, extra=context), None

    def child_span(self, parent: Span, name: str, start_us: int) -> Span:
        """The exit span: named as the entry span (Envoy's SkyWalking spans ignore the name they are given)."""
        return Span(parent.trace_id, "1", "0", True, parent.name, "CLIENT", start_us, extra=parent.extra)

    def inject(self, forward: list[tuple[bytes, bytes]], span: Span, style: Any) -> list[tuple[bytes, bytes]]:
        """An exit span's sw8 replaces the incoming one, written per attempt (upstream_header); an entry span
        propagates nothing (cpp2sky writes sw8 for an exit span only), so what came in goes on."""
        if span.span_id == "0":
            return forward
        return [pair for pair in forward if pair[0] != sw8.HEADER]

    def upstream_header(self, span: Span, address: str) -> tuple[bytes, bytes] | None:
        """The exit span's sw8, naming the upstream host as the target address, as Envoy writes it."""
        if span.span_id == "0":
            return None
        context: _Segment = span.extra
        return sw8.HEADER, sw8.encode(sw8.SpanContext(span.trace_id, context.segment_id, int(span.span_id),
                                                      self.service, self.instance, context.endpoint, address))

    def report(self, spans: list[Span]) -> None:
        ordered = sorted(spans, key=lambda s: int(s.span_id))
        context: _Segment = ordered[0].extra
        items = [_segment_span(span, context.parent if span.span_id == "0" else None) for span in ordered]
        self.reporter.report(segment.encode(ordered[0].trace_id, context.segment_id, self.service, self.instance,
                                            items))


def _segment_span(span: Span, parent: sw8.SpanContext | None) -> segment.SegmentSpan:
    """A span as Envoy's SkyWalking span keeps it: `peer.address` is its peer, not a tag; tags in Envoy's order."""
    start_ms = span.start_us // 1000
    last = len(_TAG_ORDER)
    names = sorted(span.tags, key=lambda name: _TAG_ORDER.get(name, last))
    tags = [(_TAG_NAMES.get(name, name), span.tags[name]) for name in names if name != "peer.address"]
    return segment.SegmentSpan(int(span.span_id), int(span.parent_id), start_ms,
                               (span.start_us + span.duration_us) // 1000, span.name,
                               segment.SPAN_ENTRY if span.span_id == "0" else segment.SPAN_EXIT, tags,
                               peer=span.tags.get("peer.address", ""), is_error="error" in span.tags, ref=parent)


registry.register_typed(registry.TRACER, TYPE_URL, SkyWalkingConfig)
register_driver(SkyWalkingConfig, SkyWalkingDriver)

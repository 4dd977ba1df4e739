"""Batched, asynchronous export of finished spans to a collector, off the requests' path.

A `SpanBatcher` keeps the spans a worker's tracers report and hands them to its
provider's `export` callable when `min_flush_spans` are waiting or when its timer
fires (Envoy's Zipkin and OpenTelemetry tracers: 5 spans or every 5 s, counted in
`timer_flushed`; Datadog's: every 2 s, uncounted). With `max_pending` (OpenTelemetry's max_cache_size) a span
that finds the queue full is dropped and counted (`spans_dropped`).

`post_report` is the HTTP transport the providers share: one POST through pylon's
own upstream pool for the collector cluster (its hosts, its balancer, its
connections), with a timeout; nothing waits for it, `done(status)` hears the
answer (0: none).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy.http.h1_client import Http1RequestEncoder

if TYPE_CHECKING:
    from pylon.proxy.tracing import Span
    from pylon.proxy.upstream.pool import UpstreamConnection
    from pylon.proxy.worker import Worker

#: Envoy's Zipkin collector request timeout (tracing.zipkin.request_timeout).
REQUEST_TIMEOUT = 5.0


class SpanBatcher:
    """One collector's queue of spans in one worker (shared by every HCM that names the same collector)."""

    def __init__(self, worker: "Worker", export: Callable[[list["Span"]], None], stat_prefix: str, *,
                 min_flush_spans: int = 5, flush_interval: float = 5.0, max_pending: int | None = None,
                 count_timer: bool = True) -> None:
        self.worker = worker
        self.export = export
        self.min_flush_spans = min_flush_spans
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.pending: list[Span] = []
        stats = worker.stats
        self.timer_flushed = stats.counter(stat_prefix + "timer_flushed") if count_timer else None
        self.spans_dropped = stats.counter(stat_prefix + "spans_dropped") if max_pending is not None else None
        self.timer: asyncio.TimerHandle | None = None

    def add(self, spans: list["Span"]) -> None:
        """Queue finished spans; flush once enough wait (the timer takes care of the rest)."""
        if self.max_pending is not None and len(self.pending) + len(spans) > self.max_pending:
            room = max(0, self.max_pending - len(self.pending))
            self.spans_dropped.value += len(spans) - room  # type: ignore[union-attr]
            spans = spans[:room]
        self.pending.extend(spans)
        if self.timer is None:
            self.timer = self.worker.loop.call_later(self.flush_interval, self._on_timer)
        if len(self.pending) >= self.min_flush_spans:
            self.flush()

    def _on_timer(self) -> None:
        if self.timer_flushed is not None:
            self.timer_flushed.value += 1
        self.flush()
        self.timer = self.worker.loop.call_later(self.flush_interval, self._on_timer)

    def flush(self) -> None:
        """Export what is waiting as one report."""
        spans, self.pending = self.pending, []
        if spans:
            self.export(spans)


def post_report(worker: "Worker", cluster_name: str, path: bytes, host: bytes, headers: list[tuple[bytes, bytes]],
                body: bytes, done: Callable[[int], None], timeout: float | None = REQUEST_TIMEOUT) -> bool:
    """POST `body` to a host of the cluster through the worker's pool; False (nothing sent) when the cluster is
    unknown or has no host to pick. `done(status)` is called once, with 0 when no answer came in `timeout`
    (None: no limit)."""
    cluster = worker.clusters.get(cluster_name)
    chosen = cluster.choose_host(None) if cluster is not None else None
    if cluster is None or chosen is None:
        return False
    head = Http1RequestEncoder(b"POST", path, host, headers, chunked=False, length=len(body),
                               attempt_count=False).encode_head(1)
    worker.pools.get(cluster, chosen).acquire(_Report(head + body, done, worker.loop, timeout))
    return True


class _Report:
    """One report's request, as the upstream pool's `Exchange`: write it, note the status, let the pool go on."""

    is_head = False
    upgrade_accepted = False

    def __init__(self, request: bytes, done: Callable[[int], None], loop: asyncio.AbstractEventLoop,
                 timeout: float | None) -> None:
        self.request = request
        self.done: Callable[[int], None] | None = done
        self.status = 0
        self.conn: UpstreamConnection | None = None
        self.timer = loop.call_later(timeout, self._timed_out) if timeout is not None else None

    def _end(self, status: int) -> None:
        done, self.done = self.done, None
        if self.timer is not None:
            self.timer.cancel()
        if done is not None:
            done(status)

    def _timed_out(self) -> None:
        if self.conn is not None:
            self.conn.abandon()
        self._end(0)

    def on_upstream_ready(self, conn: "UpstreamConnection") -> None:
        if self.done is None:
            conn.abandon()
            return
        self.conn = conn
        conn.write(self.request)

    def on_upstream_connect_failure(self, reason: str) -> None:
        self._end(0)

    def on_upstream_overflow(self) -> None:
        self._end(0)

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.status = status

    def on_upstream_body(self, data: bytes, filtered: bool = False) -> None:
        pass  # a collector's answer says nothing the counters need

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        pass  # neither do its trailers (a collector cluster with enable_trailers)

    def on_upstream_complete(self) -> None:
        self.conn = None
        self._end(self.status)

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self.conn = None
        self._end(0)

    def on_upstream_flush(self) -> None:
        pass

    def on_upstream_pause(self, paused: bool) -> None:
        pass

    def on_upstream_upgraded(self, conn: "UpstreamConnection", headers: list[tuple[bytes, bytes]],
                             rest: bytes) -> None:
        conn.abandon()
        self._end(0)


def batcher_for(worker: "Worker", key: str, make: Callable[[], SpanBatcher]) -> SpanBatcher:
    """The worker's batcher for one collector (`key`), made on first use: HCMs naming it share it."""
    singletons: dict[str, Any] = worker.singletons
    batcher = singletons.get(key)
    if batcher is None:
        batcher = singletons[key] = make()
    return batcher

"""Batched, asynchronous export of finished spans to a collector cluster, off the requests' path.

A `SpanBatcher` keeps the spans a worker's tracers report and POSTs them, encoded
by its provider, when `min_flush_spans` are waiting or when its timer fires
(Envoy's Zipkin reporter: 5 spans or every 5 s). Each report is one request
through pylon's own upstream pool for the collector cluster (its hosts, its
balancer, its connections), with Envoy's 5 s timeout; nothing waits for it. The
provider's counters are Envoy's: reports_sent (a 202 answer), reports_dropped
(another status), reports_failed (no answer), spans_sent, timer_flushed,
reports_skipped_no_cluster.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy.http.h1_client import Http1RequestEncoder

if TYPE_CHECKING:
    from pylon.proxy.tracing import Span
    from pylon.proxy.upstream.pool import UpstreamConnection
    from pylon.proxy.worker import Worker

#: Envoy's collector request timeout (tracing.zipkin.request_timeout) and flush thresholds, in its defaults.
REQUEST_TIMEOUT = 5.0


class SpanBatcher:
    """One collector's queue of spans in one worker (shared by every HCM that names the same collector)."""

    def __init__(self, worker: "Worker", cluster: str, path: str, host: str, content_type: bytes,
                 encode: Callable[[list["Span"]], bytes], stat_prefix: str, *, min_flush_spans: int = 5,
                 flush_interval: float = 5.0) -> None:
        self.worker = worker
        self.cluster_name = cluster
        self.path = path.encode()
        self.host = host.encode()
        self.content_type = content_type
        self.encode = encode
        self.min_flush_spans = min_flush_spans
        self.flush_interval = flush_interval
        self.pending: list[Span] = []
        stats = worker.stats
        self.stats = {name: stats.counter(stat_prefix + name) for name in (
            "reports_sent", "reports_dropped", "reports_failed", "reports_skipped_no_cluster", "spans_sent",
            "timer_flushed")}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, spans: list["Span"]) -> None:
        """Queue finished spans; flush once enough wait (the timer takes care of the rest)."""
        self.pending.extend(spans)
        if self.timer is None:
            self.timer = self.worker.loop.call_later(self.flush_interval, self._on_timer)
        if len(self.pending) >= self.min_flush_spans:
            self.flush()

    def _on_timer(self) -> None:
        self.stats["timer_flushed"].value += 1
        self.flush()
        self.timer = self.worker.loop.call_later(self.flush_interval, self._on_timer)

    def flush(self) -> None:
        """POST what is waiting as one report (dropped, and counted, when the cluster has no host)."""
        spans, self.pending = self.pending, []
        if not spans:
            return
        cluster = self.worker.clusters.get(self.cluster_name)
        host = cluster.choose_host(None) if cluster is not None else None
        if cluster is None or host is None:
            self.stats["reports_skipped_no_cluster"].value += 1
            return
        self.stats["spans_sent"].value += len(spans)
        body = self.encode(spans)
        head = Http1RequestEncoder(b"POST", self.path, self.host, [(b"content-type", self.content_type)],
                                   chunked=False, length=len(body), attempt_count=False).head
        report = _Report(head + body, self._answered, self.worker.loop)
        self.worker.pools.get(cluster, host).acquire(report)

    def _answered(self, status: int) -> None:
        if status == 0:
            self.stats["reports_failed"].value += 1
        elif status == 202:
            self.stats["reports_sent"].value += 1
        else:
            self.stats["reports_dropped"].value += 1


class _Report:
    """One report's request, as the upstream pool's `Exchange`: write it, note the status, let the pool go on."""

    is_head = False
    upgrade_accepted = False

    def __init__(self, request: bytes, done: Callable[[int], None], loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.done: Callable[[int], None] | None = done
        self.status = 0
        self.conn: UpstreamConnection | None = None
        self.timer = loop.call_later(REQUEST_TIMEOUT, self._timed_out)

    def _end(self, status: int) -> None:
        done, self.done = self.done, None
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

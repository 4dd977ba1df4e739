"""Request mirroring (RouteAction.request_mirror_policies): a copy of a request to another cluster, fire and forget.

Envoy's shadow requests, as Envoy 1.40 sends them (each point observed against it):

- One copy per policy whose share (`runtime_fraction`, all when unset) draws it, to the policy's `cluster` or the
  cluster named by the request's `cluster_header` (none when the header is missing or names no cluster).
- The copy carries what the main request carries upstream (the route's header rules, x-forwarded-proto,
  x-request-id, x-envoy-expected-rq-timeout-ms) with the Host suffixed `-shadow` before any port
  (`example.com:8080` -> `example.com-shadow:8080`; not with `disable_shadow_host_suffix_append`), plus what
  Envoy's internal client adds: `x-envoy-internal: true`, and its own address 192.0.2.2 appended to
  x-forwarded-for.
- The body goes as it arrives, framed as the main request's (the shadow cluster's trailers rule applies).
- Its answer is read and dropped: it never delays, changes or fails the main request. The shadow cluster's
  stats count it (upstream_rq_total, upstream_rq_<code>, upstream_rq_time, upstream_rq_timeout) and its host's
  outlier detection sees the status, as in Envoy. The main request's timeout bounds it; a client that leaves
  before its request is whole takes the copy with it (Envoy resets the shadow stream then).
- `trace_sampled`: when the HCM traces, the copy's propagated sampling decision (traceparent flags, x-b3-sampled,
  b3) is the policy's; unset, the main request's.

Departures: Envoy also counts the copy under `cluster.<name>.internal.*`, which pylon has no stats for; the copy
is not held back when the shadow host reads slowly (Envoy's watermarks would pause the client).
"""

from __future__ import annotations

import random
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pylon.proxy.filters.upstream import FilteredRequest
from pylon.proxy.http.h1_client import Http1RequestEncoder

if TYPE_CHECKING:
    import asyncio

    from pylon.proxy.router import MatchedRoute, MirrorRule
    from pylon.proxy.upstream.cluster import Cluster, Host
    from pylon.proxy.upstream.pool import HostPool, UpstreamConnection

__all__ = ["Shadow", "shadow_host", "start_shadows"]

#: a shadow's `route` as auto_sni reads it: its Host has any host rewrite in it already
_NO_REWRITE = SimpleNamespace(host_rewrite=None)

#: the address Envoy 1.40's internal (async) client appends to a shadow request's x-forwarded-for
SHADOW_XFF = b"192.0.2.2"


def shadow_host(authority: bytes) -> bytes:
    """Envoy's shadowAppendedHost: `-shadow` after the host name, before a port (IPv6 literals kept whole)."""
    colon = authority.rfind(b":")
    if colon >= 0 and authority.rfind(b"]") < colon:
        return authority[:colon] + b"-shadow" + authority[colon:]
    return authority + b"-shadow"


def shadow_headers(forward: list[tuple[bytes, bytes]], sampled: bool | None
                   ) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The main request's upstream headers as the shadow gets them (x-forwarded-for as Envoy's internal client
    extends it; the sampling flag the policy's `trace_sampled` says, when set), and whether x-forwarded-for
    was there (else `shadow_tail` adds it)."""
    out: list[tuple[bytes, bytes]] = []
    xff_seen = False
    for name, value in forward:
        if name == b"x-forwarded-for":
            if xff_seen:
                continue
            xff_seen = True
            value = value + b"," + SHADOW_XFF
        elif sampled is not None:
            value = _with_sampled(name, value, sampled)
        out.append((name, value))
    return out, xff_seen


def shadow_tail(expected: bytes | None, has_xff: bool) -> bytes:
    """The header lines after the copied ones, in Envoy's order: the expected timeout, x-envoy-internal, and
    x-forwarded-for when the request had none."""
    tail = (expected or b"") + b"x-envoy-internal: true\r\n"
    return tail if has_xff else tail + b"x-forwarded-for: " + SHADOW_XFF + b"\r\n"


def _with_sampled(name: bytes, value: bytes, sampled: bool) -> bytes:
    """A trace propagation header with its sampling decision set to `sampled` (other headers unchanged)."""
    if name == b"traceparent":
        head, dash, flags = value.rpartition(b"-")
        if dash and len(flags) == 2:
            try:
                bits = int(flags, 16)
            except ValueError:
                return value
            return head + b"-%02x" % (bits | 1 if sampled else bits & ~1)
    elif name == b"x-b3-sampled":
        return b"1" if sampled else b"0"
    elif name == b"b3":
        parts = value.split(b"-")
        if len(parts) >= 3:
            parts[2] = b"1" if sampled else b"0"
            return b"-".join(parts)
    return value


def start_shadows(stream: Any, route: "MatchedRoute", forward: list[tuple[bytes, bytes]], path: bytes,
                  chunked: bool, length: int, expected: bytes | None) -> list["Shadow"] | None:
    """Send the route's copies of `stream`'s request (head and the body so far); those under way, or None."""
    hcm = stream.hcm
    started: list[Shadow] = []
    for rule in route.mirrors:
        if rule.fraction < 1.0 and random.random() >= rule.fraction:
            continue
        name = rule.cluster_for(stream.headers)
        cluster = hcm.clusters.get(name) if name else None
        if cluster is None or cluster.provided:
            continue  # Envoy: an unknown cluster (cluster_header) is no copy; a request-provided host has none
        host = cluster.choose_host(None)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            continue
        if not cluster.circuit_breakers.requests.try_acquire():
            cluster.stats.upstream_rq_pending_overflow.value += 1
            continue
        authority = route.host_rewrite or stream.authority
        sampled = rule.trace_sampled if hcm.tracer is not None else None
        if rule.suffix_host:
            authority = shadow_host(authority)
        headers, has_xff = shadow_headers(forward, sampled)
        # Not the router's upstream filters but the mirror cluster's own `http_filters` run on the copy (Envoy 1.40,
        # observed); one that answers means no copy.
        encoder = (partial(FilteredRequest, cluster.upstream_filters) if cluster.upstream_filters
                   else Http1RequestEncoder)(stream.method, path, authority, headers, chunked=chunked, length=length,
                                             attempt_count=False, extra=shadow_tail(expected, has_xff),
                                             trailers=cluster.upstream_trailers)
        if isinstance(encoder, FilteredRequest):
            encoder = encoder.attempt(stream, 1)
            if not isinstance(encoder, Http1RequestEncoder):
                cluster.circuit_breakers.requests.release()
                continue
        shadow = Shadow(cluster, host, encoder, authority, stream, rule, stream.conn.loop, stream.timeout)
        started.append(shadow)
        shadow.send(hcm.pools.get(cluster, host, shadow), stream.waiting_body)
    return started or None


class Shadow:
    """One copy of a request, as the upstream pool's `Exchange`: its head and body out, its answer dropped."""

    is_head = False
    upgrade_accepted = False

    def __init__(self, cluster: "Cluster", host: "Host", encoder: Http1RequestEncoder, authority: bytes,
                 stream: Any, rule: "MirrorRule", loop: "asyncio.AbstractEventLoop", timeout: float | None) -> None:
        self.cluster = cluster
        self.host = host
        self.encoder = encoder
        # what auto_sni reads of the request it names a connection for (auto_sni.HostedRequest): the shadow's Host
        self.route = _NO_REWRITE
        self.authority = authority
        self.headers = stream.headers
        self.rule = rule
        self.loop = loop
        self.out: list[bytes] = []  # framed for the connection, once there is one
        self.pieces: list[bytes] = []  # the body until then, as it came (an HTTP/2 stream frames it its own way)
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.pool: HostPool | None = None
        self.conn: UpstreamConnection | None = None
        self.status = 0
        self.ended = False  # the whole request went (or is queued to go) out
        self.done = False
        self.started_at = loop.time()
        self.timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._timed_out) if timeout else None
        host.active_requests += 1
        stats = cluster.stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1

    def send(self, pool: "HostPool", body: list[bytes]) -> None:
        """Keep the body so far, and ask `pool` for a connection."""
        self.pieces.extend(body)
        self.pool = pool
        pool.acquire(self)

    # -- the main request's body, as it arrives
    def data(self, piece: bytes) -> None:
        if self.done:
            return
        if self.conn is None:
            self.pieces.append(piece)
            return
        self.out.append(self.encoder.encode_data(piece))
        self._flush()

    def end(self, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if not self.done and not self.ended:
            self.ended = True
            if self.conn is None:
                self.trailers = trailers
                return
            tail = self.encoder.encode_end(trailers)
            if tail:
                self.out.append(tail)
            self._flush()

    def abandon(self) -> None:
        """The client left before its request was whole: the copy goes too."""
        self._close(abandon=True)

    def _flush(self) -> None:
        conn = self.conn
        if conn is not None and self.out:
            conn.write(b"".join(self.out))
            self.out.clear()

    # -- Exchange
    def on_upstream_ready(self, conn: "UpstreamConnection") -> None:
        if self.done:
            conn.abandon()
            return
        self.conn = conn
        pieces, self.pieces = self.pieces, []
        encoder = self.encoder
        if conn.multiplexed:  # an HTTP/2 cluster's stream: the head as HEADERS, the body as DATA (h2_client.py)
            h2 = conn.send_head(encoder, encoder.encode_head(1), self.ended and not pieces and not self.trailers)
            if h2 is None:
                return  # refused at once: on_upstream_reset closed the copy
            self.encoder = encoder = h2  # type: ignore[assignment]
        else:
            self.out.append(encoder.encode_head(1))
        self.out.extend(map(encoder.encode_data, pieces))
        if self.ended:
            self.out.append(encoder.encode_end(self.trailers))
        self._flush()

    def on_upstream_connect_failure(self, reason: str) -> None:
        self._close(abandon=False)

    def on_upstream_overflow(self) -> None:
        self._close(abandon=False)

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.status = status
        self.host.record_response(status)

    def on_upstream_body(self, data: bytes, filtered: bool = False) -> None:
        pass  # dropped: nobody reads a shadow's answer

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        pass

    def on_upstream_flush(self) -> None:
        pass

    def on_upstream_pause(self, paused: bool) -> None:
        pass

    def on_upstream_complete(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not self.ended:
            conn.keep_alive = False  # answered before the request was whole: the connection is mid-request
        stats = self.cluster.stats
        stats.count_response(self.status, internal=True)  # a copy is the proxy's own request (x-envoy-internal)
        stats.record_time((self.loop.time() - self.started_at) * 1000, internal=True)
        self._close(abandon=False)

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self.conn = None
        self._close(abandon=False)

    def on_upstream_upgraded(self, conn: "UpstreamConnection", headers: list[tuple[bytes, bytes]],
                             rest: bytes) -> None:
        conn.abandon()  # never asked for (upgrade_accepted is False): the pool treats a 101 as an error first
        self._close(abandon=False)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.done:
            self.cluster.stats.upstream_rq_timeout.value += 1
            self.host.record_timeout()
            self._close(abandon=True)

    def _close(self, abandon: bool) -> None:
        """Release what the copy holds (once): its timer, its connection or queue spot, its counters."""
        if self.done:
            return
        self.done = True
        self.out.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if abandon:
            if conn is not None:
                conn.abandon()
            elif self.pool is not None:
                self.pool.cancel(self)
        self.host.active_requests -= 1
        cluster = self.cluster
        cluster.stats.upstream_rq_active.value -= 1
        cluster.circuit_breakers.requests.release()

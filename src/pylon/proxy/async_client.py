"""One HTTP/1.1 request of the proxy's own to a cluster, answered whole or not at all: Envoy's AsyncClient.

Filters that ask another service before letting a request go (ext_authz's HTTP service) send through the
worker's own upstream machinery, as Envoy's async client goes through its cluster manager: the cluster's
balancer picks the host, the host's pool lends a connection (kept alive for the next call), and the cluster
counts the request and its response class. The call has a timeout; on it the connection is abandoned and the
caller hears `None` with the reason, as it does for a missing cluster, a cluster without a healthy host, a
connect failure or a reset. Bodies are collected whole: such answers are small.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable, NamedTuple

from pylon.proxy.http.h1_client import _BODILESS_METHODS, Http1RequestEncoder

if TYPE_CHECKING:
    from pylon.proxy.upstream.cluster import Cluster
    from pylon.proxy.upstream.pool import HostPool, UpstreamConnection
    from pylon.proxy.worker import Worker


class Response(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


#: done(response, reason): the whole response, or None and why not ("timeout", "no_cluster", "no_host", "reset",
#: "connect_failure", "overflow")
Done = Callable[["Response | None", str], None]


class Call:
    """One request in flight; `cancel()` when the caller no longer wants the answer (its own stream ended)."""

    upgrade_accepted = False

    def __init__(self, request: bytes, cluster: "Cluster", pool: "HostPool", done: Done,
                 loop: asyncio.AbstractEventLoop, timeout: float, is_head: bool = False) -> None:
        self.request = request
        self.is_head = is_head  # the answer to a HEAD has no body, whatever its length says
        self.cluster = cluster
        self.pool = pool
        self.done: Done | None = done
        self.conn: UpstreamConnection | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.timer = loop.call_later(timeout, self._timed_out) if timeout > 0 else None
        cluster.stats.upstream_rq_total.value += 1

    def cancel(self) -> None:
        """Nobody waits for the answer any more: let go of the connection (or the queue spot)."""
        if self.done is None:
            return
        self.done = None
        self._release(abandon=True)

    def _release(self, abandon: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is not None and abandon:
            conn.abandon()
        elif conn is None and abandon:
            self.pool.cancel(self)

    def _end(self, response: Response | None, reason: str) -> None:
        done, self.done = self.done, None
        if done is not None:
            done(response, reason)

    def _timed_out(self) -> None:
        self.timer = None
        self.cluster.stats.upstream_rq_timeout.value += 1
        self._release(abandon=True)
        self._end(None, "timeout")

    # the upstream pool's Exchange
    def on_upstream_ready(self, conn: "UpstreamConnection") -> None:
        if self.done is None:
            conn.abandon()
            return
        self.conn = conn
        conn.write(self.request)

    def on_upstream_connect_failure(self, reason: str) -> None:
        self._release(abandon=False)
        self._end(None, "connect_failure")

    def on_upstream_overflow(self) -> None:
        self._release(abandon=False)
        self._end(None, "overflow")

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.status = status
        self.headers = headers

    def on_upstream_body(self, data: bytes, filtered: bool = False) -> None:
        self.body.append(data)

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        pass  # an answer's trailers say nothing its callers read

    def on_upstream_complete(self) -> None:
        self.conn = None  # the pool takes the connection back
        self._release(abandon=False)
        self.cluster.stats.count_response(self.status, internal=True)  # the proxy's own call (x-envoy-internal)
        self._end(Response(self.status, self.headers, b"".join(self.body)), "")

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self.conn = None
        self._release(abandon=False)
        self._end(None, "reset")

    def on_upstream_flush(self) -> None:
        pass

    def on_upstream_pause(self, paused: bool) -> None:
        pass

    def on_upstream_upgraded(self, conn: "UpstreamConnection", headers: list[tuple[bytes, bytes]],
                             rest: bytes) -> None:
        conn.abandon()
        self._release(abandon=False)
        self._end(None, "reset")


def send(worker: "Worker", cluster_name: str, method: bytes, path: bytes, host: bytes,
         headers: list[tuple[bytes, bytes]], body: bytes, timeout: float, done: Done, *,
         empty_length: bool = True, extra: bytes | None = None) -> Call | None:
    """Send one request to `cluster_name`; `done` is called once, later (never from inside this call).

    `empty_length`: an empty body is stated (`content-length: 0`, as ext_authz's checks), else a bodiless request
    has no framing header (the cache filter's, sent headers only); `extra`: header lines after `headers`.
    Returns the call, to cancel it, or None when it could not start (`done` then hears why, soon)."""
    loop = worker.loop
    cluster = worker.clusters.get(cluster_name)
    if cluster is None:
        loop.call_soon(done, None, "no_cluster")
        return None
    host_ = cluster.choose_host(None)
    if host_ is None:
        loop.call_soon(done, None, "no_host")
        return None
    # Envoy's async client states an empty body's length whatever the method (its ext_authz checks say 0)
    if empty_length and not body and method in _BODILESS_METHODS:
        extra = b"content-length: 0\r\n" + (extra or b"")
    head = Http1RequestEncoder(method, path, host, headers, chunked=False, length=len(body),
                               attempt_count=False, extra=extra).encode_head(1)
    pool = worker.pools.get(cluster, host_)
    call = Call(head + body, cluster, pool, done, loop, timeout, is_head=method == b"HEAD")
    pool.acquire(call)
    return call

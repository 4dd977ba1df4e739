"""HTTP/1.1 upstream connections and the per-host connection pool.

Envoy's HTTP/1 pool in miniature: a request takes an idle keep-alive
connection if there is one, otherwise it waits in the pool's pending queue
while a new connection is opened (subject to the cluster's circuit breakers).
Connections are not bound to the request that caused them: whichever request
is first in line gets the next connection that becomes ready, which is what
keeps latency flat when connects are slow.

Connections do not live for ever: the cluster's idle timeout (1 hour unless
set), max connection duration and max requests per connection close them as
Envoy does (`expiry.py` decides; the worker's deadline wheel looks, so a
request costs no timer). A connection taken from `idle` is busy before any
other code runs, and the wheel only closes idle ones, so an expiry never races
with a request being given the connection. A pool that holds nothing any more
tells its owner (`PoolOwner.maybe_empty`), which drops it (`pool_registry.py`).

The upstream connection parses responses with the HTTP/1.1 codec
(`pylon.proxy.http.h1_client`), which hands every event to the attached
`Exchange` (the router's per-request state), so this module knows nothing
about routing, retries or the downstream side, nor about HTTP/1 framing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from pylon.proxy.http.h1_client import CasePreservingResponseDecoder, Http1ResponseDecoder
from pylon.proxy.upstream.pool_base import PoolBase, PooledConnection, prepare_transport
from pylon.proxy.write_batch import send_held, write_batch, write_later

if TYPE_CHECKING:
    from pylon.proxy.deadlines import Watched
    from pylon.proxy.upstream.auto_sni import UpstreamName
    from pylon.proxy.upstream.cluster import Cluster, Host


class Exchange(Protocol):
    """What the pool and an upstream connection need from a request in flight."""

    is_head: bool
    upgrade_accepted: bool  # an HTTP/1.1 Upgrade this exchange may tunnel after a 101 (a CONNECT: after a 2xx)
    method: bytes

    def on_upstream_ready(self, conn: "UpstreamConnection") -> None: ...
    def on_upstream_connect_failure(self, reason: str) -> None: ...
    def on_upstream_overflow(self) -> None: ...
    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None: ...
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None: ...
    def on_upstream_complete(self) -> None: ...
    def on_upstream_reset(self, reason: str, stale: bool = False) -> None: ...
    def on_upstream_flush(self) -> None: ...
    def on_upstream_pause(self, paused: bool) -> None: ...
    def on_upstream_upgraded(self, conn: "UpstreamConnection", headers: list[tuple[bytes, bytes]],
                             rest: bytes, status: int) -> None: ...


class PoolOwner(Protocol):
    """What a pool needs from the worker: its deadline wheel, and a word when the pool may be empty."""

    def arm(self, target: "Watched", when: float) -> None:
        """Have the wheel look at `target` at `when` (see deadlines.py)."""

    def disarm(self, target: "Watched") -> None:
        """`target` closed: the wheel forgets it."""

    def maybe_empty(self, pool: "HostPool") -> None:
        """`pool` holds no connection and no request now; its owner may drop it."""


class UpstreamConnection(PooledConnection):
    """One keep-alive connection to a host; serves one exchange at a time (no pipelining).

    An asyncio protocol without deriving from asyncio.Protocol: compiled, it is an extension type (pool.pxd), which
    cannot, so each callback asyncio's protocol defines is written here, eof_received included."""

    __slots__ = (
        "pool", "transport", "decoder", "exchange", "keep_alive", "closed", "requests", "answered",
        "local_address", "wake_at", "opened_at", "idle_since", "draining", "batch", "held", "rx_bytes",
        "tx_bytes", "started_at",
    )
    multiplexed = False  # an HTTP/2 stream (h2_pool.H2UpstreamStream) says True: the router frames for it apart

    def __init__(self, pool: "HostPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.local_address: tuple[str, int] | None = None  # for %UPSTREAM_LOCAL_ADDRESS%
        cluster = pool.cluster
        self.decoder = Http1ResponseDecoder(self, pool.limits.max_headers, cluster.upstream_trailers) \
            if cluster.response_case is None else CasePreservingResponseDecoder(
                self, pool.limits.max_headers, cluster.upstream_trailers,
                cluster.response_case.formatter_type_on_envoy_headers == "PROPER_CASE")
        self.exchange: Exchange | None = None
        self.keep_alive = True  # the last response allowed reuse (and nothing since forbade it)
        self.closed = False
        self.requests = 0
        self.answered = False  # a byte of the current exchange's response has arrived
        self.wake_at = 0.0  # when the worker's deadline wheel looks at this connection next (0 = not armed)
        self.opened_at = 0.0  # when the connect finished (max_connection_duration counts from it)
        self.started_at = 0.0  # when it began (upstream_cx_length_ms counts from it, as Envoy's)
        self.idle_since = 0.0  # when it last went idle in the pool; 0.0 while it serves an exchange
        self.draining = False  # max_connection_duration reached: no more requests, closed once idle
        self.batch = write_batch(pool.loop)  # requests go out at the end of the loop's I/O phase (write_batch.py)
        self.held: list[bytes] | None = None
        self.rx_bytes = cluster.stats.upstream_cx_rx_bytes_total
        self.tx_bytes = cluster.stats.upstream_cx_tx_bytes_total  # what send_held counts what it writes in

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local_address = prepare_transport(transport, self.pool.cluster.config.per_connection_buffer_limit_bytes)

    def data_received(self, data: bytes) -> None:
        self.rx_bytes.value += len(data)
        exchange = self.exchange
        if exchange is None:
            # Bytes with no request outstanding: the server is confused; never reuse it.
            self.close()
            return
        self.answered = True
        try:
            rest = self.decoder.feed(data)
        except httptools.HttpParserError:
            self._protocol_error()
            return
        if rest is not None:
            decoder = self.decoder
            status = decoder.status
            if (status == 101 or decoder.tunnel is not None) and exchange.upgrade_accepted \
                    and self.exchange is exchange:
                # The upstream took the upgrade (or the CONNECT): the connection is the tunnel's now, never the
                # pool's again.
                self.exchange = None
                self.keep_alive = False
                exchange.on_upstream_upgraded(self, decoder.headers, rest, status)
                return
            self._protocol_error()  # switching protocols unasked
            return
        if self.exchange is not None:
            self.exchange.on_upstream_flush()

    def _protocol_error(self) -> None:
        self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
        self.keep_alive = False
        self.close()
        if self.exchange is not None:
            self.exchange, ex = None, self.exchange
            ex.on_upstream_reset("protocol error")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        if self.decoder.connection_closed():
            # The body of a response without Content-Length or chunking ends with the connection.
            exchange.on_upstream_complete()
        else:
            if self.answered:  # a response cut short: Envoy's HTTP/1 codec reads the close as a protocol error
                self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
            # A reused connection lost before any byte of the answer: most often the server closed it
            # (keep-alive limit, idle timeout) as the request went out (`stale`; see Stream.on_upstream_reset).
            exchange.on_upstream_reset("connection termination", stale=self.requests > 0 and not self.answered)

    def eof_received(self) -> None:
        """The server shut its side: returning None lets the transport close, as asyncio.Protocol's default."""
        return None

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_pause(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_pause(False)

    # -- the decoder's owner --------------------------------------------------
    def response_complete(self) -> None:
        exchange = self.exchange
        self.exchange = None
        self.requests += 1
        assert exchange is not None
        exchange.on_upstream_complete()
        self.pool.release(self)

    # -- used by the exchange ----------------------------------------------
    def write(self, data: bytes) -> None:
        """Send with the rest of this I/O phase's writes (write_batch.py)."""
        if self.transport is not None and not self.closed:
            write_later(self, data)

    def _before_close(self) -> None:
        send_held(self)  # the request's bytes before the close

    def abandon(self) -> None:
        """The exchange gave up on this connection mid-response: it cannot be reused."""
        self.exchange = None
        self.close()



class HostPool(PoolBase):
    """HTTP/1.1 connections to one host from one worker, with Envoy's pending-request queue (pool_base.py)."""

    protocol_stat = "upstream_cx_http1_total"

    def __init__(self, cluster: "Cluster", host: "Host", loop: asyncio.AbstractEventLoop, owner: PoolOwner,
                 key: Any = None, name: "UpstreamName | None" = None) -> None:
        super().__init__(cluster, host, loop, owner, key, name)
        # Oldest idle first: `release` appends and `acquire` takes the most recent, so the ones that expire are
        # at the front, and a busy pool keeps reusing its warm connections.
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()

    def acquire(self, exchange: Exchange, fresh: bool = False) -> None:
        """Give the exchange a connection now, or queue it and open one if the breakers allow.

        `fresh`: only a newly opened connection will do (the exchange just lost a stale one).
        """
        idle = self.idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                self._assign(conn, exchange)
                return
        self._enqueue(exchange, fresh)

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange finished cleanly on `conn`: reuse it, or close it if it can't be reused."""
        limit = self.max_requests_per_connection
        if conn.closed or not conn.keep_alive or conn.draining or (limit and conn.requests >= limit) \
                or (self.retired and not self.pending):
            conn.close()
            return
        if self.pending:
            exchange = self.pending.popleft()
            self.cluster.circuit_breakers.pending_requests.release()
            self._assign(conn, exchange)
            return
        self.busy.discard(conn)
        self.idle.append(conn)
        conn.idle_since = now = self.loop.time()
        idle_timeout = self.limits.idle_timeout
        if idle_timeout:
            when = now + idle_timeout
            if when < conn.wake_at or not conn.wake_at:  # usually armed already, for an earlier idle period
                self.owner.arm(conn, when)

    def _busy(self, conn: UpstreamConnection) -> bool:
        return not conn.idle_since

    def forget(self, conn: UpstreamConnection) -> None:
        """Bookkeeping when a connection closes for any reason (called once per connection)."""
        self.owner.disarm(conn)
        if conn in self.busy:
            self.busy.discard(conn)
        else:
            try:
                self.idle.remove(conn)
            except ValueError:
                return
        self._count_closed(conn)

    @property
    def empty(self) -> bool:
        """No connection (idle, busy or being opened) and no request waiting: nothing would be lost by dropping it."""
        return not (self.idle or self.busy or self.connecting or self.pending or self.fresh_pending)

    def retire(self) -> None:
        """The cluster went away (CDS): close idle connections now, busy ones once their exchange ends."""
        self.retired = True
        for conn in list(self.idle):
            conn.close()

    def close_all(self) -> None:
        for conn in list(self.idle) + list(self.busy):
            conn.close()
        for task in list(self.tasks):
            task.cancel()

    def _assign(self, conn: UpstreamConnection, exchange: Exchange) -> None:
        self.busy.add(conn)
        conn.idle_since = 0.0
        limit = self.max_requests_per_connection
        if limit and conn.requests + 1 == limit:
            # Envoy counts a connection at its last allowed request, as it starts draining it (closed after).
            self.cluster.stats.upstream_cx_max_requests.value += 1
        conn.exchange = exchange
        conn.answered = False
        exchange.on_upstream_ready(conn)

    def _maybe_connect(self) -> None:
        while self.connecting < len(self.pending) + len(self.fresh_pending):
            if not self._start_connect():
                return

    def _new_connection(self) -> UpstreamConnection:
        return UpstreamConnection(self)

    def _connect_failed(self, reason: str) -> None:
        """One connect is one request's: the first in line fails."""
        queue = self.fresh_pending or self.pending
        if queue:
            exchange = queue.popleft()
            self.cluster.circuit_breakers.pending_requests.release()
            self.cluster.stats.upstream_rq_pending_failure_eject.value += 1
            exchange.on_upstream_connect_failure(reason)

    def connected(self, conn: UpstreamConnection) -> None:
        """A connection `_connect` opened (no longer counted in `connecting`; it keeps its circuit-breaker slot) is
        up: count it, start the clock of its max duration, and give it to the first request in line, or keep it
        idle."""
        self.busy.add(conn)
        self._count_opened(conn)
        if self.fresh_pending:
            self.cluster.circuit_breakers.pending_requests.release()
            self._assign(conn, self.fresh_pending.popleft())
        else:
            self.release(conn)

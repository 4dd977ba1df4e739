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
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from pylon.proxy.http.h1_client import Http1ResponseDecoder
from pylon.proxy.upstream.connect import ConnectError, ConnectTimeout, open_upstream
from pylon.proxy.upstream.expiry import ConnectionLimits, Expiry, verdict
from pylon.proxy.watermarks import apply_buffer_limit

if TYPE_CHECKING:
    from pylon.proxy.deadlines import Watched
    from pylon.proxy.upstream.auto_sni import UpstreamName
    from pylon.proxy.upstream.cluster import Cluster, Host

log = logging.getLogger("pylon.upstream")


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


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a host; serves one exchange at a time (no pipelining)."""

    __slots__ = (
        "pool", "transport", "decoder", "exchange", "keep_alive", "closed", "requests", "answered",
        "local_address", "wake_at", "opened_at", "idle_since", "draining",
    )
    multiplexed = False  # an HTTP/2 stream (h2_pool.H2UpstreamStream) says True: the router frames for it apart

    def __init__(self, pool: "HostPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.local_address: tuple[str, int] | None = None  # for %UPSTREAM_LOCAL_ADDRESS%
        self.decoder = Http1ResponseDecoder(self, pool.limits.max_headers, pool.cluster.upstream_trailers)
        self.exchange: Exchange | None = None
        self.keep_alive = True  # the last response allowed reuse (and nothing since forbade it)
        self.closed = False
        self.requests = 0
        self.answered = False  # a byte of the current exchange's response has arrived
        self.wake_at = 0.0  # when the worker's deadline wheel looks at this connection next (0 = not armed)
        self.opened_at = 0.0  # when the connect finished (max_connection_duration counts from it)
        self.idle_since = 0.0  # when it last went idle in the pool; 0.0 while it serves an exchange
        self.draining = False  # max_connection_duration reached: no more requests, closed once idle

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        apply_buffer_limit(transport, self.pool.cluster.config.per_connection_buffer_limit_bytes)
        self.local_address = transport.get_extra_info("sockname")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
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
            # A reused connection lost before any byte of the answer: most often the server closed it
            # (keep-alive limit, idle timeout) as the request went out (`stale`; see Stream.on_upstream_reset).
            exchange.on_upstream_reset("connection termination", stale=self.requests > 0 and not self.answered)

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
    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.answered = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abandon(self) -> None:
        """The exchange gave up on this connection mid-response: it cannot be reused."""
        self.exchange = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool.forget(self)

    def sweep(self, now: float) -> float:
        """The deadline wheel's look (deadlines.py): enforce the idle timeout and max duration; next look or 0."""
        if self.closed:
            return 0.0
        return self.pool.expire(self, now)


class HostPool:
    """Connections to one host from one worker, with Envoy's pending-request queue.

    `name`: the request host name its connections are for (auto_sni / auto_san_validation: their SNI and the SAN
    required), None for a host's one pool; `key` is what its owner keys it by.
    """

    def __init__(self, cluster: "Cluster", host: "Host", loop: asyncio.AbstractEventLoop, owner: PoolOwner,
                 key: Any = None, name: "UpstreamName | None" = None) -> None:
        self.cluster = cluster
        self.host = host
        self.key = key if key is not None else host
        self.name = name
        self.loop = loop
        self.owner = owner
        self.limits: ConnectionLimits = cluster.connection_limits
        self.max_requests_per_connection = self.limits.max_requests
        # Oldest idle first: `release` appends and `acquire` takes the most recent, so the ones that expire are
        # at the front, and a busy pool keeps reusing its warm connections.
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()
        self.pending: deque[Exchange] = deque()
        self.fresh_pending: deque[Exchange] = deque()  # waiting for a new connection, never a reused one
        self.connecting = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.retired = False  # its cluster was removed or replaced: finish what is in flight, reuse nothing

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
        cluster = self.cluster
        if not cluster.circuit_breakers.pending_requests.try_acquire():
            exchange.on_upstream_overflow()
            return
        (self.fresh_pending if fresh else self.pending).append(exchange)
        cluster.stats.upstream_rq_pending_total.value += 1
        self._maybe_connect()

    def cancel(self, exchange: Exchange) -> None:
        """A queued exchange went away (client closed, timeout) before it got a connection."""
        for queue in (self.pending, self.fresh_pending):
            try:
                queue.remove(exchange)
            except ValueError:
                continue
            self.cluster.circuit_breakers.pending_requests.release()
            self._check_empty()
            return

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

    def expire(self, conn: UpstreamConnection, now: float) -> float:
        """Close or drain `conn` if its idle timeout or max duration is due (expiry.py); its next look, or 0."""
        why, following = verdict(self.limits, now, conn.opened_at, conn.idle_since, conn.draining)
        if why is None:
            return following
        getattr(self.cluster.stats, why.value).value += 1
        if why is Expiry.MAX_DURATION:
            conn.draining = True
            if not conn.idle_since:
                return 0.0  # busy: `release` closes it after this response
        conn.close()
        return 0.0

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
        stats = self.cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        stats.upstream_rq_per_cx.record(conn.requests)
        self.host.active_connections -= 1
        self.cluster.circuit_breakers.connections.release()
        if self.pending or self.fresh_pending:
            self._maybe_connect()
        else:
            self._check_empty()

    @property
    def empty(self) -> bool:
        """No connection (idle, busy or being opened) and no request waiting: nothing would be lost by dropping it."""
        return not (self.idle or self.busy or self.connecting or self.pending or self.fresh_pending)

    def _check_empty(self) -> None:
        if self.empty:
            self.owner.maybe_empty(self)

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
        conn.attach(exchange)
        exchange.on_upstream_ready(conn)

    def _maybe_connect(self) -> None:
        connections = self.cluster.circuit_breakers.connections
        while self.connecting < len(self.pending) + len(self.fresh_pending):
            if not connections.try_acquire():
                return
            self.connecting += 1
            task = self.loop.create_task(self._connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        cluster = self.cluster
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_http1_total.value += 1
        host, port = self.host.address
        tls = cluster.tls_for(self.host)  # read at each connect: a rotated SDS certificate applies to new ones
        if self.name is not None:
            tls = self.name.tls(tls)
        try:
            try:
                _, conn = await open_upstream(self.host.address, tls, cluster.connect_timeout,
                                              lambda: UpstreamConnection(self), cluster.source)
                if conn.closed:
                    # Lost before the pool could use it: over TLS 1.3 a server refusing the client (no or a bad
                    # certificate) says so after the client's handshake is done, often before this line runs.
                    raise ConnectError("connection termination")
            except ConnectTimeout:
                stats.upstream_cx_connect_timeout.value += 1
                raise
            except ConnectError:
                raise
            except Exception as exc:  # a bug on this path must fail the request (503), never leave it waiting
                log.exception("opening a connection to %s:%d failed", host, port)
                raise ConnectError(f"internal error: {type(exc).__name__}") from exc
        except ConnectError as exc:
            self.connecting -= 1
            stats.upstream_cx_connect_fail.value += 1
            cluster.circuit_breakers.connections.release()
            self.host.record_connect_failure()
            log.debug("connect to %s:%d failed: %s", host, port, exc)
            queue = self.fresh_pending or self.pending
            if queue:
                exchange = queue.popleft()
                cluster.circuit_breakers.pending_requests.release()
                exchange.on_upstream_connect_failure(str(exc))
            self._check_empty()
            return
        except asyncio.CancelledError:
            self.connecting -= 1
            cluster.circuit_breakers.connections.release()
            raise
        self.connecting -= 1
        self.connected(conn)

    def connected(self, conn: UpstreamConnection) -> None:
        """A connection `_connect` opened (no longer counted in `connecting`; it keeps its circuit-breaker slot) is
        up: count it, start the clock of its max duration, and give it to the first request in line, or keep it
        idle."""
        cluster = self.cluster
        cluster.stats.upstream_cx_active.value += 1
        self.host.active_connections += 1
        self.busy.add(conn)
        conn.opened_at = now = self.loop.time()
        if self.limits.max_duration:
            self.owner.arm(conn, now + self.limits.max_duration)
        if self.fresh_pending:
            cluster.circuit_breakers.pending_requests.release()
            self._assign(conn, self.fresh_pending.popleft())
        else:
            self.release(conn)


"""What the HTTP/1.1 pool (`pool.py`) and the HTTP/2 pool (`h2_pool.py`) share: one host's queue and connects.

Both keep Envoy's pending queue under the cluster's `max_pending_requests`
breaker (and a second queue for requests that need a new connection: they lost
a stale one, or the server refused their stream), open connections under
`max_connections` with the cluster's connect timeout, TLS and source address
(`connect.py`), close connections their idle timeout or max duration reached
(`expiry.py`), and count the same stats when a connection comes and goes. They
differ in how many requests a connection carries at once, so each says how a
failed connect fails its queue, when a connection is busy, and which
connection protocol to make.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy.upstream.connect import ConnectError, ConnectTimeout, open_upstream
from pylon.proxy.upstream.expiry import ConnectionLimits, Expiry, verdict
from pylon.proxy.upstream.host import format_address
from pylon.proxy.watermarks import apply_buffer_limit

if TYPE_CHECKING:
    from pylon.proxy.upstream.auto_sni import UpstreamName
    from pylon.proxy.upstream.cluster import Cluster, Host
    from pylon.proxy.upstream.pool import Exchange, PoolOwner
    from pylon.proxy.upstream.tls_factory import UpstreamTls

log = logging.getLogger("pylon.upstream")


def prepare_transport(transport: asyncio.BaseTransport, buffer_limit: int) -> tuple[str, int] | None:
    """An upstream connection's transport as both pools set it up: the cluster's buffer limit as its watermarks,
    no Nagle delay (a small request leaves at once); returns its local address (%UPSTREAM_LOCAL_ADDRESS%)."""
    apply_buffer_limit(transport, buffer_limit)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return transport.get_extra_info("sockname")


class PooledConnection:
    """What both pools' connections share: a close the pool hears of at once, and the deadline wheel's look.

    Each subclass holds `pool`, `transport` and `closed` in its own slots (compiled, its own C fields: see
    pool_base.pxd, whose extension type has none)."""

    __slots__ = ()

    def _before_close(self) -> None:
        """Write what must still go out before the socket closes (HTTP/2: a queued GOAWAY or RST_STREAM)."""

    def close(self) -> None:
        if not self.closed:
            self._before_close()
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            self.pool.forget(self)

    def sweep(self, now: float) -> float:
        """The deadline wheel's look (deadlines.py): enforce the idle timeout and max duration; next look or 0."""
        if self.closed:
            return 0.0
        return self.pool.expire(self, now)


class PoolBase:
    """One host's connections from one worker: the queues, the connects, expiry and the stats of both pools.

    `name`: the request host name its connections are for (auto_sni / auto_san_validation: their SNI and the SAN
    required), None for a host's one pool; `key` is what its owner keys it by.
    """

    #: The counter a new connection of this pool's protocol adds to (Envoy's upstream_cx_http1_total / http2).
    protocol_stat = ""

    def __init__(self, cluster: "Cluster", host: "Host", loop: asyncio.AbstractEventLoop, owner: "PoolOwner",
                 key: Any = None, name: "UpstreamName | None" = None) -> None:
        self.cluster = cluster
        self.host = host
        self.key = key if key is not None else host
        self.name = name
        self.loop = loop
        self.owner = owner
        self.limits: ConnectionLimits = cluster.connection_limits
        self.max_requests_per_connection = self.limits.max_requests
        self.pending: deque[Exchange] = deque()
        self.fresh_pending: deque[Exchange] = deque()  # waiting for a new connection, never a reused one
        self.connecting = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.retired = False  # its cluster was removed or replaced: finish what is in flight, reuse nothing
        #: what each of its connections sends first (the cluster's PROXY protocol header; set by the registry)
        self.preamble: Callable[[Any, Any], bytes] | None = None

    # -- what each pool says ------------------------------------------------------------------------
    def _new_connection(self) -> Any:
        """The protocol object of a connection being opened."""
        raise NotImplementedError

    def _busy(self, conn: Any) -> bool:
        """Whether `conn` serves a request now (a max duration then waits for it to end)."""
        raise NotImplementedError

    def _connect_failed(self, reason: str) -> None:
        """A connect failed: fail the queued requests it was opened for."""
        raise NotImplementedError

    def connected(self, conn: Any) -> None:
        """A connection `_connect` opened is up (no longer counted in `connecting`; it keeps its breaker slot)."""
        raise NotImplementedError

    def _maybe_connect(self) -> None:
        """Open connections while the queue needs them and the breaker allows."""
        raise NotImplementedError

    def _prepare_tls(self, tls: "UpstreamTls") -> None:
        """Adjust the connection's TLS before the connect (HTTP/2: ALPN)."""

    # -- shared -------------------------------------------------------------------------------------
    def _enqueue(self, exchange: "Exchange", fresh: bool) -> None:
        """No connection can take `exchange` now: queue it if the breaker allows, and open a connection if needed."""
        cluster = self.cluster
        if not cluster.circuit_breakers.pending_requests.try_acquire():
            exchange.on_upstream_overflow()
            return
        (self.fresh_pending if fresh else self.pending).append(exchange)
        cluster.stats.upstream_rq_pending_total.value += 1
        self._maybe_connect()

    def cancel(self, exchange: "Exchange") -> None:
        """A queued exchange went away (client closed, timeout) before it got a connection."""
        for queue in (self.pending, self.fresh_pending):
            try:
                queue.remove(exchange)
            except ValueError:
                continue
            self.cluster.circuit_breakers.pending_requests.release()
            self._check_empty()
            return

    def expire(self, conn: Any, now: float) -> float:
        """Close or drain `conn` if its idle timeout or max duration is due (expiry.py); its next look, or 0."""
        why, following = verdict(self.limits, now, conn.opened_at, conn.idle_since, conn.draining)
        if why is None:
            return following
        getattr(self.cluster.stats, why.value).value += 1
        if why is Expiry.MAX_DURATION:
            conn.draining = True
            if self._busy(conn):
                return 0.0  # closed once its requests end
        conn.close()
        return 0.0

    def _count_closed(self, conn: Any) -> None:
        """A connection the pool held closed: the stats, the host's count and the breaker slot; the queue may need
        another connection."""
        stats = self.cluster.stats
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        stats.upstream_rq_per_cx.record(conn.requests)
        stats.upstream_cx_length_ms.record((self.loop.time() - conn.started_at) * 1000.0)
        self.host.active_connections -= 1
        self.cluster.circuit_breakers.connections.release()
        if self.pending or self.fresh_pending:
            self._maybe_connect()
        else:
            self._check_empty()

    def _count_opened(self, conn: Any) -> float:
        """A connection is up: count it and start the clock of its max duration; returns the time."""
        self.cluster.stats.upstream_cx_active.value += 1
        self.host.active_connections += 1
        conn.opened_at = now = self.loop.time()
        if self.limits.max_duration:
            self.owner.arm(conn, now + self.limits.max_duration)
        return now

    def _check_empty(self) -> None:
        if self.empty:
            self.owner.maybe_empty(self)  # type: ignore[arg-type]

    @property
    def empty(self) -> bool:
        raise NotImplementedError

    def _start_connect(self) -> bool:
        """Take a connection slot from the breaker and start a connect; False when the breaker is full."""
        if not self.cluster.circuit_breakers.connections.try_acquire():
            return False
        self.connecting += 1
        task = self.loop.create_task(self._connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _connect(self) -> None:
        cluster = self.cluster
        stats = cluster.stats
        stats.upstream_cx_total.value += 1
        if self.protocol_stat:
            getattr(stats, self.protocol_stat).value += 1
        tls = cluster.tls_for(self.host)  # read at each connect: a rotated SDS certificate applies to new ones
        if self.name is not None:
            tls = self.name.tls(tls)
        self._prepare_tls(tls)
        started = self.loop.time()
        try:
            try:
                _, conn = await open_upstream(self.host.address, tls, cluster.connect_timeout,
                                              self._new_connection, cluster.source, cluster.keepalive, cluster.tap,
                                              self.preamble)
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
                log.exception("opening a connection to %s failed", format_address(self.host.address))
                raise ConnectError(f"internal error: {type(exc).__name__}") from exc
        except ConnectError as exc:
            self.connecting -= 1
            stats.upstream_cx_connect_fail.value += 1
            stats.upstream_cx_destroy.value += 1  # as Envoy's pools: the failed connection is destroyed too
            cluster.circuit_breakers.connections.release()
            self.host.record_connect_failure()
            log.debug("connect to %s failed: %s", format_address(self.host.address), exc)
            self._connect_failed(str(exc))
            self._check_empty()
            return
        except asyncio.CancelledError:
            self.connecting -= 1
            cluster.circuit_breakers.connections.release()
            raise
        self.connecting -= 1
        conn.started_at = started
        stats.upstream_cx_connect_ms.record((self.loop.time() - started) * 1000.0)
        self.connected(conn)

"""Envoy's `envoy.filters.network.tcp_proxy`: relay bytes between a client and one upstream host.

Each downstream connection gets its own upstream connection (no pooling: a
TCP stream is opaque), opened as every upstream connection is (`upstream/connect.py`:
the cluster's TLS origination and SAN checks included). Bytes arriving before the upstream connects are
buffered; after that each side's write buffer back-pressures the other side's
reads, so a slow peer never makes the proxy buffer without bound.

Which cluster: the one named, or with `weighted_clusters` one picked by weight for each downstream
connection (Envoy's pick: a random number below the total weight, the first cluster whose running sum
exceeds it). Which host: the cluster's balancer, given the client's IP as hash key when `hash_policy` says
`source_ip` (a RING_HASH cluster then keeps one client on one host; other policies ignore the key, as in
Envoy). How long: `idle_timeout` and `max_downstream_connection_duration` are both enforced by the
worker's deadline wheel (`sweep`), never by a timer per connection.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
from typing import TYPE_CHECKING, Any

from pylon.proxy.access_log import AccessLogRecord, build_access_loggers
from pylon.proxy.connection_info import ConnectionInfo, address_host, transport_address
from pylon.proxy.filters.network import run_filters
from pylon.proxy.tcp_tunneling import HttpTunnelUpstream, TunnelingRequest
from pylon.proxy.tcp_tunneling_h2 import H2TcpTunnel, open_h2_tunnel
from pylon.proxy.tcp_upstream import TcpUpstream
from pylon.proxy.tls_stats import TlsStats, tls_accepted
from pylon.proxy.upstream.connect import ConnectError, ConnectTimeout, open_upstream
from pylon.proxy.watermarks import apply_buffer_limit
from pylon.stats.store import StatsStore

if TYPE_CHECKING:
    from pylon.proxy.upstream.cluster import Cluster
    from pylon.proxy.worker import Worker

log = logging.getLogger("pylon.tcp_proxy")


class TcpProxyRuntime:
    """One tcp_proxy filter config compiled for one worker."""

    def __init__(self, config: Any, clusters: "dict[str, Cluster]", stats: StatsStore, worker: "Worker") -> None:
        self.worker = worker
        self.clusters = clusters  # the worker's, kept current by CDS: the cluster is looked up per connection
        self.cluster_name: str | None = config.cluster  # None: picked per connection from the weighted clusters
        self.weighted_names: tuple[str, ...] = ()
        self.weighted_bounds: list[int] = []  # running sums of the weights, for the pick's bisect
        if config.weighted_clusters is not None:
            entries = config.weighted_clusters.clusters
            self.weighted_names = tuple(entry.name for entry in entries)
            self.weighted_bounds = list(itertools.accumulate(entry.weight for entry in entries))
        self.rng = random.Random()
        self.hash_source_ip = bool(config.hash_policy)  # the model admits source_ip only
        self.idle_timeout = config.idle_timeout or 0.0
        self.max_duration = float(config.max_downstream_connection_duration or 0.0)
        jitter = config.max_downstream_connection_duration_jitter_percentage
        self.max_duration_jitter = jitter.value / 100.0 if jitter is not None else 0.0
        self.max_connect_attempts = config.max_connect_attempts or 1
        # tunneling_config: the bytes go inside an HTTP/1.1 CONNECT or POST (tcp_tunneling.py)
        self.tunneling = TunnelingRequest(config.tunneling_config) if config.tunneling_config is not None else None
        prefix = f"tcp.{config.stat_prefix}."
        self.cx_total = stats.counter(prefix + "downstream_cx_total")
        self.cx_no_route = stats.counter(prefix + "downstream_cx_no_route")
        self.cx_rx_bytes = stats.counter(prefix + "downstream_cx_rx_bytes_total")
        self.cx_tx_bytes = stats.counter(prefix + "downstream_cx_tx_bytes_total")
        self.idle_timeouts = stats.counter(prefix + "idle_timeout")
        self.max_duration_reached = stats.counter(prefix + "max_downstream_connection_duration")
        self.upstream_flush_active = stats.gauge(prefix + "upstream_flush_active")
        self.access_loggers = build_access_loggers(config.access_log, worker.access_log_writer)
        self.peer_check: Any = None  # set by the listener when TLS validates client certificates
        self.tls_stats: TlsStats | None = None  # the listener's ssl.* stats, on a TLS chain (set by the listener)
        self.network_filters: list[Any] = []  # the chain's filters ahead of this one (set by the listener)

    def pick_cluster(self) -> str:
        """The cluster of one downstream connection: the configured one, or one of the weighted clusters."""
        if self.cluster_name is not None:
            return self.cluster_name
        bounds = self.weighted_bounds
        return self.weighted_names[bisect.bisect_right(bounds, self.rng.randrange(bounds[-1]))]

    def session_deadline(self, start: float) -> float:
        """When a session started at `start` reaches max_downstream_connection_duration (0.0: never)."""
        if not self.max_duration:
            return 0.0
        jitter = self.max_duration * self.max_duration_jitter * self.rng.random() if self.max_duration_jitter else 0.0
        return start + self.max_duration + jitter


class TcpProxySession(asyncio.Protocol):
    """The downstream half, and the owner of the session's state."""

    def __init__(self, runtime: TcpProxyRuntime) -> None:
        self.runtime = runtime
        self.downstream: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: TcpUpstream | HttpTunnelUpstream | H2TcpTunnel | None = None
        self.early: list[bytes] = []
        self.closed = False
        self.downstream_done = False  # the client half-closed (EOF)
        self.upstream_done = False  # the upstream half-closed (EOF)
        self.host = None
        self.upstream_started = 0.0  # when the connect to `host` began (the cluster's upstream_cx_length_ms)
        self.cluster: Cluster | None = None
        self.cluster_name: str | None = runtime.cluster_name  # the weighted pick's, once made
        self.last_activity = 0.0
        self.deadline = 0.0  # max_downstream_connection_duration's end (0 = none)
        self.wake_at = 0.0  # when the worker's deadline wheel looks at this session next (0 = not armed)
        self.start = 0.0
        self.rx = 0
        self.tx = 0
        self.connection_id = 0
        self.flags = "-"
        self.runtime_listener: Any = None
        self.detected: Any = None  # what the listener filters found (SNI, ALPN), if they ran
        self.info: ConnectionInfo | None = None
        self.waiting: asyncio.Future[bool] | None = None  # a network filter's verdict not in yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.downstream = transport  # type: ignore[assignment]
        rt = self.runtime
        if self.runtime_listener is not None:
            apply_buffer_limit(transport, self.runtime_listener.config.per_connection_buffer_limit_bytes)
        worker = rt.worker
        self.start = self.last_activity = worker.loop.time()
        self.connection_id = worker.next_connection_id()
        rt.cx_total.value += 1
        worker.connection_opened(self)
        if rt.tls_stats is not None and not tls_accepted(transport, rt.peer_check, rt.tls_stats):
            self.closed = True  # a client certificate the listener's SAN matchers refuse (counted, as in Envoy)
            transport.abort()
            return
        waiting = None
        if rt.network_filters:
            verdict = run_filters(rt.network_filters, self.connection_info())
            if verdict is False:
                self.close()  # refused (e.g. by RBAC) before any upstream connection exists
                return
            if verdict is not True:
                waiting = self.waiting = verdict  # e.g. the SNI's DNS answer; bytes meanwhile wait in `early`
        self.deadline = rt.session_deadline(self.start)
        idle_due = self.start + rt.idle_timeout if rt.idle_timeout else 0.0
        first = min(idle_due, self.deadline) if idle_due and self.deadline else idle_due or self.deadline
        if first:
            worker.deadlines.arm(self, first)
        worker.loop.create_task(self._connect(waiting))

    def connection_info(self) -> ConnectionInfo:
        """The connection's facts for network filters (built on first use)."""
        if self.info is None:
            transport = self.downstream
            detected = self.detected
            original = detected.original_destination if detected is not None else None
            self.info = ConnectionInfo(self.connection_id, original or transport.get_extra_info("sockname"),
                                       self.remote_address(), transport.get_extra_info("ssl_object"),
                                       detected.server_name if detected is not None else "",
                                       transport.get_extra_info("peername"))
            self.info.restored_local = original
        return self.info

    def remote_address(self) -> Any:
        """The client: a PROXY protocol header's source (listener filter), else the socket's peer."""
        detected = self.detected
        if detected is not None and detected.remote_address is not None:
            return detected.remote_address
        return self.downstream.get_extra_info("peername")

    async def _connect(self, waiting: "asyncio.Future[bool] | None" = None) -> None:
        rt = self.runtime
        if waiting is not None:
            try:
                allowed = await waiting
            except asyncio.CancelledError:
                return  # the client left while a filter waited (connection_lost cancelled it)
            self.waiting = None
            if not allowed:
                self.close()
                return
        name = self.cluster_name = rt.pick_cluster()
        cluster = self.cluster = rt.clusters.get(name)
        if cluster is None:
            self.flags = "NC"  # Envoy: no cluster by that name (CDS removed it)
            rt.cx_no_route.value += 1
            self.close()
            return
        key = None
        if rt.hash_source_ip:
            peer = self.remote_address()
            key = address_host(peer).encode() if peer else None  # the address without the port, as Envoy hashes it
        if rt.tunneling is not None and cluster.protocol == "http2":
            tunnel = await open_h2_tunnel(self, cluster, key)  # a stream on the host's HTTP/2 pool
            if tunnel is None:
                self.close()
            else:
                self._attach(tunnel)
            return
        stats = cluster.stats
        downstream = None  # what a PROXY protocol header names: the client, and the address it reached
        if cluster.any_proxy_protocol:
            info = self.connection_info()
            downstream = (info.remote_address, info.local_address)
        for _ in range(rt.max_connect_attempts):
            host = self.pick_host(cluster, key)
            if host is None:
                break
            if not cluster.circuit_breakers.connections.try_acquire():
                self.flags = "UO"
                break
            stats.upstream_cx_total.value += 1
            started = rt.worker.loop.time()
            try:
                _, upstream = await open_upstream(host.address, cluster.tls_for(host), cluster.connect_timeout,
                                                  self._upstream_factory(host), cluster.source, cluster.keepalive,
                                                  cluster.tap, cluster.preamble_for(host, downstream))
            except ConnectError as exc:
                cluster.circuit_breakers.connections.release()
                if isinstance(exc, ConnectTimeout):
                    stats.upstream_cx_connect_timeout.value += 1
                stats.upstream_cx_connect_fail.value += 1
                stats.upstream_cx_destroy.value += 1
                host.record_connect_failure()
                self.flags = "UF"
                continue
            if isinstance(upstream, HttpTunnelUpstream) and not await upstream.established:
                # the upstream proxy refused the CONNECT/POST (or closed): a failed attempt, as in Envoy
                upstream.transport.close()
                cluster.circuit_breakers.connections.release()
                self.flags = "UF"
                if self.closed:
                    return
                continue
            if self.closed:
                upstream.transport.close()
                cluster.circuit_breakers.connections.release()
                return
            self.host = host
            host.active_connections += 1
            stats.upstream_cx_active.value += 1
            stats.upstream_cx_connect_ms.record((rt.worker.loop.time() - started) * 1000.0)
            self.upstream_started = started
            self._attach(upstream)
            return
        self.close()

    def _attach(self, upstream: "TcpUpstream | HttpTunnelUpstream | H2TcpTunnel") -> None:
        """The upstream is there (connected, or its tunnel established): what the client sent meanwhile goes."""
        self.flags = "-"
        self.upstream = upstream
        if self.early:
            upstream.send(b"".join(self.early))
            self.early = []
            self.downstream.resume_reading()
        if self.downstream_done:
            upstream.send_eof()  # the client finished before there was an upstream to tell

    def pick_host(self, cluster: "Cluster", key: bytes | None) -> Any:
        """The host of one connect attempt: the balancer's (with the hash key), or the one the client asked for;
        None when there is none (flag UH, counted)."""
        host = cluster.choose_host(key) if not cluster.provided else cluster.connection_host(self.connection_info())
        if host is None:
            self.flags = "UH"
            cluster.stats.upstream_cx_none_healthy.value += 1
        return host

    def _upstream_factory(self, host: Any) -> Any:
        """The upstream protocol: a byte relay, or with tunneling_config one that first sends the HTTP request."""
        tunneling = self.runtime.tunneling
        if tunneling is None:
            return lambda: TcpUpstream(self)
        head = self.tunnel_head(host)
        return lambda: HttpTunnelUpstream(self, tunneling, head)

    def tunnel_head(self, host: Any) -> bytes:
        """tunneling_config's request head for this connection to `host` (its format strings read the facts)."""
        tunneling = self.runtime.tunneling
        assert tunneling is not None
        peer = self.remote_address()
        facts = AccessLogRecord(self.runtime.worker.wall_time(self.start), downstream_remote=transport_address(peer),
                                downstream_local=self.connection_info().local_address, upstream_host=host.address,
                                upstream_cluster=self.cluster_name, connection_id=self.connection_id,
                                requested_server_name=self.detected.server_name if self.detected else None)
        return tunneling.head(facts)

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        self.runtime.cx_rx_bytes.value += len(data)
        self.last_activity = self.runtime.worker.loop.time()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.send(data)
        else:
            self.early.append(data)
            if sum(map(len, self.early)) > 1 << 20:
                self.downstream.pause_reading()

    def eof_received(self) -> bool:
        """The client is done sending: half-close upstream; once both sides are done, the session ends."""
        self.downstream_done = True
        upstream = self.upstream
        if upstream is None:
            return True  # still connecting: the EOF follows the early bytes once the upstream is there
        if upstream.transport is not None and upstream.send_eof():
            if self.upstream_done:
                self._close_both()  # asyncio keeps a transport open after both FINs: nothing else would end it
            return True
        return False

    def from_upstream(self, data: bytes) -> None:
        self.tx += len(data)
        self.runtime.cx_tx_bytes.value += len(data)
        self.last_activity = self.runtime.worker.loop.time()
        self.downstream.write(data)

    def upstream_eof(self) -> None:
        """The upstream is done sending: half-close downstream; once both sides are done, the session ends."""
        self.upstream_done = True
        if self.downstream.can_write_eof():
            self.downstream.write_eof()
        if self.downstream_done:
            self._close_both()

    def upstream_closed(self) -> None:
        rt = self.runtime
        if self.host is not None:
            self.host.active_connections -= 1
            self.host = None
            cluster = self.cluster
            assert cluster is not None
            cluster.stats.upstream_cx_active.value -= 1
            cluster.stats.upstream_cx_destroy.value += 1
            cluster.stats.upstream_cx_length_ms.record((rt.worker.loop.time() - self.upstream_started) * 1000.0)
            cluster.circuit_breakers.connections.release()
        self.upstream = None
        self.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        rt = self.runtime
        if self.connection_id == 0:
            return  # refused in connection_made, never counted
        if not self.closed:
            self.closed = True
        rt.worker.deadlines.disarm(self)  # not held by the wheel until an idle deadline it no longer has
        if self.waiting is not None:
            self.waiting.cancel()  # the filter frees what it holds for the connection (Envoy: on destruction)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        rt.worker.connection_closed(self, self.start)
        if rt.access_loggers:
            record = AccessLogRecord()
            record.start_time = rt.worker.wall_time(self.start)
            record.bytes_received = self.rx
            record.bytes_sent = self.tx
            record.duration = (rt.worker.loop.time() - self.start) * 1000
            record.response_flags = self.flags
            record.upstream_cluster = self.cluster_name
            peer = self.remote_address()
            record.downstream_remote = transport_address(peer)
            record.connection_id = self.connection_id
            if self.detected is not None:
                record.requested_server_name = self.detected.server_name or None
            if self.info is not None:
                record.connection_termination_details = self.info.termination_details
            for logger in rt.access_loggers:
                logger.log(record)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.downstream.close()

    # worker housekeeping
    def drain(self, close_idle: bool = True) -> None:
        """TCP has no request boundary: Envoy lets TCP sessions run until the drain time ends."""

    def sweep(self, now: float) -> float:
        """Close the session once it reached max_downstream_connection_duration (flag DT, as Envoy) or was idle
        for `idle_timeout`; else say when to look again (deadlines.py)."""
        rt = self.runtime
        if self.closed:
            return 0.0
        deadline = self.deadline
        if deadline and now >= deadline:
            rt.max_duration_reached.value += 1
            self.flags = "DT"
            self._close_both()
            return 0.0
        if not rt.idle_timeout:
            return deadline
        due = self.last_activity + rt.idle_timeout
        if now < due:
            return min(due, deadline) if deadline else due
        rt.idle_timeouts.value += 1
        self._close_both()
        return 0.0

    def _close_both(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
        self.close()

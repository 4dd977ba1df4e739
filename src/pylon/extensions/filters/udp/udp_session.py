"""One UDP proxy session: a client's datagrams up one connected socket to one host, the host's answers back.

The upstream socket is made and connected (a UDP connect only fixes the peer, nothing is sent) when the session's
first datagram arrives and read with the loop's reader callback, not a datagram endpoint: the endpoint would come
a loop iteration later and the first datagrams would have to wait for it; a plain non-blocking socket takes them at
once. An answer longer than the upstream socket's limit (`UdpSocketConfig.rx_limit`) is dropped and counted as
Envoy counts a truncated one (`cluster.<c>.udp.sess_rx_datagrams_dropped`); an ICMP refusal surfaces as an error on
the socket (`sess_rx_errors`, or `sess_tx_errors` on the send that meets it). The idle timeout rides the worker's
deadline wheel (`sweep`), as every timeout of the proxy does.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from pylon.proxy.access_log import AccessLogRecord
from pylon.stats.store import StatsStore

if TYPE_CHECKING:
    from pylon.extensions.filters.udp.udp_proxy import UdpProxyFilter

#: Datagrams read from one upstream socket per wake-up, so one busy host cannot hold the loop.
READS_PER_WAKEUP = 32


class SessionStats:
    """`udp.<stat_prefix>.*`: the downstream side of a UDP proxy, Envoy's names."""

    __slots__ = ("no_route", "rx_bytes", "rx_datagrams", "rx_errors", "total", "tx_bytes", "tx_datagrams",
                 "tx_errors", "idle_timeout", "active")

    def __init__(self, store: StatsStore, prefix: str) -> None:
        self.no_route = store.counter(prefix + "downstream_sess_no_route")
        self.rx_bytes = store.counter(prefix + "downstream_sess_rx_bytes")
        self.rx_datagrams = store.counter(prefix + "downstream_sess_rx_datagrams")
        self.rx_errors = store.counter(prefix + "downstream_sess_rx_errors")
        self.total = store.counter(prefix + "downstream_sess_total")
        self.tx_bytes = store.counter(prefix + "downstream_sess_tx_bytes")
        self.tx_datagrams = store.counter(prefix + "downstream_sess_tx_datagrams")
        self.tx_errors = store.counter(prefix + "downstream_sess_tx_errors")
        self.idle_timeout = store.counter(prefix + "idle_timeout")
        store.counter(prefix + "session_filter_config_missing")  # Envoy's, kept at 0: no session filters here
        self.active = store.gauge(prefix + "downstream_sess_active")


class ClusterUdpStats:
    """The cluster's stats a UDP session counts: `cluster.<c>.udp.sess_*` and its byte totals, Envoy's names."""

    __slots__ = ("rx_datagrams", "rx_dropped", "rx_errors", "tx_datagrams", "tx_errors", "rx_bytes", "tx_bytes",
                 "tunnel_success", "tunnel_failure", "tunnel_buffer_overflow")

    def __init__(self, cluster_stats: Any) -> None:
        counter = cluster_stats.counter
        self.rx_datagrams = counter("udp.sess_rx_datagrams")
        self.rx_dropped = counter("udp.sess_rx_datagrams_dropped")
        self.rx_errors = counter("udp.sess_rx_errors")
        self.tx_datagrams = counter("udp.sess_tx_datagrams")
        self.tx_errors = counter("udp.sess_tx_errors")
        self.rx_bytes = counter("upstream_cx_rx_bytes_total")
        self.tx_bytes = counter("upstream_cx_tx_bytes_total")
        self.tunnel_success = counter("udp.sess_tunnel_success")
        self.tunnel_failure = counter("udp.sess_tunnel_failure")
        self.tunnel_buffer_overflow = counter("udp.sess_tunnel_buffer_overflow")


class Session:
    """What every UDP proxy session does alike, whatever carries its datagrams upstream: its stats and access log,
    its idle deadline, its end. `host` is the upstream host once there is one."""

    __slots__ = ("proxy", "key", "peer", "cluster", "host", "udp", "loop", "start", "last_activity", "wake_at",
                 "closed", "rx", "tx")

    def __init__(self, proxy: "UdpProxyFilter", key: Any, peer: tuple[Any, ...], cluster: Any, host: Any) -> None:
        self.proxy = proxy
        self.key = key
        self.peer = peer
        self.cluster = cluster
        self.host = host
        self.udp = ClusterUdpStats(cluster.stats)
        worker = proxy.worker
        self.loop = worker.loop
        self.closed = False
        self.wake_at = 0.0
        self.start = self.last_activity = self.loop.time()
        self.rx = self.tx = 0  # bytes from and to the client, for the session's access log
        proxy.stats.active.value += 1
        worker.arm_deadline(self, self.last_activity + proxy.idle_timeout)

    def from_downstream(self, data: bytes) -> None:
        """The client's datagram: counted, then sent up (`send_up`)."""
        stats = self.proxy.stats
        stats.rx_datagrams.value += 1
        stats.rx_bytes.value += len(data)
        self.rx += len(data)
        self.last_activity = self.loop.time()
        self.send_up(data)

    def send_up(self, data: bytes) -> None:
        raise NotImplementedError

    def to_downstream(self, data: bytes) -> None:
        """A datagram from the upstream, sent to the client from the listener's socket."""
        self.last_activity = self.loop.time()
        stats = self.proxy.stats
        if self.proxy.send_downstream(data, self.peer):
            stats.tx_datagrams.value += 1
            stats.tx_bytes.value += len(data)
            self.tx += len(data)
        else:
            stats.tx_errors.value += 1

    def sweep(self, now: float) -> float:
        """The idle timeout: no datagram either way for `idle_timeout` ends the session."""
        if self.closed:
            return 0.0
        due = self.last_activity + self.proxy.idle_timeout
        if now < due:
            return due
        self.proxy.stats.idle_timeout.value += 1
        self.close()
        return 0.0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        proxy = self.proxy
        if proxy.access_loggers:
            self._log()
        self.release_upstream()
        proxy.stats.active.value -= 1
        self.cluster.circuit_breakers.connections.release()
        proxy.worker.deadlines.disarm(self)
        proxy.forget(self)

    def release_upstream(self) -> None:
        raise NotImplementedError

    def upstream_local_address(self) -> Any:
        raise NotImplementedError

    def _log(self) -> None:
        """The session's access log line, with what Envoy's session stream info holds (observed with Envoy 1.40: no
        cluster, protocol or response code, the bytes to and from the client, the upstream socket's two ends)."""
        record = AccessLogRecord(self.proxy.worker.wall_time(self.start), bytes_received=self.rx, bytes_sent=self.tx,
                                 duration=(self.loop.time() - self.start) * 1000, response_code=0, connection_id=0,
                                 response_flags="-", upstream_host=self.host.address if self.host else None,
                                 upstream_local_address=self.upstream_local_address(),
                                 downstream_remote=self.peer[:2], downstream_local=self.proxy.local_address)
        for logger in self.proxy.access_loggers:
            logger.log(record)


class UdpSession(Session):
    """A client's session (or, per-packet balancing, a client's session with one host) on its own UDP socket."""

    __slots__ = ("sock",)

    def __init__(self, proxy: "UdpProxyFilter", key: Any, peer: tuple[Any, ...], cluster: Any, host: Any) -> None:
        address = host.address
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if cluster.source is not None:
                sock.bind(cluster.source)  # the cluster's upstream_bind_config
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        super().__init__(proxy, key, peer, cluster, host)
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def send_up(self, data: bytes) -> None:
        """Up the session's socket (a refused or full socket counts a send error and drops it)."""
        try:
            self.sock.send(data)
        except OSError:
            self.udp.tx_errors.value += 1
            return
        self.udp.tx_datagrams.value += 1
        self.udp.tx_bytes.value += len(data)

    def _on_readable(self) -> None:
        limit = self.proxy.max_upstream_datagram
        udp = self.udp
        for _ in range(READS_PER_WAKEUP):
            try:
                data = self.sock.recv(limit + 1)
            except BlockingIOError:
                return
            except OSError:
                udp.rx_errors.value += 1  # e.g. ECONNREFUSED: an earlier datagram met a closed port
                return
            if len(data) > limit:
                udp.rx_dropped.value += 1
                continue
            udp.rx_datagrams.value += 1
            udp.rx_bytes.value += len(data)
            self.to_downstream(data)

    def release_upstream(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def upstream_local_address(self) -> Any:
        return self.sock.getsockname()[:2]

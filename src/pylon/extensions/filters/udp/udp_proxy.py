"""envoy.filters.udp_listener.udp_proxy: a non-transparent UDP proxy, one upstream socket per client.

As Envoy 1.40 (checked side by side in tests/proxy/test_proxy_udp.py): a UDP listener's datagrams are grouped into
sessions by their peer (Envoy's 4-tuple: the listener's address is fixed per socket); the first datagram of a
peer picks the cluster's host (the balancer, given the peer's IP or the configured key when `hash_policies` asks)
and opens a connected UDP socket to it (`udp_session.py`); the session's datagrams go up that socket, and what the
host answers goes back to the peer from the listener's socket. A session ends after `idle_timeout` (default 60 s)
without a datagram either way (`idle_timeout` counted), or at drain. With `use_per_packet_load_balancing` every
datagram picks a host and rides the session of (peer, host), made on first use. A session whose host was found
unhealthy is ended by the next datagram, which makes a new one, as Envoy does. Sessions per cluster are bounded by
its max_connections circuit breaker (default 1024; `upstream_cx_overflow`); no host: `upstream_cx_none_healthy`;
no cluster by that name (CDS removed it): `downstream_sess_no_route`. Each drops the datagram; the first two still
count in `downstream_sess_total`, as Envoy's do. An answer longer than the upstream socket's max_rx_datagram_size
is dropped, unless its `prefer_gro` (unset: true, Envoy's default for upstream sockets) lets any length through.

Stats, Envoy's names: `udp.<stat_prefix>.downstream_sess_*`, `idle_timeout`, `session_filter_config_missing`;
the cluster's `udp.sess_*` and `upstream_cx_{rx,tx}_bytes_total`.

Refused by field: `matcher` (routing on a matcher tree: pylon's generic matcher engine is not wired into the UDP
proxy yet; the deprecated `cluster` names the one cluster), `use_original_src_ip` (needs transparent sockets and
CAP_NET_ADMIN), `session_filters`, `tunneling_config`, `proxy_access_log`, `access_log_options` (not supported
yet). `access_log`: Envoy's session access logs, a line per session when it ends (`udp_session.py`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.envoy import AccessLog, EnvoyStruct, NonEmptyStr, NotSupportedYet, UdpSocketConfig
from pylon.config.errors import FieldError
from pylon.extensions.filters.udp.udp_session import SessionStats, UdpSession
from pylon.proxy.access_log import build_access_loggers
from pylon.proxy.connection_info import address_host
from pylon.proxy.filters.udp import register_udp_listener_filter

if TYPE_CHECKING:
    from pylon.proxy.udp_listener import UdpListenerRuntime

log = logging.getLogger("pylon.udp_proxy")

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"


class UdpHashPolicy(EnvoyStruct, kw_only=True):
    """UdpProxyConfig.HashPolicy: what a hashing balancer (RING_HASH, MAGLEV) is given for a new session."""

    source_ip: bool | None = None  # PGV const: true
    key: NonEmptyStr | None = None

    def __post_init__(self) -> None:
        if (self.source_ip is None) == (self.key is None):
            raise FieldError("", "exactly one of source_ip, key must be set")
        if self.source_ip is False:
            raise FieldError("source_ip", "value must equal true")


class UdpProxyConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.udp.udp_proxy.v3.UdpProxyConfig."""

    stat_prefix: NonEmptyStr
    cluster: NonEmptyStr | None = None  # deprecated in Envoy's API, still honoured (with a warning) by 1.40
    matcher: Any = None
    idle_timeout: Duration = Duration(60)
    use_original_src_ip: bool = False
    hash_policies: Annotated[list[UdpHashPolicy], msgspec.Meta(max_length=1)] = []
    #: Envoy's default for upstream sockets is prefer_gro true: no answer is too long then (see UdpSocketConfig)
    upstream_socket_config: UdpSocketConfig = msgspec.field(default_factory=UdpSocketConfig)
    use_per_packet_load_balancing: bool = False
    #: session access logs: one line when a session ends
    access_log: list[AccessLog] = []
    proxy_access_log: NotSupportedYet | None = None
    session_filters: NotSupportedYet | None = None
    tunneling_config: NotSupportedYet | None = None
    access_log_options: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.matcher is not None:
            raise FieldError("matcher", "routing UDP datagrams with a matcher tree is not supported yet (name the "
                                        "one cluster with `cluster`)")
        if self.cluster is None:
            raise FieldError("", "exactly one of cluster, matcher must be set")
        if self.use_original_src_ip:
            raise FieldError("use_original_src_ip", "not supported (it needs transparent sockets: IP_TRANSPARENT "
                                                    "and CAP_NET_ADMIN)")


class UdpProxyFilter:
    """One UDP proxy config on one listener in one worker: its sessions by key, and its downstream stats."""

    def __init__(self, config: UdpProxyConfig, listener: "UdpListenerRuntime") -> None:
        self.listener = listener
        worker = listener.worker
        self.worker = worker
        self.cluster_name: str = config.cluster  # type: ignore[assignment]  # set: checked by the config
        self.idle_timeout = float(config.idle_timeout)
        self.per_packet = config.use_per_packet_load_balancing
        policy = config.hash_policies[0] if config.hash_policies else None
        self.hash_source_ip = policy is not None and policy.source_ip is not None
        self.hash_key = policy.key.encode() if policy is not None and policy.key is not None else None
        self.max_upstream_datagram = config.upstream_socket_config.rx_limit(gro_by_default=True)
        self.stats = SessionStats(worker.stats, f"udp.{config.stat_prefix}.")
        self.sessions: dict[Any, UdpSession] = {}
        self.access_loggers = build_access_loggers(config.access_log, worker.access_log_writer)
        sa = listener.config.socket_address
        self.local_address = (sa.address, sa.port_value)  # what the sessions' logs say they were sent to

    def on_datagram(self, data: bytes, peer: tuple[Any, ...]) -> None:
        cluster = self.worker.clusters.get(self.cluster_name)
        if cluster is None:
            self.stats.no_route.value += 1
            return
        if self.per_packet:
            host = self._pick_host(cluster, peer)
            if host is None:
                return
            key: Any = (peer, host.address)
            session = self.sessions.get(key)
        else:
            key = peer
            session = self.sessions.get(key)
            if session is not None and not session.host.healthy:
                session.close()  # a new session goes to a healthy host
                session = None
            host = None
        if session is None:
            # Envoy counts a session before it finds it may not have one (observed: the circuit breaker's refusals
            # count in downstream_sess_total)
            self.stats.total.value += 1
            if not cluster.circuit_breakers.connections.try_acquire():
                return  # too many sessions (upstream_cx_overflow)
            host = host or self._pick_host(cluster, peer)
            if host is None:
                cluster.circuit_breakers.connections.release()
                return  # no host (upstream_cx_none_healthy)
            try:
                session = UdpSession(self, key, peer, cluster, host)
            except OSError as exc:
                cluster.circuit_breakers.connections.release()
                log.warning("UDP proxy: no socket to %s: %s", host.address, exc)
                return
            self.sessions[key] = session
        session.from_downstream(data)

    def _pick_host(self, cluster: Any, peer: tuple[Any, ...]) -> Any:
        key = self.hash_key if self.hash_key is not None else (
            address_host(peer).encode() if self.hash_source_ip else None)
        host = cluster.choose_host(key)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
        return host

    def send_downstream(self, data: bytes, peer: tuple[Any, ...]) -> bool:
        return self.listener.send_to(data, peer)

    def forget(self, session: UdpSession) -> None:
        """A session ended: its key is free for the next datagram of its peer."""
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    def close(self) -> None:
        for session in list(self.sessions.values()):
            session.close()


registry.register_typed(registry.UDP_LISTENER_FILTER, TYPE_URL, UdpProxyConfig)
register_udp_listener_filter(UdpProxyConfig, UdpProxyFilter)

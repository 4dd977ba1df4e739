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

Routing: the deprecated `cluster` names one cluster, or `matcher` (the shared matcher engine, network inputs:
source/destination IP and port) names one per datagram by its Route actions; no match, or a cluster CDS removed:
`downstream_sess_no_route`. Refused by field: `use_original_src_ip` (needs transparent sockets and
CAP_NET_ADMIN), `session_filters`, `tunneling_config`, `proxy_access_log`, `access_log_options` (not supported
yet). `access_log`: Envoy's session access logs, a line per session when it ends (`udp_session.py`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any, Callable

import msgspec

from pylon.config import matcher, registry
from pylon.config.constraints import Duration
from pylon.config.envoy import (
    AccessLog, EnvoyStruct, HeaderValueOption, NonEmptyStr, NotSupportedYet, PositiveUInt32, UdpSocketConfig,
)
from pylon.config.errors import FieldError
from pylon.extensions.filters.udp.udp_session import Session, SessionStats, UdpSession
from pylon.extensions.filters.udp.udp_tunnel import TunnelRequest, UdpTunnelSession
from pylon.proxy.access_log import build_access_loggers
from pylon.proxy.connection_info import address_host
from pylon.proxy.filters.udp import register_udp_listener_filter
from pylon.proxy.matching.engine import NO_MATCH, Vocabulary, compile_matcher
from pylon.proxy.matching.input_matchers import INPUT_MATCHERS
from pylon.proxy.matching.network_inputs import NETWORK_READERS, NetworkMatchingData

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


HTTP_CAPSULE_TYPE = "envoy.extensions.filters.udp.udp_proxy.session.http_capsule.v3.FilterConfig"
TunnelPort = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class SessionFilter(EnvoyStruct, kw_only=True):
    """UdpProxyConfig.SessionFilter. pylon has one: `envoy.filters.udp.session.http_capsule` (no settings), which
    frames a tunnelled session's datagrams as HTTP Datagram capsules (capsules.py); it takes effect with
    `tunneling_config` only."""

    name: NonEmptyStr
    typed_config: Any = None
    config_discovery: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        raw = self.typed_config
        type_url = raw.get("@type") if isinstance(raw, dict) else None
        if not isinstance(type_url, str) or registry.message_name(type_url) != HTTP_CAPSULE_TYPE:
            raise FieldError("typed_config", f"session filter {type_url or self.name!r} is not supported yet (pylon "
                                             f"has {registry.TYPE_URL_PREFIX}{HTTP_CAPSULE_TYPE} only)")
        if set(raw) != {"@type"}:
            raise FieldError("typed_config", "the http_capsule session filter has no settings")


class TunnelRetryOptions(EnvoyStruct, kw_only=True):
    """UdpTunnelingConfig.RetryOptions: how many hosts a session's tunnel tries (back to back)."""

    max_connect_attempts: PositiveUInt32 = 1
    backoff_options: NotSupportedYet | None = None


class TunnelBufferOptions(EnvoyStruct, kw_only=True):
    """UdpTunnelingConfig.BufferOptions: what a session holds while its tunnel is not answered yet."""

    max_buffered_datagrams: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 1024
    max_buffered_bytes: Annotated[int, msgspec.Meta(ge=0)] = 16384


class UdpTunnelingConfig(EnvoyStruct, kw_only=True):
    """UdpProxyConfig.UdpTunnelingConfig: each session's datagrams on one HTTP/2 stream, opened as CONNECT-UDP
    (RFC 9298) to `proxy_host` for `target_host`:`default_target_port` (udp_tunnel.py). `proxy_host`, `target_host`
    and the `headers_to_add` values are substitution format strings, evaluated per session."""

    proxy_host: NonEmptyStr
    proxy_port: TunnelPort | None = None
    target_host: NonEmptyStr
    default_target_port: TunnelPort
    use_post: bool = False
    post_path: str = ""
    retry_options: TunnelRetryOptions = msgspec.field(default_factory=TunnelRetryOptions)
    headers_to_add: Annotated[list[HeaderValueOption], msgspec.Meta(max_length=1000)] = []
    #: unset: datagrams that come before the tunnel is answered are dropped (Envoy's default)
    buffer_options: TunnelBufferOptions | None = None
    propagate_response_headers: bool = False
    propagate_response_trailers: bool = False

    def __post_init__(self) -> None:
        if self.use_post or self.post_path:
            raise FieldError("use_post" if self.use_post else "post_path",
                             "UDP tunnelling over POST is not supported yet (CONNECT-UDP is)")
        for name in ("propagate_response_headers", "propagate_response_trailers"):
            if getattr(self, name):
                raise FieldError(name, "not supported yet: pylon has no filter state for the response's headers")


class UdpRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.udp.udp_proxy.v3.Route: a route matcher's action, the cluster a session goes to."""

    cluster: NonEmptyStr


class UdpProxyConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.udp.udp_proxy.v3.UdpProxyConfig."""

    stat_prefix: NonEmptyStr
    cluster: NonEmptyStr | None = None  # deprecated in Envoy's API, still honoured (with a warning) by 1.40
    #: the route matcher (config/matcher.py decodes it in `__post_init__`: network inputs, Route actions)
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
    session_filters: list[SessionFilter] = []
    tunneling_config: UdpTunnelingConfig | None = None
    access_log_options: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if (self.cluster is None) == (self.matcher is None):
            raise FieldError("", "exactly one of cluster, matcher must be set")
        if self.matcher is not None:
            matcher.decode_field(self, "matcher", inputs=registry.NETWORK_MATCH_INPUT,
                                 actions=registry.UDP_ROUTE_MATCH_ACTION)
        if self.session_filters and self.tunneling_config is None:
            raise FieldError("session_filters", "the http_capsule session filter without tunneling_config is not "
                                                "supported yet")
        if self.tunneling_config is not None and not self.session_filters:
            # Envoy's docs: CONNECT-UDP needs the capsules to keep datagram boundaries (a tunnel without them is
            # bare bytes, which pylon does not send)
            raise FieldError("tunneling_config", "tunnelling without the envoy.filters.udp.session.http_capsule "
                                                 "session filter is not supported yet")
        if self.tunneling_config is not None and self.use_per_packet_load_balancing:
            raise FieldError("use_per_packet_load_balancing", "Only one of use_per_packet_load_balancing or "
                                                              "tunneling_config can be used.")  # Envoy's words
        if self.use_original_src_ip:
            raise FieldError("use_original_src_ip", "not supported (it needs transparent sockets: IP_TRANSPARENT "
                                                    "and CAP_NET_ADMIN)")


class UdpProxyFilter:
    """One UDP proxy config on one listener in one worker: its sessions by key, and its downstream stats."""

    def __init__(self, config: UdpProxyConfig, listener: "UdpListenerRuntime") -> None:
        self.listener = listener
        worker = listener.worker
        self.worker = worker
        #: the one cluster, or (matcher) None and the route: a datagram's addresses -> a cluster name or NO_MATCH
        self.cluster_name: str | None = config.cluster
        self.route: Callable[[NetworkMatchingData], Any] | None = None if config.matcher is None else compile_matcher(
            config.matcher, Vocabulary(inputs=NETWORK_READERS, action=lambda route: route.cluster,
                                       input_matchers=INPUT_MATCHERS))
        self.idle_timeout = float(config.idle_timeout)
        self.per_packet = config.use_per_packet_load_balancing
        policy = config.hash_policies[0] if config.hash_policies else None
        self.hash_source_ip = policy is not None and policy.source_ip is not None
        self.hash_key = policy.key.encode() if policy is not None and policy.key is not None else None
        self.max_upstream_datagram = config.upstream_socket_config.rx_limit(gro_by_default=True)
        self.stats = SessionStats(worker.stats, f"udp.{config.stat_prefix}.")
        self.sessions: dict[Any, Session] = {}
        tunneling = config.tunneling_config
        self.tunnel_request = TunnelRequest(tunneling) if tunneling is not None else None
        self.max_connect_attempts = tunneling.retry_options.max_connect_attempts if tunneling is not None else 1
        self.access_loggers = build_access_loggers(config.access_log, worker.access_log_writer)
        sa = listener.config.socket_address
        self.local_address = (sa.address, sa.port_value)  # what the sessions' logs say they were sent to

    def on_datagram(self, data: bytes, peer: tuple[Any, ...]) -> None:
        name = self.cluster_name
        if name is None:  # the route matcher, on the datagram's addresses (Envoy routes each datagram)
            assert self.route is not None
            name = self.route(NetworkMatchingData(self.local_address, peer[:2], peer[:2]))
        cluster = self.worker.clusters.get(name) if name is not NO_MATCH else None
        if cluster is None:
            self.stats.no_route.value += 1
            return
        if self.per_packet:
            host = self.pick_host(cluster, peer)
            if host is None:
                return
            key: Any = (peer, host.address)
            session = self.sessions.get(key)
        else:
            key = peer
            session = self.sessions.get(key)
            if session is not None and session.host is not None and not session.host.healthy:
                session.close()  # a new session goes to a healthy host
                session = None
            host = None
        if session is None:
            # Envoy counts a session before it finds it may not have one (observed: the circuit breaker's refusals
            # count in downstream_sess_total)
            self.stats.total.value += 1
            if not cluster.circuit_breakers.connections.try_acquire():
                return  # too many sessions (upstream_cx_overflow)
            if self.tunnel_request is not None:
                session = self.sessions[key] = UdpTunnelSession(self, key, peer, cluster)  # its tunnel picks hosts
                session.from_downstream(data)
                return
            host = host or self.pick_host(cluster, peer)
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

    def pick_host(self, cluster: Any, peer: tuple[Any, ...]) -> Any:
        key = self.hash_key if self.hash_key is not None else (
            address_host(peer).encode() if self.hash_source_ip else None)
        host = cluster.choose_host(key)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
        return host

    def send_downstream(self, data: bytes, peer: tuple[Any, ...]) -> bool:
        return self.listener.send_to(data, peer)

    def forget(self, session: Session) -> None:
        """A session ended: its key is free for the next datagram of its peer."""
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    def close(self) -> None:
        for session in list(self.sessions.values()):
            session.close()


registry.register_typed(registry.UDP_LISTENER_FILTER, TYPE_URL, UdpProxyConfig)
registry.register_typed(registry.UDP_ROUTE_MATCH_ACTION,
                        "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route", UdpRoute)
def _check(config: UdpProxyConfig) -> None:
    """The tunnel's format strings compile (an unknown %OPERATOR% is refused here, not in a worker)."""
    if config.tunneling_config is not None:
        TunnelRequest(config.tunneling_config)


register_udp_listener_filter(UdpProxyConfig, UdpProxyFilter, _check)

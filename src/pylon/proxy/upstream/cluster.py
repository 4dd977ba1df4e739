"""The per-worker runtime of one configured cluster: hosts, LB, breakers, health, outlier, DNS.

Each worker process builds its own `Cluster` objects (`build_clusters`) and
shares nothing with other workers, like Envoy's per-thread cluster copies.
The hot path uses only `choose_host()`, the circuit-breaker `Resource`s
(`circuit_breakers.connections/pending_requests/requests/retries`), the
`Host` counters and the stat objects on `stats` — attribute access and
integer bumps. Everything else (membership changes, health transitions, DNS
answers, the outlier sweep) runs off the hot path and ends in `_refresh()`,
which rebuilds the load balancer's set once.

A cluster whose `lb_policy` is CLUSTER_PROVIDED (`provided`) picks each
request's host itself (`request_host`, `connection_host`): ORIGINAL_DST where
the connection was going, a custom cluster type (`cluster_type`, built by the
factory its extension registers: `register_cluster_type`) as it knows. Such a
cluster may answer PENDING: it went to find the host and will start the
request's attempt again (`attempt_now`) once it knows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pylon.config.secrets import common_tls_context
from pylon.proxy import local_reply as lr
from pylon.proxy.http.h2_session import H2Settings
from pylon.proxy.filters.upstream import build_upstream_filters
from pylon.proxy.http.header_case import proper_case
from pylon.proxy.upstream.auto_sni import AutoSni
from pylon.proxy.upstream.circuit import CircuitBreakers
from pylon.proxy.upstream.connect import open_stream
from pylon.proxy.upstream.dns import DnsRefresher, DnsTarget, ResolvedEndpoint
from pylon.proxy.upstream.expiry import ConnectionLimits
from pylon.proxy.upstream.health import HealthChecker
from pylon.proxy.internal_listener import InternalAddress
from pylon.proxy.upstream.host import Host, Placement, eds_health_flags, format_address
from pylon.proxy.upstream.lb import create_load_balancer
from pylon.proxy.upstream.outlier import OutlierDetector
from pylon.proxy.upstream.subset import SubsetBalancer, cluster_balancer
from pylon.proxy.tap_socket import socket_tap
from pylon.proxy.upstream.proxy_protocol import UpstreamProxyProtocol, socket_proxy_protocol
from pylon.proxy.upstream.tls_factory import UpstreamTls, matching_socket, socket_matches, transport_tls
from pylon.stats.store import Counter, Histogram, StatsStore

if TYPE_CHECKING:
    from pylon.extensions.transport_sockets.tap_trace import TapSink
    from pylon.proxy.connection_info import ConnectionInfo
    from pylon.proxy.stream import Stream

log = logging.getLogger(__name__)

#: What `request_host` answers when the cluster went to find the host (see the module docstring).
PENDING: Any = object()

_COUNTERS = (
    "upstream_rq_total", "upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx", "upstream_rq_4xx",
    "upstream_rq_5xx", "upstream_rq_retry", "upstream_rq_timeout", "upstream_rq_per_try_timeout",
    "upstream_rq_max_duration_reached",
    "upstream_rq_pending_total", "upstream_rq_pending_overflow",
    "upstream_rq_retry_overflow", "upstream_cx_total", "upstream_cx_http1_total", "upstream_cx_http2_total",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout", "upstream_cx_destroy", "upstream_cx_overflow",
    "upstream_cx_idle_timeout", "upstream_cx_max_requests", "upstream_cx_max_duration_reached",
    "upstream_cx_protocol_error",
    "upstream_cx_none_healthy", "membership_change", "original_dst_host_invalid",
    "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total", "upstream_rq_completed",
    "upstream_rq_pending_failure_eject", "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_success",
)
_GAUGES = (
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
    "membership_healthy", "membership_total", "membership_degraded",
)


def parse_ip_port(text: str) -> tuple[str, int] | None:
    """`1.2.3.4:80` or `[::1]:80` as (ip, port), as Envoy's parseInternetAddressAndPort reads them; None if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    if (ip.version == 6) != bracketed:
        return None
    return str(ip), int(port)


class InternalStats:
    """A cluster's responses to the proxy's own requests (which carry `x-envoy-internal: true`: a mirror's copy, an
    async client's call) charged again under `internal.`, as Envoy's code stats do. Every name is made on its first
    use, as Envoy's are: a cluster only clients use has no `internal.` stats."""

    __slots__ = ("_store", "_prefix", "_by_status", "_time")

    def __init__(self, store: StatsStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        #: status -> the counters its response bumps (its code's, its class's when 1xx-5xx, and `_completed`)
        self._by_status: dict[int, tuple[Counter, ...]] = {}
        self._time: Histogram | None = None

    def count(self, status: int) -> None:
        counters = self._by_status.get(status)
        if counters is None:
            prefix, counter = self._prefix, self._store.counter
            by_class = (counter(f"{prefix}upstream_rq_{status // 100}xx"),) if 1 <= status // 100 <= 5 else ()
            counters = self._by_status[status] = (counter(f"{prefix}upstream_rq_{status}"), *by_class,
                                                  counter(prefix + "upstream_rq_completed"))
        for counter_ in counters:
            counter_.value += 1

    def record_time(self, ms: float) -> None:
        time_ = self._time
        if time_ is None:
            time_ = self._time = self._store.histogram(self._prefix + "upstream_rq_time")
        time_.record(ms)


class _ExternalView:
    """`external.<stat>`: the cluster's `<stat>` (`total`) minus its `internal.<stat>` (a response not to the proxy's
    own request is to a client's), worked out when read, so a client's request pays nothing for it."""

    __slots__ = ()
    total: Any
    store: StatsStore
    internal_name: str

    def __init__(self, name: str, total: Any, store: StatsStore, internal_name: str) -> None:
        self.name = name
        self.total = total
        self.store = store
        self.internal_name = internal_name


class _ExternalCounter(_ExternalView, Counter):
    """An `external.` counter (`upstream_rq_<code>`, `_<N>xx`, `_completed`)."""

    __slots__ = ("total", "store", "internal_name")

    @property  # type: ignore[override]
    def value(self) -> int:
        internal = self.store.counters.get(self.internal_name)
        return self.total.value - (internal.value if internal is not None else 0)


class _ExternalHistogram(_ExternalView, Histogram):
    """`external.upstream_rq_time`, bucket by bucket."""

    __slots__ = ("total", "store", "internal_name")

    def _internal(self) -> Histogram | None:
        return self.store.histograms.get(self.internal_name)

    @property  # type: ignore[override]
    def bounds(self) -> tuple[float, ...]:
        return self.total.bounds

    @property  # type: ignore[override]
    def counts(self) -> list[int]:
        internal = self._internal()
        if internal is None:
            return list(self.total.counts)
        return [a - b for a, b in zip(self.total.counts, internal.counts)]

    @property  # type: ignore[override]
    def sum(self) -> float:
        internal = self._internal()
        return self.total.sum - (internal.sum if internal is not None else 0.0)

    @property  # type: ignore[override]
    def count(self) -> int:
        internal = self._internal()
        return self.total.count - (internal.count if internal is not None else 0)


class ClusterStats:
    """The cluster's stat objects under Envoy's names (`cluster.<name>.<stat>`), for direct bumping.

    The data path owns the request/connection counters (`upstream_rq_total`,
    `upstream_cx_total`, `upstream_cx_active`, ...); the cluster owns the
    `membership_*` gauges. `count_response(status)` bumps the per-class and
    per-code counters Envoy keeps (`upstream_rq_2xx`, `upstream_rq_200`).
    """

    __slots__ = _COUNTERS + _GAUGES + ("upstream_rq_time", "upstream_rq_per_cx", "upstream_cx_connect_ms",
                                       "upstream_cx_length_ms", "_store", "_prefix", "_by_class", "_by_code",
                                       "_internal", "_external_time_shown")

    def __init__(self, store: StatsStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix
        for name in _COUNTERS:
            setattr(self, name, store.counter(prefix + name))
        for name in _GAUGES:
            setattr(self, name, store.gauge(prefix + name))
        self.upstream_rq_time = store.histogram(prefix + "upstream_rq_time")
        self.upstream_rq_per_cx = store.histogram(prefix + "upstream_rq_per_cx")  # requests a closed connection served
        # as Envoy's pools: from a connect's start to the connection being up (its TLS handshake done), and to its close
        self.upstream_cx_connect_ms = store.histogram(prefix + "upstream_cx_connect_ms")
        self.upstream_cx_length_ms = store.histogram(prefix + "upstream_cx_length_ms")
        self._by_class: dict[int, Counter] = {
            n: getattr(self, f"upstream_rq_{n}xx") for n in range(1, 6)
        }
        self._by_code: dict[int, Counter] = {}
        self._internal = InternalStats(store, prefix + "internal.")
        self._external_time_shown = False  # external.upstream_rq_time made (at the first client's response)

    def counter(self, name: str) -> Counter:
        """The cluster's counter `name` (made on first use), for the stats not kept as attributes (`http2.*`)."""
        return self._store.counter(self._prefix + name)

    def count_response(self, status: int, internal: bool = False) -> None:
        """Count one upstream response in `upstream_rq_<N>xx`, `upstream_rq_<code>` and `upstream_rq_completed`, as
        Envoy's router charges a response's head when it arrives, or the proxy's reply for an upstream that failed
        (connect failure, reset, timeout, overflow: its 503 or 504); and again under `external.` or `internal.`
        (the proxy's own request). The `external.` ones are worked out when read: made at a code's first client
        response, they cost the requests nothing."""
        if internal:
            self._internal.count(status)
        self.upstream_rq_completed.value += 1
        by_class = self._by_class.get(status // 100)
        if by_class is not None:
            by_class.value += 1
        by_code = self._by_code.get(status)
        if by_code is None:
            by_code = self._store.counter(f"{self._prefix}upstream_rq_{status}")
            if not internal:  # kept only once a client's response had it: then its external. view appears
                self._by_code[status] = by_code
                self._show_external(status, by_code, by_class)
        by_code.value += 1

    def _show_external(self, status: int, by_code: Counter, by_class: Counter | None) -> None:
        prefix, counters = self._prefix, self._store.counters
        shown = [(f"upstream_rq_{status}", by_code), ("upstream_rq_completed", self.upstream_rq_completed)]
        if by_class is not None:
            shown.append((f"upstream_rq_{status // 100}xx", by_class))
        for stat, total in shown:
            name = f"{prefix}external.{stat}"
            if name not in counters:
                counters[name] = _ExternalCounter(name, total, self._store, f"{prefix}internal.{stat}")

    def record_time(self, ms: float, internal: bool = False) -> None:
        """A response's time from its attempt's start to its end, in `upstream_rq_time` and again under
        `external.` or `internal.`."""
        self.upstream_rq_time.record(ms)
        if internal:
            self._internal.record_time(ms)
        elif not self._external_time_shown:
            self._external_time_shown = True
            name = self._prefix + "external.upstream_rq_time"
            self._store.histograms[name] = _ExternalHistogram(name, self.upstream_rq_time, self._store,
                                                              self._prefix + "internal.upstream_rq_time")


class Cluster:
    """One cluster in one worker; see the module docstring for what is hot and what is not."""

    __slots__ = ("_by_address", "_cleanup_timer", "_dns", "_resolved", "_tasks", "_used", "alpn_configured",
                 "any_proxy_protocol", "auto_sni", "choose_host", "circuit_breakers", "cleanup_interval", "config",
                 "connect_timeout", "connection_limits", "dst_header", "dst_port", "h2_settings", "health_checker",
                 "hosts", "keepalive", "lb", "match_proxy_protocols", "name", "on_hosts_removed", "original_dst",
                 "outlier", "plain_pools", "protocol", "provided", "proxy_protocol", "request_key_format",
                 "response_case", "socket_matches", "source", "stats", "subsets", "tap", "tls", "upstream_filters",
                 "upstream_trailers", "worker_id")

    def __init__(
        self, config: Any, stats: StatsStore, worker_id: int = 0, *, secrets: Mapping[str, Any] = {},
        now: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
    ) -> None:
        self.name: str = config.name
        self.config = config
        self.connect_timeout = float(config.connect_timeout)
        # Idle timeout, max duration, max requests and response headers of its pooled connections (pool.py).
        self.connection_limits = ConnectionLimits.of(config)
        self.upstream_trailers: bool = config.upstream_trailers  # HTTP/1 trailers cross to and from its hosts
        # header_key_format of its HTTP/1 config (http/header_case.py): proper_case_words formats the requests
        # written to its hosts, preserve_case records its responses' names (None: neither)
        key_format = config.upstream_key_format
        self.request_key_format: Callable[[bytes], bytes] | None = (
            proper_case if key_format is not None and key_format.proper_case_words is not None else None)
        self.response_case = key_format.preserve_case if key_format is not None else None
        # Its own upstream HTTP filters (None: the router's, if any; filters/upstream.py).
        self.upstream_filters = build_upstream_filters(config.upstream_http_filters, f"cluster.{config.name}.", stats)
        # HTTP/2 upstream (h2_pool.py): the codec's settings when the cluster may speak it; "downstream": only for
        # requests that came over HTTP/2 (pool_registry.py keys those pools apart).
        self.protocol, options = config.upstream_protocol
        self.h2_settings: H2Settings | None = None if options is None else H2Settings.of(
            options, max_header_bytes=60 * 1024, max_headers_count=self.connection_limits.max_headers)
        common = common_tls_context(config.transport_socket)
        self.alpn_configured = common is not None and bool(common.alpn_protocols)
        self.worker_id = worker_id
        prefix = f"cluster.{config.name}."
        self.stats = ClusterStats(stats, prefix)

        self.circuit_breakers = CircuitBreakers.from_config(config, stats, prefix)

        self.lb = cluster_balancer(config, lambda: create_load_balancer(config, rng), rng, stats, prefix)
        # With lb_subset_config: the balancer that takes a route's metadata criteria (choose_matching).
        self.subsets: SubsetBalancer | None = self.lb if isinstance(self.lb, SubsetBalancer) else None
        # The hot path's one call: the policy's own `choose`, bound directly (no wrapper frame).
        # None means no host at all; the data path answers 503 (UH) and bumps upstream_cx_none_healthy.
        self.choose_host: Callable[[bytes | None], Host | None] = self.lb.choose
        self.hosts: list[Host] = []
        self._by_address: dict[tuple[str, int], Host] = {}

        self.outlier: OutlierDetector | None = None
        if config.outlier_detection is not None:
            self.outlier = OutlierDetector.from_config(config.outlier_detection, stats, prefix, now, rng)

        # The transport socket of every connection to the hosts: requests, tcp_proxy and health checks alike.
        # Read at each connect, so new connections take a rotated SDS certificate (`refresh_tls`); hosts whose
        # metadata a transport_socket_match takes use that match's (`tls_for`).
        self.tls: UpstreamTls = transport_tls(config.transport_socket, secrets)
        self.socket_matches = socket_matches(config, secrets)
        # The tap transport socket wrapping the cluster's own (None: none; tap_socket.py), on every connection.
        self.tap: TapSink | None = socket_tap(config.transport_socket, stats, worker_id)
        # The PROXY protocol header its connections start with (None: none; upstream/proxy_protocol.py): the
        # cluster's transport socket's, or a host's transport_socket_match's.
        self.proxy_protocol: UpstreamProxyProtocol | None = socket_proxy_protocol(config.transport_socket)
        self.match_proxy_protocols = [socket_proxy_protocol(match.transport_socket)
                                      for match in config.transport_socket_matches]
        self.any_proxy_protocol = self.proxy_protocol is not None or any(self.match_proxy_protocols)
        # auto_sni / auto_san_validation: each request's host names its connections' TLS (None: not set).
        self.auto_sni: AutoSni | None = AutoSni.of(config)
        # The pool registry's hot-path test: one pool per host, of the one kind the cluster speaks.
        self.plain_pools = self.auto_sni is None and self.protocol != "downstream" and not self.any_proxy_protocol
        bind = config.upstream_bind_config
        # Where upstream connections leave from (Istio's inbound clusters: 127.0.0.6, so capture rules let them by).
        self.source: tuple[str, int] | None = (
            (bind.source_address.address, bind.source_address.port_value) if bind is not None else None)
        options = config.upstream_connection_options
        self.keepalive = options.tcp_keepalive if options is not None else None  # set on every upstream socket
        self.health_checker: HealthChecker | None = None
        if config.health_checks:
            self.health_checker = HealthChecker.from_config(
                config.health_checks[0], self.name, stats, prefix,
                lambda address: open_stream(address, self.tls_for(self._by_address.get(address)),
                                            self.connect_timeout, self.source, self.keepalive, self.tap,
                                            self.preamble_for(self._by_address.get(address), None)),
                had_traffic=lambda: self.stats.upstream_cx_total.value > 0,
                on_success=self.outlier.on_active_health_check_success if self.outlier is not None else None,
            )

        endpoints = list(assignment_endpoints(config.load_assignment))
        self._dns: DnsRefresher | None = None
        self._cleanup_timer: asyncio.TimerHandle | None = None
        self._resolved: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # CLUSTER_PROVIDED: the cluster picks each request's host (request_host / connection_host), not the LB.
        self.provided = config.lb_policy == "CLUSTER_PROVIDED"
        # ORIGINAL_DST: a host per original destination, made when a connection needs it (original_dst_host).
        self.original_dst = config.type == "ORIGINAL_DST"
        lb_config = config.original_dst_lb_config
        #: original_dst_lb_config: the request header naming the host (None: not read), the port put in its place
        self.dst_header: bytes | None = None
        self.dst_port: int | None = None
        if lb_config is not None:
            if lb_config.use_http_header:
                self.dst_header = (lb_config.http_header_name or "x-envoy-original-dst-host").lower().encode()
            self.dst_port = lb_config.upstream_port_override
        self.cleanup_interval = float(config.cleanup_interval)
        self._used: set[Host] = set()  # original-destination hosts used since the last cleanup
        self.on_hosts_removed: Callable[["Cluster"], None] | None = None  # the worker forgets their pools
        if config.type not in ("STRICT_DNS", "LOGICAL_DNS"):
            # EDS: no hosts until the worker sets the assignment's; a cluster_type's hosts come from its type
            self.set_endpoints([ResolvedEndpoint(*endpoint) for endpoint in endpoints])
        else:
            self._dns = DnsRefresher(
                self.name,
                [DnsTarget(address[0], address[1], weight, flags, metadata, placement, lb_metadata, typed_metadata)
                 for address, weight, _, flags, metadata, placement, lb_metadata, typed_metadata in endpoints],
                self._on_dns_update,
                lookup_family=config.dns_lookup_family,
                refresh_rate=float(config.dns_refresh_rate),
                first_only=config.type == "LOGICAL_DNS",
                respect_ttl=config.respect_dns_ttl,
                resolver=(config.typed_dns_resolver_config.decoded()
                          if config.typed_dns_resolver_config is not None else None),
            )

    # -- membership ----------------------------------------------------------------------

    def set_endpoints(self, endpoints: Iterable[ResolvedEndpoint]) -> None:
        """Make the host set match `endpoints`, keeping the `Host` (and its state) of addresses that stay."""
        old = self._by_address
        new: dict[tuple[str, int], Host] = {}
        added: list[Host] = []
        for ep in endpoints:
            if ep.address in new:
                continue
            host = old.get(ep.address)
            if host is None:
                host = Host(ep.address, ep.weight, ep.hostname)
                added.append(host)
            else:
                host.weight = ep.weight
            host.placement = ep.placement
            host.lb_metadata = ep.lb_metadata
            host.typed_metadata = ep.typed_metadata
            host.set_eds_flags(ep.eds_flags)
            host.socket = matching_socket(self.socket_matches, ep.socket_metadata) if self.socket_matches else -1
            new[ep.address] = host
        removed = [host for address, host in old.items() if address not in new]
        for host in removed:
            host.on_health_change = None
            if self.outlier is not None:
                self.outlier.remove_host(host)
            if self.health_checker is not None:
                self.health_checker.remove_host(host)
        for host in added:
            if self.outlier is not None:
                self.outlier.add_host(host)
            if self.health_checker is not None:
                self.health_checker.add_host(host)
            host.on_health_change = self._on_health_change
        self._by_address = new
        self.hosts = list(new.values())
        if added or removed:
            self.stats.membership_change.value += 1
        self._refresh()

    def set_assignment(self, assignment: Any) -> None:
        """An EDS cluster's hosts become the ClusterLoadAssignment's; addresses that stay keep their `Host`."""
        self.set_endpoints([ResolvedEndpoint(*endpoint) for endpoint in assignment_endpoints(assignment)])

    def _on_dns_update(self, endpoints: list[ResolvedEndpoint]) -> None:
        if self._dns is not None and self._dns.first_only and len(self.hosts) == 1 and len(endpoints) == 1:
            # LOGICAL_DNS: one logical host whose address follows DNS; keep its state and counters.
            host = self.hosts[0]
            if host.address != endpoints[0].address:
                log.info(
                    "worker %d cluster %s: logical host %s now %s", self.worker_id, self.name,
                    host.hostname, format_address(endpoints[0].address),
                )
                host.address = endpoints[0].address
                self._by_address = {host.address: host}
        else:
            self.set_endpoints(endpoints)
        if self._resolved is not None:
            self._resolved.set()

    def _on_health_change(self, host: Host) -> None:
        self._refresh()

    def original_dst_host(self, address: tuple[str, int] | None) -> Host | None:
        """An ORIGINAL_DST cluster's host for a connection that was going to `address` (None: no host, 503)."""
        if address is None:
            return None
        if self.dst_port is not None:
            address = (address[0], self.dst_port)
        host = self._by_address.get(address)
        if host is None:
            host = self._by_address[address] = Host(address)
            self.hosts.append(host)
            self.stats.membership_change.value += 1
            self._refresh()
        self._used.add(host)
        return host

    def request_host(self, stream: "Stream") -> Host | None:
        """A CLUSTER_PROVIDED cluster's host for an HTTP request (ORIGINAL_DST: the override header's address, else
        where its connection was going, if a listener filter restored that: as in Envoy, none otherwise)."""
        if self.dst_header is not None:
            named = self._header_address(stream)
            if named is not None:
                return self.original_dst_host(named)
        detected = stream.conn.detected
        return self.original_dst_host(detected.original_destination if detected is not None else None)

    def _header_address(self, stream: "Stream") -> tuple[str, int] | None:
        """The first value of the override header as `ip:port` (Envoy takes no name, no missing port); an invalid
        one counts in `original_dst_host_invalid` and is passed over."""
        name = self.dst_header
        if name == b":authority":
            value: bytes | None = stream.authority
        else:
            value = next((v for n, v in stream.headers if n == name), None)
        if value is None:
            return None
        address = parse_ip_port(value.decode("latin-1"))
        if address is None:
            self.stats.original_dst_host_invalid.value += 1
        return address

    def connection_host(self, info: "ConnectionInfo") -> Host | None:
        """A CLUSTER_PROVIDED cluster's host for a tcp_proxy connection (its restored original destination)."""
        return self.original_dst_host(info.restored_local)

    def host_at(self, address: str) -> "Host | None":
        """The healthy host whose address Envoy spells `address` (`ip:port`, `[v6]:port`, or an internal listener's
        `envoy://...`), or None: a stateful session's override host, as Envoy's LB looks it up."""
        key: tuple[str, int] | str = address
        if not address.startswith("envoy://"):
            host, sep, port = address.rpartition(":")
            if not sep or not port.isdigit():
                return None
            key = (host[1:-1] if host.startswith("[") and host.endswith("]") else host, int(port))
        found = self._by_address.get(key)  # type: ignore[arg-type]
        return found if found is not None and found.healthy else None

    def no_host_reply(self, stream: "Stream") -> lr.LocalReply:
        """The answer to a request the cluster has no host for (Envoy's 503 UH, counted here)."""
        self.stats.upstream_cx_none_healthy.value += 1
        return lr.NO_HEALTHY_UPSTREAM

    def _cleanup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop the original-destination hosts nothing used for a cleanup_interval (as Envoy), then look again."""
        idle = [h for h in self.hosts if h not in self._used and not h.active_requests and not h.active_connections]
        self._used = set()
        if idle:
            gone = set(idle)
            self.hosts = [h for h in self.hosts if h not in gone]
            self._by_address = {h.address: h for h in self.hosts}
            self.stats.membership_change.value += 1
            self._refresh()
            if self.on_hosts_removed is not None:
                self.on_hosts_removed(self)
        self._cleanup_timer = loop.call_later(self.cleanup_interval, self._cleanup, loop)

    def _refresh(self) -> None:
        hosts = self.hosts
        self.stats.membership_total.value = len(hosts)
        self.stats.membership_healthy.value = sum(1 for h in hosts if h.healthy)
        self.lb.update(hosts)
        self.choose_host = self.lb.choose  # a prioritized balancer picks its fastest way after each update

    # -- lifecycle -----------------------------------------------------------------------

    def refresh_tls(self, secrets: Mapping[str, Any]) -> None:
        """An SDS secret the cluster names changed: new connections use it; pooled ones carry on (as Envoy)."""
        self.tls = transport_tls(self.config.transport_socket, secrets)
        self.socket_matches = socket_matches(self.config, secrets)

    def tls_for(self, host: Host | None) -> UpstreamTls:
        """The TLS of connections to `host`: its transport socket match's, else the cluster's."""
        if host is None or host.socket < 0:
            return self.tls
        return self.socket_matches[host.socket][1]

    def proxy_protocol_for(self, host: Host | None) -> UpstreamProxyProtocol | None:
        """The PROXY protocol of connections to `host`: its transport socket match's, else the cluster's."""
        if host is None or host.socket < 0:
            return self.proxy_protocol
        return self.match_proxy_protocols[host.socket]

    def preamble_for(self, host: Host | None, downstream: tuple[Any, Any] | None,
                     ) -> Callable[[Any, Any], bytes] | None:
        """What a connection to `host` made for `downstream` (its client and the address it reached; None: for
        nobody) sends first: its PROXY protocol header, or nothing (None)."""
        proxy_protocol = self.proxy_protocol_for(host) if self.any_proxy_protocol else None
        return proxy_protocol.preamble(host, downstream) if proxy_protocol is not None else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start DNS refresh, active health checks, the outlier sweep and the ORIGINAL_DST cleanup on this worker's
        loop."""
        if self.original_dst:
            self._cleanup_timer = loop.call_later(self.cleanup_interval, self._cleanup, loop)
        if self._dns is not None:
            self._resolved = asyncio.Event()
            self._dns.start(loop)
        if self.health_checker is not None:
            self.health_checker.start(loop)
        if self.outlier is not None:
            self._tasks.append(loop.create_task(self._outlier_sweep(self.outlier)))

    async def ready(self) -> None:
        """Wait for the first DNS answer (Envoy's cluster warming); immediate for STATIC clusters."""
        if self._resolved is not None:
            await self._resolved.wait()

    async def stop(self) -> None:
        if self._cleanup_timer is not None:
            self._cleanup_timer.cancel()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._dns is not None:
            await self._dns.stop()
        if self.health_checker is not None:
            await self.health_checker.stop()

    @staticmethod
    async def _outlier_sweep(outlier: OutlierDetector) -> None:
        while True:
            await asyncio.sleep(outlier.interval)
            outlier.on_interval()

    # -- admin ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Plain data for the admin `/clusters` endpoint; `proxy/clusters_text.py` merges workers and renders it."""
        cb = self.circuit_breakers
        return {
            "name": self.name,
            "circuit_breakers": {
                "max_connections": cb.connections.max,
                "max_pending_requests": cb.pending_requests.max,
                "max_requests": cb.requests.max,
                "max_retries": cb.retries.max,
            },
            "hosts": [
                {
                    "address": format_address(h.address),
                    "hostname": h.hostname,
                    "weight": h.weight,
                    "health_flags": h.health_flags_str(),
                    "cx_active": h.active_connections,
                    "cx_connect_fail": h.cx_connect_fail,
                    "rq_active": h.active_requests,
                    "rq_total": h.rq_total,
                    "rq_success": h.rq_success,
                    "rq_error": h.rq_error,
                    "rq_timeout": h.rq_timeout,
                    "region": h.placement.locality[0],
                    "zone": h.placement.locality[1],
                    "sub_zone": h.placement.locality[2],
                    "priority": h.placement.priority,
                }
                for h in self.hosts
            ],
        }


def assignment_endpoints(assignment: Any) -> Iterable[
        tuple[tuple[str, int], int, str, int, Mapping[str, Any], Placement, Mapping[str, Any], Mapping[str, Any]]]:
    """((address, port), weight, hostname, health flags, transport socket metadata, placement, `envoy.lb`
    metadata, typed filter metadata) of every lb_endpoint of a ClusterLoadAssignment (inline or from EDS): a `ResolvedEndpoint`'s
    fields."""
    if assignment is None:
        return
    for i, locality in enumerate(assignment.endpoints):
        where = locality.locality
        placement = Placement(locality.priority, i,
                              (where.region, where.zone, where.sub_zone) if where is not None else ("", "", ""),
                              locality.load_balancing_weight or 0)
        for lb_endpoint in locality.lb_endpoints:
            endpoint = lb_endpoint.endpoint
            internal = endpoint.address.envoy_internal_address
            if internal is not None:
                address: Any = InternalAddress(internal.server_listener_name, internal.endpoint_id)
            else:
                sock = endpoint.address.socket_address
                address = (sock.address, sock.port_value)
            yield (address, lb_endpoint.load_balancing_weight, endpoint.hostname,
                   eds_health_flags(lb_endpoint.health_status), lb_endpoint.socket_match_metadata, placement,
                   lb_endpoint.lb_metadata, lb_endpoint.typed_metadata)


#: A custom cluster type's factory: (config, stats, worker id, secrets, the worker's singletons) -> its Cluster.
ClusterFactory = Callable[[Any, StatsStore, int, Mapping[str, Any], dict[str, Any]], Cluster]
_CLUSTER_TYPES: dict[type, ClusterFactory] = {}


def register_cluster_type(config_type: type, factory: ClusterFactory) -> None:
    """Clusters whose `cluster_type.typed_config` is a `config_type` are made by `factory` (extensions register)."""
    _CLUSTER_TYPES[config_type] = factory


def build_cluster(config: Any, stats: StatsStore, worker_id: int, *, secrets: Mapping[str, Any],
                  singletons: dict[str, Any]) -> Cluster:
    """The worker's runtime of one cluster: a `Cluster`, or what its cluster type's factory makes. `singletons` are
    the worker's objects extensions share by name (Envoy's singleton manager: the DFP's DNS caches)."""
    if config.cluster_type is None:
        return Cluster(config, stats, worker_id, secrets=secrets)
    return _CLUSTER_TYPES[type(config.cluster_type.typed_config)](config, stats, worker_id, secrets, singletons)


def build_clusters(configs: Iterable[Any], stats: StatsStore, worker_id: int, secrets: Mapping[str, Any],
                   singletons: dict[str, Any]) -> dict[str, Cluster]:
    """One `Cluster` per configured cluster for this worker, by name (call `start(loop)` on each); gRPC-only
    clusters (pipe endpoints, used by grpcio for xDS and SDS) have no data-plane runtime."""
    clusters: dict[str, Cluster] = {}
    for config in configs:
        if config.name in clusters:
            raise ValueError(f"duplicate cluster name {config.name!r}")
        if not config.grpc_only:
            clusters[config.name] = build_cluster(config, stats, worker_id, secrets=secrets, singletons=singletons)
    return clusters

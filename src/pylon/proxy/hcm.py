"""Envoy's HTTP connection manager: the downstream side of the data path (HTTP/2: `h2_connection.py`).

`HcmRuntime` is the compiled, per-worker form of one
`envoy.filters.network.http_connection_manager` config (route table, limits,
stats, access loggers). `HttpConnection` is the asyncio Protocol for one
client connection: it feeds bytes to its codec (`pylon.proxy.http.h1_server`),
gets a `Stream` per request from it (pipelined requests wait their turn),
writes what the codec encodes, and enforces the connection-level limits and
timeouts. The router logic lives in `stream.py`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy import local_reply as lr
from pylon.proxy.access_log import AccessLogRecord, build_access_loggers
from pylon.proxy.connection_info import ConnectionInfo, address_host, transport_address
from pylon.proxy.filters.http import NoTerminalFilter, build_filter
from pylon.proxy.filters.upstream import build_upstream_filters
from pylon.proxy.filters.listener import Detected
from pylon.proxy.http.h1_server import CasePreservingRequestDecoder, Http1RequestDecoder, Http1ResponseEncoder
from pylon.proxy.http.header_case import proper_case
from pylon.proxy.http1 import HOP_BY_HOP, HTTP_DATE
from pylon.proxy.linger import Lingering
from pylon.proxy.local_address import forwarded_for_entry
from pylon.proxy.local_reply_mapper import LocalReplyMapper
from pylon.proxy.prompt_close import close_promptly
from pylon.proxy.router import RouteTable
from pylon.proxy.scoped_routes import ScopedRouteTable
from pylon.proxy.stream import Stream
from pylon.proxy.stream_states import RQ_BODY, RS_DONE, RS_NOT_STARTED, RS_RESET
from pylon.proxy.tls_stats import TlsStats, tls_accepted
from pylon.proxy.upstream.host import format_address
from pylon.proxy.watermarks import apply_buffer_limit
from pylon.proxy.write_batch import send_held, write_batch, write_later
from pylon.proxy.xfcc import client_cert_element
from pylon.regex import get_engine
from pylon.stats.store import Counter, StatsStore

if TYPE_CHECKING:
    from pylon.config.envoy import PreserveCaseFormatterConfig
    from pylon.proxy.tracing import Tracer
    from pylon.proxy.upstream.cluster import Cluster
    from pylon.proxy.worker import PoolRegistry, Worker

_new_record = AccessLogRecord.__new__  # see HcmRuntime.access_record


class _Difference(Counter):
    """A counter read as one counter minus another (Envoy's per-protocol request counts)."""

    __slots__ = ("total", "part")

    def __init__(self, name: str, total: Counter, part: Counter) -> None:  # noqa: D107 - no value of its own
        self.name = name
        self.total = total
        self.part = part

    @property  # type: ignore[override]
    def value(self) -> int:
        return self.total.value - self.part.value


def _user_agent_edits(cluster: bytes, node_id: bytes, headers: list[tuple[bytes, bytes]]
                      ) -> list[tuple[str, bytes, bytes]]:
    """Envoy's add_user_agent: x-envoy-downstream-service-cluster is the node's cluster (whatever the client sent,
    and even when the node has no cluster: then empty), user-agent too when the request has none or an empty one,
    x-envoy-downstream-service-node the node's id when it has one."""
    edits = [("set", b"x-envoy-downstream-service-cluster", cluster)]
    if not next((value for name, value in headers if name == b"user-agent"), b""):
        edits.append(("set", b"user-agent", cluster))
    if node_id:
        edits.append(("set", b"x-envoy-downstream-service-node", node_id))
    return edits


def trusted_client(use_remote_address: bool, hops: int, stream: Stream) -> tuple[str, int] | str:
    """Envoy's downstream remote address: the peer, or the x-forwarded-for entry it trusts.

    With use_remote_address the peer is the client unless xff_num_trusted_hops (`hops`)
    says the last N proxies before us are trusted, in which case the Nth
    address from the right of the XFF they sent is; without it, the
    (N+1)th from the right of XFF is.
    """
    xff = stream.xff
    if use_remote_address and not hops or not xff:
        return stream.conn.peer
    entries = [e.strip() for e in xff.decode("latin-1").split(",")]
    index = len(entries) - (hops if use_remote_address else hops + 1)
    if 0 <= index < len(entries) and entries[index]:
        return entries[index]
    return stream.conn.peer


class HcmRuntime:
    """One HTTP connection manager's config compiled for one worker.

    Its attributes are slots: compiled, it is an extension type (hcm.pxd) that the streams and connections hold in a
    typed field, so every request's reads of its settings and counters skip the attribute look-up."""

    __slots__ = ("accept_http_10", "access_loggers", "always_set_request_id", "body_decoders", "body_encoders",
                 "buffer_limit", "cert_details", "chain_views", "clusters", "config", "cx_active",
                 "cx_delayed_close_timeout", "cx_destroy", "cx_destroy_local", "cx_destroy_remote",
                 "cx_destroy_remote_active_rq", "cx_http1_active", "cx_http1_total", "cx_http2_active",
                 "cx_http2_total", "cx_idle_timeout", "cx_length_ms", "cx_max_duration",
                 "cx_overload_disable_keepalive", "cx_protocol_error", "cx_rx_bytes", "cx_ssl_active", "cx_ssl_total",
                 "cx_total", "cx_tx_bytes", "data_decoders", "data_encoders", "decoder_filters",
                 "default_host_for_http_10", "delayed_close_timeout", "drain_timeout", "dropped_underscores",
                 "dynamic_stats", "enable_trailers", "encoder_filters", "escaped_slashes", "first_stream_timeout",
                 "generate_request_id", "h2", "host_labels", "idle_timeout", "listener_rq_by_class",
                 "listener_rq_completed", "local_reply_mapper", "local_server_name", "local_uri_sans",
                 "max_connection_duration", "max_header_bytes", "max_headers_count", "max_stream_duration",
                 "merge_slashes", "network_filters", "no_cluster", "no_route", "normalize_path", "overload",
                 "overwrite_server", "path_options", "peer_check", "pools", "rejected_underscores",
                 "replace_client_request_id", "request_case", "request_headers_timeout", "request_timeout",
                 "response_drop", "response_key_format", "route_table", "routed", "rq_active", "rq_by_class",
                 "rq_completed", "rq_direct_response", "rq_header_timeout", "rq_http2_total", "rq_idle_timeout",
                 "rq_max_duration", "rq_overload_close", "rq_redirect", "rq_rx_reset", "rq_time", "rq_timeout",
                 "rq_too_large", "rq_total", "rq_tx_reset", "rs_too_large", "scheme_to_overwrite", "server_if_absent",
                 "server_name", "stream_idle_timeout", "suppress_envoy_headers", "tls_stats", "tracer",
                 "trailer_decoders", "trailer_encoders", "underscores", "upgrade_types", "upgrades_active",
                 "upgrades_total", "upstream_filters", "use_remote_address", "user_agent_edits", "via", "worker",
                 "xfcc_mode", "xff_num_trusted_hops")

    def __init__(self, config: Any, clusters: "dict[str, Cluster]", pools: "PoolRegistry",
                 stats: StatsStore, worker: "Worker", listener_stat_name: str) -> None:
        self.config = config
        self.worker = worker
        self.overload = worker.overload  # the worker's overload actions (one object for its life): one hop less
        self.clusters = clusters
        self.pools = pools
        if config.rds is not None:
            self.route_table = worker.route_table_for(self, config.rds.route_config_name)
        elif config.scoped_routes is not None:  # a RouteTable per scope, picked by the request's headers
            self.route_table = ScopedRouteTable(config.scoped_routes)
        else:
            self.route_table = RouteTable(config.route_config)
        prefix = f"http.{config.stat_prefix}."
        self.cx_total = stats.counter(prefix + "downstream_cx_total")
        self.cx_active = stats.gauge(prefix + "downstream_cx_active")
        self.cx_destroy = stats.counter(prefix + "downstream_cx_destroy")
        # What connections read and wrote (plaintext, under TLS), as Envoy counts them for every connection
        self.cx_rx_bytes = stats.counter(prefix + "downstream_cx_rx_bytes_total")
        self.cx_tx_bytes = stats.counter(prefix + "downstream_cx_tx_bytes_total")
        self.cx_protocol_error = stats.counter(prefix + "downstream_cx_protocol_error")
        self.cx_idle_timeout = stats.counter(prefix + "downstream_cx_idle_timeout")
        self.rq_total = stats.counter(prefix + "downstream_rq_total")
        self.rq_overload_close = stats.counter(prefix + "downstream_rq_overload_close")  # stop_accepting_requests
        self.cx_overload_disable_keepalive = stats.counter(prefix + "downstream_cx_overload_disable_keepalive")
        self.rq_http2_total = stats.counter(prefix + "downstream_rq_http2_total")
        # Every request that is not HTTP/2 is HTTP/1: worked out when read, so the HTTP/1 path counts nothing more.
        stats.counters[prefix + "downstream_rq_http1_total"] = _Difference(
            prefix + "downstream_rq_http1_total", self.rq_total, self.rq_http2_total)
        self.cx_http2_total = stats.counter(prefix + "downstream_cx_http2_total")
        self.cx_http2_active = stats.gauge(prefix + "downstream_cx_http2_active")
        self.cx_http1_total = stats.counter(prefix + "downstream_cx_http1_total")
        self.cx_http1_active = stats.gauge(prefix + "downstream_cx_http1_active")
        self.cx_ssl_total = stats.counter(prefix + "downstream_cx_ssl_total")
        self.cx_ssl_active = stats.gauge(prefix + "downstream_cx_ssl_active")
        self.cx_length_ms = stats.histogram(prefix + "downstream_cx_length_ms")
        # who ended a connection, as Envoy's close events: the proxy closing the socket (its delayed close's timer
        # included), or the client's FIN or reset (during a delayed close too)
        self.cx_destroy_local = stats.counter(prefix + "downstream_cx_destroy_local")
        self.cx_destroy_remote = stats.counter(prefix + "downstream_cx_destroy_remote")
        self.cx_destroy_remote_active_rq = stats.counter(prefix + "downstream_cx_destroy_remote_active_rq")
        self.cx_delayed_close_timeout = stats.counter(prefix + "downstream_cx_delayed_close_timeout")
        self.h2: Any = None  # the HTTP/2 codec's settings and stats, when codec_type lets it serve (h2_connection.py)
        self.rq_active = stats.gauge(prefix + "downstream_rq_active")
        self.rq_completed = stats.counter(prefix + "downstream_rq_completed")
        self.rq_by_class = {c: stats.counter(f"{prefix}downstream_rq_{c}xx") for c in range(1, 6)}
        # the same again under its listener (`listener_stat_name`), as Envoy's per-listener connection manager stats
        per_listener = f"{listener_stat_name}.{prefix}"
        self.listener_rq_completed = stats.counter(per_listener + "downstream_rq_completed")
        self.listener_rq_by_class = {c: stats.counter(f"{per_listener}downstream_rq_{c}xx") for c in range(1, 6)}
        self.rq_time = stats.histogram(prefix + "downstream_rq_time")
        self.rq_timeout = stats.counter(prefix + "downstream_rq_timeout")
        self.rq_header_timeout = stats.counter(prefix + "downstream_rq_header_timeout")
        self.rq_idle_timeout = stats.counter(prefix + "downstream_rq_idle_timeout")
        self.no_route = stats.counter(prefix + "no_route")
        self.no_cluster = stats.counter(prefix + "no_cluster")  # the router's: the route's cluster does not exist
        self.routed = stats.counter(prefix + "rq_total")  # the router filter's: the requests that reached it
        self.rq_direct_response = stats.counter(prefix + "rq_direct_response")
        self.upgrades_total = stats.counter(prefix + "downstream_cx_upgrades_total")
        self.upgrades_active = stats.gauge(prefix + "downstream_cx_upgrades_active")
        self.rq_redirect = stats.counter(prefix + "rq_redirect")
        self.rq_rx_reset = stats.counter(prefix + "downstream_rq_rx_reset")
        self.rq_tx_reset = stats.counter(prefix + "downstream_rq_tx_reset")  # the proxy reset the client's stream
        common = config.common_http_protocol_options
        self.idle_timeout = common.idle_timeout if common is not None else 3600.0
        self.delayed_close_timeout = float(config.delayed_close_timeout)
        self.max_headers_count = common.max_headers_count if common is not None else 100
        self.max_connection_duration = float(common.max_connection_duration or 0)
        self.max_stream_duration = float(common.max_stream_duration or 0)
        # How long a connection drained by max_connection_duration may stay open idle (Envoy's drain_timeout).
        self.drain_timeout = float(config.drain_timeout)
        self.cx_max_duration = stats.counter(prefix + "downstream_cx_max_duration_reached")
        self.rq_max_duration = stats.counter(prefix + "downstream_rq_max_duration_reached")
        # Envoy's headers_with_underscores_action: 0 allow, 1 drop the header, 2 reject the request (400).
        self.underscores = {"ALLOW": 0, "DROP_HEADER": 1, "REJECT_REQUEST": 2}[common.headers_with_underscores_action]
        self.dropped_underscores = stats.counter("http1.dropped_headers_with_underscores")
        self.rejected_underscores = stats.counter("http1.requests_rejected_with_underscores_in_headers")
        self.via = config.via.encode()  # appended to the via header of requests and responses, when set
        self.max_header_bytes = config.max_request_headers_kb * 1024
        self.request_timeout = config.request_timeout or 0.0
        self.request_headers_timeout = config.request_headers_timeout or 0.0
        self.stream_idle_timeout = config.stream_idle_timeout or 0.0
        # The first deadline a new stream can have before its route is known (see Stream.begin).
        self.first_stream_timeout = min([t for t in (self.request_timeout, self.stream_idle_timeout) if t] or [0.0])
        http1 = config.http_protocol_options
        self.accept_http_10 = http1.accept_http_10
        self.enable_trailers = http1.enable_trailers  # the client's trailers are read, a response's written to it
        self.default_host_for_http_10 = http1.default_host_for_http_10.encode()
        # header_key_format (http/header_case.py): preserve_case records requests' names (its fallback's choice),
        # proper_case_words formats the responses written to clients
        key_format = http1.header_key_format
        self.request_case: PreserveCaseFormatterConfig | None = key_format.preserve_case if key_format else None
        self.response_key_format: Callable[[bytes], bytes] | None = (
            proper_case if key_format is not None and key_format.proper_case_words is not None else None)
        self.use_remote_address = config.use_remote_address
        # Routes gate access by path: they must see the path the upstream will act on (path.py).
        self.normalize_path = config.normalize_path
        self.merge_slashes = config.merge_slashes
        action = config.path_with_escaped_slashes_action
        self.escaped_slashes = None if action in ("KEEP_UNCHANGED", "IMPLEMENTATION_SPECIFIC_DEFAULT") else action
        self.path_options = config.normalize_path or config.merge_slashes or self.escaped_slashes is not None
        self.xff_num_trusted_hops = config.xff_num_trusted_hops
        self.generate_request_id = config.generate_request_id
        # At the edge (use_remote_address) a client's x-request-id is replaced, unless preserved: Envoy 1.40
        # counts no address as internal by default, loopback included (it has no internal_address_config here).
        self.replace_client_request_id = (config.use_remote_address and config.generate_request_id
                                          and not config.preserve_external_request_id)
        self.always_set_request_id = config.always_set_request_id_in_response
        self.server_name = (config.server_name or "envoy").encode()  # Envoy's default for an empty one too
        transformation = config.server_header_transformation
        self.overwrite_server = transformation == "OVERWRITE"
        self.server_if_absent = transformation == "APPEND_IF_ABSENT"
        # The proxy's own replies have no server field to keep: one is added unless the transformation passes
        # through what the response has (None: no server field).
        self.local_server_name: bytes | None = None if transformation == "PASS_THROUGH" else self.server_name
        # scheme_header_transformation.scheme_to_overwrite: every request's :scheme and x-forwarded-proto
        transformation = config.scheme_header_transformation
        self.scheme_to_overwrite: bytes | None = (
            transformation.scheme_to_overwrite.encode() if transformation is not None
            and transformation.scheme_to_overwrite is not None else None)
        # What of an upstream response head is not relayed: hop-by-hop headers, and its server header when ours
        # replaces it.
        self.response_drop = HOP_BY_HOP | {b"server"} if self.overwrite_server else HOP_BY_HOP
        router = config.http_filters[-1].typed_config if config.http_filters else None
        self.suppress_envoy_headers = bool(getattr(router, "suppress_envoy_headers", False))
        # The router's upstream HTTP filters (None: none); a cluster's own `http_filters` take their place.
        self.upstream_filters = build_upstream_filters(getattr(router, "upstream_http_filters", []),
                                                       f"http.{config.stat_prefix}.", stats)
        self.dynamic_stats = bool(getattr(router, "dynamic_stats", True))
        # The filters before the router, in order; empty (and free) when the router is alone.
        self.decoder_filters = [build_filter(f.name, f.typed_config, config.stat_prefix, stats, worker.loop)
                                for f in config.http_filters[:-1]] if config.http_filters else [NoTerminalFilter()]
        # Filters with work of their own before requests (jwt_authn's async JWKS fetch) start now; what a listener
        # built at startup waits for before it serves (Envoy's init targets) goes to the worker.
        for http_filter in self.decoder_filters:
            start = getattr(http_filter, "start", None)
            if start is not None:
                worker.init_waits.extend(start(worker))
        # The ones that also see response heads, last first (Envoy's encoder order); empty and free usually.
        self.encoder_filters = [f for f in reversed(self.decoder_filters) if hasattr(f, "encode_headers")]
        # The ones that may want whole bodies (the stream then buffers that direction, up to buffer_limit).
        self.body_decoders = [f for f in self.decoder_filters if hasattr(f, "decode_body")]
        self.body_encoders = [f for f in self.encoder_filters if hasattr(f, "encode_body")]
        # The ones that may want each body piece as it passes (streaming transforms), in their directions' orders.
        self.data_decoders = [f for f in self.decoder_filters if hasattr(f, "decode_data")]
        self.data_encoders = [f for f in self.encoder_filters if hasattr(f, "encode_data")]
        # The ones that see trailers, where a message has them (enable_trailers): request first to last, response
        # last to first, as Envoy's decodeTrailers / encodeTrailers.
        self.trailer_decoders = [f for f in self.decoder_filters if hasattr(f, "decode_trailers")]
        self.trailer_encoders = [f for f in reversed(self.decoder_filters) if hasattr(f, "encode_trailers")]
        #: the lists without the filters a route disables, per set of names (proxy/filter_chain.py)
        self.chain_views: dict[frozenset[str], Any] = {}
        self.rq_too_large = stats.counter(prefix + "downstream_rq_too_large")
        self.rs_too_large = stats.counter(prefix + "rs_too_large")
        self.access_loggers = build_access_loggers(config.access_log, worker.access_log_writer)
        self.local_reply_mapper = LocalReplyMapper(config.local_reply_config, get_engine()) \
            if config.local_reply_config is not None else None
        self.peer_check: Any = None  # set by the listener when TLS validates client certificates
        self.tls_stats: TlsStats | None = None  # the listener's ssl.* stats, on a TLS chain (set by the listener)
        self.network_filters: list[Any] = []  # the chain's filters ahead of this one (set by the listener)
        self.upgrade_types = frozenset(u.upgrade_type.lower().encode() for u in config.upgrade_configs if u.enabled)
        self.xfcc_mode = config.forward_client_cert_details
        self.cert_details = config.set_current_client_cert_details
        self.local_uri_sans: list[str] = []  # of the listener's certificate (XFCC `By=`), set by the listener
        # The listener's per_connection_buffer_limit_bytes (set by the listener): the connection's write
        # buffer watermarks, how much of a request body is held before the upstream is there (then the
        # client is paused), and Envoy's retry buffer limit.
        self.buffer_limit = 1 << 20
        self.host_labels: dict[Any, str] = {}  # host -> "ip:port" for %UPSTREAM_HOST%, formatted once
        self.tracer: Tracer | None = None  # with HCM `tracing` (set by the listener, which knows the direction)
        node = getattr(worker, "node", None)
        cluster, node_id = (node.cluster, node.id) if node is not None else ("", "")
        # add_user_agent, as Envoy: its user agent is the node's cluster (--service-cluster), even an empty one
        self.user_agent_edits = partial(_user_agent_edits, cluster.encode(), node_id.encode()) \
            if config.add_user_agent else None

    def response_fields(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The fields the connection manager adds to a response head it relays, as Envoy's encodeHeaders does for
        every response: a `date` when the head has none (an upstream's own is kept), and `server` as
        server_header_transformation says: OVERWRITE always (`response_drop` removes the upstream's),
        APPEND_IF_ABSENT when the head has none, PASS_THROUGH never."""
        has_date = has_server = False
        for pair in headers:
            name = pair[0]
            if name == b"date":
                has_date = True
            elif name == b"server":
                has_server = True
        added = [(b"server", self.server_name)] if self.overwrite_server or (self.server_if_absent
                                                                              and not has_server) else []
        if not has_date:
            added.append((b"date", HTTP_DATE.now()))
        return added

    def trusted_client(self, stream: Stream) -> tuple[str, int] | str:
        """Envoy's downstream remote address: the peer, or the x-forwarded-for entry it trusts (`trusted_client`)."""
        return trusted_client(self.use_remote_address, self.xff_num_trusted_hops, stream)

    def count_completed(self, status: int) -> None:
        """A request a response went out for, by the response's class: the connection manager's
        `downstream_rq_completed` and `downstream_rq_<N>xx`, and its listener's the same."""
        by_class = status // 100
        self.rq_by_class[by_class].value += 1
        self.rq_completed.value += 1
        self.listener_rq_by_class[by_class].value += 1
        self.listener_rq_completed.value += 1

    def log_access(self, stream: Stream, elapsed: float) -> None:
        """Hand a finished stream's access-log record to every logger."""
        record = self.access_record(stream, elapsed)
        for logger in self.access_loggers:
            logger.log(record)

    def access_record(self, stream: Stream, elapsed: float) -> AccessLogRecord:
        """What the access log knows of `stream`, `elapsed` seconds after it started (also what
        local_reply_config's filters and body formats read).

        Every field is stored here, on a record made without `AccessLogRecord.__init__`: its 29 keyword
        defaults cost more than the line's formatting (about 1.5 us of ~4 per logged request, measured)."""
        conn = stream.conn
        record = _new_record(AccessLogRecord)
        record.start_time = self.worker.wall_time(stream.start)
        record.method = stream.method.decode("latin-1")
        record.path = stream.path.decode("latin-1")
        record.original_path = None
        record.authority = stream.authority.decode("latin-1")
        record.scheme = conn.scheme.decode("latin-1")
        record.protocol = "HTTP/1.0" if stream.http10 else conn.protocol
        record.request_headers = stream.headers
        record.response_headers = stream.resp_headers
        record.response_code = stream.status
        record.response_flags = stream.flags
        record.response_code_details = stream.details
        record.bytes_received = stream.bytes_received
        record.bytes_sent = stream.bytes_sent
        record.duration = elapsed * 1000
        record.request_duration = None
        record.response_duration = (stream.first_byte - stream.start) * 1000 if stream.first_byte else None
        record.upstream_cluster = stream.cluster.name if stream.cluster is not None else None
        host = stream.last_host
        if host is not None:
            label = self.host_labels.get(host)
            if label is None:
                label = self.host_labels[host] = format_address(host.address)
            record.upstream_host = label
        else:
            record.upstream_host = None
        record.upstream_transport_failure_reason = stream.transport_failure or None
        record.upstream_local_address = stream.upstream_local
        record.route_name = stream.route.name if stream.route is not None else None
        record.downstream_remote = conn.peer if stream.xff is None else self.trusted_client(stream)
        record.downstream_local = conn.local
        record.connection_id = conn.connection_id
        detected = conn.detected
        record.requested_server_name = (detected.server_name or None) if detected is not None else None
        record.connection_termination_details = None
        record.health_check = stream.health_check
        record.local_reply_body = None
        record.dynamic_metadata = stream.dynamic_metadata
        return record


def count_closed(hcm: HcmRuntime, conn: "HttpConnection", exc: Exception | None, active: bool) -> None:
    """A connection the connection manager counted is gone: its active gauges, its length, and who ended it (the
    client when its FIN came or the socket failed, `exc`; else the proxy), and whether the client left a request
    unfinished (`active`)."""
    hcm.cx_active.value -= 1
    hcm.cx_destroy.value += 1
    if conn.peer_closed or exc is not None:
        hcm.cx_destroy_remote.value += 1
        if active:
            hcm.cx_destroy_remote_active_rq.value += 1
    else:
        hcm.cx_destroy_local.value += 1
    if hcm.tls_stats is not None:
        hcm.cx_ssl_active.value -= 1
    hcm.cx_length_ms.record((conn.loop_time() - conn.opened_at) * 1000.0)


class HttpConnection:
    """One downstream HTTP/1.1 connection: an asyncio protocol by its methods, not by deriving from
    asyncio.Protocol (the compiled module makes it an extension type, which cannot derive from a Python class;
    see hcm.pxd), so each callback asyncio's protocol defines is written here, eof_received included."""

    protocol = "HTTP/1.1"  # the access log's %PROTOCOL% (HTTP/1.0 is told per request)

    __slots__ = (
        "hcm", "worker", "loop", "transport", "decoder", "active", "queue", "closed", "draining",
        "peer", "peer_ip", "local", "scheme", "feeding",
        "last_activity", "connection_id", "loop_time", "runtime_listener", "wake_at", "deadlines",
        "read_budget", "parked", "client_cert", "opened_at", "drain_close_at", "detected", "info",
        "xff_ip", "encoder", "batch", "held", "tx_bytes", "codec_counted", "peer_closed",
    )

    def __init__(self, hcm: HcmRuntime, scheme: bytes = b"http") -> None:
        self.hcm = hcm
        self.worker = hcm.worker
        self.loop = self.worker.loop
        self.loop_time = self.loop.time
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.decoder = Http1RequestDecoder(hcm, self) if hcm.request_case is None else CasePreservingRequestDecoder(
            hcm, self, hcm.request_case.formatter_type_on_envoy_headers == "PROPER_CASE")
        self.encoder = Http1ResponseEncoder(hcm.local_server_name, hcm.enable_trailers)
        self.active: Stream | None = None
        self.queue: deque[Stream] = deque()
        self.closed = False
        self.draining = False
        self.peer: tuple[str, int] | str = ("", 0)  # str: an internal connection's envoy:// address
        self.peer_ip = b""
        self.xff_ip = b""  # what this hop appends to x-forwarded-for at the edge (see forwarded_for_ip)
        self.local: tuple[str, int] | str = ("", 0)
        self.scheme = hcm.scheme_to_overwrite or scheme  # the requests' :scheme (the HCM may overwrite it)
        self.feeding = False  # the decoder is working through a read (local replies may wait for its end)
        self.last_activity = 0.0
        self.connection_id = 0
        self.runtime_listener: Any = None  # the ListenerRuntime that accepted it (per-listener stats)
        self.detected: Detected | None = None  # what the listener filters found (SNI, ALPN), if they ran
        self.info: ConnectionInfo | None = None
        self.wake_at = 0.0  # when the worker's deadline wheel looks at this connection next (0 = not armed)
        self.deadlines = self.worker.deadlines
        self.read_budget = self.worker.read_budget
        self.parked: list[bytes] | None = None  # reads held back until this I/O phase ends (fairness.py)
        self.client_cert: bytes | None = None  # this connection's XFCC element (b"": no client certificate)
        self.opened_at = 0.0
        self.drain_close_at = 0.0  # when a connection drained by max_connection_duration closes if idle (0: not)
        self.batch = write_batch(self.loop)  # writes go out at the end of the loop's I/O phase (write_batch.py)
        self.held: list[bytes] | None = None
        self.tx_bytes = hcm.cx_tx_bytes  # what send_held counts what it writes in
        self.codec_counted = False  # in downstream_cx_http1_total (http2 for Http2Connection): see count_codec
        self.peer_closed = False  # the client's FIN came: a close that follows is the client's (count_closed)

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport_address(transport.get_extra_info("peername"))
        detected = self.detected
        if detected is not None and detected.remote_address is not None:
            peer = detected.remote_address  # the client a PROXY protocol header named (listener filter)
        if peer:
            self.peer = peer
            self.peer_ip = address_host(peer).encode()
        local = detected.original_destination if detected is not None else None
        local = local or transport.get_extra_info("sockname")  # a redirected connection's is where it was going
        if local:
            self.local = transport_address(local)
        apply_buffer_limit(transport, self.hcm.buffer_limit)
        # TCP_NODELAY is already set: uvloop's (and asyncio's) TCP transports set it on every socket they adopt
        # (tests/proxy/test_tls_transport.py pins it), so no setsockopt per connection here.
        self.last_activity = self.opened_at = now = self.loop_time()
        self.connection_id = self.worker.next_connection_id()
        self.hcm.cx_total.value += 1
        self.hcm.cx_active.value += 1
        self.worker.connection_opened(self)
        tls_stats = self.hcm.tls_stats
        if tls_stats is not None:
            self.hcm.cx_ssl_total.value += 1
            self.hcm.cx_ssl_active.value += 1
        if tls_stats is not None and not tls_accepted(transport, self.hcm.peer_check, tls_stats):
            self.closed = True  # a client certificate the listener's SAN matchers refuse (counted, as in Envoy)
            transport.abort()
            return
        if self.hcm.network_filters and not self._network_filters_allow():
            self.close()
            return
        first = min(t for t in (self.hcm.idle_timeout, self.hcm.max_connection_duration, float("inf")) if t)
        if first != float("inf"):
            self.deadlines.arm(self, now + first)

    def data_received(self, data: bytes) -> None:
        self.hcm.cx_rx_bytes.value += len(data)
        if self.parked is not None:
            self.parked.append(data)  # more bytes behind parked ones: they keep their order
            return
        if not self.read_budget.spend():
            self.parked = [data]
            self.transport.pause_reading()
            self.loop.call_soon(self._read_parked)
            return
        self._read(data)

    def _read_parked(self) -> None:
        """The phase that parked this connection's bytes is over: read on, and handle them."""
        parked, self.parked = self.parked, None
        if self.closed or parked is None:
            return
        active = self.active
        if not self.queue and not (active is not None and active.paused_downstream):
            self.transport.resume_reading()  # unless pipelining or back-pressure holds it
        for data in parked:
            self._read(data)
            if self.closed:
                return

    def count_codec(self) -> None:
        """Count the connection in its codec's stats, as Envoy does when a connection's first bytes arrive (so a
        connection that sends none, a TCP health probe's, is in no codec's count). Under AUTO a plaintext
        connection's first bytes choose the codec first: the preface sniffer calls this once it chose HTTP/1
        (codec_select.py), and an HTTP/2 connection counts its own."""
        if getattr(self.decoder, "choosing", False):
            return
        self.codec_counted = True
        self.hcm.cx_http1_total.value += 1
        self.hcm.cx_http1_active.value += 1

    def _read(self, data: bytes) -> None:
        if not self.codec_counted:
            self.count_codec()
        self.last_activity = self.loop_time()
        self.feeding = True
        error = self.decoder.feed(data)
        self.feeding = False
        if self.encoder.out:
            self.flush_output()  # what the requests of this read caused at once (100 Continue, local replies)
        if error is not None:
            self._protocol_error(error)
            return
        active = self.active
        if active is not None:
            if active.up_out:
                active.flush_upstream()
            if active.pending_local is not None:
                active.flush_pending_local()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection_id == 0:
            return  # refused in connection_made, never counted
        self.lost(exc, not self.closed and self.active is not None)  # (a connection the proxy closes has answered)

    def tunnel_lost(self, exc: Exception | None, client_ended: bool) -> None:
        """The connection's upgraded tunnel closed (tunnel.py swapped its protocol out): the connection's own
        bookkeeping. A tunnel the client ended (its EOF, or a failed socket) was a request still open, as Envoy
        counts it; one the upstream ended, the proxy closed."""
        if client_ended:
            self.peer_closed = True
        self.lost(exc, client_ended)

    def lost(self, exc: Exception | None, unfinished: bool) -> None:
        """The connection is gone (`unfinished`: with a request the client left open)."""
        self.closed = True
        self.deadlines.disarm(self)  # not held by the wheel until a deadline it no longer has
        hcm = self.hcm
        count_closed(hcm, self, exc, unfinished)
        if self.codec_counted:
            hcm.cx_http1_active.value -= 1
        if self.active is not None:
            hcm.rq_rx_reset.value += 1
            self.active.on_downstream_closed()
        for stream in self.queue:
            stream.rs_state = RS_RESET
        self.queue.clear()
        self.worker.connection_closed(self, self.opened_at)

    def eof_received(self) -> None:
        """The client shut its side: returning None lets the transport close, as asyncio.Protocol's default."""
        self.peer_closed = True
        return None

    def pause_writing(self) -> None:
        if self.active is not None:
            self.active.on_downstream_pause(True)

    def resume_writing(self) -> None:
        if self.active is not None:
            self.active.on_downstream_pause(False)

    # ------------------------------------------------------------------ the decoder's callbacks
    def new_stream(self) -> Stream:
        """A request begins: it becomes the active stream, or waits behind it (pipelining)."""
        now = self.last_activity  # the clock as this read began (_read): the parser calls this within it
        stream = Stream(self, now)
        if self.hcm.request_headers_timeout:
            self.deadlines.arm(self, now + self.hcm.request_headers_timeout)
        if self.active is None:
            self.active = stream
        else:
            self.queue.append(stream)
            self.transport.pause_reading()  # one request in flight, one waiting: enough buffering
        return stream

    def request_head_complete(self, stream: Stream) -> None:
        stream.rq_state = RQ_BODY
        if self.draining:
            stream.close_after = True
        if stream is self.active:
            stream.begin()

    def upgrade_rest(self, rest: bytes) -> None:
        """The bytes after an upgrade's head belong to the tunnel, once the upstream accepts (101)."""
        stream = self.active
        if stream is not None and stream.upgrade_accepted and stream.rs_state < RS_DONE:
            stream.client_rest = rest
            self.transport.pause_reading()

    # ------------------------------------------------------------------ stream lifecycle
    def stream_done(self, stream: Stream, close: bool) -> None:
        """The active stream finished: close, or start the next pipelined request."""
        if stream is not self.active:
            return
        self.active = None
        if close:  # the response said `connection: close` (a drain that began after its head waits for the next)
            self.close(delayed=stream.local_reply)
            return
        idle = self.hcm.idle_timeout
        if idle:
            when = self.last_activity + idle
            if when < self.wake_at or not self.wake_at:  # usually already due for a look sooner
                self.deadlines.arm(self, when)
        if self.queue:
            nxt = self.queue.popleft()
            self.active = nxt
            if not self.queue:
                self.transport.resume_reading()
            if nxt.method:  # its headers are complete
                nxt.begin()
                if nxt.up_out:
                    nxt.flush_upstream()
                self.flush_output()

    def flush_output(self) -> None:
        """Write what the codec encoded, with the rest of this I/O phase's writes (write_batch.py)."""
        data = self.encoder.take()
        if data:
            write_later(self, data)

    write_later = write_later
    send_held = send_held

    def _protocol_error(self, reply: lr.LocalReply) -> None:
        """Malformed or oversized input: answer once if nothing was sent yet, then close."""
        self.hcm.cx_protocol_error.value += 1
        self._reply_and_close(reply)

    def _reply_and_close(self, reply: lr.LocalReply) -> None:
        stream = self.active
        replied = True
        if stream is not None and stream.started and stream.rs_state < RS_DONE:
            if stream.rs_state == RS_NOT_STARTED:
                stream.close_after = True
                stream.local(reply)
            else:
                stream.on_downstream_closed()
                replied = False
        elif not self.closed:
            if stream is not None and not stream.started:
                self.hcm.rq_total.value += 1
                self.hcm.count_completed(reply.status)
            self.encoder.encode_local_reply(reply.status, reply.body, close=True)
            self.flush_output()
        self.close(delayed=replied)

    def close(self, delayed: bool = False) -> None:
        """Close; `delayed` after a local reply: wait for the client's FIN first (Envoy's delayed close)."""
        if not self.closed:
            self.closed = True
            self.parked = None
            send_held(self)  # the reply before the close
            timeout = self.hcm.delayed_close_timeout
            if delayed and timeout:
                Lingering(self, self.transport, timeout)
            else:
                close_promptly(self.transport)

    # ------------------------------------------------------------------ housekeeping (worker sweeps)
    def _network_filters_allow(self) -> bool:
        """The chain's network filters ahead of this connection manager (e.g. RBAC) let the connection in."""
        info = self.connection_info()
        return all(network_filter.on_connection(info) for network_filter in self.hcm.network_filters)

    def forwarded_for_ip(self) -> bytes:
        """The client's address as Envoy appends it to x-forwarded-for: this host's own address for a
        loopback client (a loopback address means nothing to whoever reads the header)."""
        if not self.xff_ip:
            self.xff_ip = forwarded_for_entry(address_host(self.peer)).encode() if self.peer else self.peer_ip
        return self.xff_ip

    def connection_info(self) -> ConnectionInfo:
        """The connection's facts for filters (built on first use)."""
        info = self.info
        if info is None:
            detected = self.detected
            info = self.info = ConnectionInfo(self.connection_id, self.local, self.peer,
                                              self.transport.get_extra_info("ssl_object"),
                                              detected.server_name if detected is not None else "",
                                              transport_address(self.transport.get_extra_info("peername")) or None)
        return info

    def client_cert_element(self) -> bytes | None:
        """This hop's x-forwarded-client-cert element, or None without a client certificate (once per connection)."""
        element = self.client_cert
        if element is None:
            peer = self.connection_info().peer_certificate  # parsed once, shared with the filters
            hcm = self.hcm
            element = self.client_cert = client_cert_element(peer, hcm.local_uri_sans, hcm.cert_details) if peer else b""
        return element or None

    def drain(self, close_idle: bool = True) -> None:
        """Stop keep-alive: the next response says `connection: close`. An idle connection closes now, or with
        `close_idle=False` answers its next request first (a client that reuses it then is told, not cut off)."""
        self.draining = True
        if close_idle and self.active is None:
            self.close()

    def sweep(self, now: float) -> float:
        """Enforce every timeout of this connection and its request; return when to look again (0: never).

        Called by the worker's deadline wheel (`deadlines.py`) at the earliest
        deadline this connection armed; the deadlines themselves are recomputed
        here from the connection's state, so activity never has to re-arm.
        """
        if self.closed:
            return 0.0
        hcm = self.hcm
        extra = 0.0  # the connection's own next deadline (max_connection_duration, drain close)
        if hcm.max_connection_duration and not self.draining:
            extra = self.opened_at + hcm.max_connection_duration
            if now >= extra:
                # Envoy drains it: the next response says connection: close; an idle one closes after drain_timeout.
                hcm.cx_max_duration.value += 1
                self.draining = True
                self.drain_close_at = extra = now + hcm.drain_timeout
        elif self.drain_close_at:
            extra = self.drain_close_at
        if self.drain_close_at and now >= self.drain_close_at and self.active is None and self.decoder.stream is None:
            self.close()
            return 0.0
        following = self._sweep_timeouts(now)
        return min(following, extra) if following and extra else following or extra

    def _sweep_timeouts(self, now: float) -> float:
        """The active stream's timeouts (`Stream.sweep`), or the idle and header timeouts when none is in progress."""
        hcm = self.hcm
        stream = self.active
        parsing = self.decoder.stream
        if stream is None or not stream.started:
            if parsing is not None and self.decoder.in_head and hcm.request_headers_timeout:
                due = parsing.start + hcm.request_headers_timeout
                if now >= due:
                    hcm.rq_header_timeout.value += 1
                    self._reply_and_close(lr.REQUEST_HEADER_TIMEOUT)
                    return 0.0
                return due
            if stream is not None or not hcm.idle_timeout:
                return 0.0
            due = self.last_activity + hcm.idle_timeout
            if now >= due:
                hcm.cx_idle_timeout.value += 1
                self.close()
                return 0.0
            return due
        if stream.rs_state >= RS_DONE:
            return 0.0
        following = stream.sweep(now)
        if following is None:
            return self._after_stream(now)
        return following

    def _after_stream(self, now: float) -> float:
        """A timeout ended or changed the active stream: what the connection needs next (a retry's deadline, idle)."""
        if self.closed:
            return 0.0
        return self.sweep(now)

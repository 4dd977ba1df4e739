"""One HTTP request/response exchange through the proxy: Envoy's router filter.

A `Stream` is created by the downstream connection for every request. It
routes the request, picks a cluster and host, borrows an upstream
connection from the host's pool, forwards head and body, and relays the
response back, with Envoy's timeouts, retries, circuit breakers and local
replies (response flags). It is also the `Exchange` the upstream pool and
connection call back into.

Performance notes (this is the hot path): one object per request with
`__slots__`; header processing is one pass over the header list; the head
bytes for upstream are built once (and reused by retries); writes are
collected and flushed once per `data_received`, so a small response leaves in
a single `transport.write`.
"""

from __future__ import annotations

import asyncio
import random
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from pylon.proxy import dynamic_metadata
from pylon.proxy import local_reply as lr
from pylon.proxy.grpc_local_reply import trailers_only_headers
from pylon.proxy.connection_info import spell_address
from pylon.proxy.internal_listener import NO_INTERNAL_LISTENER
from pylon.proxy.grpc_timeout import StreamDuration, announce_grpc_timeout, max_grpc_timeout_of, stream_duration_ms
from pylon.proxy.filters.upstream import FilteredRequest
from pylon.proxy.filter_chain import chain_for
from pylon.proxy.headers import HeaderList, RequestLookup, cookie_value, request_lookup
from pylon.proxy.http.h1_client import Http1RequestEncoder
from pylon.proxy.http.h1_server import Http1ResponseEncoder
from pylon.proxy.http.header_case import KeyFormattingEncoder, PreservedCase, format_head
from pylon.proxy.http1 import HOP_BY_HOP, without_nominated
from pylon.proxy.mirror import Shadow, start_shadows
from pylon.proxy.path import PathRejected, normalized_target
from pylon.proxy.request_ids import new_request_id
from pylon.config.envoy import ENVOY_LB
from pylon.proxy.router import first_query_values, is_grpc_request
from pylon.proxy.stream_states import (RQ_DONE, RQ_HEADERS, RS_DONE, RS_HELD, RS_NOT_STARTED, RS_RESET, RS_SENDING,
                                       UP_AWAITING, UP_CONNECTING, UP_DONE, UP_IDLE, UP_RECEIVING, UP_RESET,
                                       UP_SENDING, UP_UPGRADED)
from pylon.proxy.connect import TerminatedConnect
from pylon.proxy.h2_stream_transport import TunnelStream
from pylon.proxy.h2_tunnel import H2Tunnel
from pylon.proxy.tunnel import open_tunnel
from pylon.proxy.upstream.cluster import PENDING
from pylon.proxy.upstream.lb import stable_hash
from pylon.proxy.upstream.retry_priority import RetryPriorityState
from pylon.proxy.upstream.subset import Criteria, merged_over
from pylon.proxy.xfcc import HEADER as XFCC
from pylon.proxy.xfcc import forwarded_value

if TYPE_CHECKING:
    from pylon.proxy.access_log import AccessLogRecord
    from pylon.proxy.hcm import HcmRuntime, HttpConnection
    from pylon.proxy.router import HashSource, MatchedRoute
    from pylon.proxy.upstream.cluster import Cluster, Host
    from pylon.proxy.upstream.h2_pool import H2UpstreamStream
    from pylon.proxy.upstream.pool import HostPool, UpstreamConnection

# Request headers the single pass treats specially; everything else is forwarded as is.
#: Envoy's request controls, which its router consumes and never forwards (observed with Envoy 1.40).
_ENVOY_CONTROLS = frozenset({
    b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries", b"x-envoy-retriable-status-codes",
    b"x-envoy-retriable-header-names", b"x-envoy-upstream-rq-timeout-ms", b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-stream-duration-ms",
    b"x-envoy-internal", b"x-envoy-force-trace", b"x-envoy-ip-tags", b"x-envoy-expected-rq-timeout-ms",
})
#: What a client must not tell the mesh at its edge (use_remote_address), as Envoy cleans them there.
_EDGE_CLEANED = frozenset({
    b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node",
    b"x-envoy-original-path", b"x-envoy-external-address",
})
_SPECIAL = HOP_BY_HOP | _ENVOY_CONTROLS | _EDGE_CLEANED | {
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", XFCC}
_RETRY_BASE, _RETRY_MAX = 0.025, 0.250  # Envoy's default retry back-off
#: Framing a 2xx to CONNECT may carry and a client must ignore (RFC 9110 9.3.6): not relayed to an HTTP/2 stream.
_CONNECT_2XX_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

#: Methods a proxy may send again after a connection was lost before any answer (RFC 9110 9.2.2).
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
#: The local reply for an upstream reset before the response, by the upstream's reason (others: UC).
_RESET_REPLIES = {"protocol error": lr.UPSTREAM_PROTOCOL_ERROR, "remote reset": lr.UPSTREAM_REMOTE_RESET,
                  "refused stream": lr.UPSTREAM_REFUSED_STREAM}
#: What a Host (authority) may contain, as nghttp2's authority check that Envoy applies: RFC 3986's
#: unreserved, sub-delims, pct-encoded and the ':' '@' '[' ']' of userinfo, port and IPv6 literals.
_AUTHORITY_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:@[]"


#: Authorities that passed the check: clients repeat theirs on every request, and a set look-up is ~8x cheaper than
#: the translate. Bounded: emptied when full.
_VALID_AUTHORITIES: set[bytes] = set()
_VALID_AUTHORITIES_MAX = 1024


def _valid_authority(authority: bytes) -> bool:
    """Whether `authority` holds only the characters an authority may (and is remembered if so)."""
    if authority.translate(None, _AUTHORITY_CHARS):
        return False
    if len(_VALID_AUTHORITIES) >= _VALID_AUTHORITIES_MAX:
        _VALID_AUTHORITIES.clear()
    _VALID_AUTHORITIES.add(authority)
    return True


def _edited(headers: list[tuple[bytes, bytes]], edits: list[tuple[str, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with the filters' request header changes applied, in order."""
    edited = HeaderList(list(headers))
    for op, name, value in edits:
        if op == "remove":
            edited.remove(name)
        else:
            getattr(edited, op)(name, value)
    return edited.items


def _upgrade_token(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request's Upgrade value (b"" without one). A function, not a generator expression in `begin`: compiled,
    a method holding a closure cannot be cpdef."""
    for name, value in headers:
        if name == b"upgrade":
            return value
    return b""


def _asks_trailers(te: bytes) -> bool:
    """Whether a TE field lists `trailers` (its only value a proxy forwards, as Envoy sanitises TE)."""
    if te == b"trailers":  # what every gRPC client sends: no need to take it apart
        return True
    return any(token.split(b";")[0].strip().lower() == b"trailers" for token in te.split(b","))


def _with_via(headers: list[tuple[bytes, bytes]], via: bytes) -> list[tuple[bytes, bytes]]:
    """Envoy's HCM `via`: appended to the first via header, or added as one."""
    for i, (name, value) in enumerate(headers):
        if name == b"via":
            return headers[:i] + [(name, value + b", " + via)] + headers[i + 1:]
    return [*headers, (b"via", via)]


def _socket_pause(pacer: Any, paused: bool, read: Callable[[bool], None]) -> None:
    """A socket's back-pressure on a body's source (`read`), unless a bandwidth limiter (`pacer`) still holds too
    much of that body to take more: then the source stays paused until the limiter lets it go."""
    if pacer is not None:
        pacer.sink_full = paused
        if pacer.full:
            return
    read(paused)


class Stream:
    """Router state for one request. Lives from request headers to the end of the response."""

    __slots__ = (
        "conn", "hcm", "url", "headers", "method", "is_head", "http10", "keep_alive", "upgrade",
        "req_chunked", "req_length", "rq_state", "up_state", "rs_state", "started", "body_buffer", "waiting_body",
        "body_size", "route", "cluster", "host", "pool", "upstream", "request_encoder", "up_out", "encoder",
        "close_after", "local_reply", "status", "flags", "details",
        "retries_left", "retry_held", "deadline", "try_deadline", "upstream_deadline", "bytes_received", "bytes_sent", "start",
        "last_activity", "attempt_start", "first_byte", "authority", "path", "pending_local",
        "transport_failure", "request_id", "last_host", "xff", "response_ops", "paused_downstream", "paused_upstream", "resp_headers",
        "stale_retried", "timeout", "attempts", "tried_hosts", "retry_priority",
        "resume", "filter_index", "filter_timer", "finish_callbacks", "header_edits", "upgrade_accepted", "client_rest",
        "tunnel_upstream", "upstream_local", "buffering_request", "held_response", "response_body", "set_cookie",
        "override_host",
        "request_data_filters", "response_data_filters", "req_trailers", "resp_trailers", "span", "body_watch",
        "shadows", "health_check", "duration_deadline", "arrived_grpc", "decoder_limit", "filtered_request",
        "dynamic_metadata", "typed_dynamic_metadata", "header_case", "resp_header_case", "chain",
        "request_pacer", "response_pacer",
    )

    def __init__(self, conn: "HttpConnection", now: float) -> None:
        self.conn = conn
        self.hcm: HcmRuntime = conn.hcm
        #: where the HTTP filter lists are read: the HCM's, or a view without the filters the route disables
        self.chain: Any = conn.hcm
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.is_head = False
        self.http10 = False
        self.keep_alive = True
        self.upgrade = False
        self.req_chunked = False
        self.req_length = 0
        # The three state machines of stream_states.py: the client's request, the upstream attempt, the response.
        self.rq_state = RQ_HEADERS
        self.up_state = UP_IDLE
        self.rs_state = RS_NOT_STARTED
        self.started = False  # begin() ran: routing started and the request is counted active
        self.body_buffer: list[bytes] | None = None
        self.waiting_body: list[bytes] = []
        self.body_size = 0
        self.route: MatchedRoute | None = None
        self.cluster: Cluster | None = None
        self.host: Host | None = None
        self.pool: HostPool | None = None
        self.upstream: UpstreamConnection | None = None
        self.request_encoder: Http1RequestEncoder | None = None  # the upstream request, once routed
        self.filtered_request: FilteredRequest | None = None  # with upstream filters: what each attempt starts from
        self.up_out: list[bytes] = []
        self.encoder: Http1ResponseEncoder = conn.encoder  # the downstream codec's, for this stream's response
        self.close_after = False
        self.local_reply = False  # the response is the proxy's own (then a close waits for the client's FIN)
        self.status = 0
        self.flags = "-"
        self.details = "via_upstream"
        self.retries_left = 0
        self.retry_held = False
        self.deadline = 0.0  # loop time at which the route timeout fires (0 = none); see HttpConnection.sweep
        self.try_deadline = 0.0  # the same for the current attempt's per_try_timeout
        self.upstream_deadline = 0.0  # ... and for its cluster's max_stream_duration (from when it got a connection)
        self.duration_deadline = 0.0  # max_stream_duration (the HCM's, or the route's), from the stream's start
        # whether the request was gRPC as it arrived, once a filter changed its content-type (None: unchanged)
        self.arrived_grpc: bool | None = None
        self.set_cookie: tuple[bytes, bytes, bytes] | None = None  # a hash policy's cookie made for this request
        #: (address, strict): the host a filter wants this request to go to (a stateful session's), when healthy;
        #: strict: no other
        self.override_host: tuple[str, bool] | None = None
        # Filters transforming each body piece as it passes (None: none want this stream's; see filters/http.py).
        self.request_data_filters: list[Any] | None = None
        self.response_data_filters: list[Any] | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.start = now
        self.last_activity = now
        self.attempt_start = 0.0
        self.first_byte = 0.0
        self.authority = b""
        self.path = b""
        self.pending_local: lr.LocalReply | None = None
        self.transport_failure = ""
        self.last_host: Host | None = None  # the host of the latest attempt, for %UPSTREAM_HOST%
        self.upstream_local: tuple[str, int] | None = None  # its connection's local address (%UPSTREAM_LOCAL_ADDRESS%)
        self.xff: bytes | None = None  # x-forwarded-for as received
        self.response_ops = None  # response header rules of the route (and weighted cluster) taken
        self.request_id = b""
        self.paused_downstream = False
        self.paused_upstream = False
        # A bandwidth limiter's hold on the request body as the client sends it, and on the response body as the
        # upstream sends it (proxy/filters/http.py, "Pacing"); None: the bodies go on as they come.
        self.request_pacer: Any = None
        self.response_pacer: Any = None
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.stale_retried = False  # already sent again once after a reused connection turned out closed
        self.timeout: float | None = None  # the route timeout in force (a gRPC request's may differ from the route's)
        self.attempts = 0  # upstream attempts started (x-envoy-attempt-count)
        #: hosts attempted, kept only under a retry host predicate or retry priority (then `retry_priority` is set)
        self.tried_hosts: list[Host] | None = None
        self.retry_priority: RetryPriorityState | None = None
        # The HTTP filters before the router (only when the HCM has any): the routing they hold back, the
        # next one to run, a timer one holds the request with, what to do when the stream ends.
        self.resume: Callable[[], None] | None = None
        self.filter_index = 0
        self.filter_timer: asyncio.TimerHandle | None = None
        self.finish_callbacks: list[Callable[[], None]] | None = None
        self.header_edits: list[tuple[str, bytes, bytes]] | None = None  # filters' request header changes
        self.upgrade_accepted = False  # an Upgrade the HCM's upgrade_configs allow: tunnelled after a 101
        self.client_rest = b""  # what the client sent after the head of an accepted upgrade
        self.tunnel_upstream: UpstreamConnection | None = None  # the connection a tunnel holds
        # Body filters (only when the HCM has some that want a body): the request waits whole before routing;
        # the response head and body wait whole before anything is sent downstream.
        self.buffering_request = False
        self.decoder_limit = 0  # a filter's own limit on a request body buffered whole (0: the connection's)
        self.held_response: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.response_body: list[bytes] | None = None
        # Trailer fields after a chunked body, where the codecs carry them (enable_trailers; see h1_server.py).
        self.req_trailers: list[tuple[bytes, bytes]] | None = None
        self.resp_trailers: list[tuple[bytes, bytes]] | None = None
        self.span: Any = None  # the tracer's (span, child span or None), when the HCM traces (tracing.py)
        # A filter holding the request until enough of its body is in (ext_authz's with_request_body): called
        # after each piece kept while the request waits, and once the request is complete.
        self.body_watch: Callable[[], None] | None = None
        self.shadows: list[Shadow] | None = None  # the route's request mirrors under way (mirror.py)
        self.health_check = False  # the health_check filter took it as a health check (access log filters)
        # Filters' dynamic metadata, namespace -> Struct fields (dynamic_metadata.py); None until one sets some.
        self.dynamic_metadata: dict[str, dict[str, Any]] | None = None
        # ... and its typed metadata, namespace -> an Any as configured (set_metadata's typed_value): what Envoy
        # keeps in typed_filter_metadata, which none of pylon's readers read (nor Envoy's formatters).
        self.typed_dynamic_metadata: dict[str, dict[str, Any]] | None = None
        # header_key_format preserve_case (http/header_case.py): the request's names as the client wrote them (the
        # HCM's), the response's as the upstream wrote them (the cluster's); None: not recorded
        self.header_case: PreservedCase | None = None
        self.resp_header_case: PreservedCase | None = None

    def set_dynamic_metadata(self, namespace: str, values: dict[str, Any]) -> None:
        """Envoy's setDynamicMetadata: `values` merged into the namespace, each top-level field replaced."""
        if self.dynamic_metadata is None:
            self.dynamic_metadata = {}
        dynamic_metadata.merge(self.dynamic_metadata, namespace, values)

    def dynamic_metadata_namespaces(self) -> dict[str, dict[str, Any]]:
        """The stream's metadata for a filter that edits namespaces itself (set_metadata), made on first use."""
        if self.dynamic_metadata is None:
            self.dynamic_metadata = {}
        return self.dynamic_metadata

    # ------------------------------------------------------------------ downstream events
    def on_body(self, data: bytes, filtered: bool = False, paced: bool = False) -> None:
        """A piece of the request body: upstream now, or kept until there is an upstream. `filtered`: a piece the
        data filters made themselves (their tail), not one the client sent; `paced`: one a bandwidth limiter held
        and lets go on now (counted as received when it came)."""
        if not filtered:
            if not paced:
                self.bytes_received += len(data)
                self.last_activity = self.conn.loop_time()
                if self.request_pacer is not None:
                    data = self.request_pacer.write(data)
                    if not data:
                        return
            if self.request_data_filters is not None:
                data = self._decode_data(data, False)
                if not data:
                    return
        self.body_size += len(data)
        if self.shadows is not None:
            for shadow in self.shadows:
                shadow.data(data)
        if self.body_buffer is not None:
            if self.body_size > self.hcm.buffer_limit:
                self.body_buffer = None  # too big to replay: this request won't be retried
            else:
                self.body_buffer.append(data)
        if self.rs_state >= RS_DONE or self.pending_local is not None:
            return  # answered already; the rest of the body is read and dropped
        if self.upstream is not None:
            self.up_out.append(self.request_encoder.encode_data(data))  # type: ignore[union-attr]
        else:
            self.waiting_body.append(data)
            if self.body_watch is not None:
                self.body_watch()
                if self.rs_state >= RS_DONE:
                    return
            if (self.buffering_request or self.decoder_limit) and \
                    self.body_size > (self.decoder_limit or self.hcm.buffer_limit):
                if self.buffering_request:  # a filter ahead of the router held it (Envoy counts an upstream one not)
                    self.hcm.rq_too_large.value += 1
                self.buffering_request = False
                self.close_after = True  # Envoy answers mid-body, so its HTTP/1 codec closes (rest here or not)
                self.local(lr.PAYLOAD_TOO_LARGE)  # a body filter wants it whole, and it does not fit
                return
            if self.body_buffer is None and not self.paused_downstream and not self.buffering_request and \
                    not self.decoder_limit and sum(map(len, self.waiting_body)) > self.hcm.buffer_limit:
                self.paused_downstream = True
                self.conn.transport.pause_reading()

    def on_complete(self) -> None:
        if self.request_pacer is not None and self.request_pacer.hold_end(self.on_complete):
            return  # the request ends once the limiter has let its body go on (it calls this again then)
        self.rq_state = RQ_DONE
        if self.rs_state >= RS_DONE:
            return
        if self.up_state == UP_UPGRADED:  # an HTTP/2 CONNECT stream's END_STREAM (or a terminated POST's end): the
            # tunnel's half-close; a POST's route timeout starts now, as for any request
            if self.upstream is not None:
                self.upstream.end_request()  # type: ignore[attr-defined]
            if self.timeout and not self.deadline and not self.upgrade_accepted and self.rs_state < RS_DONE:
                self.deadline = self.conn.loop_time() + self.timeout
                self._arm(self.deadline)
            return
        if self.req_trailers is not None and self.chain.trailer_decoders:
            for http_filter in self.chain.trailer_decoders:
                http_filter.decode_trailers(self, self.req_trailers)
        if self.pending_local is not None:
            reply, self.pending_local = self.pending_local, None
            self.local(reply)
            return
        if self.buffering_request:
            self.buffering_request = False
            self._filter_request_body()
            return
        if self.body_watch is not None:
            self.body_watch()
            return
        if not self.started:
            return
        if self.request_data_filters is not None:
            tail = self._decode_data(b"", True)
            if self.rs_state >= RS_DONE:
                return
            if tail:
                self.on_body(tail, filtered=True)
        if self.shadows is not None:
            for shadow in self.shadows:
                shadow.end(self.req_trailers)
        if self.upstream is not None:
            if self.up_state == UP_SENDING:  # else the response came early: it is being received already
                self.up_state = UP_AWAITING
            encoder = self.request_encoder
            assert encoder is not None
            if encoder.chunked:
                self.up_out.append(encoder.encode_end(self.req_trailers))
            self._arm_try_timer()
        if self.timeout and not self.deadline and self.cluster is not None:
            self.deadline = self.conn.loop_time() + self.timeout
            self._arm(self.deadline)
        if self.filtered_request is not None and self.filtered_request.holding:
            self._start_attempt()  # the body an upstream filter held is in: the first attempt goes

    def _decode_data(self, data: bytes, end_stream: bool) -> bytes:
        """A request body piece through the filters that transform it as it passes (filters/http.py)."""
        for http_filter in self.request_data_filters or ():
            data = http_filter.decode_data(self, data, end_stream)
            if self.rs_state >= RS_DONE:  # the filter answered (or failed closed): the rest of the body is dropped
                return b""
        return data

    def _encode_data(self, data: bytes, end_stream: bool) -> bytes:
        """A response body piece through the filters that transform it as it passes, last filter first."""
        for http_filter in self.response_data_filters or ():
            data = http_filter.encode_data(self, data, end_stream)
        return data

    def _filter_waiting_body(self) -> None:
        """Data filters came with the route: what of the body arrived before goes through them now."""
        pieces, self.waiting_body = self.waiting_body, []
        for piece in pieces:
            piece = self._decode_data(piece, False)
            if self.rs_state >= RS_DONE:
                return
            if piece:
                self.waiting_body.append(piece)
        if self.rq_state == RQ_DONE:
            tail = self._decode_data(b"", True)
            if tail and self.rs_state < RS_DONE:
                self.waiting_body.append(tail)

    def flush_upstream(self) -> None:
        """Send what the downstream feed produced for upstream in one write."""
        out = self.up_out
        if out and self.upstream is not None:
            self.upstream.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def flush_pending_local(self) -> None:
        """A local reply was decided while the request body was still arriving: send it now and close."""
        if self.pending_local is not None and self.rs_state < RS_DONE:
            reply, self.pending_local = self.pending_local, None
            self.local(reply)

    def on_downstream_closed(self) -> None:
        """The client went away mid-exchange (Envoy's DC flag)."""
        if self.rs_state >= RS_DONE:
            return
        self.flags = "DC"
        self.details = "downstream_remote_disconnect"
        self.status = 0 if self.rs_state == RS_NOT_STARTED else self.status
        self._end_attempt(abandon=True)
        self._finish(close=True, final=RS_RESET)

    # ------------------------------------------------------------------ routing
    def begin(self) -> None:
        """Headers are complete and it is this request's turn: route it."""
        self.started = True
        hcm = self.hcm
        hcm.rq_total.value += 1
        hcm.rq_active.value += 1
        overload = hcm.overload
        if overload.stop_requests and overload.refuses_request():
            hcm.rq_overload_close.value += 1
            return self.local(lr.OVERLOADED)
        if hcm.first_stream_timeout:  # _arm's test inlined: usually the connection is due for a look sooner
            when = self.start + hcm.first_stream_timeout
            conn = self.conn
            if when < conn.wake_at or not conn.wake_at:
                conn.deadlines.arm(conn, when)
        if hcm.max_stream_duration:
            self.duration_deadline = self.start + hcm.max_stream_duration
            self._arm(self.duration_deadline)
        upgrade: bytes | None = b""
        if self.upgrade:
            if self.method != b"CONNECT":
                upgrade = _upgrade_token(self.headers)
            elif self.url[:1] != b"/":
                upgrade = None  # CONNECT: the method says it, no Upgrade header goes upstream
            else:
                return self.local(lr.CONNECT_INVALID_URL)  # an origin-form target: Envoy's HTTP/1 codec error
        conn = self.conn
        forward: list[tuple[bytes, bytes]] = []
        authority = None
        xff = None
        xfp = None
        conn_tokens = None
        xfcc = None
        for pair in self.headers:
            name = pair[0]
            if name in _SPECIAL:
                if name == b"host":
                    if authority is not None:
                        return self.local(lr.BAD_REQUEST)  # two Host headers: ambiguous
                    authority = pair[1]
                elif name == b"x-request-id":
                    if not hcm.replace_client_request_id:
                        self.request_id = pair[1]
                        forward.append(pair)
                elif name == b"x-forwarded-for":
                    xff = pair[1] if xff is None else xff + b"," + pair[1]
                elif name == b"x-forwarded-proto":
                    xfp = pair[1]
                elif name == b"connection":
                    conn_tokens = pair[1]
                elif name == XFCC:
                    xfcc = pair[1] if xfcc is None else xfcc + b"," + pair[1]
                elif name in _EDGE_CLEANED and not hcm.use_remote_address:
                    forward.append(pair)  # trusted behind the edge; _ENVOY_CONTROLS are never forwarded
                elif name == b"expect":
                    if pair[1].lower() == b"100-continue" and self.rq_state != RQ_DONE:
                        self.encoder.encode_continue()
                elif name == b"te":
                    if _asks_trailers(pair[1]):
                        forward.append((b"te", b"trailers"))  # Envoy keeps this one TE value (and only it)
                # content-length and hop-by-hop headers: framing is re-done below
            else:
                forward.append(pair)
        if conn_tokens is not None:
            forward = without_nominated(forward, conn_tokens)
        if upgrade:  # (CONNECT's None: no headers, the method says it)
            forward.append((b"connection", b"upgrade"))
            forward.append((b"upgrade", upgrade))
        if hcm.xfcc_mode != "SANITIZE":  # the default drops the client's x-forwarded-client-cert
            client_cert = forwarded_value(hcm.xfcc_mode, xfcc, conn.client_cert_element())
            if client_cert is not None:
                forward.append((XFCC, client_cert))
        if hcm.user_agent_edits is not None:  # the filters and the access log see them too, as in Envoy
            edits = hcm.user_agent_edits(self.headers)
            forward, self.headers = _edited(forward, edits), _edited(self.headers, edits)
        if hcm.via:
            forward = _with_via(forward, hcm.via)
        url = self.url
        if upgrade is None:
            # CONNECT: the target is the authority (HTTP/2: :authority); there is no path (connect_matcher routes)
            authority = url or authority
            url = b""
            if not authority:
                return self.local(lr.MISSING_HOST)
        elif url[:1] != b"/":
            url = self._origin_form(url, authority)
            if url is None:
                return self.local(lr.BAD_REQUEST)
            authority = self.authority
        elif authority is None:
            authority = hcm.default_host_for_http_10 if self.http10 else b""
            if not authority:
                return self.local(lr.MISSING_HOST)
        if authority not in _VALID_AUTHORITIES and not _valid_authority(authority):
            return self.local(lr.INVALID_AUTHORITY)
        if url.find(b"#") != -1:  # (`in` on bytes first tries the needle as an int: an exception made and dropped)
            return self.local(lr.PATH_NORMALIZATION_FAILED)  # Envoy refuses a fragment rather than forward or strip it
        if hcm.path_options and url[:1] == b"/":
            try:
                url, unescaped = normalized_target(url, hcm.normalize_path, hcm.merge_slashes,
                                                   hcm.escaped_slashes is not None)
            except PathRejected:
                return self.local(lr.PATH_NORMALIZATION_FAILED)
            if unescaped and hcm.escaped_slashes != "UNESCAPE_AND_FORWARD":
                if hcm.escaped_slashes == "REJECT_REQUEST":
                    return self.local(lr.PATH_NORMALIZATION_FAILED)
                self.status, self.details = 307, "path_normalization_failed"  # UNESCAPE_AND_REDIRECT
                return self._send_local(307, b"", None, extra=[(b"location", url)])
        self.authority = authority
        self.path = url
        self.xff = xff  # before the filters: RBAC's remote_ip and their local replies' logs see the client
        # UTF-8 with surrogateescape: non-ASCII paths match non-ASCII regex literals as in
        # Envoy (which matches the raw bytes), and any byte sequence still round-trips.
        path_text = url.decode("utf-8", "surrogateescape")
        self.route = route = hcm.route_table.match(authority.decode("latin-1"), path_text, HeaderList(self.headers),
                                                   self.method.decode("latin-1"), conn.scheme.decode("latin-1"))
        if route is not None and (route.cluster_variants or route.disabled_filters):
            if route.cluster_variants:  # weighted clusters with per-filter configs: pick now
                self.route = route = route.variant_for(self)
            if route.disabled_filters:
                self.chain = chain_for(hcm, route)
        if self.upgrade:
            # Envoy decides with the route: its upgrade_configs allow or forbid a type, else the HCM's list does
            kind = upgrade.strip().lower() if upgrade is not None else b"connect"
            allowed = route.upgrades.get(kind) if route is not None else None
            if not (kind in hcm.upgrade_types if allowed is None else allowed):
                return self.local(lr.UPGRADE_REFUSED)
            self.upgrade_accepted = True
        if self.chain.decoder_filters:
            self.resume = partial(self._route, forward, xff, xfp, url, path_text)
            return self.continue_decoding()
        self._route(forward, xff, xfp, url, path_text)

    # ------------------------------------------------------------------ the HTTP filters before the router
    def continue_decoding(self) -> None:
        """Run the filters not run yet; once every one lets the request go, route it."""
        filters = self.chain.decoder_filters
        while self.filter_index < len(filters):
            http_filter = filters[self.filter_index]
            self.filter_index += 1
            if not http_filter.decode_headers(self):
                return  # it answered, or holds the request and calls this again
        if self.chain.body_decoders and (self.req_length or self.req_chunked) and \
                any(f.wants_request_body(self) for f in self.chain.body_decoders):
            if self.rq_state != RQ_DONE:
                self.buffering_request = True  # on_complete (or the size limit) takes it from here
                return
            return self._filter_request_body()
        resume, self.resume = self.resume, None
        if resume is not None and self.rs_state < RS_DONE:
            resume()

    def _filter_request_body(self) -> None:
        """The whole request body is in: the body filters see it, in order, may replace it, then it is routed.

        A replaced body goes upstream with a content-length (chunked framing is re-done as a length).
        """
        body = b"".join(self.waiting_body)
        for http_filter in self.chain.body_decoders:
            if http_filter.wants_request_body(self):
                replaced = http_filter.decode_body(self, body)
                if self.rs_state >= RS_DONE or self.pending_local is not None:
                    return  # the filter answered
                if replaced is not None:
                    body = replaced
        self.waiting_body = [body] if body else []
        self.body_size = len(body)
        if self.req_trailers is None:  # a length has no place for trailers: with some, it stays chunked
            self.req_chunked = False
            self.req_length = len(body)
        if self.paused_downstream:
            self.paused_downstream = False
            self.conn.transport.resume_reading()
        resume, self.resume = self.resume, None
        if resume is not None and self.rs_state < RS_DONE:
            resume()

    def hold(self, seconds: float, then: Callable[[], None]) -> None:
        """A filter holds the request for `seconds`, then calls `then` (not if the stream ended meanwhile)."""
        self.filter_timer = self.conn.loop.call_later(seconds, self._release, then)

    def _release(self, then: Callable[[], None]) -> None:
        self.filter_timer = None
        if self.rs_state < RS_DONE:
            then()

    def edit_request_header(self, op: str, name: bytes, value: bytes = b"") -> None:
        """A filter sets (`set`), adds (`add`) or removes (`remove`) a request header: later filters and the
        access log see it at once, the upstream gets it. The route was chosen before the filters ran."""
        if name == b"content-type" and self.arrived_grpc is None:
            self.arrived_grpc = is_grpc_request(self.headers)
        self.headers = _edited(self.headers, [(op, name, value)])
        if self.header_edits is None:
            self.header_edits = []
        self.header_edits.append((op, name, value))

    def set_decoder_buffer_limit(self, limit: int) -> None:
        """A filter sets how much of this request's body may be buffered whole (Envoy's setDecoderBufferLimit: the
        buffer filter's max_request_bytes), instead of the connection's buffer limit; beyond it, 413."""
        self.decoder_limit = limit

    def set_path(self, value: bytes) -> None:
        """A filter replaces the request's path (Envoy's setPath: header_mutation's query parameters): the upstream
        request (after the route's rewrites) and the access log see it; the route stays the one chosen before."""
        self.path = value

    def set_authority(self, value: bytes) -> None:
        """A filter replaces the request's Host/:authority (Envoy's setHost): the upstream request, auto_sni and the
        access log see the new value; the route stays the one chosen before the filters."""
        self.authority = value

    def rewrite_request(self, method: bytes, path: bytes, body: bytes | None, rematch: bool,
                        keep_original: bool = True) -> None:
        """A filter turns the request into another before it is routed (Envoy's gRPC-JSON transcoder): a new method
        and path, the client's kept in x-envoy-original-method and x-envoy-original-path (unless not
        `keep_original`: the AWS Lambda filter's invocation keeps no trace of them, as Envoy's), and for a request
        that came without a body, `body` (sent with its length). With `rematch` the route is chosen again for the
        new request (Envoy's clearRouteCache); a filter that transforms a body the client sends uses `decode_body`
        instead."""
        if keep_original:
            self.edit_request_header("set", b"x-envoy-original-path", self.path)
            self.edit_request_header("set", b"x-envoy-original-method", self.method)
        self.method, self.path = method, path
        path_text = path.decode("utf-8", "surrogateescape")
        if self.resume is not None:  # the router's call, bound to the path the request came with
            forward, xff, xfp = self.resume.args[:3]
            self.resume = partial(self._route, forward, xff, xfp, path, path_text)
        if body is not None:
            self.waiting_body = [body]
            self.req_length = self.body_size = len(body)
        if rematch:
            self.route = self.hcm.route_table.match(self.authority.decode("latin-1"), path_text,
                                                    HeaderList(self.headers), method.decode("latin-1"),
                                                    self.conn.scheme.decode("latin-1"))
            if self.route is not None and self.route.cluster_variants:
                self.route = self.route.variant_for(self)

    def respond_from_filter(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                            details: str = "python_response", content_type: bytes = b"text/plain",
                            grpc_status: int | None = None) -> None:
        """A filter answers the request itself (Envoy's Lua `respond()`, CORS's preflight answer): the upstream is
        never asked; `details` is the access log's %RESPONSE_CODE_DETAILS%; `grpc_status` the one a gRPC request's
        reply says instead of the status's."""
        self.status, self.details = status, details
        self._send_local(status, body, None, content_type=content_type, extra=headers, grpc_status=grpc_status)

    def encode_headers(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The response head through the encoder side of the filter chain (last filter first, as Envoy)."""
        edited = HeaderList(list(headers))
        for http_filter in self.chain.encoder_filters:
            http_filter.encode_headers(self, status, edited)
        return edited.items

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the stream ends, however it ends (a filter's gauge of active requests)."""
        if self.finish_callbacks is None:
            self.finish_callbacks = []
        self.finish_callbacks.append(callback)

    def forwarded_headers(self) -> list[tuple[bytes, bytes]]:
        """The request's headers as the connection manager hands them on before routing (a filter's own upstream
        request copies them, as Envoy's cache filter does): the client's without hop-by-hop ones, the filters'
        edits, x-forwarded-for/-proto and x-request-id. Only while decoder filters run (the stream holds them)."""
        assert self.resume is not None
        forward, xff, xfp = self.resume.args[:3]
        forward = list(forward)
        self._add_forwarding(forward, xff, xfp)
        return _edited(forward, self.header_edits) if self.header_edits is not None else forward

    def respond_with(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, details: str,
                     flag: str = "") -> None:
        """A filter's own whole response (Envoy's encodeHeaders/encodeData from a filter, not a local reply: no
        local_reply_config, no gRPC rewrite): `headers` say its framing (content-length, else chunked); the
        encoder filters see its head, the server header is the connection manager's."""
        hcm = self.hcm
        self.status, self.details = status, details
        if flag:
            self.flags = flag
        if hcm.via:
            headers = _with_via(headers, hcm.via)
        if hcm.encoder_filters:
            headers = self.encode_headers(status, headers)
        self.rs_state = RS_SENDING
        close = self._ends_connection(unread=self.rq_state != RQ_DONE and bool(self.req_length or self.req_chunked))
        self.close_after = self.encoder.encode_headers(
            status, headers, close=close, http10=self.http10, head_request=self.is_head, drop=hcm.response_drop,
            extra=hcm.response_fields(headers))
        if body and not self.is_head:
            self.bytes_sent = len(body)
            self.encoder.encode_data(body)
        self.encoder.encode_end(None)
        self.conn.flush_output()
        self._end_attempt(abandon=True)
        self._finish(self.close_after)

    # ------------------------------------------------------------------ routing
    def _add_forwarding(self, forward: list[tuple[bytes, bytes]], xff: bytes | None, xfp: bytes | None) -> None:
        """x-forwarded-for / -proto and the request id, as Envoy's connection manager sets them."""
        hcm = self.hcm
        conn = self.conn
        if hcm.use_remote_address:
            client = conn.forwarded_for_ip()
            forward.append((b"x-forwarded-for", xff + b"," + client if xff else client))
            forward.append((b"x-forwarded-proto", conn.scheme))
            forward.append((b"x-envoy-external-address", conn.peer_ip))
        else:
            if xff is not None:
                forward.append((b"x-forwarded-for", xff))
            forward.append((b"x-forwarded-proto", xfp if xfp and not hcm.scheme_to_overwrite else conn.scheme))
        self.xff = xff
        if not self.request_id and hcm.generate_request_id:
            self.request_id = new_request_id()
            forward.append((b"x-request-id", self.request_id))
            if hcm.replace_client_request_id:
                self.headers = [pair for pair in self.headers if pair[0] != b"x-request-id"]
            self.headers.append((b"x-request-id", self.request_id))  # access logs see what was sent

    def _route(self, forward: list[tuple[bytes, bytes]], xff: bytes | None, xfp: bytes | None, url: bytes,
               path_text: str) -> None:
        """Send the request where its route says (the router filter)."""
        hcm = self.hcm
        hcm.routed.value += 1  # Envoy's router rq_total: every request it decodes (not those a filter answered)
        conn = self.conn
        route = self.route
        if route is None:
            hcm.no_route.value += 1
            return self.local(lr.NO_ROUTE)
        if self.path is not url:  # a filter replaced it (set_path)
            url = self.path
            path_text = url.decode("utf-8", "surrogateescape")
        if route.idle_timeout:
            self._arm(self.start + route.idle_timeout)
        kind = route.kind
        if kind != "cluster":
            return self._local_route_reply(route)

        self._add_forwarding(forward, xff, xfp)
        path = route.rewrite_path(path_text).encode("utf-8", "surrogateescape") if route.rewrites else url
        if path is not url:
            forward.append((b"x-envoy-original-path", url))
        if not url:  # CONNECT goes upstream in authority form
            path = route.host_rewrite or self.authority
        if self.header_edits is not None:
            forward = _edited(forward, self.header_edits)
        cluster_name = route.pick_cluster(self)
        request_ops, self.response_ops = route.header_ops_for(cluster_name)
        if hcm.tracer is not None:
            forward, trace_status = hcm.tracer.mark(self, forward)
        pseudo = None
        if request_ops.reads_request or self.response_ops.reads_request:
            pseudo = {b":authority": self.authority, b":path": url, b":method": self.method, b":scheme": conn.scheme}
        if not request_ops.empty:
            headers = HeaderList(forward)
            request_ops.apply(headers, conn.peer, request_lookup(list(forward), pseudo) if pseudo else None,
                              self._header_facts)
            forward = headers.items
        self.timeout = route.timeout
        expected_header = route.expected_timeout_header
        if route.stream_duration is not None:
            forward = self._route_stream_duration(route.stream_duration, forward)
        elif route.grpc_timeout is not None:
            grpc_timeout = max_grpc_timeout_of(route.grpc_timeout, self.headers)
            if grpc_timeout is not None:
                self.timeout = grpc_timeout or None
                forward, expected_header = announce_grpc_timeout(forward, self.timeout, route)
        if hcm.tracer is not None:
            forward = hcm.tracer.start(self, forward, cluster_name, trace_status)
        if pseudo is not None and self.response_ops.reads_request:
            # The response's %REQ(...)% read the request as it goes upstream, the tracer's context included.
            self.response_ops = self.response_ops.bound(request_lookup(forward, pseudo))
        if route.attempt_count:
            # Envoy sets the header (replacing the client's), per attempt.
            forward = [p for p in forward if p[0] != b"x-envoy-attempt-count"]
        # a CONNECT's payload is the tunnel's, never a chunked body; so is an HTTP/2 upgrade's (extended CONNECT)
        chunked = self.req_chunked and bool(url) and (self.encoder.tunnels or not self.upgrade_accepted)
        if self.chain.data_decoders and (self.req_length or chunked):
            wanting = [f for f in self.chain.data_decoders if f.wants_request_data(self)]
            if wanting:
                self.request_data_filters = wanting
                # pieces may change size: the client's length no longer holds (unless every filter only reads)
                chunked = chunked or not all(getattr(f, "keeps_length", False) for f in wanting)
                self._filter_waiting_body()
                if self.rs_state >= RS_DONE:
                    return
        cluster = hcm.clusters.get(cluster_name)
        if cluster is None:  # a cluster_header naming none, a route to a cluster CDS has not (or no longer) given
            hcm.no_cluster.value += 1
            return self.local(route.no_cluster_reply)
        upstream_filters = cluster.upstream_filters if cluster.upstream_filters is not None else hcm.upstream_filters
        made = (partial(FilteredRequest, upstream_filters) if upstream_filters else Http1RequestEncoder)(
            self.method, path, route.host_rewrite or self.authority, forward, chunked=chunked,
            length=0 if chunked else self.req_length, attempt_count=route.attempt_count,
            extra=expected_header if not hcm.suppress_envoy_headers else None, trailers=cluster.upstream_trailers)
        if upstream_filters:  # each attempt runs them and makes its own encoder (filters/upstream.py)
            self.filtered_request = made
        else:
            self.request_encoder = made
        retry = route.retry
        if retry is not None:
            self.retries_left = retry.num_retries
            # What a retry replays: the body so far (a filter may have held the request while it arrived).
            self.body_buffer = list(self.waiting_body) if self.body_size <= hcm.buffer_limit else None
            if retry.host_reselections or retry.priority_update_frequency:
                self.tried_hosts = []
                self.retry_priority = (RetryPriorityState(retry.priority_update_frequency)
                                       if retry.priority_update_frequency else None)
        self.cluster = cluster
        if route.mirrors:
            self.shadows = start_shadows(self, route, forward, path, chunked, 0 if chunked else self.req_length,
                                         expected_header if not hcm.suppress_envoy_headers else None)
            if self.shadows is not None and self.rq_state == RQ_DONE:
                for shadow in self.shadows:
                    shadow.end(self.req_trailers)
        if self.rq_state == RQ_DONE and self.timeout:
            self.deadline = conn.loop_time() + self.timeout
            self._arm(self.deadline)
        filtered = self.filtered_request
        if filtered is not None and (self.req_length or chunked) and filtered.hold(self) and self.rq_state != RQ_DONE:
            return  # an upstream filter wants the body whole first (buffer): on_complete starts the attempt
        self._start_attempt()

    def _origin_form(self, url: bytes, authority: bytes | None) -> bytes | None:
        """Absolute-form targets (`GET http://host/path`): take authority and path from the URL."""
        if url == b"*" and self.method == b"OPTIONS":
            self.authority = authority or b""
            return b"*"
        lower = url[:8].lower()
        if lower.startswith(b"http://"):
            rest = url[7:]
        elif lower.startswith(b"https://"):
            rest = url[8:]
        else:
            return None
        slash = rest.find(b"/")
        authority = rest if slash < 0 else rest[:slash]
        # Credentials in the URL are the client's business, never the upstream's Host (Envoy drops them too).
        self.authority = authority[authority.rfind(b"@") + 1:]
        return b"/" if slash < 0 else rest[slash:]

    def _format_response_keys(self, case: PreservedCase | None) -> None:
        """This response's head goes to an HTTP/1.1 client with its names formatted (header_key_format): as the
        upstream wrote them, else the HCM's proper_case_words, else as they are."""
        encoder = self.conn.encoder
        if self.encoder is encoder and type(encoder) is Http1ResponseEncoder:
            fmt = case.format if case is not None else self.hcm.response_key_format
            if fmt is not None:
                self.encoder = KeyFormattingEncoder(encoder, fmt)  # type: ignore[assignment]

    def _header_facts(self) -> "AccessLogRecord":
        """What a route's header rules read besides the request (%RESPONSE_CODE%, %DYNAMIC_METADATA(...)% ...):
        the stream's access-log record as it stands."""
        return self.hcm.access_record(self, self.conn.loop_time() - self.start)

    def _local_reply_facts(self) -> "AccessLogRecord":
        """The same for the proxy's own reply, whose headers Envoy 1.40 makes before it sets the response code:
        %RESPONSE_CODE% is 0 there (observed), the details and flags already the reply's."""
        record = self._header_facts()
        record.response_code = 0
        return record

    def _request_lookup(self) -> RequestLookup:
        """What %REQ(...)% reads in the proxy's own replies: the request's headers and pseudo-headers."""
        return request_lookup(self.headers, {b":authority": self.authority, b":path": self.path,
                                             b":method": self.method, b":scheme": self.conn.scheme})

    def _local_route_reply(self, route: "MatchedRoute") -> None:
        hcm = self.hcm
        ops = route.response_header_ops
        if ops.reads_request:
            ops = ops.bound(self._request_lookup())
        if route.kind == "direct_response":
            hcm.rq_direct_response.value += 1
            self.status = route.direct_status
            self.details = "direct_response"
            self._send_local(route.direct_status, route.direct_body, ops, content_type=b"text/plain")
        else:
            hcm.rq_redirect.value += 1
            location = route.redirect_location(self.conn.scheme.decode(), self.authority.decode("latin-1"),
                                               self.path.decode("utf-8", "surrogateescape"))
            self.status = route.redirect_status
            self.details = "redirect"
            self._send_local(route.redirect_status, b"", ops,
                             extra=[(b"location", location.encode("utf-8", "surrogateescape"))])

    # ------------------------------------------------------------------ upstream attempts
    def _start_attempt(self, fresh: bool = False) -> None:
        cluster = self.cluster
        assert cluster is not None and self.route is not None
        if not cluster.circuit_breakers.requests.try_acquire():
            return self.local(lr.UPSTREAM_OVERFLOW)
        policies = self.route.hash_policies
        key = self.hash_key(policies) if policies is not None else None
        if not cluster.provided:
            if self.override_host is None and not self.tried_hosts:  # the common case: the balancer's pick
                host = (cluster.choose_host(key) if cluster.subsets is None
                        else cluster.subsets.choose_matching(self._subset_criteria(cluster.name), key))
            else:
                host = self._chosen_host(cluster, key)
                if host is PENDING:  # a strict override whose host is gone: answered
                    cluster.circuit_breakers.requests.release()
                    return self.local(cluster.no_host_reply(self))
        else:
            host = cluster.request_host(self)
            if host is PENDING:  # the cluster went to find it: it calls attempt_now when it knows
                cluster.circuit_breakers.requests.release()
                return
        if self.tried_hosts is not None and host is not None:
            self.tried_hosts.append(host)
            if self.retry_priority is not None:
                self.retry_priority.attempted.append(host)
        if host is None:
            cluster.circuit_breakers.requests.release()
            return self.local(cluster.no_host_reply(self))
        self.host = self.last_host = host
        self.attempts += 1
        if self.filtered_request is not None:
            made = self.filtered_request.attempt(self, self.attempts)
            if not isinstance(made, Http1RequestEncoder):  # an upstream filter answered: the request ends so
                cluster.circuit_breakers.requests.release()
                self.host = None
                return self.local(made) if isinstance(made, lr.LocalReply) else self.respond_from_filter(*made)
            self.request_encoder = made
        host.active_requests += 1
        cluster.stats.upstream_rq_active.value += 1
        self.attempt_start = self.conn.loop_time()
        self.up_state = UP_CONNECTING
        route = self.route
        if (route.connect_terminate and not self.path) or (route.post_terminate and self.method == b"POST"):
            self.pool = terminated = TerminatedConnect(self, cluster, host)  # raw TCP, answered 200 when up
            return terminated.start()
        self.pool = pool = self.hcm.pools.get(cluster, host, self)
        pool.acquire(self, fresh)

    def hash_key(self, policies: "tuple[HashSource, ...]") -> bytes | None:
        """The key a hashing balancer (RING_HASH, MAGLEV) places this request by: the route's hash policies in
        order, each adding the value it finds (a header's first value, the client's address as x-forwarded-for
        and use_remote_address make it, a query parameter);
        a terminal policy that found its value ends the list (Envoy's RouteAction.hash_policy)."""
        parts = []
        for kind, name, terminal, cookie_ttl, cookie_path in policies:
            value: bytes | None = None
            if kind == "cookie":
                value = cookie_value(self.headers, name)
                if value is None and cookie_ttl is not None:
                    value = self._made_cookie(name, cookie_ttl, cookie_path)
            elif kind == "header":
                value = next((v for n, v in self.headers if n == name), None)
            elif kind == "source_ip":  # the client as the connection manager trusts it (XFF rules), as Envoy
                client = self.hcm.trusted_client(self)
                value = (client[0] if isinstance(client, tuple) else client).encode()
            elif kind == "query":  # as route query matchers read it: the first value, as sent
                found = first_query_values(self.path.decode("latin-1")).get(name.decode("latin-1"))
                value = found.encode("latin-1") if found is not None else None
            if value is not None:
                parts.append(value)
                if terminal:
                    break
        return b"\x00".join(parts) if parts else None

    def _made_cookie(self, name: bytes, ttl: float, path: bytes) -> bytes:
        """The cookie Envoy makes for a cookie hash policy when the request has none: a hash of the connection's
        two addresses (so one connection keeps one value), set on the response; a retry reuses it."""
        if self.set_cookie is not None:
            return self.set_cookie[1]
        conn = self.conn
        value = b"%016x" % stable_hash((spell_address(conn.peer) + spell_address(conn.local)).encode())
        header = b'%s="%s"' % (name, value)
        if ttl:
            header += b"; Max-Age=%d" % int(ttl)
        if path:
            header += b"; Path=" + path
        self.set_cookie = (name, value, header + b"; HttpOnly")
        return value

    def _chosen_host(self, cluster: "Cluster", key: bytes | None) -> "Host | None":
        """The host a filter's override names (a stateful session's), when the cluster has it healthy; else a
        retry's pick (`_choose_retry_host`) or the balancer's. PENDING: a strict override that has no host."""
        override = self.override_host
        host = cluster.host_at(override[0]) if override is not None else None
        if host is not None:
            return host
        if override is not None and override[1]:  # strict: that host or none
            return PENDING
        if self.tried_hosts:  # a retry under a host predicate or a retry priority
            return self._choose_retry_host(cluster, key, self.tried_hosts)
        return (cluster.choose_host(key) if cluster.subsets is None
                else cluster.subsets.choose_matching(self._subset_criteria(cluster.name), key))

    def _subset_criteria(self, cluster: str) -> Criteria | None:
        """The subset a request asks of `cluster`: the route's (or weighted cluster's) metadata_match, with the
        `envoy.lb` dynamic metadata filters set merged over it, their values winning (Envoy's router)."""
        assert self.route is not None
        criteria = self.route.criteria_for(cluster)
        values = self.dynamic_metadata.get(ENVOY_LB) if self.dynamic_metadata is not None else None
        return criteria if values is None else merged_over(criteria, values)

    def _choose_retry_host(self, cluster: "Cluster", key: bytes | None, tried: list["Host"]) -> "Host | None":
        """A retry's host as Envoy's router picks it: under the retry priority's load (previous_priorities), and
        picked again while a host predicate refuses it, up to host_selection_retry_max_attempts more times; then
        the last pick stands."""
        retry = self.route.retry  # type: ignore[union-attr]
        assert retry is not None
        state = self.retry_priority
        if state is not None:
            state.advance()
        subsets = cluster.subsets
        criteria = self._subset_criteria(cluster.name) if subsets is not None else None
        host = None
        for _ in range(retry.host_reselections + 1):
            if subsets is not None:
                host = subsets.choose_matching(criteria, key, state)
            elif state is not None:
                host = cluster.lb.choose_excluding(state, key)
            else:
                host = cluster.choose_host(key)
            if host is None or not retry.refuses(host, tried):
                break
        return host

    def on_upstream_ready(self, conn: "UpstreamConnection") -> None:
        self.cluster.stats.upstream_rq_total.value += 1  # as Envoy's pools: once the request has a connection
        self.upstream = conn
        self.upstream_local = conn.local_address
        if self.rs_state >= RS_DONE:
            conn.abandon()
            return
        limit = conn.pool.limits.max_stream_duration
        if limit:
            self.upstream_deadline = self.conn.loop_time() + limit
            self._arm(self.upstream_deadline)
        if conn.multiplexed:
            return self._on_h2_ready(conn)  # type: ignore[arg-type]
        encoder = self.request_encoder
        assert encoder is not None
        out = [encoder.encode_head(self.attempts)]
        if self.span is not None and self.hcm.tracer.names_host:  # type: ignore[union-attr]
            out[0] = self.hcm.tracer.with_host_header(self, out[0])  # type: ignore[union-attr]
        if self.header_case is not None or self.cluster.request_key_format is not None:  # type: ignore[union-attr]
            out[0] = format_head(out[0], self.header_case.format if self.header_case is not None
                                 else self.cluster.request_key_format)  # type: ignore[union-attr]
        waiting = self.waiting_body
        if conn.requests and self.body_buffer is None and self.body_size <= self.hcm.buffer_limit \
                and (self.req_length or self.req_chunked):
            # A reused connection may turn out closed by the server: keep the body sent, to send it again.
            self.body_buffer = list(waiting)
        if waiting:
            out.extend(map(encoder.encode_data, waiting))
            self.waiting_body = []
            if self.paused_downstream:
                self.paused_downstream = False
                self.conn.transport.resume_reading()
        if self.rq_state == RQ_DONE:
            self.up_state = UP_AWAITING
            if encoder.chunked:
                out.append(encoder.encode_end(self.req_trailers))
            self._arm_try_timer()
        else:
            self.up_state = UP_SENDING
        conn.write(b"".join(out))

    def _on_h2_ready(self, conn: "H2UpstreamStream") -> None:
        """The attempt got a stream on an HTTP/2 connection: the request head (the HTTP/1.1 encoder's, as a header
        block built from its parts: h2_client.head_block) goes as HEADERS, the body so far as DATA; the rest of the
        body and its end follow through the stream's `Http2RequestEncoder`, which stands in for the HTTP/1 encoder until the attempt ends."""
        base = self.request_encoder
        base = getattr(base, "base", base)  # an earlier HTTP/2 attempt's encoder that was not handed back
        assert base is not None
        head = None  # the H2 stream builds the block from `base` (a tracer's host header edits the bytes)
        if self.span is not None and self.hcm.tracer.names_host:  # type: ignore[union-attr]
            head = self.hcm.tracer.with_host_header(self, base.encode_head(self.attempts))  # type: ignore[union-attr]
        waiting = self.waiting_body
        if self.body_buffer is None and self.body_size <= self.hcm.buffer_limit and (self.req_length or self.req_chunked):
            self.body_buffer = list(waiting)  # a stream the server refuses (GOAWAY) goes again: keep what was sent
        done = self.rq_state == RQ_DONE
        if self.upgrade_accepted:  # a proxied CONNECT, or an upgrade as extended CONNECT (RFC 8441): its stream
            # becomes the tunnel on a 2xx (h2_stream_transport.py)
            self.upstream = conn = TunnelStream.taking_over(conn)
            done = False  # the tunnel's half-close is the client's to send, after the 2xx
        end = done and not waiting and not self.req_trailers
        encoder = conn.send_head(base, head, end, self.attempts)
        if encoder is None:
            return  # the connection took no new stream: the attempt was reset (and maybe retried)
        self.request_encoder = encoder  # type: ignore[assignment]
        if waiting:
            for piece in waiting:
                encoder.encode_data(piece)
            self.waiting_body = []
            if self.paused_downstream:
                self.paused_downstream = False
                self.conn.transport.resume_reading()
        if done:
            self.up_state = UP_AWAITING
            encoder.encode_end(self.req_trailers)
            self._arm_try_timer()
        else:
            self.up_state = UP_SENDING
        conn.write(b"")

    def _arm_try_timer(self) -> None:
        route = self.route
        if route is not None and route.retry is not None and route.retry.per_try_timeout and not self.try_deadline:
            self.try_deadline = self.conn.loop_time() + route.retry.per_try_timeout
            self._arm(self.try_deadline)

    def _arm(self, when: float) -> None:
        """Have the worker's deadline wheel look at this stream's connection at `when` (see deadlines.py).

        Usually the connection is already due for a look sooner: then this is one comparison.
        """
        conn = self.conn
        if when < conn.wake_at or not conn.wake_at:
            conn.deadlines.arm(conn, when)

    def sweep(self, now: float) -> float | None:
        """Enforce this stream's timeouts (route, per try, max duration, request, stream idle) at `now`.

        Returns when the stream next needs a look (0: never), or None when a timeout acted (the stream
        ended, or a retry began with deadlines of its own): the connection then looks at itself again.
        Per stream, so a connection with several streams at once asks each.
        """
        hcm = self.hcm
        if self.deadline and now >= self.deadline:
            self.on_route_timeout()
            return None
        if self.try_deadline and now >= self.try_deadline:
            self.on_try_timeout()
            return None
        if self.upstream_deadline and now >= self.upstream_deadline:
            self.on_upstream_max_duration()
            return None
        following = self.deadline
        for due in (self.try_deadline, self.upstream_deadline):
            if due and (not following or due < following):
                following = due
        if self.duration_deadline:
            due = self.duration_deadline
            if now >= due:
                hcm.rq_max_duration.value += 1
                self.on_max_duration()
                return None
            if not following or due < following:
                following = due
        if hcm.request_timeout and self.rq_state != RQ_DONE:
            due = self.start + hcm.request_timeout
            if now >= due:
                hcm.rq_timeout.value += 1
                self.close_after = True
                self.local(lr.REQUEST_TIMEOUT)
                return None
            if not following or due < following:
                following = due
        idle = self.idle_timeout()
        if idle:
            due = max(self.last_activity, self.conn.last_activity) + idle
            if now >= due:
                hcm.rq_idle_timeout.value += 1
                # Envoy: 504 once the whole request is in (the upstream is silent), and the connection stays
                # open for the next request; else 408, and the connection closes (the rest of the request is
                # unread).
                self.close_after = self.rq_state != RQ_DONE
                self.local(lr.STREAM_IDLE_TIMEOUT if self.rq_state == RQ_DONE else lr.STREAM_IDLE_TIMEOUT_CLIENT)
                return None
            if not following or due < following:
                following = due
        return following

    def idle_timeout(self) -> float:
        """The stream idle timeout in force: the route's `idle_timeout` when it sets one, else the HCM's."""
        route = self.route
        if route is not None and route.idle_timeout is not None:
            return route.idle_timeout
        return self.hcm.stream_idle_timeout

    def on_upstream_connect_failure(self, reason: str) -> None:
        self.up_state = UP_RESET
        self.transport_failure = reason
        self._end_attempt(abandon=False)
        retry = self.route.retry if self.route else None
        if retry is not None:
            if not retry.on_connect_failure:
                self._retry_settled()
            elif self._reserve_retry():
                return self._schedule_retry()
        self._abort_reply(lr.internal_connect_failure(reason) if reason.startswith(NO_INTERNAL_LISTENER) else
                          lr.CONNECT_FAILURE)

    def on_upstream_overflow(self) -> None:
        self.up_state = UP_RESET
        self._end_attempt(abandon=False)
        self._abort_reply(lr.UPSTREAM_OVERFLOW)

    def _abort_reply(self, reply: lr.LocalReply) -> None:
        """Answer for an upstream that failed before its response began: the cluster counts the reply's code as
        the upstream's (Envoy's chargeUpstreamAbort); once the response began, the stream is reset uncounted."""
        if self.rs_state == RS_NOT_STARTED and self.hcm.dynamic_stats and self.cluster is not None:
            self.cluster.stats.count_response(reply.status)
        self.local(reply)

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        host = self.host
        assert host is not None and self.cluster is not None
        upstream_filters = self.cluster.upstream_filters
        if upstream_filters is None:
            upstream_filters = self.hcm.upstream_filters
        if upstream_filters:  # they see the upstream's response first, before the retry checks
            edited = HeaderList(list(headers))
            for upstream_filter in reversed(upstream_filters):
                upstream_filter.upstream_response(self, status, edited)
            headers = edited.items
        host.record_response(status)
        retry = self.route.retry if self.route else None
        if retry is not None and not (retry.should_retry_status(status)
                                      or (retry.grpc_codes and retry.should_retry_grpc(headers))):
            self._retry_settled()
        elif retry is not None:
            if self._reserve_retry():
                # Drop this response (and its connection: its body is still coming) and try again.
                if self.hcm.dynamic_stats:
                    self.cluster.stats.count_response(status)
                self._end_attempt(abandon=True)
                return self._schedule_retry()
            if self._retries_exhausted():
                self.flags = "URX"
        if self.hcm.dynamic_stats:
            self.cluster.stats.count_response(status)  # charged as the head arrives, as Envoy's router
        self.status = status
        self.up_state = UP_RECEIVING
        if self.resp_header_case is not None or self.hcm.response_key_format is not None:
            self._format_response_keys(self.resp_header_case)
        self.first_byte = now = self.conn.loop_time()
        self.last_activity = now
        hcm = self.hcm
        resp = headers
        if hcm.via:
            resp = _with_via(resp, hcm.via)
        response_ops = self.response_ops
        if response_ops is not None and not response_ops.empty:
            hl = HeaderList(list(resp))
            response_ops.apply(hl, self.conn.peer, facts=self._header_facts)
            resp = hl.items
        chain = self.chain
        if chain.encoder_filters:
            resp = self.encode_headers(status, resp)
        if chain.data_encoders and not self.is_head and status != 204 and status != 304:
            wanting = [f for f in chain.data_encoders if f.wants_response_data(self)]
            if wanting:
                self.response_data_filters = wanting
                if not all(getattr(f, "keeps_length", False) for f in wanting):  # pieces may change size
                    resp = [pair for pair in resp if pair[0] != b"content-length"]
        self.resp_headers = resp
        extra = hcm.response_fields(resp)
        if self.set_cookie is not None:
            extra.append((b"set-cookie", self.set_cookie[2]))
        if not hcm.suppress_envoy_headers:
            extra.append((b"x-envoy-upstream-service-time", b"%d" % int((now - self.attempt_start) * 1000)))
        if chain.body_encoders and not self.is_head and status != 204 and status != 304 and \
                any(f.wants_response_body(self) for f in chain.body_encoders):
            self.held_response = (status, [pair for pair in resp if pair[0] != b"content-length"
                                           and pair[0] not in hcm.response_drop] + extra)
            self.response_body = []
            self.rs_state = RS_HELD
            return
        self.rs_state = RS_SENDING
        close = self._ends_connection()
        self.close_after = self.encoder.encode_headers(status, resp, close=close, http10=self.http10,
                                                       head_request=self.is_head, drop=hcm.response_drop,
                                                       extra=extra)

    def _ends_connection(self, unread: bool | None = None) -> bool:
        """Whether the connection ends after this (relayed) response: the client, a drain or an earlier
        decision says so, or the request was not read whole (what is left of it cannot start the next; `unread`
        when the caller knows better than the request's state); Envoy drain-closes every connection while
        failing health, and the overload manager may disable keep-alive."""
        if unread is None:
            unread = self.rq_state != RQ_DONE
        return self.close_after or not self.keep_alive or unread or self.conn.draining \
            or self.hcm.worker.health_check_failed \
            or (self.hcm.overload.keepalive_off > 0.0 and self._overload_ends_keepalive())

    def _overload_ends_keepalive(self) -> bool:
        """disable_http_keepalive: this response ends the connection (counted once, as Envoy's drain)."""
        if self.hcm.overload.ends_keepalive():
            self.hcm.cx_overload_disable_keepalive.value += 1
            return True
        return False

    def on_upstream_upgraded(self, upstream: "UpstreamConnection | TerminatedConnect",
                             headers: list[tuple[bytes, bytes]], rest: bytes, status: int = 101) -> None:
        """The upstream switched protocols (101) or took a CONNECT (2xx; or the proxy connected a terminated
        CONNECT): relay the head, then join the two connections (tunnel.py)."""
        conn = self.conn
        hcm = self.hcm
        self.status = status
        self.up_state = UP_UPGRADED
        self.rs_state = RS_SENDING
        self.first_byte = self.last_activity = conn.loop_time()
        # per-try and upstream stream timeouts end with the head; stream_idle_timeout goes on
        self.try_deadline = self.upstream_deadline = 0.0
        self.upstream = None
        if not self.upgrade_accepted:  # a terminated POST: not an upgrade, and its route timeout runs on
            return self._open_post_tunnel(upstream, headers, rest)
        self.deadline = 0.0  # so does the route's timeout, for an upgrade
        self.tunnel_upstream = upstream
        sent = [pair for pair in headers if pair[0] != b"server"] if hcm.overwrite_server else list(headers)
        sent += hcm.response_fields(headers)
        hcm.upgrades_total.inc()
        hcm.upgrades_active.inc()
        if not self.encoder.tunnels:  # an HTTP/2 CONNECT stream: DATA frames carry the bytes (h2_tunnel.py)
            sent = [pair for pair in sent if pair[0] not in _CONNECT_2XX_FRAMING]  # RFC 9110 9.3.6: ignored
            # an extended CONNECT's 101 is its 200 (RFC 8441 5; Envoy's transformUpgradeResponseFromH1toH2)
            self.encoder.encode_headers(200 if status == 101 else status, sent, close=False, http10=False,
                                        head_request=False)
            conn.write(b"")
            H2Tunnel(self, upstream, rest)
            return
        self.encoder.encode_upgrade(sent, status)
        # The 101 leaves now, before the tunnel takes the transport over and writes its own bytes (the upstream
        # holds nothing: its request went out in an earlier phase).
        conn.flush_output()
        conn.send_held()
        assert upstream.transport is not None
        self.bytes_received += len(self.client_rest)  # the tunnel's bytes that came with the heads count too
        self.bytes_sent += len(rest)
        stats = self.cluster.stats  # type: ignore[union-attr]
        stats.upstream_cx_tx_bytes_total.value += len(self.client_rest)  # open_tunnel writes both at once
        hcm.cx_tx_bytes.value += len(rest)
        open_tunnel(conn.transport, upstream.transport, self.client_rest, rest, self._tunnel_activity,
                    self._tunnel_downstream_closed, self._tunnel_upstream_closed)
        self.client_rest = b""

    def _open_post_tunnel(self, upstream: "TerminatedConnect", headers: list[tuple[bytes, bytes]],
                          rest: bytes) -> None:
        """A POST the route terminates (connect_config.allow_post) is connected: its 200 is an ordinary response
        head (over HTTP/1.1 chunked, and `connection: close` while the body is still coming, as Envoy's), whose
        body is what the host sends; the request's body goes to the host as it comes (h2_tunnel.py). As in Envoy
        it is no upgrade (not in the upgrade stats), and x-envoy-upstream-service-time is there only when the
        request was already whole."""
        hcm = self.hcm
        extra = hcm.response_fields(headers)
        if self.rq_state == RQ_DONE and not hcm.suppress_envoy_headers:
            headers = [(b"x-envoy-upstream-service-time", b"%d" % int((self.first_byte - self.attempt_start) * 1000)),
                       *headers]
        self.resp_headers = headers
        if hcm.dynamic_stats:  # the cluster's upstream_rq_200, as Envoy counts the 200 it makes for the POST
            self.cluster.stats.count_response(200)  # type: ignore[union-attr]
        self.close_after = self.encoder.encode_headers(200, headers, close=self._ends_connection(),
                                                       http10=self.http10, head_request=False, extra=extra)
        self.on_upstream_flush()
        H2Tunnel(self, upstream, rest)

    def _tunnel_activity(self, size: int, from_client: bool) -> None:
        """`size` bytes read on one side of the tunnel (and written to the other): the access log's bytes, and
        the connections' byte counters (the tunnel's transports carry no HTTP protocol to count them)."""
        self.last_activity = self.conn.loop_time()
        stats = self.cluster.stats  # type: ignore[union-attr]
        if from_client:
            self.bytes_received += size
            self.hcm.cx_rx_bytes.value += size
            stats.upstream_cx_tx_bytes_total.value += size
        else:
            self.bytes_sent += size
            stats.upstream_cx_rx_bytes_total.value += size
            self.hcm.cx_tx_bytes.value += size

    def _tunnel_downstream_closed(self, exc: Exception | None, peer_ended: bool = False) -> None:
        if self.rs_state < RS_DONE:  # the client ended the tunnel: Envoy's DC, as for any stream it leaves
            self.flags, self.details = "DC", "downstream_remote_disconnect"
        self.tunnel_end()
        self.conn.tunnel_lost(exc, peer_ended or exc is not None)

    def _tunnel_upstream_closed(self, exc: Exception | None, peer_ended: bool = False) -> None:
        self.tunnel_end()
        upstream = self.tunnel_upstream
        if upstream is not None:
            self.tunnel_upstream = None
            upstream.connection_lost(exc)  # the pool forgets it

    def tunnel_end(self, reset: bool = False) -> None:
        """The tunnel closed (`reset`: unfinished, an HTTP/2 stream is then reset): the stream ends, logged now."""
        if self.rs_state >= RS_DONE:
            return
        if self.upgrade_accepted:  # (a terminated POST is no upgrade)
            self.hcm.upgrades_active.dec()
        self._end_attempt(abandon=False)
        self._finish(close=self.close_after or self.upgrade_accepted or reset, final=RS_RESET if reset else RS_DONE)

    def on_upstream_body(self, data: bytes, filtered: bool = False, paced: bool = False) -> None:
        """A piece of the response body: to the client, or held for the whole-body filters. `filtered`: a piece
        the data filters made themselves (their tail); `paced`: one a bandwidth limiter held and lets go on now."""
        if self.response_pacer is not None and not paced and not filtered:
            data = self.response_pacer.write(data)
            if not data:
                return
        if self.response_data_filters is not None and not filtered:
            data = self._encode_data(data, False)
            if not data:
                return
        self.bytes_sent += len(data)
        held = self.response_body
        if held is None:
            self.encoder.encode_data(data)
            return
        held.append(data)
        if self.bytes_sent > self.hcm.buffer_limit:
            # A body filter wants the response whole and it does not fit: Envoy answers 500 instead.
            self.held_response = self.response_body = None
            self.rs_state = RS_NOT_STARTED  # nothing was sent: the stream may answer itself
            self.hcm.rs_too_large.value += 1
            self._end_attempt(abandon=True)
            self.local(lr.RESPONSE_TOO_LARGE)

    def _filtered_response_body(self, status: int, headers: HeaderList, body: bytes) -> bytes:
        """A whole response body through the body filters that want it (last filter first); headers may change."""
        for http_filter in self.chain.body_encoders:
            if http_filter.wants_response_body(self):
                replaced = http_filter.encode_body(self, status, headers, body)
                if replaced is not None:
                    body = replaced
        return body

    def _send_held_response(self) -> None:
        """The held response is complete: the body filters see it (last filter first) and it goes out whole."""
        assert self.held_response is not None and self.response_body is not None
        status, headers = self.held_response
        body = b"".join(self.response_body)
        self.held_response = self.response_body = None
        self.rs_state = RS_SENDING
        edited = HeaderList(headers)
        body = self._filtered_response_body(status, edited, body)
        status = self.status  # a body filter may have changed it (the gRPC bridge's 503 for a failed call)
        sent = edited.items
        if self.resp_trailers is None:  # with trailers it goes chunked: a length has no place for them
            sent.append((b"content-length", b"%d" % len(body)))
        self.bytes_sent = len(body)
        close = self._ends_connection()
        self.close_after = self.encoder.encode_headers(status, sent, close=close, http10=self.http10,
                                                       head_request=False)
        if body:
            self.encoder.encode_data(body)

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """The response's trailers (the upstream codec's last event before the end): written after its body."""
        for http_filter in self.chain.trailer_encoders:
            http_filter.encode_trailers(self, trailers)
        self.resp_trailers = trailers

    def on_upstream_flush(self) -> None:
        out = self.encoder.out
        if out:  # HttpConnection.flush_output, inlined: this runs for every response
            conn = self.conn
            self.last_activity = conn.loop_time()
            conn.write_later(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def on_upstream_complete(self) -> None:
        if self.rq_state != RQ_DONE and self.upstream is not None:
            # An early response (the upstream didn't wait for the whole body): the
            # connection is mid-request and must not be reused.
            self.upstream.keep_alive = False
        if self.response_pacer is not None and self.response_pacer.hold_end(self.on_paced_response_end):
            # A bandwidth limiter still holds some of the body: the upstream is done (its connection goes back to
            # the pool, the route timeout ends with it, as Envoy's router's), the client's response ends later.
            self.deadline = 0.0
            self._upstream_done(self.conn.loop_time())
            return
        if self._end_response():
            now = self.conn.loop_time()
            self._upstream_done(now)
            self._finish(self.close_after, RS_DONE, now)

    def on_paced_response_end(self) -> None:
        """The bandwidth limiter let the last of the body go on, after the upstream's end: the response ends."""
        if self.rs_state < RS_DONE and self._end_response():
            self._finish(self.close_after, RS_DONE, self.conn.loop_time())

    def _end_response(self) -> bool:
        """The response's end to the client: the data filters' tail, a held response, the last chunk and its
        trailers. False when the stream was answered meanwhile (a held body outgrew the buffer: 500)."""
        if self.response_data_filters is not None:
            tail = self._encode_data(b"", True)
            if tail:
                self.on_upstream_body(tail, filtered=True)
            if self.rs_state >= RS_DONE:  # the held body outgrew the buffer: answered 500 already
                return False
        if self.held_response is not None:
            self._send_held_response()
        self.encoder.encode_end(self.resp_trailers)
        self.on_upstream_flush()
        return True

    def _upstream_done(self, now: float) -> None:
        """The upstream's response is complete: its stats, and its connection back to the pool (reading)."""
        cluster = self.cluster
        assert cluster is not None
        if self.hcm.dynamic_stats:
            cluster.stats.record_time((now - self.attempt_start) * 1000)
        if self.paused_upstream:
            # The last bytes filled the client's buffer (or a limiter's) and paused the upstream's reading as they
            # completed the response: the pool must take the connection back reading, or the next exchange never
            # hears its answer.
            self._read_upstream(False)
        self.upstream = None  # the pool takes the connection back
        self.up_state = UP_DONE
        self._end_attempt(abandon=False)

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self.upstream = None
        self.up_state = UP_RESET
        self._end_attempt(abandon=False)
        reply = _RESET_REPLIES.get(reason, lr.UPSTREAM_RESET)
        if self.rs_state != RS_NOT_STARTED:
            self.flags = reply.flag
            self.details = "upstream_reset_after_response_started{%s}" % reason.replace(" ", "_")
            self._reset_client()
            return
        if stale and (self.method in _IDEMPOTENT or reason == "refused stream") and not self.stale_retried \
                and self.rs_state < RS_DONE \
                and (self.body_buffer is not None or not (self.req_length or self.req_chunked)):
            # A pooled connection lost before any byte of the answer: a server's keep-alive close racing
            # the request, or (seen the same way) a server that failed after reading it. An idempotent
            # request may go again (RFC 9110 9.2.2): once, on a connection opened for it, no policy needed.
            self.stale_retried = True
            self.waiting_body = list(self.body_buffer or ())
            return self._start_attempt(fresh=True)
        retry = self.route.retry if self.route else None
        if retry is not None:
            if not retry.on_reset:
                self._retry_settled()
            elif self._reserve_retry():
                return self._schedule_retry()
        self._abort_reply(reply)

    def on_upstream_pause(self, paused: bool) -> None:
        """The upstream socket's buffer is full (or drained): stop (or resume) reading the client."""
        _socket_pause(self.request_pacer, paused, self._read_client)

    def on_downstream_pause(self, paused: bool) -> None:
        """The client's socket buffer is full (or drained): stop (or resume) reading the upstream."""
        _socket_pause(self.response_pacer, paused, self._read_upstream)

    def on_pacer_full(self, response: bool, full: bool) -> None:
        """A bandwidth limiter's buffer went above its high watermark (or back to its low one): the source of
        that body pauses (or resumes, unless the socket it goes to is still full)."""
        pacer = self.response_pacer if response else self.request_pacer
        if full or not pacer.sink_full:
            (self._read_upstream if response else self._read_client)(full)

    def _read_client(self, paused: bool) -> None:
        if paused != self.paused_downstream and not self.conn.closed:
            self.paused_downstream = paused
            if paused:
                self.conn.transport.pause_reading()
            else:
                self.conn.transport.resume_reading()

    def _read_upstream(self, paused: bool) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and paused != self.paused_upstream:
            self.paused_upstream = paused
            if paused:
                upstream.transport.pause_reading()
            else:
                upstream.transport.resume_reading()

    def on_try_timeout(self) -> None:
        self.try_deadline = 0.0
        if self.rs_state != RS_NOT_STARTED:
            return
        cluster = self.cluster
        assert cluster is not None
        cluster.stats.upstream_rq_per_try_timeout.value += 1
        if self.host is not None:
            self.host.record_timeout()
        self._end_attempt(abandon=True)
        retry = self.route.retry if self.route else None
        if retry is not None and retry.on_5xx_or_gateway and self._reserve_retry():
            return self._schedule_retry()
        self._timed_out()

    def on_route_timeout(self) -> None:
        self.deadline = 0.0
        if self.rs_state >= RS_DONE:
            return
        if self.cluster is not None:
            self.cluster.stats.upstream_rq_timeout.value += 1
        if self.host is not None and self.upstream is not None:
            self.host.record_timeout()
        self._end_attempt(abandon=True)
        if self.rs_state != RS_NOT_STARTED:
            self.flags = "UT"
            self._reset_client()
        else:
            self._timed_out()

    def on_upstream_max_duration(self) -> None:
        """The cluster's max_stream_duration passed for this attempt: Envoy gives up on the upstream request and
        answers 504 (408 while the request is still arriving), or resets the stream once the response began."""
        self.upstream_deadline = 0.0
        if self.rs_state >= RS_DONE:
            return
        cluster = self.cluster
        assert cluster is not None
        cluster.stats.upstream_rq_max_duration_reached.value += 1
        self._end_attempt(abandon=True)
        if self.rs_state != RS_NOT_STARTED:
            self.flags = lr.UPSTREAM_MAX_STREAM_DURATION.flag
            self._reset_client()
        else:
            self.local(lr.UPSTREAM_MAX_STREAM_DURATION if self.rq_state == RQ_DONE
                       else lr.UPSTREAM_MAX_STREAM_DURATION_CLIENT)

    def _route_stream_duration(self, rule: StreamDuration, forward: list[tuple[bytes, bytes]]
                               ) -> list[tuple[bytes, bytes]]:
        """The route's max_stream_duration replaces the HCM's limit (Envoy's refreshDurationTimeout); a gRPC
        request's grpc-timeout upstream says what is left of it at the start. Returns the upstream headers."""
        limit_ms, grpc_timeout = stream_duration_ms(rule, round(self.hcm.max_stream_duration * 1000), self.headers)
        self.duration_deadline = 0.0 if limit_ms is None else self.start + limit_ms / 1000
        if self.duration_deadline:
            self._arm(self.duration_deadline)
        if grpc_timeout is not None:
            forward = [pair for pair in forward if pair[0] != b"grpc-timeout"]
            if grpc_timeout:
                forward.append((b"grpc-timeout", grpc_timeout))
        return forward

    def on_max_duration(self) -> None:
        """max_stream_duration passed: Envoy answers 504 if it can, else resets the stream."""
        if self.rs_state >= RS_DONE:
            return
        self._end_attempt(abandon=True)
        if self.rs_state != RS_NOT_STARTED:
            self._reset_client()
        else:
            self.local(lr.MAX_DURATION_TIMEOUT)

    def _timed_out(self) -> None:
        self._abort_reply(lr.UPSTREAM_TIMEOUT)

    def _reserve_retry(self) -> bool:
        """Take one retry if the policy has one left, the body can be replayed and the budget allows (called once
        the policy's retry_on matched)."""
        cluster = self.cluster
        assert cluster is not None
        if self.retries_left <= 0:
            cluster.stats.upstream_rq_retry_limit_exceeded.value += 1  # as Envoy's RetryState: none left
            return False
        if self.body_buffer is None or self.rs_state != RS_NOT_STARTED:
            return False
        if not self.retry_held:
            if not cluster.circuit_breakers.retries.try_acquire():
                return False
            self.retry_held = True
        self.retries_left -= 1
        cluster.stats.upstream_rq_retry.value += 1
        return True

    def _retry_settled(self) -> None:
        """An attempt after a retry ended in what the policy does not retry (an answer, or a reset it does not
        cover): Envoy's `upstream_rq_retry_success`, whatever that answer was."""
        if self.retry_held:
            cluster = self.cluster
            assert cluster is not None
            cluster.stats.upstream_rq_retry_success.value += 1

    def _retries_exhausted(self) -> bool:
        """Envoy's URX: the request was retried and no retry is left."""
        retry = self.route.retry if self.route is not None else None
        return retry is not None and retry.num_retries > 0 and self.retries_left == 0

    def _schedule_retry(self) -> None:
        """Start the next attempt after Envoy's jittered exponential back-off."""
        retry = self.route.retry if self.route is not None else None
        base = retry.base_interval if retry is not None else _RETRY_BASE
        cap = retry.max_interval if retry is not None else _RETRY_MAX
        attempt = retry.num_retries - self.retries_left - 1 if retry is not None else 0
        self.waiting_body = list(self.body_buffer or ())
        delay = random.uniform(0, min(base * (2 ** attempt), cap))
        self.cluster.stats.upstream_rq_retry_backoff_exponential.value += 1  # (no rate-limited back-off here)
        self.conn.loop.call_later(delay, self.attempt_now)

    def attempt_now(self) -> None:
        """Start an upstream attempt, unless the stream ended meanwhile: after a retry's back-off, or when a
        cluster that went to find the request's host (PENDING) knows it."""
        if self.rs_state < RS_DONE:
            self._start_attempt()

    def _end_attempt(self, abandon: bool) -> None:
        """Release what the current attempt holds: host counters, breaker slot, connection or queue spot."""
        self.try_deadline = self.upstream_deadline = 0.0
        if abandon and UP_CONNECTING <= self.up_state <= UP_RECEIVING:
            self.up_state = UP_RESET  # given up on mid-attempt
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if abandon:
                upstream.abandon()
        elif abandon and self.pool is not None:
            self.pool.cancel(self)
        host = self.host
        if host is not None:
            host.active_requests -= 1
            self.host = None
            cluster = self.cluster
            assert cluster is not None
            cluster.stats.upstream_rq_active.value -= 1
            cluster.circuit_breakers.requests.release()
        self.pool = None

    # ------------------------------------------------------------------ replies and the end
    def _reset_client(self) -> None:
        """Too late to answer: reset the client's stream (HTTP/1: close its connection; HTTP/2: RST_STREAM). Envoy
        counts it in `downstream_rq_tx_reset`, and its connection manager, hearing every reset alike, in
        `downstream_rq_rx_reset` too."""
        hcm = self.hcm
        hcm.rq_tx_reset.value += 1
        hcm.rq_rx_reset.value += 1
        self._finish(close=True, final=RS_RESET)

    def local(self, reply: lr.LocalReply) -> None:
        """Answer with a proxy-generated reply (Envoy's sendLocalReply), or reset if too late."""
        if self.rs_state >= RS_DONE:
            return
        if self.rs_state != RS_NOT_STARTED:
            self.flags = reply.flag
            self._reset_client()
            return
        if self.rq_state != RQ_DONE and (self.req_length or self.req_chunked) and self.pending_local is None \
                and self.conn.feeding:
            # The body may be in the very same read: answer once this read is parsed,
            # so a small body doesn't cost the client its keep-alive connection.
            self.pending_local = reply
            return
        self.flags = reply.flag + ",URX" if reply.status >= 500 and self._retries_exhausted() else reply.flag
        self.details = reply.details
        self.status = reply.status
        # Once routed to a cluster, the route's response headers go on the router's replies too, as Envoy's router
        # finalizes the headers of the replies it sends (observed: a no-healthy-upstream 503 carries them).
        self._send_local(reply.status, reply.body, self.response_ops, grpc_status=reply.grpc_status)

    def _send_local(self, status: int, body: bytes, ops, *, content_type: bytes = b"text/plain",
                    extra: list[tuple[bytes, bytes]] | None = None, grpc_status: int | None = None) -> None:
        hcm = self.hcm
        body_pending = self.rq_state != RQ_DONE and bool(self.req_length or self.req_chunked)
        close = self.close_after or not self.keep_alive or body_pending or self.conn.draining \
            or self.hcm.worker.health_check_failed or self.upgrade \
            or status == 400 or status == 426 or status == 431 \
            or (hcm.overload.keepalive_off > 0.0 and self._overload_ends_keepalive())
        headers = list(extra) if extra else []
        if ops is not None and not ops.empty:
            hl = HeaderList(headers)
            ops.apply(hl, self.conn.peer, facts=self._local_reply_facts)
            headers = hl.items
        if hcm.local_reply_mapper is not None:
            hl = HeaderList(headers)
            status, body, content_type = hcm.local_reply_mapper.rewrite(
                hcm.access_record(self, self.conn.loop_time() - self.start), status, body, content_type, hl,
                self.conn.peer, self._request_lookup())
            headers = hl.items
            self.status = status
        if hcm.always_set_request_id and self.request_id:
            headers.append((b"x-request-id", self.request_id))
        if hcm.via:
            headers = _with_via(headers, hcm.via)
        # Envoy decides by the request as it arrived (gRPC-Web made gRPC by its filter gets the plain reply)
        grpc = is_grpc_request(self.headers) if self.arrived_grpc is None else self.arrived_grpc
        if grpc:  # a gRPC client reads the outcome from grpc-status: Envoy's trailers-only reply, HTTP 200
            headers = trailers_only_headers(status, body, headers, head_request=self.is_head, grpc_status=grpc_status)
            status = self.status = 200
        if hcm.response_key_format is not None:
            self._format_response_keys(None)  # the proxy's own reply: the HCM's format, never an upstream's case
        self.local_reply = True  # before the encoders: the ones that only transform relayed responses can tell
        if self.chain.encoder_filters:
            headers = self.encode_headers(status, headers)  # Envoy's local replies pass the encoders too
        if grpc:  # the head ends the stream: no body filters, nothing counted as sent (as Envoy's access log)
            self.bytes_sent = 0
            self.encoder.encode_trailers_only(headers, close=close, head_request=self.is_head)
        else:
            if self.chain.body_encoders and not self.is_head:
                edited = HeaderList(headers)
                body = self._filtered_response_body(status, edited, body)
                headers = edited.items
            self.bytes_sent = len(body)
            self.encoder.encode_local_reply(status, body, close=close, content_type=content_type, headers=headers,
                                            head_request=self.is_head)
        self.conn.flush_output()
        self._end_attempt(abandon=True)
        self._finish(close=close)

    def _finish(self, close: bool, final: int = RS_DONE, now: float = 0.0) -> None:
        """The stream ends: the response went out whole (`final` RS_DONE) or not (RS_RESET). `now`: the loop's
        clock if the caller just read it (one read of it fewer per request)."""
        if self.rs_state >= RS_DONE:
            return
        self.rs_state = final
        self.deadline = 0.0
        if self.filter_timer is not None:
            self.filter_timer.cancel()
            self.filter_timer = None
        if self.finish_callbacks is not None:
            for callback in self.finish_callbacks:
                callback()
        if self.retry_held and self.cluster is not None:
            self.cluster.circuit_breakers.retries.release()
            self.retry_held = False
        if self.shadows is not None:
            if self.rq_state != RQ_DONE:  # the client's request ended short: so do its copies
                for shadow in self.shadows:
                    shadow.abandon()
            self.shadows = None
        hcm = self.hcm
        elapsed = (now or self.conn.loop_time()) - self.start
        if self.started:
            hcm.rq_active.value -= 1
            status = self.status
            if status:  # a response went out: Envoy charges downstream_rq_completed with its class (a reset, none)
                hcm.count_completed(status)
            hcm.rq_time.record(elapsed * 1000)
        if hcm.access_loggers:
            hcm.log_access(self, elapsed)
        if self.span is not None:
            hcm.tracer.finish(self)
        if self.paused_downstream and not self.conn.closed and not close:
            self.paused_downstream = False
            self.conn.transport.resume_reading()
        self.conn.stream_done(self, close)

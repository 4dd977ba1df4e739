"""A downstream HTTP/2 connection: Envoy's HTTP connection manager over the HTTP/2 codec.

`Http2Connection` is the HCM's `HttpConnection` with the HTTP/1 codec replaced
by an `H2Connection` (libnghttp2, `http/h2_session.py`): the same stats,
TLS checks, network filters, XFF and client-certificate facts, but many
streams at once. Each stream drives the same per-request machinery as an
HTTP/1 request (`stream.py`: routing, filters, retries, timeouts, local
replies, access log) through `H2StreamConn`, the stream's view of its
connection: it is also the stream's own response encoder
(`http/h2_server.py`), keeps its own deadlines (`stream_idle_timeout` and
the route's timeouts are per stream; the worker's wheel looks at the
connection, which asks each open stream), and stands
in for the transport where the stream applies back-pressure, so pausing
"reading" pauses only that stream: its received DATA is not credited back
(no WINDOW_UPDATE) until the upstream takes it. A response the client does
not read piles up in the session per stream; past the listener's buffer limit
that stream's upstream connection stops being read.

The upstream stays HTTP/1.1. A client's RST_STREAM ends only its stream
(and that stream's upstream request); a drain sends Envoy's graceful GOAWAY
pair (a shutdown notice, then after `drain_timeout` or once idle the final
GOAWAY naming the last stream processed); the connection's `idle_timeout`
counts from its last stream. Departure: a response that ends before its
request body does (a local reply to a request still uploading) is not
followed by Envoy's RST_STREAM(NO_ERROR); the rest of the body is read and
dropped until the client ends it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pylon.proxy.hcm import HcmRuntime, HttpConnection, count_closed
from pylon.proxy.http.h2_keepalive import H2Keepalive
from pylon.proxy.http.h2_server import Http2ResponseEncoder, request_head
from pylon.proxy.http.h2_session import (COUNTER_NAMES, INTERNAL_ERROR, NO_ERROR, H2Connection, H2Settings,
                                         add_counts)
from pylon.proxy.stream import Stream
from pylon.proxy.stream_states import RQ_BODY, RS_DONE, RS_RESET

if TYPE_CHECKING:
    from pylon.proxy.connection_info import ConnectionInfo

log = logging.getLogger("pylon.proxy.h2")



def h2_settings(config: Any) -> H2Settings:
    """An HCM's `http2_protocol_options` (unset fields: Envoy's defaults) and its header limits, for the codec."""
    common = config.common_http_protocol_options
    return H2Settings.of(config.http2_protocol_options, max_header_bytes=config.max_request_headers_kb * 1024,
                         max_headers_count=common.max_headers_count if common is not None else 100)


class H2Runtime:
    """The HTTP/2 side of one HCM in one worker: the codec's settings and Envoy's `http2.*` stats."""

    def __init__(self, hcm: HcmRuntime, stats: Any) -> None:
        self.settings = h2_settings(hcm.config)
        self.stats = stats
        # Envoy 1.40 roots its codec stats at `http2.` (not under the HCM's stat prefix), as pylon's `http1.`.
        self.connections = stats.counter("http2.nghttp2_downstream_connections")
        self.dropped_underscores = stats.counter("http2.dropped_headers_with_underscores")
        self.rejected_underscores = stats.counter("http2.requests_rejected_with_underscores_in_headers")
        self.streams_active = stats.gauge("http2.streams_active")
        for name in COUNTER_NAMES:
            stats.counter(f"http2.{name}")  # present at 0, as Envoy lists them

    def add(self, counts: dict[str, int], seen: dict[str, int]) -> None:
        """Add what a connection's codec counted since `seen` (updated) to the worker's counters."""
        add_counts(self.stats.counter, counts, seen)


class H2StreamConn(Http2ResponseEncoder):
    """One HTTP/2 stream as its `Stream` sees its connection (and transport): facts shared, flow and timers own.

    It is also the stream's response encoder (`encoder` is itself): one object per stream for both roles, not two,
    as a proxied GET makes and frees a handful of objects and each is a share of its CPU.
    """

    __slots__ = ("h2", "stream", "hcm", "loop", "loop_time", "peer", "peer_ip", "local", "scheme", "connection_id",
                 "detected", "closed", "paused", "owed")

    protocol = "HTTP/2"  # the access log's %PROTOCOL%
    feeding = False  # a request's head arrives whole: a local reply never waits for the rest of a read
    last_activity = 0.0  # per stream only: the stream's own last_activity counts for stream_idle_timeout

    def __init__(self, connection: "Http2Connection", stream_id: int) -> None:
        self.h2 = connection
        h2 = self.h2  # compiled, read back from the field it takes that field's type: the reads below skip a look-up
        Http2ResponseEncoder.__init__(self, h2.session, stream_id, h2.hcm.local_server_name)
        self.stream: Stream = None  # type: ignore[assignment]  # set right after, the Stream needs this first
        self.hcm = h2.hcm
        self.loop = h2.loop
        self.loop_time = h2.loop_time
        self.peer = h2.peer
        self.peer_ip = h2.peer_ip
        self.local = h2.local
        self.scheme = h2.scheme
        self.connection_id = h2.connection_id
        self.detected = h2.detected
        self.closed = False  # the HTTP/2 stream is closed (both ways, or reset)
        self.paused = False  # the upstream does not take the body: received DATA is not credited back
        self.owed = 0  # body bytes received while paused, credited when it resumes

    @property
    def draining(self) -> bool:
        return self.h2.draining

    @property
    def wake_at(self) -> float:
        """When the deadline wheel looks at the stream next: its connection's look, which asks every stream."""
        return self.h2.wake_at

    @property
    def deadlines(self) -> "Http2Connection":
        """Where the stream arms its deadlines (`Stream._arm`): its connection, not the worker's wheel itself."""
        return self.h2

    @property
    def encoder(self) -> "H2StreamConn":
        """The stream's response encoder: this object (see the class)."""
        return self

    @property
    def transport(self) -> "H2StreamConn":
        """What the stream pauses and writes through: this stream only. A property, not an attribute holding
        `self`: that would be a reference cycle per stream, freed only by the garbage collector."""
        return self

    # --- the transport the stream sees
    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.owed and not self.closed:
            self.h2.session.consume(self.stream_id, self.owed)
            self.owed = 0
            self.h2.flush()

    def write(self, _marker: bytes) -> None:
        """The stream encoded something (its encoder's `out` says so): the connection writes the session's frames
        once this round of events is over, every stream's in one write. A response the client does not read fast
        enough stops its upstream past the buffer limit."""
        h2 = self.h2
        self.commit()
        h2.flush_later()
        queued = self.queued
        if queued:  # a submission since the last look: the only way past the limit (framing only lowers it)
            self.queued = 0
            if queued > self.hcm.buffer_limit and not self.closed:
                stream = self.stream
                if not stream.paused_upstream:
                    stream.on_downstream_pause(True)
                    h2.out_paused.add(self)

    #: the stream's writes of a response: the connection already writes once per round (`flush_later`)
    write_later = write

    # --- the connection the stream sees
    def flush_output(self) -> None:
        self.commit()
        self.out.clear()
        self.h2.flush_later()

    def stream_done(self, stream: Stream, close: bool) -> None:
        self.h2.stream_done(self)

    def forwarded_for_ip(self) -> bytes:
        return self.h2.forwarded_for_ip()

    def client_cert_element(self) -> bytes | None:
        return self.h2.client_cert_element()

    def connection_info(self) -> "ConnectionInfo":
        return self.h2.connection_info()

    def sweep(self, now: float) -> float:
        """The stream's own timeouts, from its connection's look (see `Stream.sweep`)."""
        stream = self.stream
        if stream is None or stream.rs_state >= RS_DONE:
            return 0.0
        following = stream.sweep(now)
        if following is None:  # a timeout acted: the stream ended, or a retry has deadlines of its own
            following = stream.sweep(now) if stream.rs_state < RS_DONE else 0.0
        return following or 0.0


class Http2Connection(HttpConnection):
    """One downstream HTTP/2 connection (h2 by ALPN, h2c with prior knowledge, or codec_type HTTP2)."""

    __slots__ = ("session", "streams", "seen", "receiving", "flush_again", "flush_soon", "write_paused",
                 "out_paused", "final_goaway", "keepalive")

    protocol = "HTTP/2"

    def __init__(self, hcm: HcmRuntime, scheme: bytes = b"http") -> None:
        super().__init__(hcm, scheme)
        self.session: H2Connection = None  # type: ignore[assignment]  # made once the connection is accepted
        self.streams: dict[int, H2StreamConn] = {}  # the open streams the owner knows
        self.seen: dict[str, int] = {}  # the codec's counts already added to the worker's stats
        self.receiving = False  # inside the session (receive, data_to_send): nothing may be framed until it returns
        self.flush_again = False  # something was submitted meanwhile: frame again once it returns
        self.flush_soon = False  # a flush is scheduled for the end of this round of events
        self.write_paused = False  # the socket's buffer is full: frames stay in the session
        self.out_paused: set[H2StreamConn] = set()  # streams whose upstream is paused for the client's reading
        self.final_goaway = False
        self.keepalive: H2Keepalive | None = None  # connection_keepalive's PINGs (the HCM's http2 options)

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if not self.closed:
            self.start()

    def start(self, data: bytes = b"") -> None:
        """Begin speaking HTTP/2 (our SETTINGS first), then read `data`: the bytes that chose this codec."""
        hcm = self.hcm
        hcm.h2.connections.value += 1
        self.session = H2Connection(self, server=True, settings=hcm.h2.settings)
        self.flush()
        keepalive = hcm.h2.settings.connection_keepalive
        if keepalive is not None:
            self.keepalive = H2Keepalive(self.loop, keepalive, self._ping, self._keepalive_timed_out)
        if data:
            self._read(data)

    def count_codec(self) -> None:
        """As HttpConnection's: counted in the HTTP/2 stats once its first bytes arrive."""
        self.codec_counted = True
        self.hcm.cx_http2_total.value += 1
        self.hcm.cx_http2_active.value += 1

    def _read(self, data: bytes) -> None:
        if not self.codec_counted:
            self.count_codec()
        self.last_activity = self.loop_time()
        if self.keepalive is not None:
            self.keepalive.received()
        self.receiving = True
        try:
            self.session.receive(data)
        except Exception:  # a bug in a stream's handling: the codec ended the connection (INTERNAL_ERROR)
            log.exception("HTTP/2 connection %d: error while handling a frame", self.connection_id)
        finally:
            self.receiving = False
        session = self.session
        if self.flush_again or self.out_paused or session.closed or session.want_write:
            self.flush()  # else nothing to frame: the streams' own writes come with flush_later

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection_id == 0:
            return  # refused in connection_made, never counted
        unfinished = not self.closed and bool(self.streams)
        self.closed = True
        self.deadlines.disarm(self)
        hcm = self.hcm
        count_closed(hcm, self, exc, unfinished)
        if self.codec_counted:
            hcm.cx_http2_active.value -= 1
        if self.keepalive is not None:
            self.keepalive.stop()
        session = self.session
        if session is not None:
            for conn in list(self.streams.values()):
                self._stream_closed(conn, 1)
            self.streams.clear()
            hcm.h2.add(session.counters(), self.seen)
            session.close()
        self.worker.connection_closed(self, self.opened_at)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.flush()

    # ------------------------------------------------------------------ H2Owner: the codec's calls
    def on_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        hcm = self.hcm
        head = request_head(headers, hcm.underscores)
        if head.dropped:
            hcm.h2.dropped_underscores.value += head.dropped
        if head.rejected:
            hcm.h2.rejected_underscores.value += 1
            self.session.reset_stream(stream_id, INTERNAL_ERROR)  # as Envoy 1.40 refuses the stream
            return
        conn = H2StreamConn(self, stream_id)
        stream = conn.stream = Stream(conn, self.loop_time())  # type: ignore[arg-type]
        stream.method = head.method
        stream.is_head = head.method == b"HEAD"
        stream.url = head.path
        stream.headers = head.headers
        if not end_stream:
            if head.length is not None:
                stream.req_length = head.length
            else:
                stream.req_chunked = True  # no length: the HTTP/1.1 upstream gets it chunked, as from Envoy
        stream.upgrade = head.method == b"CONNECT"
        if head.protocol:
            # Extended CONNECT (RFC 8441) is an upgrade, as Envoy's codec makes it: a GET with `upgrade: <protocol>`
            # (its 101 goes back as a 200, h2_server.py); its DATA is the tunnel's (h2_tunnel.py)
            stream.method = b"GET"
            stream.headers.append((b"upgrade", head.protocol))
        stream.rq_state = RQ_BODY
        self.streams[stream_id] = conn
        hcm.h2.streams_active.value += 1
        hcm.rq_http2_total.value += 1
        stream.begin()
        if end_stream:
            stream.on_complete()
        if stream.up_out:
            stream.flush_upstream()

    def _open(self, stream_id: int) -> H2StreamConn | None:
        """The stream's view, while it is open. A method, not `self.streams.get`: compiled, its result is typed
        (h2_connection.pxd), so the callers read its fields and call its stream without a look-up."""
        return self.streams.get(stream_id)

    def _take(self, stream_id: int) -> H2StreamConn | None:
        """The stream's view, no longer among the open ones (typed compiled, as `_open`)."""
        return self.streams.pop(stream_id, None)

    def on_data(self, stream_id: int, data: bytes) -> None:
        conn = self._open(stream_id)
        if conn is None:
            self.session.consume(stream_id, len(data))
            return
        stream = conn.stream
        stream.on_body(data)
        if stream.up_out:
            stream.flush_upstream()
        if conn.paused and stream.rs_state < RS_DONE:
            conn.owed += len(data)  # credited when the upstream takes more (resume_reading)
        else:
            self.session.consume(stream_id, len(data))

    def on_trailers(self, stream_id: int, trailers: list[tuple[bytes, bytes]]) -> None:
        conn = self._open(stream_id)
        if conn is not None:
            stream = conn.stream
            stream.req_trailers = trailers
            self._request_end(stream)

    def on_end_stream(self, stream_id: int) -> None:
        conn = self._open(stream_id)
        if conn is not None:
            self._request_end(conn.stream)

    def _request_end(self, stream: Stream) -> None:
        stream.on_complete()
        if stream.up_out:
            stream.flush_upstream()

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        conn = self._take(stream_id)
        if conn is None:
            return
        self._stream_closed(conn, error_code)
        if error_code:
            self.hcm.h2.add(self.session.counters(), self.seen)
        if self.draining and not self.streams:
            self._goaway()

    def _stream_closed(self, conn: H2StreamConn, error_code: int) -> None:
        """The HTTP/2 stream is gone (ended both ways, reset by either side, or its connection lost)."""
        conn.closed = True
        conn.drop()
        self.out_paused.discard(conn)
        self.hcm.h2.streams_active.value -= 1
        stream = conn.stream
        if error_code and stream.rs_state < RS_DONE:
            # Reset (or its connection lost): its upstream request is abandoned; the other streams go on. A stream
            # that closed without error sent its response's end, and the stream is finishing it right now.
            self.hcm.rq_rx_reset.value += 1
            stream.on_downstream_closed()
        if stream.rs_state >= RS_DONE:
            conn.stream = None  # type: ignore[assignment]  # both are over: see stream_done

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The client will open no more streams: the session ends once the open ones are done."""

    def on_ping_ack(self) -> None:
        if self.keepalive is not None:
            self.keepalive.acked()

    def _ping(self) -> None:
        assert self.session is not None
        self.session.ping()
        self.flush()

    def _keepalive_timed_out(self) -> None:
        """No PING ACK in time: the client is gone; close without flushing (Envoy's NoFlush)."""
        self.hcm.h2.stats.counter("http2.keepalive_timeout").value += 1
        self.transport.abort()

    # ------------------------------------------------------------------ the streams' calls
    def stream_done(self, conn: H2StreamConn) -> None:
        """A stream's response ended (whole, or reset after it began): the stream's flow is settled (its deadlines
        end with it: the connection's look asks only the streams still open)."""
        self.out_paused.discard(conn)
        if conn.closed or self.closed:
            # The HTTP/2 stream closed first: nothing calls this stream again. Dropping the link back to it (the
            # stream keeps its `conn`) leaves no reference cycle, so both are freed the moment they are dropped
            # instead of by the garbage collector, whose collections of these cycles cost about an eighth of a
            # worker's CPU under h2load. The usual order (the stream ends, then its frames go out and the HTTP/2
            # stream closes) drops it in _stream_closed.
            conn.stream = None  # type: ignore[assignment]
            return
        if conn.owed:
            self.session.consume(conn.stream_id, conn.owed)  # what is left of its body is read and dropped
            conn.owed = 0
        conn.paused = False
        if conn.stream.rs_state == RS_RESET:
            conn.commit()  # what the stream relayed goes out before its reset, as it would have
            conn.drop()
            self.session.reset_stream(conn.stream_id, INTERNAL_ERROR)
        self.flush_later()

    def flush_later(self) -> None:
        """Flush once this round of events is over: every stream's frames of the round in one write."""
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what the session frames now, in one write (not while it parses, nor while the socket is full).

        Framing calls back too (a stream whose last frame went out closes): what those callbacks submit is framed
        by another round here, never by a nested call into the session."""
        self.flush_soon = False
        if self.closed:
            return
        if self.receiving:
            self.flush_again = True
            return
        session = self.session
        if not self.write_paused:
            self.receiving = True
            try:
                data = session.data_to_send()
                while self.flush_again:
                    self.flush_again = False
                    data += session.data_to_send()
            finally:
                self.receiving = False
            if data:
                self.hcm.cx_tx_bytes.value += len(data)
                self.transport.write(data)
            if self.out_paused:
                self._resume_streams()
        if session.closed:
            self.hcm.h2.add(session.counters(), self.seen)
            self.close()

    flush_output = flush

    def _resume_streams(self) -> None:
        """Streams whose client caught up (half the buffer limit framed) read their upstream again."""
        session = self.session
        low = self.hcm.buffer_limit // 2
        for conn in [c for c in self.out_paused if session.pending(c.stream_id) <= low]:
            self.out_paused.discard(conn)
            conn.stream.on_downstream_pause(False)

    # ------------------------------------------------------------------ drain and timeouts
    def drain(self, close_idle: bool = True) -> None:
        """Envoy's graceful GOAWAY: a shutdown notice now, the final GOAWAY once no stream is open (`close_idle`)
        or after drain_timeout, then the connection ends when its last stream does."""
        if self.draining or self.closed or self.session is None:
            return
        self.draining = True
        self.session.shutdown_notice()
        if close_idle and not self.streams:
            self._goaway()
        else:
            self.flush()
            self.loop.call_later(self.hcm.drain_timeout, self._goaway)

    def _goaway(self) -> None:
        if self.final_goaway or self.closed:
            return
        self.final_goaway = True
        self.session.goaway(NO_ERROR)
        self.flush()

    def arm(self, _stream: H2StreamConn, when: float) -> None:
        """A stream's deadline (`Stream._arm` through `H2StreamConn.deadlines`): the wheel looks at the connection,
        which asks each of its streams (`sweep`). One target per connection, not per stream: a stream whose deadline
        is later than the connection's next look costs one comparison, not an entry in the wheel and its removal."""
        if when < self.wake_at or not self.wake_at:
            self.deadlines.arm(self, when)

    def sweep(self, now: float) -> float:
        """The connection's own timeouts: max_connection_duration and idle_timeout (no open stream for that long)
        drain it, as Envoy (its GOAWAY pair, drain_timeout apart); then each open stream's own
        (`H2StreamConn.sweep`). Returns the earliest of their next deadlines."""
        if self.closed:
            return 0.0
        hcm = self.hcm
        following = 0.0
        for conn in list(self.streams.values()):
            due = conn.sweep(now)
            if due and (not following or due < following):
                following = due
        if self.closed:
            return 0.0
        if hcm.max_connection_duration and not self.draining:
            due = self.opened_at + hcm.max_connection_duration
            if now >= due:
                hcm.cx_max_duration.value += 1
                self.drain(close_idle=False)
            elif not following or due < following:
                following = due
        idle = hcm.idle_timeout
        if idle and not self.draining:
            due = (self.last_activity if not self.streams else now) + idle
            if now >= due:
                hcm.cx_idle_timeout.value += 1
                self.drain(close_idle=False)  # as Envoy: the drain sequence, then the close
                return 0.0
            following = min(following, due) if following else due
        return following

"""HTTP/2 upstream connections and the multiplexed per-host pool (Envoy's HTTP/2 connection pool).

Beside `pool.py`'s HTTP/1 pool, for clusters that speak HTTP/2 upstream
(`Cluster.h2_settings`). A request takes a stream on a ready connection that
has room: fewer open streams than the smaller of the cluster's
`max_concurrent_streams` and the server's SETTINGS_MAX_CONCURRENT_STREAMS
(read from its first SETTINGS frame, `h2_client.first_settings`). Only when
every connection is full does it wait in the pending queue, and a new
connection is opened only when the connections being opened cannot take the
queue either (each counts for its stream limit), so a load of many concurrent
requests shares one connection, as in Envoy. The circuit breakers count as
Envoy's do for HTTP/2: `max_requests` the active streams (the router takes
that slot), `max_pending_requests` the queue, `max_connections` the
connections.

A connection ends its life as Envoy's do: `max_requests_per_connection`
streams (the one reaching the limit is counted in `upstream_cx_max_requests`),
`max_connection_duration`, or a GOAWAY from the server stop new streams on it
and it closes once its last stream ends; an idle one closes after the idle
timeout (`expiry.py` decides, the worker's deadline wheel looks). Streams the
server's GOAWAY refused (above its last stream id, or RST_STREAM
REFUSED_STREAM) were not processed: their requests go again on a new
connection, whatever the method (the router's `stale` retry).

Each request's view of its connection is an `H2UpstreamStream`, which stands in
for `pool.UpstreamConnection` in the router's `Exchange` calls: `write` flushes
the session (the body went in as DATA submissions through
`h2_client.Http2RequestEncoder`), `transport.pause_reading()` stops crediting
that stream's received DATA (flow control: a slow client stops only its own
upstream stream), `abandon` resets it with CANCEL. A stream whose request body
waits past the cluster's buffer limit behind the server's window pauses its
client (`on_upstream_pause`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pylon.proxy.http.h2_client import Http2RequestEncoder, first_settings, head_block, request_headers, response_head
from pylon.proxy.http.h2_session import (CANCEL, COUNTER_NAMES, NO_ERROR, REFUSED_STREAM, H2Connection, H2Error,
                                         H2Settings, Headers, add_counts, header_block)
from pylon.proxy.http.h2_keepalive import H2Keepalive
from pylon.proxy.tls import ClientTls
from pylon.proxy.upstream.pool_base import PoolBase, PooledConnection, prepare_transport

if TYPE_CHECKING:
    from pylon.proxy.http.h1_client import Http1RequestEncoder
    from pylon.proxy.upstream.auto_pool import AutoPool
    from pylon.proxy.upstream.auto_sni import UpstreamName
    from pylon.proxy.upstream.cluster import Cluster, Host
    from pylon.proxy.upstream.pool import Exchange, PoolOwner

log = logging.getLogger("pylon.upstream")

#: What an auto_config cluster offers when its TLS context names no alpn_protocols (Envoy's order).
AUTO_ALPN = ["h2", "http/1.1"]


class H2UpstreamStream:
    """One request's stream on an HTTP/2 upstream connection: what the router's exchange holds as its upstream."""

    __slots__ = ("connection", "pool", "exchange", "stream_id", "encoder", "local_address", "requests", "keep_alive",
                 "reading_paused", "held", "writing_paused", "answered", "flush_due")
    multiplexed = True  # the router's one test: this attempt goes through `send_head`, not HTTP/1 bytes

    def __init__(self, connection: "H2UpstreamConnection", exchange: "Exchange") -> None:
        self.connection = connection
        self.pool = connection.pool
        self.exchange: Exchange | None = exchange
        self.stream_id = 0
        self.encoder: Http2RequestEncoder | None = None
        self.local_address = connection.local_address
        self.requests = connection.requests - 1  # streams the connection carried before this one
        self.keep_alive = True
        self.reading_paused = False
        self.held = 0  # received body bytes not credited back while the client is not reading
        self.writing_paused = False  # the exchange was told to stop reading its client
        self.answered = False
        self.flush_due = False  # in its connection's `due`: the exchange flushes once the read is handled

    @property
    def transport(self) -> "H2UpstreamStream":
        """The exchange's pause/resume of "reading" this upstream lands here. A property, not an attribute holding
        `self`: that would be a reference cycle per stream, freed only by the garbage collector."""
        return self

    # -- used by the exchange ------------------------------------------------------------------------
    def send_head(self, base: "Http1RequestEncoder", head: bytes | None, end_stream: bool,
                  attempt: int = 1) -> Http2RequestEncoder | None:
        """Open the stream with the request `head` (HTTP/1.1 bytes, translated), or with None the head `base`
        makes for `attempt` (built without the bytes); the encoder for its body. None when the session takes no
        new stream (it is ending): the exchange was told (a reset it may retry)."""
        connection = self.connection
        codec = connection.codec
        scheme = connection.scheme
        if head is not None:  # the proxy's own requests (async_client, span export): HTTP/1.1 bytes
            fields = request_headers(head, scheme)
            block, count, extended = header_block(fields), len(fields), fields[1][0] == b":protocol"
        else:
            block, count, extended = head_block(base, attempt, scheme)
        if extended and not connection.peer_connect:
            # an upgrade the server's SETTINGS do not admit as extended CONNECT: reset here, as Envoy's codec does
            # (502 "protocol error"); the pool waited for those SETTINGS (`H2Pool.may_take`)
            exchange = self._detach()
            self.pool.stream_closed(connection)
            if exchange is not None:
                exchange.on_upstream_reset("protocol error")
            return None
        try:
            sid = codec.send_request_block(block, count, end_stream)
        except H2Error:
            exchange = self._detach()
            self.pool.stream_closed(connection)
            if exchange is not None:
                exchange.on_upstream_reset("refused stream", stale=True)
            return None
        self.stream_id = sid
        connection.streams[sid] = self
        self.encoder = encoder = Http2RequestEncoder(base, codec, sid)
        encoder.ended = end_stream
        return encoder

    def write(self, data: bytes) -> None:
        """The exchange's flush: its body went in as submissions already (`data` is empty); frame and send them.

        The proxy's own requests (async_client, span export) write one whole HTTP/1.1 request with its length
        instead: it goes as one stream here."""
        connection = self.connection
        if data and not self.stream_id:
            head, _, body = data.partition(b"\r\n\r\n")
            encoder = self.send_head(None, head + b"\r\n", not body)  # type: ignore[arg-type]
            if encoder is None:
                return
            if body:
                encoder.encode_data(body)
                encoder.encode_end()
        connection.flush_soon()
        encoder = self.encoder
        if encoder is not None and encoder.queued:  # a submission since the last look (framing only lowers it)
            queued, encoder.queued = encoder.queued, 0
            exchange = self.exchange
            if exchange is not None and not self.writing_paused and queued > connection.pool.buffer_limit:
                self.writing_paused = True
                connection.write_paused_streams.add(self)
                exchange.on_upstream_pause(True)

    def abandon(self) -> None:
        """The exchange gave up (timeout, client gone, retry): RST_STREAM CANCEL; the slot frees when it closes."""
        self._detach()
        connection = self.connection
        if not self.stream_id:  # never opened: its slot is free at once
            self.pool.stream_closed(connection)
        elif self.stream_id in connection.streams and not connection.closed:
            try:
                connection.codec.reset_stream(self.stream_id, CANCEL)
            except H2Error:
                return
            connection.flush()

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        held, self.held = self.held, 0
        if held and not self.connection.closed:
            self.connection.codec.consume(self.stream_id, held)
            self.connection.flush()

    def _detach(self) -> "Exchange | None":
        """Let go of the exchange, handing its HTTP/1 encoder back (a retry may land on an HTTP/1.1 connection)."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None and self.encoder is not None and self.encoder.base is not None:
            exchange.request_encoder = self.encoder.base  # type: ignore[attr-defined]
        self.connection.write_paused_streams.discard(self)
        return exchange

    # -- from the connection ------------------------------------------------------------------------
    def on_headers(self, fields: Headers, end_stream: bool) -> None:
        status, headers = response_head(fields)
        if status < 200:
            return  # 1xx: Envoy's upstream codec drops them unless the client asked 100-continue
        exchange = self.exchange
        if exchange is None:
            return
        self.answered = True
        if end_stream:
            encoder = getattr(exchange, "encoder", None)  # the router's downstream encoder, if it is HTTP/2's
            if hasattr(encoder, "headers_only"):
                encoder.headers_only = True  # type: ignore[union-attr]
        exchange.on_upstream_headers(status, headers, True)
        if end_stream:
            self._complete()
        elif self.exchange is not None:
            self._flush_later()

    def _flush_later(self) -> None:
        """The exchange writes what it encoded once the connection's read is handled, not per event: a response
        read whole (a gRPC answer: head, message, trailers) then goes to the client as one submission."""
        due = self.connection.due
        if due is None:
            self.exchange.on_upstream_flush()  # type: ignore[union-attr]
        elif not self.flush_due:
            self.flush_due = True
            due.append(self)

    def on_data(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.connection.codec.consume(self.stream_id, len(data))
            return
        exchange.on_upstream_body(data)
        if self.exchange is None:
            exchange.on_upstream_flush()  # it let go of this upstream meanwhile (a local reply)
        else:
            self._flush_later()
        if self.reading_paused:
            self.held += len(data)
        else:
            self.connection.codec.consume(self.stream_id, len(data))

    def on_trailers(self, trailers: Headers) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_upstream_trailers(trailers)
        self._complete()

    def _complete(self) -> None:
        encoder = self.encoder
        exchange = self._detach()
        if exchange is None:
            return
        exchange.on_upstream_complete()
        if encoder is not None and not encoder.ended:
            # The response came before the request ended: Envoy resets the rest of the upstream request.
            try:
                self.connection.codec.reset_stream(self.stream_id, NO_ERROR)
            except H2Error:
                pass

    def _flush_now(self) -> None:
        """The wait for the read's end is over (the read is handled, or a reset or a loss comes first, which the
        exchange must hear of after what it encoded): the exchange writes, if it is still there."""
        if self.flush_due:
            self.flush_due = False
            if self.exchange is not None:
                self.exchange.on_upstream_flush()

    def on_closed(self, error_code: int) -> None:
        """The stream is over (both ways); an exchange still attached lost it: refused, reset or not answered."""
        self._flush_now()
        exchange = self._detach()
        if exchange is None:
            return
        if error_code == REFUSED_STREAM:
            # Not processed by the server (its GOAWAY's last stream id is below, or it refused it): safe to send again.
            exchange.on_upstream_reset("refused stream", stale=True)
        elif error_code:
            exchange.on_upstream_reset("remote reset")
        else:
            exchange.on_upstream_reset("connection termination")

    def on_lost(self) -> None:
        """The connection closed under the stream."""
        self._flush_now()
        exchange = self._detach()
        if exchange is not None:
            exchange.on_upstream_reset("connection termination", stale=self.requests > 0 and not self.answered)


class H2UpstreamConnection(PooledConnection):
    """One HTTP/2 connection to a host: many streams at once, each an `H2UpstreamStream`.

    An asyncio protocol without deriving from asyncio.Protocol: compiled, it is an extension type (h2_pool.pxd),
    which cannot, so each callback asyncio's protocol defines is written here, eof_received included."""

    __slots__ = ("pool", "codec", "scheme", "streams", "transport", "local_address", "closed", "goaway", "draining",
                 "requests", "active", "peer_max", "peer_connect", "preface", "writing_paused", "write_paused_streams",
                 "flush_pending", "wake_at", "opened_at", "idle_since", "http1_chosen", "seen", "keepalive", "due",
                 "rx_bytes", "tx_bytes", "started_at")

    def __init__(self, pool: "H2Pool") -> None:
        self.pool = pool
        self.codec = H2Connection(self, server=False, settings=pool.settings)
        stats = pool.cluster.stats
        self.rx_bytes, self.tx_bytes = stats.upstream_cx_rx_bytes_total, stats.upstream_cx_tx_bytes_total
        self.scheme = pool.scheme
        self.streams: dict[int, H2UpstreamStream] = {}
        self.transport: asyncio.Transport | None = None
        self.local_address: tuple[str, int] | None = None
        self.closed = False
        self.goaway = False  # the server sent GOAWAY: no new streams
        self.draining = False  # max requests or max duration reached: no new streams, closed once idle
        self.requests = 0  # streams ever opened
        self.active = 0  # streams holding a slot (opened, not closed yet)
        self.peer_max = -1  # the server's SETTINGS_MAX_CONCURRENT_STREAMS (-1: unlimited or not known yet)
        self.peer_connect = False  # the server's SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 extended CONNECT)
        self.preface: bytes | None = b""  # the server's first bytes until its SETTINGS frame is read (then None)
        self.writing_paused = False
        self.write_paused_streams: set[H2UpstreamStream] = set()
        self.flush_pending = False  # a flush is due at the end of this loop round (flush_soon)
        self.wake_at = 0.0
        self.opened_at = 0.0
        self.started_at = 0.0  # when its connect began (upstream_cx_length_ms counts from it, as Envoy's)
        self.idle_since = 0.0
        self.http1_chosen = False  # auto_config: the server's ALPN did not pick h2
        self.seen: dict[str, int] = {}  # the codec's counts already added to the cluster's `http2.*` stats
        self.keepalive: H2Keepalive | None = None  # connection_keepalive's PINGs, once connected
        self.due: list[H2UpstreamStream] | None = None  # while a read is handled: the streams whose exchange flushes

    @property
    def has_room(self) -> bool:
        """Whether a new stream may go on this connection now."""
        if self.closed or self.goaway or self.draining:
            return False
        limit = self.pool.max_streams
        peer = self.peer_max
        if 0 <= peer < limit:
            limit = peer
        return self.active < limit

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local_address = prepare_transport(transport, self.pool.cluster.config.per_connection_buffer_limit_bytes)
        if self.pool.auto is not None:
            tls = transport.get_extra_info("ssl_object")
            if tls is None or tls.selected_alpn_protocol() != "h2":
                self.http1_chosen = True  # auto_config: the HTTP/1.1 pool takes it over (auto_pool.py)
                return
        self.flush()  # the client preface and SETTINGS
        keepalive = self.pool.settings.connection_keepalive
        if keepalive is not None:
            self.keepalive = H2Keepalive(self.pool.loop, keepalive, self._ping, self._keepalive_timed_out)

    def data_received(self, data: bytes) -> None:
        self.rx_bytes.value += len(data)
        if self.keepalive is not None:
            self.keepalive.received()
        if self.preface is not None:
            self.preface += data
            try:
                found = first_settings(self.preface)
            except ValueError:
                return self._protocol_error()
            if found is not None:
                self.peer_max, self.peer_connect = found
                self.preface = None
        self.due = due = []
        try:
            self.codec.receive(data)
        except Exception:  # noqa: BLE001 - a bug in a stream's handling must not leave the others hanging
            log.exception("an HTTP/2 upstream event failed")
            self._protocol_error()
            return
        finally:
            self.due = None
        for stream in due:
            stream._flush_now()
        codec = self.codec
        if codec.closed or codec.want_write:  # a call to see costs less than framing nothing (most reads)
            self.flush()
        if codec.closed:
            if codec.stats:
                self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
            self.close()
        else:
            self.pool.room_changed(self)

    def _protocol_error(self) -> None:
        self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
        self.flush()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.keepalive is not None:
            self.keepalive.stop()
        add_counts(self.pool.cluster.stats.counter, self.codec.counters(), self.seen)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.on_lost()
        self.pool.forget(self)

    def eof_received(self) -> None:
        """The server shut its side: returning None lets the transport close, as asyncio.Protocol's default."""
        return None

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.flush()

    # -- output -------------------------------------------------------------------------------------
    def flush_soon(self) -> None:
        """Write what the streams submitted once this loop round is over: the streams a client's read starts
        (h2load's ten, a gRPC client's burst) go out in one write, not one each (measured: the per-stream writes
        were half the proxy's CPU on gRPC unary calls)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.pool.loop.call_soon(self._flush_due)

    def _flush_due(self) -> None:
        self.flush_pending = False
        self.flush()

    def flush(self) -> None:
        """Write what the session framed (unless the socket is full: then frames wait in the session)."""
        if self.closed or self.writing_paused or self.transport is None:
            return
        out = self.codec.data_to_send()
        if out:
            self.tx_bytes.value += len(out)
            self.transport.write(out)
        paused = self.write_paused_streams
        if paused:
            low = self.pool.buffer_limit // 2
            for stream in [s for s in paused if self.codec.pending(s.stream_id) <= low]:
                paused.discard(stream)
                stream.writing_paused = False
                if stream.exchange is not None:
                    stream.exchange.on_upstream_pause(False)

    def _before_close(self) -> None:
        self.flush()  # streams still open learn of the close from `connection_lost`

    # -- H2Owner: the codec's calls ------------------------------------------------------------------
    def _open(self, stream_id: int) -> H2UpstreamStream | None:
        """The request's stream, while it is open. A method, not `self.streams.get`: compiled, its result is typed
        (h2_pool.pxd), so the stream's cpdef methods are called without a look-up."""
        return self.streams.get(stream_id)

    def _take(self, stream_id: int) -> H2UpstreamStream | None:
        """The request's stream, no longer among the open ones (typed compiled, as `_open`)."""
        return self.streams.pop(stream_id, None)

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = self._open(stream_id)
        if stream is not None:
            stream.on_headers(headers, end_stream)

    def on_data(self, stream_id: int, data: bytes) -> None:
        stream = self._open(stream_id)
        if stream is not None:
            stream.on_data(data)
        else:
            self.codec.consume(stream_id, len(data))

    def on_trailers(self, stream_id: int, trailers: Headers) -> None:
        stream = self._open(stream_id)
        if stream is not None:
            stream.on_trailers(trailers)

    def on_end_stream(self, stream_id: int) -> None:
        stream = self._open(stream_id)
        if stream is not None:
            stream._complete()

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        stream = self._take(stream_id)
        if stream is None:
            return
        stream.on_closed(error_code)
        self.pool.stream_closed(self)

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.goaway = True
        self.pool.went_away(self)

    def on_ping_ack(self) -> None:
        if self.keepalive is not None:
            self.keepalive.acked()

    # -- connection_keepalive ---------------------------------------------------------------------
    def _ping(self) -> None:
        self.codec.ping()
        self.flush()

    def _keepalive_timed_out(self) -> None:
        """No PING ACK in time: the peer is gone; close without flushing (Envoy's NoFlush), streams reset."""
        self.pool.cluster.stats.counter("http2.keepalive_timeout").value += 1
        if self.transport is not None:
            self.transport.abort()


class H2Pool(PoolBase):
    """HTTP/2 connections to one host from one worker: streams share connections; Envoy's pending queue."""

    protocol_stat = "upstream_cx_http2_total"

    def __init__(self, cluster: "Cluster", host: "Host", loop: asyncio.AbstractEventLoop, owner: "PoolOwner",
                 key: Any = None, name: "UpstreamName | None" = None) -> None:
        super().__init__(cluster, host, loop, owner, key, name)
        settings = cluster.h2_settings
        assert settings is not None
        self.settings: H2Settings = settings
        self.max_streams = settings.max_concurrent_streams
        self.buffer_limit = cluster.config.per_connection_buffer_limit_bytes
        self.scheme = b"http"
        self.connections: list[H2UpstreamConnection] = []  # up (ready), until closed
        stats = cluster.stats
        self.codec_connections = stats.counter("http2.nghttp2_upstream_connections")
        for name in COUNTER_NAMES:
            stats.counter(f"http2.{name}")  # Envoy's upstream codec stats, present at 0 as Envoy lists them
        self.auto: AutoPool | None = None  # auto_config: the pool that takes connections ALPN made HTTP/1.1

    def acquire(self, exchange: "Exchange", fresh: bool = False) -> None:
        """A stream on a connection with room now, or a place in the queue (and a connection opened if needed).

        `fresh` (the request lost its stream to a refusal or a lost connection) needs no new connection here: the
        connection it lost takes no streams any more, and any other may carry it."""
        for conn in self.connections:
            if conn.has_room and self.may_take(conn, exchange):
                self._assign(conn, exchange)
                return
        self._enqueue(exchange, False)

    def _assign(self, conn: H2UpstreamConnection, exchange: "Exchange") -> None:
        conn.requests += 1
        conn.active += 1
        conn.idle_since = 0.0
        limit = self.max_requests_per_connection
        if limit and conn.requests >= limit:
            conn.draining = True  # this is its last stream (counted as Envoy does, when given)
            self.cluster.stats.upstream_cx_max_requests.value += 1
        if conn.keepalive is not None:
            conn.keepalive.before_stream()
        exchange.on_upstream_ready(H2UpstreamStream(conn, exchange))  # type: ignore[arg-type]

    def _serve_queue(self, conn: H2UpstreamConnection) -> None:
        """Give `conn`'s room to the queued requests, first in line first."""
        breaker = self.cluster.circuit_breakers.pending_requests
        queue = self.pending
        while queue and conn.has_room and self.may_take(conn, queue[0]):
            breaker.release()
            self._assign(conn, queue.popleft())

    @staticmethod
    def may_take(conn: H2UpstreamConnection, exchange: "Exchange") -> bool:
        """An upgrade (sent as extended CONNECT) waits for the server's SETTINGS: they say whether it may go. The
        router's upgrades say so by accepting one; a tunnel of the proxy's own (CONNECT-UDP) by `extended_connect`."""
        return conn.preface is None or not (exchange.upgrade_accepted and exchange.method != b"CONNECT"
                                            or getattr(exchange, "extended_connect", False))

    def room_changed(self, conn: H2UpstreamConnection) -> None:
        """The server's SETTINGS may have raised the connection's stream limit: serve the queue (once the connection
        is the pool's: its SETTINGS may come before the connect is done, and its peer checked)."""
        if self.pending and conn.opened_at and conn.has_room:
            self._serve_queue(conn)

    def stream_closed(self, conn: H2UpstreamConnection) -> None:
        """A stream of `conn` closed: its slot goes to the next queued request, or the connection may go idle."""
        conn.active -= 1
        if conn.closed:
            return
        if self.pending and conn.has_room:
            self._serve_queue(conn)
            return
        if conn.active:
            return
        if conn.goaway or conn.draining or self.retired:
            conn.close()
            return
        conn.idle_since = now = self.loop.time()
        idle_timeout = self.limits.idle_timeout
        if idle_timeout:
            when = now + idle_timeout
            if when < conn.wake_at or not conn.wake_at:
                self.owner.arm(conn, when)

    def went_away(self, conn: H2UpstreamConnection) -> None:
        """The server's GOAWAY: `conn` takes no new stream; queued requests need another connection."""
        if not conn.active:
            conn.close()
        if self.pending:
            self._maybe_connect()

    def _busy(self, conn: H2UpstreamConnection) -> bool:
        return conn.active > 0

    def forget(self, conn: H2UpstreamConnection) -> None:
        """Bookkeeping when a connection closes for any reason (once per connection)."""
        self.owner.disarm(conn)
        try:
            self.connections.remove(conn)
        except ValueError:
            return
        self._count_closed(conn)

    @property
    def empty(self) -> bool:
        return not (self.connections or self.connecting or self.pending)

    def retire(self) -> None:
        """The cluster went away (CDS): idle connections close now, the others once their streams end."""
        self.retired = True
        for conn in list(self.connections):
            if not conn.active:
                conn.close()
            else:
                conn.draining = True

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()
        for task in list(self.tasks):
            task.cancel()

    def _maybe_connect(self) -> None:
        """Open connections while the ones being opened cannot take the queue (each counts for its stream limit)."""
        while self.connecting * self.max_streams < len(self.pending):
            if not self._start_connect():
                return

    def _new_connection(self) -> H2UpstreamConnection:
        return H2UpstreamConnection(self)

    def _prepare_tls(self, tls: Any) -> None:
        if isinstance(tls, ClientTls):
            self.scheme = b"https"
            if not self.cluster.alpn_configured:  # Envoy's fallback ALPN for an HTTP/2 (or auto_config) cluster
                tls.context.set_alpn_protocols(AUTO_ALPN if self.auto is not None else ["h2"])

    def _connect_failed(self, reason: str) -> None:
        """The queued requests the failed connect was opened for fail (those the other connects cannot take)."""
        breaker = self.cluster.circuit_breakers.pending_requests
        pending = self.pending
        while pending and len(pending) > self.connecting * self.max_streams:
            breaker.release()
            self.cluster.stats.upstream_rq_pending_failure_eject.value += 1
            pending.popleft().on_upstream_connect_failure(reason)

    def connected(self, conn: H2UpstreamConnection) -> None:
        """A connection is up: count it, start its max duration, give its room to the queue, or keep it idle."""
        if self.auto is not None and not self.auto.connected(conn):
            return  # ALPN chose HTTP/1.1: the HTTP/1.1 pool has it
        self.connections.append(conn)
        self.codec_connections.value += 1
        now = self._count_opened(conn)
        self._serve_queue(conn)
        if not conn.active:
            if self.retired:
                conn.close()
                return
            conn.idle_since = now
            if self.limits.idle_timeout:
                self.owner.arm(conn, now + self.limits.idle_timeout)

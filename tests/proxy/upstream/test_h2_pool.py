"""The HTTP/2 pool without sockets: streams share a connection up to the server's and the cluster's limits, queued
requests take freed slots, a GOAWAY refuses what the server did not process, and connections end as Envoy's do.

As in test_pool.py, connections get a transport that keeps what is written and are handed to the pool as
`_connect` would (`H2Pool.connected`); the server is pylon's own codec in server mode (`H2Connection`), fed the
connection's bytes; time is a number the test moves, and the deadline wheel is the real one.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from pylon.config.envoy import Cluster as ClusterConfig, convert
from pylon.proxy.http.h1_client import Http1RequestEncoder
from pylon.proxy.http.h2_session import CANCEL, INTERNAL_ERROR, REFUSED_STREAM, H2Connection, H2Settings
from pylon.proxy.upstream.cluster import Cluster
from pylon.proxy.upstream.h2_pool import H2Pool, H2UpstreamConnection, H2UpstreamStream
from pylon.stats.store import StatsStore
from tests.proxy.http.h2_helpers import GOAWAY, Recorder, frame, session
from tests.proxy.upstream.test_pool import Clock, Owner, Transport

KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class Connects(Clock):
    """The loop's clock, counting the connections the pool asks for (the test hands them over itself), and the
    callbacks due at the end of the loop's round (`run_soon` runs them, as the loop would)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.soon: list[Any] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.soon.append((callback, args))

    def run_soon(self) -> None:
        while self.soon:
            callback, args = self.soon.pop(0)
            callback(*args)

    def create_task(self, coro: Any) -> Any:
        coro.close()
        self.asked += 1
        return _Done()


class _Done:
    def add_done_callback(self, callback: Any) -> None:
        pass


class Exchange:
    """A request as the router is to the pool: it opens its stream with a GET and records what it is told."""

    is_head = False
    upgrade_accepted = False

    def __init__(self, path: bytes = b"/", end: bool = True) -> None:
        self.path = path
        self.end = end
        self.stream: H2UpstreamStream | None = None
        self.request_encoder: Any = None
        self.events: list[Any] = []
        self.body = b""

    def on_upstream_ready(self, stream: H2UpstreamStream) -> None:
        self.stream = stream
        base = Http1RequestEncoder(b"GET", self.path, b"svc", [(b"x-test", b"1")], chunked=False, length=0,
                                   attempt_count=False)
        self.request_encoder = stream.send_head(base, base.encode_head(1), self.end)
        stream.write(b"")

    def on_upstream_connect_failure(self, reason: str) -> None:
        self.events.append(("connect_failure", reason))

    def on_upstream_overflow(self) -> None:
        self.events.append("overflow")

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.events.append(("headers", status, headers))

    def on_upstream_body(self, data: bytes) -> None:
        self.body += data

    def on_upstream_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", trailers))

    def on_upstream_complete(self) -> None:
        self.events.append("complete")

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self.events.append(("reset", reason, stale))

    def on_upstream_flush(self) -> None:
        pass

    def on_upstream_pause(self, paused: bool) -> None:
        self.events.append(("pause", paused))


class Rig:
    """One HTTP/2 pool of a cluster with these Http2ProtocolOptions and common_http_protocol_options."""

    def __init__(self, http2: dict[str, Any] | None = None, **common: Any) -> None:
        data = {"name": "up", "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]},
            "typed_extension_protocol_options": {KEY: {
                "@type": f"type.googleapis.com/{KEY}", "common_http_protocol_options": common,
                "explicit_http_config": {"http2_protocol_options": http2 or {}}}}}
        self.stats = StatsStore()
        self.cluster = Cluster(convert(msgspec.json.decode(msgspec.json.encode(data)), ClusterConfig), self.stats)
        self.clock = Connects()
        self.owner = Owner(self.clock)
        self.pool = H2Pool(self.cluster, self.cluster.hosts[0], self.clock, self.owner)  # type: ignore[arg-type]
        self.servers: list[tuple[H2UpstreamConnection, H2Connection, Recorder]] = []

    def connect(self, settings: H2Settings | None = None) -> tuple[H2UpstreamConnection, H2Connection, Recorder]:
        """A connection up, as `_connect` hands it over, with a server session (`settings`) at its other end."""
        assert self.cluster.circuit_breakers.connections.try_acquire()
        conn = H2UpstreamConnection(self.pool)
        conn.connection_made(Transport())  # type: ignore[arg-type]
        recorder = Recorder()
        server = session(recorder, server=True, settings=settings)
        self.servers.append((conn, server, recorder))
        if self.pool.connecting:
            self.pool.connecting -= 1
        self.pool.connected(conn)
        return conn, server, recorder

    def pump(self) -> None:
        """Carry bytes between each connection and its server until both are quiet."""
        for _ in range(100):
            self.clock.run_soon()
            moved = False
            for conn, server, _ in self.servers:
                transport = conn.transport
                written, transport.written = transport.written, b""  # type: ignore[union-attr]
                if written:
                    server.receive(written)
                    moved = True
                answer = server.data_to_send()
                if answer and not conn.closed:
                    conn.data_received(answer)
                    moved = True
            if not moved:
                return
        raise AssertionError("the connections kept talking")

    def two_streams(self) -> tuple[H2UpstreamConnection, H2Connection, Recorder, Exchange, Exchange]:
        """A connection with two requests on it (streams 1 and 3), both seen by the server."""
        conn, server, recorder = self.connect()
        first, second = Exchange(), Exchange()
        self.pool.acquire(first)
        self.pool.acquire(second)
        self.pump()
        assert requests_seen(recorder) == [1, 3]
        return conn, server, recorder, first, second

    def counter(self, name: str) -> int:
        return self.stats.snapshot()["counters"][f"cluster.up.{name}"]


def requests_seen(recorder: Recorder) -> list[int]:
    return [event[1] for event in recorder.events if event[0] == "headers"]


def respond(server: H2Connection, stream_id: int, body: bytes = b"ok") -> None:
    server.send_response(stream_id, [(b":status", b"200"), (b"content-type", b"text/plain")])
    server.send_data(stream_id, body, end_stream=True)


def test_streams_share_a_connection_up_to_the_servers_limit_then_queue() -> None:
    rig = Rig()
    conn, server, recorder = rig.connect(H2Settings(max_concurrent_streams=2))
    rig.pump()  # the server's SETTINGS: two streams at most
    assert conn.peer_max == 2
    exchanges = [Exchange(b"/%d" % i) for i in range(3)]
    for exchange in exchanges:
        rig.pool.acquire(exchange)
    rig.pump()
    assert [e.stream is not None for e in exchanges] == [True, True, False]
    assert requests_seen(recorder) == [1, 3] and rig.clock.asked == 1  # the third asked for a connection
    assert rig.counter("upstream_rq_pending_total") == 1
    respond(server, 1)
    rig.pump()
    assert exchanges[0].events == [("headers", 200, [(b"content-type", b"text/plain")]), "complete"]
    assert exchanges[0].body == b"ok"
    assert exchanges[2].stream is not None and exchanges[2].stream.connection is conn  # the freed slot
    assert requests_seen(recorder) == [1, 3, 5]
    assert rig.cluster.circuit_breakers.pending_requests.count == 0


def test_the_clusters_max_concurrent_streams_caps_a_connection() -> None:
    rig = Rig({"max_concurrent_streams": 1})
    conn, _, _ = rig.connect()
    first, second = Exchange(), Exchange()
    rig.pool.acquire(first)
    rig.pool.acquire(second)
    assert first.stream is not None and second.stream is None and rig.clock.asked == 1
    conn2, _, _ = rig.connect()
    assert second.stream is not None and second.stream.connection is conn2


def test_request_translated_with_authority_and_scheme() -> None:
    rig = Rig()
    _, _, recorder = rig.connect()
    rig.pool.acquire(Exchange(b"/path?q=1"))
    rig.pump()
    headers = recorder.events[0][2]
    assert headers == [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"),
                       (b":path", b"/path?q=1"), (b"x-test", b"1")]


def test_goaway_refuses_the_streams_the_server_did_not_process() -> None:
    rig = Rig()
    conn, server, _, first, second = rig.two_streams()
    conn.data_received(frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)))  # the server processed stream 1 only
    assert ("reset", "refused stream", True) in second.events  # safe to send again, whatever the method
    assert conn.goaway and not conn.has_room
    third = Exchange()
    rig.pool.acquire(third)
    assert third.stream is None and rig.clock.asked == 1  # a new connection for it, not this one
    respond(server, 1)
    rig.pump()
    assert first.events[-1] == "complete"
    assert conn.transport.closed  # type: ignore[union-attr]  # its last stream ended


def test_upstream_reset_and_cancel() -> None:
    rig = Rig()
    _, server, recorder, reset, cancelled = rig.two_streams()
    server.reset_stream(1, INTERNAL_ERROR)
    rig.pump()
    assert reset.events == [("reset", "remote reset", False)]
    assert cancelled.stream is not None
    cancelled.stream.abandon()
    rig.pump()
    assert ("closed", 3, CANCEL) in recorder.events  # the server saw RST_STREAM CANCEL
    conn = rig.pool.connections[0]
    assert conn.active == 0
    conn.connection_lost(None)  # its codec's counts reach the cluster's `http2.*` stats, as Envoy names them
    assert (rig.counter("http2.rx_reset"), rig.counter("http2.tx_reset")) == (1, 1)


def test_refused_stream_reset_is_retriable() -> None:
    rig = Rig()
    _, server, _ = rig.connect()
    exchange = Exchange()
    rig.pool.acquire(exchange)
    rig.pump()
    server.reset_stream(1, REFUSED_STREAM)
    rig.pump()
    assert exchange.events == [("reset", "refused stream", True)]


def test_max_requests_per_connection_drains_then_closes() -> None:
    rig = Rig(max_requests_per_connection=2)
    conn, server, _ = rig.connect()
    exchanges = [Exchange() for _ in range(3)]
    for exchange in exchanges:
        rig.pool.acquire(exchange)
    rig.pump()
    assert [e.stream is not None for e in exchanges] == [True, True, False]
    assert conn.draining and rig.counter("upstream_cx_max_requests") == 1 and rig.clock.asked == 1
    respond(server, 1)
    respond(server, 3)
    rig.pump()
    assert conn.transport.closed  # type: ignore[union-attr]
    assert rig.counter("upstream_cx_destroy") == 1
    per_cx = rig.stats.histograms["cluster.up.upstream_rq_per_cx"]
    assert (per_cx.count, per_cx.sum) == (1, 2)  # Envoy's requests-per-connection histogram


def test_idle_timeout_closes_an_idle_connection_only() -> None:
    rig = Rig(idle_timeout="1s")
    conn, server, _ = rig.connect()
    exchange = Exchange()
    rig.pool.acquire(exchange)
    rig.pump()
    rig.owner.advance(2.0)
    assert not conn.closed  # busy
    respond(server, 1)
    rig.pump()
    rig.owner.advance(0.5)
    assert not conn.closed
    rig.owner.advance(0.6)
    assert conn.closed and rig.counter("upstream_cx_idle_timeout") == 1


def test_a_client_that_does_not_read_stops_crediting_its_stream_only() -> None:
    rig = Rig({"initial_stream_window_size": 65535})  # what the proxy's SETTINGS grant each upstream stream
    _, server, _ = rig.connect()
    slow, fast = Exchange(), Exchange()
    rig.pool.acquire(slow)
    rig.pool.acquire(fast)
    rig.pump()
    assert slow.stream is not None
    slow.stream.pause_reading()
    big = b"x" * 200000
    for sid in (1, 3):
        server.send_response(sid, [(b":status", b"200")])
        server.send_data(sid, big, end_stream=True)
    rig.pump()
    assert fast.body == big and fast.events[-1] == "complete"
    assert len(slow.body) < len(big)  # stalled at the stream's window: nothing credited back
    slow.stream.resume_reading()
    rig.pump()
    assert slow.body == big and slow.events[-1] == "complete"


def test_an_upload_past_the_buffer_limit_behind_the_servers_window_pauses_its_client_until_it_drains() -> None:
    """A request body the server's window holds back waits in the session; past the cluster's buffer limit the
    exchange stops reading its client, and reads again once half the limit or less waits."""
    rig = Rig()
    rig.pool.buffer_limit = 16384
    conn = H2UpstreamConnection(rig.pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    recorder = Recorder(auto_consume=False)
    server = session(recorder, server=True, settings=H2Settings(initial_stream_window_size=65535,
                                                                initial_connection_window_size=65535))
    rig.servers.append((conn, server, recorder))
    rig.pool.connected(conn)
    upload = Exchange(b"/up", end=False)
    rig.pool.acquire(upload)
    rig.pump()
    assert upload.stream is not None and upload.request_encoder is not None
    upload.request_encoder.encode_data(b"x" * 100_000)
    upload.stream.write(b"")
    rig.pump()
    assert len(recorder.body[1]) == 65535 and upload.events == [("pause", True)]
    while upload.events[-1] == ("pause", True):
        taken = len(recorder.body[1])
        server.consume(1, 32768)  # nghttp2 updates the window once half of it was consumed
        rig.pump()
        assert len(recorder.body[1]) > taken
    assert upload.events == [("pause", True), ("pause", False)]
    assert 100_000 - len(recorder.body[1]) <= 8192


def test_the_connection_count_is_envoys() -> None:
    rig = Rig()
    rig.pool.acquire(Exchange())
    assert rig.clock.asked == 1
    rig.pool.acquire(Exchange())  # the connection being opened takes it too: no second connect
    assert rig.clock.asked == 1
    rig.connect()
    assert rig.counter("upstream_rq_pending_total") == 2
    assert len(rig.pool.connections) == 1 and rig.pool.connections[0].active == 2


def test_no_stream_before_the_connection_is_the_pools() -> None:
    """The server's SETTINGS can arrive before the connect is done (the TLS peer check comes after the handshake):
    a queued request must not go out on a connection the pool has not accepted yet."""
    rig = Rig()
    exchange = Exchange()
    rig.pool.acquire(exchange)
    assert rig.clock.asked == 1
    conn = H2UpstreamConnection(rig.pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    server = session(Recorder(), server=True)
    conn.data_received(server.data_to_send())  # its SETTINGS
    assert exchange.stream is None
    rig.pool.connecting -= 1
    rig.pool.connected(conn)
    assert exchange.stream is not None and exchange.stream.connection is conn


def test_streams_opened_in_one_round_go_out_in_one_write() -> None:
    """The exchanges a client's read starts write nothing themselves: the connection writes once, when the loop's
    round ends, all their frames together."""
    rig = Rig()
    conn, server, recorder = rig.connect()
    rig.pump()
    writes: list[bytes] = []
    transport = conn.transport
    original = transport.write  # type: ignore[union-attr]
    transport.write = lambda data: (writes.append(data), original(data))  # type: ignore[union-attr]
    for i in range(3):
        rig.pool.acquire(Exchange(b"/%d" % i))
    assert writes == []  # submitted, not written yet
    rig.clock.run_soon()
    assert len(writes) == 1
    rig.pump()
    assert requests_seen(recorder) == [1, 3, 5]


class WholeRequest(Exchange):
    """The proxy's own requests (async_client, span export) write one whole HTTP/1.1 request with its length."""

    def on_upstream_ready(self, stream: H2UpstreamStream) -> None:
        self.stream = stream
        stream.write(b"POST /v1/traces HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\n"
                     b"content-length: 7\r\n\r\n{\"a\":1}")


def test_a_whole_http1_request_goes_as_one_stream() -> None:
    rig = Rig()
    _, server, recorder = rig.connect()
    exchange = WholeRequest()
    rig.pool.acquire(exchange)
    rig.pump()
    assert recorder.events[0][2] == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"collector"),
                                     (b":path", b"/v1/traces"), (b"content-type", b"application/json"),
                                     (b"content-length", b"7")]
    assert bytes(recorder.body[1]) == b'{"a":1}' and ("end", 1) in recorder.events
    respond(server, 1)
    rig.pump()
    assert exchange.events[-1] == "complete"


class FlushRecorder(Exchange):
    """An exchange that also records when the pool tells it to write what it encoded."""

    def on_upstream_body(self, data: bytes) -> None:
        super().on_upstream_body(data)
        self.events.append(("body", data))

    def on_upstream_flush(self) -> None:
        self.events.append("flush")


def _answer_in_one_read(conn: H2UpstreamConnection, server: H2Connection, answer: Any) -> None:
    """The server's frames for `answer(server)`, handed to the connection as one read."""
    answer(server)
    conn.data_received(server.data_to_send())


def test_a_response_read_whole_is_written_once_at_the_reads_end() -> None:
    """A gRPC answer (head, message, trailers) in one read: the exchange is not told to write after each part, so
    the client's side submits it whole; a response spread over reads is written after each."""
    rig = Rig()
    conn, server, _ = rig.connect()
    whole, spread = FlushRecorder(), FlushRecorder()
    rig.pool.acquire(whole)
    rig.pool.acquire(spread)
    rig.pump()

    def grpc_answer(srv: H2Connection) -> None:
        srv.send_response(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        srv.send_data(1, b"\0\0\0\0\x02hi")
        srv.send_trailers(1, [(b"grpc-status", b"0")])

    _answer_in_one_read(conn, server, grpc_answer)
    assert whole.events == [("headers", 200, [(b"content-type", b"application/grpc")]), ("body", b"\0\0\0\0\x02hi"),
                            ("trailers", [(b"grpc-status", b"0")]), "complete"]
    _answer_in_one_read(conn, server, lambda srv: srv.send_response(3, [(b":status", b"200")]))
    _answer_in_one_read(conn, server, lambda srv: srv.send_data(3, b"part"))
    assert spread.events == [("headers", 200, []), "flush", ("body", b"part"), "flush"]


def test_what_a_read_brought_is_written_before_a_reset_in_the_same_read() -> None:
    """Head and body, then RST_STREAM, in one read: the exchange writes what it encoded before it hears of the
    reset, as it would have had each frame come alone."""
    rig = Rig()
    conn, server, _ = rig.connect()
    exchange = FlushRecorder()
    rig.pool.acquire(exchange)
    rig.pump()

    server.send_response(1, [(b":status", b"200")])
    server.send_data(1, b"some")
    answer = server.data_to_send()  # framed before the reset is queued, as a server that fails mid-body
    server.reset_stream(1, INTERNAL_ERROR)
    conn.data_received(answer + server.data_to_send())
    assert exchange.events == [("headers", 200, []), ("body", b"some"), "flush", ("reset", "remote reset", False)]

"""Integration: a POST terminated as a CONNECT (`connect_config: {allow_post: true}`), through pylon and Envoy 1.40.

Envoy 1.40, observed: a POST on such a route opens a plain TCP connection to the host the cluster picks; once it
is up the client gets `200` (date, server; x-envoy-upstream-service-time only if the request was already whole;
over HTTP/1.1 `transfer-encoding: chunked`, and `connection: close` while the body is still coming); the body's
bytes go to the host as they come (decoded: no chunk framing), its end half-closes the host's connection, and the
host's bytes are the response body, whose end is the host's EOF: the stream ends then, a body still coming is
cut off (HTTP/1.1: the connection closes after the last chunk). A whole request keeps its HTTP/1.1 connection. It
is no upgrade (downstream_cx_upgrades_total stays 0); the cluster counts upstream_rq_200. Other methods on the
route are routed as usual, a POST on a route without allow_post too, and the route's timeout still runs from the
request's end. These tests run each scenario through both proxies with the same expectations, and Envoy's docs
pair (a tcp_proxy tunnelling over HTTP/2 POST in front of the terminating proxy) in every pairing of the two.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (ProxyLauncher, http_listener, json_access_log, raw_exchange, route, static_cluster,
                                  tcp_listener, wait_until)
from tests.proxy.test_proxy_connect import Setup, _Hello, body, reset_closes_upstream
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.test_proxy_http2_upstream import h2_options
from tests.proxy.test_proxy_tcp_tunneling_h2 import AnswerAfterEof, echo_through
from tests.proxy.test_proxy_upgrade import read_until
from tests.proxy.upstreams import TcpEcho

ALLOW_POST = [{"upgrade_type": "CONNECT", "connect_config": {"allow_post": True}}]
EOF_MARK = b"<eof>"


class RawHost(TcpEcho):
    """A raw TCP host: echoes what it reads and answers the proxy's half-close with "<eof>" before closing; "bye"
    makes it close at once, and a connection that read "hold" ignores the half-close (stays open until the test
    ends). `received` holds each connection's bytes, `eofs` counts the half-closes it saw."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.eofs = 0
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        got = bytearray()
        self.received.append(got)
        with conn:
            try:
                while chunk := conn.recv(65536):
                    got += chunk
                    conn.sendall(chunk)
                    if chunk.endswith(b"bye"):
                        return
                self.eofs += 1
                if b"hold" not in got:
                    conn.sendall(EOF_MARK)
                    return
                self.closed.wait(60)  # open (half-closed by the proxy) until the test ends
            except OSError:
                return


#: Envoy's docs config's route: POSTs only, terminated
POST_ONLY = {"match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
             "route": {"cluster": "raw", "upgrade_configs": ALLOW_POST}}
DISABLED = [{"upgrade_type": "CONNECT", "enabled": False, "connect_config": {"allow_post": True}}]


@pytest.fixture
def setup(implementation: str, tmp_path: Path) -> Iterator[Setup]:
    log = tmp_path / f"{implementation}-access.log"
    listeners = [
        http_listener("post", free_port(), [POST_ONLY], access_log=json_access_log(log),
                      http2_protocol_options={"allow_connect": True}),
        http_listener("web", free_port(), [route("/", "web", upgrade_configs=ALLOW_POST)]),
        http_listener("plain", free_port(), [route("/", "web", upgrade_configs=[
            {"upgrade_type": "CONNECT", "connect_config": {}}])]),
        http_listener("disabled", free_port(), [route("/", "raw", upgrade_configs=DISABLED)]),
        http_listener("timed", free_port(), [route("/", "raw", upgrade_configs=ALLOW_POST, timeout="1s")]),
    ]
    host, launcher = RawHost(), ProxyLauncher(tmp_path)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        clusters = [static_cluster("raw", [host.port]), static_cluster("web", [web.server_address[1]])]
        proxy = launcher.start(listeners, clusters, implementation=implementation)
        yield Setup(proxy, host, log)  # type: ignore[arg-type]  # (its `echo`: the raw host)
    finally:
        launcher.close()
        host.close()
        web.shutdown()
        web.server_close()


# --------------------------------------------------------------------------- HTTP/2 (prior knowledge)


def h2_post(client: H2Client, *fields: tuple[bytes, bytes], end: bool = False) -> int:
    return client.get("/upload", *fields, method=b"POST", end=end)


def head_of(client: H2Client, sid: int) -> dict[bytes, bytes]:
    client.pump_until(lambda: client.status(sid) is not None, timeout=10)
    [head] = [e for e in client.owner.events if e[0] == "headers" and e[1] == sid]
    assert head[3] is False  # the body (the host's bytes) follows
    return dict(head[2])


def test_an_h2c_post_is_tunnelled_to_the_host_and_back(setup: Setup) -> None:
    """The 200 comes once the host is connected, before any body; DATA goes raw to the host and back; the
    client's END_STREAM half-closes the host, whose EOF ends the stream cleanly."""
    client = H2Client(setup.proxy.ports["post"])
    try:
        sid = h2_post(client)
        fields = head_of(client, sid)
        assert set(fields) == {b":status", b"date", b"server"} and fields[b":status"] == b"200"
        client.h2.send_data(sid, b"hello")
        client.flush()
        client.pump_until(lambda: body(client, sid) == b"hello", timeout=10)
        client.h2.send_data(sid, b"world", end_stream=True)
        client.flush()
        client.pump_until(lambda: client.ended(sid), timeout=10)
        assert body(client, sid) == b"helloworld" + EOF_MARK
        assert ("closed", sid, 0) in client.owner.events and ("end", sid) in client.owner.events
    finally:
        client.close()
    assert bytes(setup.echo.received[0]) == b"helloworld" and setup.echo.eofs == 1  # raw: no HTTP reached it
    [line] = setup.log_lines(1)
    assert (line["code"], line["method"], line["protocol"], line["flags"]) == (200, "POST", "HTTP/2", "-")
    assert (line["bytes_received"], line["bytes_sent"]) == (10, 15)
    assert (line["cluster"], line["upstream"]) == ("raw", f"127.0.0.1:{setup.echo.port}")
    stats = wait_until(lambda: (s := setup.proxy.stats())["cluster.raw.upstream_cx_active"] == 0 and s)
    assert stats["cluster.raw.upstream_rq_200"] == 1 and stats["cluster.raw.upstream_cx_total"] == 1
    assert stats.get("http.post.downstream_cx_upgrades_total", 0) == 0  # a POST is no upgrade


def test_a_whole_h2_post_gets_the_service_time_header(setup: Setup) -> None:
    client = H2Client(setup.proxy.ports["post"])
    try:
        sid = client.h2.send_request([(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"gw"),
                                      (b":path", b"/upload"), (b"content-length", b"5")])
        client.h2.send_data(sid, b"hello", end_stream=True)
        client.flush()  # the request whole in one write: whole before the host is connected
        client.pump_until(lambda: client.ended(sid), timeout=10)
        fields = head_of(client, sid)
        assert set(fields) == {b":status", b"date", b"server", b"x-envoy-upstream-service-time"}
        assert body(client, sid) == b"hello" + EOF_MARK
    finally:
        client.close()


def test_a_large_h2_post_body_round_trips_under_flow_control(setup: Setup) -> None:
    """4 MiB each way, more than any window: the proxy credits the client's DATA only as the host takes it."""
    payload = os.urandom(4 << 20)
    client = H2Client(setup.proxy.ports["post"])
    try:
        sid = h2_post(client)
        client.h2.send_data(sid, payload, end_stream=True)  # the session sends it as the windows allow
        client.flush()
        client.pump_until(lambda: client.ended(sid), timeout=60)
        assert body(client, sid) == payload + EOF_MARK
    finally:
        client.close()
    assert bytes(setup.echo.received[0]) == payload


def test_the_hosts_close_ends_the_h2_stream(setup: Setup) -> None:
    """The host closing ends the response (END_STREAM) while the client has not ended its body. (Envoy then
    resets the stream with NO_ERROR too; pylon's HTTP/2 connection does not send that reset after any early
    response, see h2_connection.py.)"""
    client = H2Client(setup.proxy.ports["post"])
    try:
        sid = h2_post(client)
        client.h2.send_data(sid, b"bye")
        client.flush()
        client.pump_until(lambda: ("end", sid) in client.owner.events, timeout=10)
        assert body(client, sid) == b"bye"
    finally:
        client.close()
    assert wait_until(lambda: setup.proxy.stats()["cluster.raw.upstream_cx_active"] == 0)


def test_resetting_an_h2_post_closes_its_host_connection(setup: Setup) -> None:
    client = H2Client(setup.proxy.ports["post"])
    sid = h2_post(client)
    client.h2.send_data(sid, b"marker")
    client.flush()
    reset_closes_upstream(client, sid, b"marker", setup.proxy, "raw", "post")


def test_a_get_on_the_docs_route_is_not_taken(setup: Setup) -> None:
    """Envoy's docs config matches `:method POST` only: a GET finds no route (404), and reaches no host."""
    client = H2Client(setup.proxy.ports["post"])
    try:
        sid = client.get("/")
        client.pump_until(lambda: client.ended(sid), timeout=10)
        assert client.status(sid) == 404
    finally:
        client.close()
    assert setup.echo.connections == 0


# --------------------------------------------------------------------------- HTTP/1.1


def read_head(sock: socket.socket, start: bytes = b"") -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(status line, fields, bytes after the head); `start`: bytes already read off the socket."""
    data = start
    while b"\r\n\r\n" not in data:
        more = read_until(sock, b"\n")
        assert more, data  # closed before the head's end
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, dict(line.lower().split(b": ", 1) for line in lines), rest


class ChunkReader:
    """Reads a chunked body off a socket, piece by piece."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock, self.buf, self.body, self.done = sock, rest, b"", False

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        assert chunk, (self.body, self.buf)
        self.buf += chunk

    def read_until(self, wanted: bytes) -> bytes:
        """Decode chunks until the body holds `wanted` (or the last chunk came); returns the body so far."""
        while wanted not in self.body and not self.done:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, _, after = self.buf.partition(b"\r\n")
            size = int(size_line, 16)
            while len(after) < size + 2:
                self._fill()
                size_line, _, after = self.buf.partition(b"\r\n")
            self.body += after[:size]
            self.buf = after[size + 2:]
            self.done = size == 0
        return self.body


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_an_http1_post_streams_both_ways_and_its_end_half_closes_the_host(setup: Setup) -> None:
    with setup.connect("post") as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        status, fields, rest = read_head(sock)  # before the body ended
        assert status == b"HTTP/1.1 200 OK"
        assert set(fields) == {b"date", b"server", b"transfer-encoding", b"connection"}
        assert (fields[b"transfer-encoding"], fields[b"connection"]) == (b"chunked", b"close")
        reader = ChunkReader(sock, rest)
        assert reader.read_until(b"hello") == b"hello"
        sock.sendall(b"3\r\nabc\r\n0\r\n\r\n")
        assert reader.read_until(EOF_MARK) == b"helloabc" + EOF_MARK
        assert reader.read_until(b"never") and reader.done
        assert closed_by_peer(sock)  # the head said connection: close
    assert bytes(setup.echo.received[0]) == b"helloabc" and setup.echo.eofs == 1  # decoded: no chunk framing
    [line] = setup.log_lines(1)
    assert (line["code"], line["method"], line["protocol"], line["flags"]) == (200, "POST", "HTTP/1.1", "-")
    assert (line["bytes_received"], line["bytes_sent"]) == (8, 13)


def test_a_whole_http1_post_keeps_the_connection_for_the_next_request(setup: Setup) -> None:
    with setup.connect("web") as sock:
        inner = b"GET /inside HTTP/1.0\r\n\r\n"  # the POST's body is raw bytes to the HTTP server: its request
        sock.sendall(b"POST /outer HTTP/1.1\r\nHost: a\r\ncontent-length: %d\r\n\r\n%s" % (len(inner), inner)
                     + b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        status, fields, rest = read_head(sock)
        assert status == b"HTTP/1.1 200 OK"
        assert set(fields) == {b"date", b"server", b"transfer-encoding", b"x-envoy-upstream-service-time"}
        reader = ChunkReader(sock, rest)
        answer = reader.read_until(b"never")
        assert reader.done
        assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and answer.endswith(b"\r\n\r\nhello from /inside host=None")
        status, fields, rest = read_head(sock, reader.buf)  # the next request on the connection, routed as HTTP
        assert status == b"HTTP/1.1 200 OK"
        while len(rest) < int(fields[b"content-length"]):
            rest += sock.recv(65536)
        assert rest == b"hello from /after host=a"


def test_the_hosts_close_ends_an_http1_post_and_its_connection(setup: Setup) -> None:
    with setup.connect("post") as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 100\r\n\r\nbye")
        status, _, rest = read_head(sock)
        assert status == b"HTTP/1.1 200 OK"
        reader = ChunkReader(sock, rest)
        assert reader.read_until(b"never") == b"bye" and reader.done  # the last chunk, then the close
        assert closed_by_peer(sock)


@pytest.mark.parametrize("listener", ["plain", "web"])
def test_other_requests_on_the_route_are_routed_as_http(setup: Setup, listener: str) -> None:
    """A GET on an allow_post route, and a POST on a route whose connect_config does not allow POST, go to the
    host as HTTP requests (the stdlib server answers a POST 501)."""
    with setup.connect(listener) as sock:
        sock.sendall(b"GET /g HTTP/1.1\r\nHost: a\r\n\r\n")
        status, fields, rest = read_head(sock)
        assert status == b"HTTP/1.1 200 OK"
        while len(rest) < int(fields[b"content-length"]):
            rest += sock.recv(65536)
        assert rest == b"hello from /g host=a"
    if listener == "plain":
        with setup.connect(listener) as sock:
            sock.sendall(b"POST /p HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n")
            assert read_head(sock)[0].startswith(b"HTTP/1.1 501 ")


def test_a_disabled_connect_upgrade_still_terminates_posts(setup: Setup) -> None:
    """Envoy keeps a CONNECT upgrade's connect_config whether or not it is enabled."""
    with setup.connect("disabled") as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\n\r\nhi")
        status, _, rest = read_head(sock)
        assert status == b"HTTP/1.1 200 OK"
        assert ChunkReader(sock, rest).read_until(EOF_MARK) == b"hi" + EOF_MARK


def test_the_route_timeout_runs_from_the_end_of_the_request(setup: Setup) -> None:
    """A host that never closes: the route's 1 s timeout (from the request's end, as for any request) cuts the
    stream after its 200; the client sees the connection close without the last chunk."""
    with setup.connect("timed") as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\n\r\nhold")
        status, _, rest = read_head(sock)
        assert status == b"HTTP/1.1 200 OK"
        reader = ChunkReader(sock, rest)
        assert reader.read_until(b"hold") == b"hold"
        with pytest.raises(AssertionError):
            reader.read_until(b"never")  # the connection ends mid-body
        assert not reader.done
    assert wait_until(lambda: setup.proxy.stats().get("cluster.raw.upstream_rq_timeout") == 1, timeout=10)


# --------------------------------------------------------------------------- Envoy's docs pair, chained


PAIRS = [("pylon", "pylon"), ("envoy", "envoy"), ("pylon", "envoy"), ("envoy", "pylon")]


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, int]]:
    """Envoy's encapsulate_in_http2_post.yaml in front of its terminate_http2_post.yaml: a tcp_proxy whose
    tunneling_config `use_post` opens an HTTP/2 POST stream per connection, to a proxy that terminates POSTs; behind
    it an echo, and a host that answers only after the client's half-close."""
    front_impl, back_impl = request.param
    echo, late, launcher = TcpEcho(), AnswerAfterEof(), ProxyLauncher(tmp_path)
    try:
        ports = {"back": free_port(), "back_late": free_port(), "front": free_port(), "front_late": free_port()}
        back_route = {"match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "POST"}}]},
                      "route": {"cluster": "echo", "upgrade_configs": ALLOW_POST}}
        late_route = {**back_route, "route": {"cluster": "late", "upgrade_configs": ALLOW_POST}}
        launcher.start([http_listener(name, ports[name], [routed], http2_protocol_options={"allow_connect": True})
                        for name, routed in (("back", back_route), ("back_late", late_route))],
                       [static_cluster("echo", [echo.port]), static_cluster("late", [late.port])],
                       implementation=back_impl)
        tunneling = {"hostname": "host.com:443", "use_post": True}
        launcher.start([tcp_listener("front", ports["front"], "back", tunneling_config=tunneling),
                        tcp_listener("front_late", ports["front_late"], "back_late", tunneling_config=tunneling)],
                       [static_cluster("back", [ports["back"]], **h2_options()),
                        static_cluster("back_late", [ports["back_late"]], **h2_options())],
                       implementation=front_impl)
        yield ports
    finally:
        launcher.close()
        echo.close()
        late.close()


def test_the_docs_pair_carries_a_large_payload_byte_exact(chain: dict[str, int]) -> None:
    payload = os.urandom(4 << 20)
    got = echo_through(chain["front"], payload)
    assert len(got) == len(payload) and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_the_docs_pair_passes_the_half_close_on(chain: dict[str, int]) -> None:
    """The client's FIN: END_STREAM on the POST stream, then the host's EOF; the host's answer after it comes
    back, and its close ends the client's connection."""
    result = raw_exchange(chain["front_late"], b"ping", timeout=10, half_close=True)
    assert result.closed and result.data == b"got:ping"

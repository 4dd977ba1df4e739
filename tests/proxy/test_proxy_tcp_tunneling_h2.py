"""Integration: tcp_proxy `tunneling_config` to an HTTP/2 cluster — each TCP connection one HTTP/2 CONNECT stream.

Chains as in test_proxy_tcp_tunneling.py, with the front proxy's cluster speaking HTTP/2 and the back proxy
terminating HTTP/2 CONNECT streams (`connect_matcher` + `connect_config`, codec HTTP2), in every pairing of pylon
and Envoy 1.40: a large payload echoed byte for byte (flow control and back-pressure both ways over one stream),
tunnels sharing one upstream connection, the half-close both ways (the client's FIN is the stream's END_STREAM,
the server may answer after it), what the stream carries (the back proxy's access log: method, authority,
headers_to_add), and a refused CONNECT (non-200) closing the client's connection.
"""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylon.proxy.http.h2_session import H2Settings, Headers
from tests.conftest import free_port
from tests.proxy.conftest import (FILE_LOG_TYPE, ProxyLauncher, RunningProxy, http_listener, json_access_log,
                                  raw_exchange, read_json_lines, static_cluster, tcp_listener, wait_until)
from tests.proxy.grpc_upstream import serve_h2
from tests.proxy.test_proxy_http2_upstream import h2_options
from tests.proxy.test_proxy_upgrade import read_until
from tests.proxy.upstreams import TcpEcho

CONNECT_ERROR = 0xA
FLOOD_SIZE = 48 << 20
FLOOD = bytes(range(256)) * (FLOOD_SIZE // 256)

PAIRS = [("pylon", "pylon"), ("envoy", "envoy"), ("pylon", "envoy"), ("envoy", "pylon")]
TERMINATE = {"match": {"connect_matcher": {}},
             "route": {"cluster": "echo", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}
LATE = {"match": {"connect_matcher": {}},
        "route": {"cluster": "late", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}
REFUSE = {"match": {"connect_matcher": {}}, "direct_response": {"status": 403}}
LOG_FIELDS = {"x_fixed": "%REQ(x-fixed)%", "x_client": "%REQ(x-client)%", "protocol": "%PROTOCOL%"}


class AnswerAfterEof(TcpEcho):
    """Reads until the client's EOF, then answers `got:<what it read>` and closes: only a proxy that passes the
    half-close on (and keeps the other direction open) lets the answer through."""

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            got = []
            while chunk := conn.recv(65536):
                got.append(chunk)
            conn.sendall(b"got:" + b"".join(got))


class Chain:
    def __init__(self, front: RunningProxy, back: RunningProxy, log: Path, ports: dict[str, int]) -> None:
        self.front, self.back, self.log, self.ports = front, back, log, ports


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chain]:
    front_impl, back_impl = request.param
    echo, late = TcpEcho(), AnswerAfterEof()
    launcher = ProxyLauncher(tmp_path)
    log = tmp_path / "back.log"
    try:
        ports = {"back": free_port(), "late": free_port(), "refuse": free_port(), "front": free_port(),
                 "front_late": free_port(), "front_refused": free_port()}
        back = launcher.start(
            [http_listener(name, ports[name], [routed], codec_type="HTTP2", upgrade_configs=[{"upgrade_type": "CONNECT"}],
                           access_log=json_access_log(log, **LOG_FIELDS))
             for name, routed in (("back", TERMINATE), ("late", LATE), ("refuse", REFUSE))],
            [static_cluster("echo", [echo.port]), static_cluster("late", [late.port])], implementation=back_impl)
        headers = [{"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                   {"header": {"key": "x-fixed", "value": "yes"}}]
        tunneling = {"hostname": "origin.example:%DOWNSTREAM_LOCAL_PORT%", "headers_to_add": headers}
        h2 = h2_options()
        front = launcher.start(
            [tcp_listener("front", ports["front"], "back", tunneling_config=tunneling),
             tcp_listener("front_late", ports["front_late"], "late", tunneling_config=tunneling),
             tcp_listener("front_refused", ports["front_refused"], "refuse", tunneling_config=tunneling)],
            [static_cluster("back", [ports["back"]], **h2), static_cluster("late", [ports["late"]], **h2),
             static_cluster("refuse", [ports["refuse"]], **h2)], implementation=front_impl)
        yield Chain(front, back, log, ports)
    finally:
        launcher.close()
        echo.close()
        late.close()


def echo_through(port: int, payload: bytes) -> bytes:
    """Send `payload` while reading its echo (a thread writes, so neither side's buffers must hold it all), then
    half-close and read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        got = bytearray()
        while chunk := sock.recv(65536):
            got += chunk
        writer.join(timeout=20)
        return bytes(got)


def test_a_large_payload_is_echoed_byte_exact(chain: Chain) -> None:
    payload = os.urandom(4 << 20)
    got = echo_through(chain.ports["front"], payload)
    assert len(got) == len(payload) and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    [line] = read_json_lines(chain.log, 1, timeout=10)
    port = chain.ports["front"]
    assert (line["method"], line["authority"], line["protocol"], line["code"]) == (
        "CONNECT", f"origin.example:{port}", "HTTP/2", 200)
    assert (line["x_fixed"], line["x_client"]) == ("yes", "127.0.0.1")
    assert line["bytes_received"] == len(payload)
    assert wait_until(lambda: chain.front.stats()["cluster.back.upstream_rq_active"] == 0, timeout=10)


def test_tunnels_share_one_upstream_connection(chain: Chain) -> None:
    socks = [socket.create_connection(("127.0.0.1", chain.ports["front"]), timeout=10) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"tunnel %d" % i)
        for i, sock in enumerate(socks):
            assert sock.recv(100) == b"tunnel %d" % i
        stats = chain.front.stats()
        assert stats["cluster.back.upstream_cx_total"] == 1
        assert stats["cluster.back.upstream_rq_active"] == 3
    finally:
        for sock in socks:
            sock.close()


def test_the_half_close_crosses_both_ways(chain: Chain) -> None:
    """The client's FIN reaches the server as EOF (END_STREAM on the way), the server's answer after it still
    comes back, and its close ends the client's connection."""
    with socket.create_connection(("127.0.0.1", chain.ports["front_late"]), timeout=10) as sock:
        sock.sendall(b"ping")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
    assert got == b"got:ping"


def test_a_refused_connect_closes_the_client(chain: Chain) -> None:
    result = raw_exchange(chain.ports["front_refused"], b"secret", timeout=10)
    assert result.closed and result.data == b""
    [line] = read_json_lines(chain.log, 1, timeout=10)
    assert (line["method"], line["code"]) == ("CONNECT", 403)


class H2TunnelServer:
    """An h2c server on pylon's own codec that records each stream's header block and answers like a tunnel's far
    end: 200, then each DATA echoed as `echo:<data>`, its END_STREAM after the client's; an authority naming
    "refuse" is answered 403 (END_STREAM), one naming "reset" RST_STREAM(CONNECT_ERROR) once DATA came, one naming
    "flood" FLOOD bytes at once (`flood_sent`: how many of them flow control let out so far). `allow_connect`:
    its SETTINGS admit extended CONNECT (RFC 8441), so a proxy may send an upgrade as one."""

    def __init__(self, allow_connect: bool = False) -> None:
        self.settings = H2Settings(allow_connect=allow_connect)
        self.heads: list[Headers] = []
        self.received: list[bytes] = []
        self.flood_sent = 0
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner = _TunnelEnd(outer)
                serve_h2(self.request, owner, owner.count_flood, outer.settings)
        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _TunnelEnd:
    def __init__(self, server: H2TunnelServer) -> None:
        self.server = server
        self.codec: Any = None  # serve_h2 sets it
        self.kind: dict[int, bytes] = {}
        self.flood_stream = 0

    def count_flood(self) -> None:
        if self.flood_stream:
            self.server.flood_sent = FLOOD_SIZE - self.codec.pending(self.flood_stream)

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        self.server.heads.append(headers)
        authority = dict(headers).get(b":authority", b"")
        kind = self.kind[stream_id] = next((k for k in (b"refuse", b"reset", b"flood") if k in authority), b"")
        if kind == b"flood":
            self.flood_stream = stream_id
            self.codec.send_response(stream_id, [(b":status", b"200")])
            self.codec.send_data(stream_id, FLOOD, end_stream=True)
        elif kind == b"refuse":
            self.codec.send_response(stream_id, [(b":status", b"403"), (b"content-length", b"0")], end_stream=True)
        else:
            self.codec.send_response(stream_id, [(b":status", b"200")])

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.codec.consume(stream_id, len(data))
        self.server.received.append(data)
        if self.kind.get(stream_id) == b"reset":
            self.codec.reset_stream(stream_id, CONNECT_ERROR)
        elif self.kind.get(stream_id) == b"":
            self.codec.send_data(stream_id, b"echo:" + data)

    def on_trailers(self, stream_id: int, trailers: Headers) -> None:
        pass

    def on_end_stream(self, stream_id: int) -> None:
        if self.kind.get(stream_id) == b"":
            self.codec.send_data(stream_id, b"", end_stream=True)

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        pass

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass


@pytest.fixture
def recorded(implementation: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    server = H2TunnelServer()
    launcher = ProxyLauncher(tmp_path)
    ports = {"connect": free_port(), "post": free_port(), "refused": free_port(), "reset": free_port(),
             "flood": free_port(), "down": free_port()}
    flags_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG_TYPE, "path": str(tmp_path / "down.log"), "log_format": {"json_format": {
            "flags": "%RESPONSE_FLAGS%"}}}}]
    headers = [{"header": {"key": "x-fixed", "value": "yes"}}]
    listeners = [
        tcp_listener("connect", ports["connect"], "rec",
                     tunneling_config={"hostname": "h.example:%DOWNSTREAM_LOCAL_PORT%", "headers_to_add": headers}),
        tcp_listener("post", ports["post"], "rec",
                     tunneling_config={"hostname": "h.example:443", "use_post": True, "post_path": "/tunnel"}),
        tcp_listener("refused", ports["refused"], "rec", tunneling_config={"hostname": "refuse.example:1"}),
        tcp_listener("reset", ports["reset"], "rec", tunneling_config={"hostname": "reset.example:1"}),
        tcp_listener("flood", ports["flood"], "rec", tunneling_config={"hostname": "flood.example:1"}),
        tcp_listener("down", ports["down"], "down", tunneling_config={"hostname": "down.example:1"},
                     access_log=flags_log),
    ]
    breaker = {"thresholds": [{"max_requests": 1}]}
    try:
        proxy = launcher.start(listeners, [static_cluster("rec", [server.port], **h2_options()),
                                           static_cluster("down", [free_port()], circuit_breakers=breaker,
                                                          **h2_options())],
                               implementation=implementation)
        yield {"ports": ports, "server": server, "proxy": proxy, "log": tmp_path / "down.log"}
    finally:
        launcher.close()
        server.close()


def converse(port: int, piece: bytes) -> bytes:
    """Send `piece`, wait for its echo, half-close, read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(piece)
        got = read_until(sock, b"echo:" + piece)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(4096):
            got += chunk
        return got


def test_the_connect_stream_each_connection_opens(recorded: dict[str, Any]) -> None:
    port, server = recorded["ports"]["connect"], recorded["server"]
    assert converse(port, b"hello") == b"echo:hello"
    assert server.heads == [[(b":method", b"CONNECT"), (b":authority", b"h.example:%d" % port), (b"x-fixed", b"yes")]]
    assert server.received == [b"hello"]


def test_use_post_opens_a_post_stream_carrying_raw_bytes(recorded: dict[str, Any]) -> None:
    port, server = recorded["ports"]["post"], recorded["server"]
    assert converse(port, b"hello") == b"echo:hello"  # DATA frames carry the bytes as they are: no chunking
    [head] = server.heads  # (Envoy puts :scheme last: the order of pseudo-headers carries no meaning)
    assert sorted(head) == [(b":authority", b"h.example:443"), (b":method", b"POST"), (b":path", b"/tunnel"),
                            (b":scheme", b"http")]


def test_a_non_200_answer_closes_the_client_and_relays_nothing(recorded: dict[str, Any]) -> None:
    result = raw_exchange(recorded["ports"]["refused"], b"secret", timeout=5)
    assert result.closed and result.data == b""
    assert recorded["server"].received == []


def test_a_reset_stream_closes_the_client(recorded: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", recorded["ports"]["reset"]), timeout=10) as sock:
        sock.sendall(b"hello")
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass  # closed with a reset: as good
    assert wait_until(lambda: recorded["proxy"].stats()["cluster.rec.upstream_rq_active"] == 0, timeout=10)


def test_a_client_that_does_not_read_stops_its_stream(recorded: dict[str, Any]) -> None:
    """The server has 48 MiB to send and the client reads nothing: the proxy stops crediting the stream's DATA once
    its buffer towards the client is full, so the server's window closes well short of it all (the stream's
    window, 16 MiB in either proxy, plus the socket buffers); then the client reads it all, byte for byte."""
    server = recorded["server"]
    with socket.create_connection(("127.0.0.1", recorded["ports"]["flood"]), timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.sendall(b"go")
        last = {"value": -1, "since": time.monotonic()}

        def settled() -> bool:
            value = server.flood_sent
            if value != last["value"]:
                last.update(value=value, since=time.monotonic())
            return value > 0 and time.monotonic() - last["since"] > 1.0
        assert wait_until(settled, timeout=30, interval=0.1)
        assert server.flood_sent < 24 << 20  # observed: exactly 16 MiB in both (without the pause: all 48)
        got = bytearray()
        while len(got) < FLOOD_SIZE and (chunk := sock.recv(1 << 20)):
            got += chunk
    assert len(got) == FLOOD_SIZE and got == FLOOD


def test_failed_connects_give_their_stream_slot_back(recorded: dict[str, Any]) -> None:
    """The cluster allows one stream at a time (max_requests 1) and its host refuses connections: each attempt
    fails as a connect failure (UF), none as an overflow (UO) left by the one before."""
    for _ in range(3):
        result = raw_exchange(recorded["ports"]["down"], b"hello", timeout=10)
        assert result.closed and result.data == b""
    flags = [line["flags"].split(",") for line in read_json_lines(recorded["log"], 3, timeout=10)]
    assert all("UF" in each and "UO" not in each for each in flags), flags  # (Envoy adds URX: attempts exhausted)

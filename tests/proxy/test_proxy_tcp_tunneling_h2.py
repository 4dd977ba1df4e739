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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (ProxyLauncher, RunningProxy, http_listener, json_access_log, raw_exchange,
                                  read_json_lines, static_cluster, tcp_listener, wait_until)
from tests.proxy.test_proxy_http2_upstream import h2_options
from tests.proxy.upstreams import TcpEcho

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

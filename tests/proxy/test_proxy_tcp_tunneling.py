"""Integration: tcp_proxy `tunneling_config` — TCP carried inside an HTTP/1.1 CONNECT or POST, as Envoy 1.40 does.

Two kinds of check. Chains: a client's TCP connection to a tcp_proxy with tunneling_config, whose cluster is a
second proxy's HTTP listener terminating CONNECT (`connect_matcher` + `connect_config`), which relays to a TCP
echo server — every pairing of pylon and Envoy, so each side is checked against the other's reading of it. And
the request itself: a recording upstream that answers like a CONNECT-terminating proxy shows the head each proxy
sends (hostname and headers_to_add formatted per connection), POST's chunked framing both ways, and that a
refused tunnel closes the client's connection without relaying anything.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (ProxyLauncher, http_listener, json_access_log, raw_exchange, read_json_lines,
                                  static_cluster, tcp_listener, wait_until)
from tests.proxy.test_proxy_connect import EchoServer
from tests.proxy.test_proxy_upgrade import read_until
from tests.proxy.upstreams import TcpEcho

TERMINATE = {"match": {"connect_matcher": {}},
             "route": {"cluster": "echo", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}


class Recorder(TcpEcho):
    """Records each request head; answers 200 and echoes, recording what came after the head (a head naming
    "refuse": 403 and close)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            head, _, rest = read_until(conn, b"\r\n\r\n").partition(b"\r\n\r\n")
            self.heads.append(head)
            if b"refuse" in head:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nbanner")
            received = [rest] if rest else []
            try:
                while chunk := conn.recv(4096):
                    received.append(chunk)
                    conn.sendall(b"echo:" + chunk)
            except ConnectionResetError:
                pass  # Envoy may end a POST tunnel with a reset once the client half-closed
            self.bodies.append(b"".join(received))


def exchange(port: int, sends: list[bytes], marker: bytes, framing: bytes = b"%s") -> bytes:
    """Send each piece after its echo (`framing` of it: POST's chunk) arrived, half-close, read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        got = b""
        for piece in sends:
            sock.sendall(piece)
            got += read_until(sock, b"echo:" + framing % piece)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(4096):
            got += chunk
        assert marker in got
        return got


@pytest.fixture
def servers() -> Iterator[tuple[EchoServer, Recorder]]:
    echo, recorder = EchoServer(), Recorder()
    yield echo, recorder
    echo.close()
    recorder.close()


@pytest.mark.parametrize(("front", "back"), [("pylon", "pylon"), ("envoy", "envoy"), ("pylon", "envoy"),
                                              ("envoy", "pylon")])
def test_tcp_through_a_connect_tunnel_chain(front: str, back: str, tmp_path: Path,
                                            servers: tuple[EchoServer, Recorder]) -> None:
    echo, _ = servers
    launcher = ProxyLauncher(tmp_path)
    log = tmp_path / "back.log"
    try:
        back_port, front_port = free_port(), free_port()
        launcher.start([http_listener("terminate", back_port, [TERMINATE], access_log=json_access_log(log),
                                      upgrade_configs=[{"upgrade_type": "CONNECT"}])],
                       [static_cluster("echo", [echo.port])], implementation=back)
        tunneling = {"hostname": "origin.example:%DOWNSTREAM_LOCAL_PORT%"}
        proxy = launcher.start([tcp_listener("front", front_port, "back", tunneling_config=tunneling)],
                               [static_cluster("back", [back_port])], implementation=front)
        got = exchange(front_port, [b"hello", b"again"], b"echo:again")
        assert got == b"echo:helloecho:again"
        [line] = read_json_lines(log, 1, timeout=10)
        assert (line["method"], line["authority"], line["code"]) == ("CONNECT", f"origin.example:{front_port}", 200)
        assert line["bytes_received"] == len(b"helloagain")
        assert wait_until(lambda: proxy.stats()["cluster.back.upstream_cx_active"] == 0, timeout=10)
    finally:
        launcher.close()


@pytest.fixture
def recorded(implementation: str, tmp_path: Path, servers: tuple[EchoServer, Recorder]) -> Iterator[dict[str, Any]]:
    _, recorder = servers
    launcher = ProxyLauncher(tmp_path)
    ports = {"connect": free_port(), "post": free_port(), "refused": free_port()}
    headers = [{"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
               {"header": {"key": "x-fixed", "value": "yes"}}]
    listeners = [
        tcp_listener("connect", ports["connect"], "rec",
                     tunneling_config={"hostname": "h.example:%DOWNSTREAM_LOCAL_PORT%", "headers_to_add": headers}),
        tcp_listener("post", ports["post"], "rec",
                     tunneling_config={"hostname": "h.example:443", "use_post": True, "post_path": "/tunnel"}),
        tcp_listener("refused", ports["refused"], "rec", tunneling_config={"hostname": "refuse.example:1"}),
    ]
    try:
        proxy = launcher.start(listeners, [static_cluster("rec", [recorder.port])], implementation=implementation)
        yield {"ports": ports, "recorder": recorder, "proxy": proxy}
    finally:
        launcher.close()


def test_the_connect_request_each_connection_sends(recorded: dict[str, Any]) -> None:
    port, recorder = recorded["ports"]["connect"], recorded["recorder"]
    assert exchange(port, [b"hello"], b"echo:hello") == b"bannerecho:hello"
    [head] = recorder.heads
    assert head.split(b"\r\n") == [b"CONNECT h.example:%d HTTP/1.1" % port, b"host: h.example:%d" % port,
                                   b"x-client: 127.0.0.1", b"x-fixed: yes"]
    assert wait_until(lambda: recorder.bodies == [b"hello"])


def test_use_post_sends_the_bytes_as_chunks_of_a_post(recorded: dict[str, Any]) -> None:
    port, recorder = recorded["ports"]["post"], recorded["recorder"]
    got = exchange(port, [b"hello"], b"echo:5\r\nhello\r\n", framing=b"5\r\n%s\r\n")
    assert got.startswith(b"bannerecho:5\r\nhello\r\n")  # the response body comes back as the upstream sent it
    [head] = recorder.heads
    assert head.split(b"\r\n") == [b"POST /tunnel HTTP/1.1", b"host: h.example:443", b"transfer-encoding: chunked"]
    assert wait_until(lambda: recorder.bodies and recorder.bodies[0].startswith(b"5\r\nhello\r\n"))


def test_a_refused_tunnel_closes_the_client_and_relays_nothing(recorded: dict[str, Any]) -> None:
    result = raw_exchange(recorded["ports"]["refused"], b"secret", timeout=5)
    assert result.closed and result.data == b""
    [head] = recorded["recorder"].heads
    assert head.startswith(b"CONNECT refuse.example:1 HTTP/1.1\r\n")
    assert recorded["recorder"].bodies == []  # the client's bytes never followed the refused head

"""Integration: a CONNECT proxied (connect_matcher route, no connect_config) to a cluster that speaks HTTP/2 — the
client's CONNECT, over HTTP/1.1 or as an HTTP/2 stream, becomes an HTTP/2 CONNECT stream upstream, as in Envoy 1.40.

The upstream is a recording h2c server (test_proxy_tcp_tunneling_h2.H2TunnelServer: 200, then each DATA echoed,
its END_STREAM after the client's; 403 for an authority naming "refuse"). Each scenario runs through pylon and
Envoy: the header block each proxy sends upstream, what the client is answered, bytes both ways, the half-close,
and a refusal relayed as an ordinary response.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, json_access_log, read_json_lines, static_cluster
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.test_proxy_http2_upstream import h2_options
from tests.proxy.test_proxy_tcp_tunneling_h2 import H2TunnelServer
from tests.proxy.test_proxy_upgrade import read_until

PROXIED = {"match": {"connect_matcher": {}}, "route": {"cluster": "rec"}}
CONNECT_ON = [{"upgrade_type": "CONNECT"}]


@pytest.fixture
def setup(implementation: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    server = H2TunnelServer()
    launcher = ProxyLauncher(tmp_path)
    ports = {"h1": free_port(), "h2": free_port()}
    log = tmp_path / "access.log"
    try:
        proxy = launcher.start(
            [http_listener("h1", ports["h1"], [PROXIED], upgrade_configs=CONNECT_ON, access_log=json_access_log(log)),
             http_listener("h2", ports["h2"], [PROXIED], upgrade_configs=CONNECT_ON, codec_type="HTTP2")],
            [static_cluster("rec", [server.port], **h2_options())], implementation=implementation)
        yield {"ports": ports, "server": server, "proxy": proxy, "log": log}
    finally:
        launcher.close()
        server.close()


def upstream_head(server: H2TunnelServer) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The one header block the server saw: its pseudo-headers sorted (Envoy sends :authority first, an order
    with no meaning), then its fields in order with the request id's value (random) blanked."""
    [head] = server.heads
    pseudo = sorted(pair for pair in head if pair[0].startswith(b":"))
    return pseudo, [(name, b"<id>" if name == b"x-request-id" else value) for name, value in head
                    if not name.startswith(b":")]


def test_an_http1_connect_becomes_an_http2_connect_stream(setup: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", setup["ports"]["h1"]), timeout=10) as sock:
        sock.sendall(b"CONNECT origin.example:443 HTTP/1.1\r\nhost: origin.example:443\r\n\r\nearly")
        head = read_until(sock, b"\r\n\r\n")
        got = head.partition(b"\r\n\r\n")[2] + read_until(sock, b"echo:early") if b"echo:early" not in head else head
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"echo:early" in got
        sock.sendall(b"ping")
        read_until(sock, b"echo:ping")
        sock.shutdown(socket.SHUT_WR)  # the half-close: END_STREAM upstream, the server's END_STREAM back
        while sock.recv(4096):
            pass
    assert upstream_head(setup["server"]) == (
        [(b":authority", b"origin.example:443"), (b":method", b"CONNECT")],
        [(b"x-forwarded-proto", b"http"), (b"x-request-id", b"<id>"), (b"x-envoy-expected-rq-timeout-ms", b"15000")])
    assert b"".join(setup["server"].received) == b"earlyping"
    [line] = read_json_lines(setup["log"], 1, timeout=10)
    assert (line["method"], line["code"], line["authority"]) == ("CONNECT", 200, "origin.example:443")


def test_an_http2_connect_stream_is_proxied_as_one(setup: dict[str, Any]) -> None:
    client = H2Client(setup["ports"]["h2"])
    try:
        sid = client.h2.send_request([(b":method", b"CONNECT"), (b":authority", b"origin.example:443")])
        client.h2.send_data(sid, b"early")
        client.flush()
        client.pump_until(lambda: b"echo:early" in bytes(client.owner.body.get(sid, b"")), timeout=10)
        assert client.status(sid) == 200
        client.h2.send_data(sid, b"ping", end_stream=True)
        client.flush()
        client.pump_until(lambda: client.ended(sid), timeout=10)
        assert bytes(client.owner.body[sid]) == b"echo:earlyecho:ping"
        assert ("closed", sid, 0) in client.owner.events  # both END_STREAMs: a clean end, no reset
    finally:
        client.close()
    assert upstream_head(setup["server"])[0] == [(b":authority", b"origin.example:443"), (b":method", b"CONNECT")]


def test_a_refused_connect_is_relayed_as_a_response(setup: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", setup["ports"]["h1"]), timeout=10) as sock:
        sock.sendall(b"CONNECT refuse.example:443 HTTP/1.1\r\nhost: refuse.example:443\r\n\r\n")
        head = read_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert setup["server"].received == []

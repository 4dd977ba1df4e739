"""Integration: CONNECT through pylon and Envoy 1.40 — terminated (`connect_config`), proxied, refused; over
HTTP/1.1 and as HTTP/2 CONNECT streams (DATA <-> bytes, END_STREAM <-> half-close, RST <-> close).

A route with `match.connect_matcher` and `upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]` makes
the proxy answer the CONNECT itself once a plain TCP connection to the cluster's host is up (200, no framing
headers) and relay bytes both ways; without `connect_config` the CONNECT goes upstream as a CONNECT request and
the upstream's 2xx starts the tunnel. A CONNECT nothing allows is refused as Envoy refuses it: 403 when neither
the connection manager nor the route enables CONNECT (or the route disables it), 404 when no connect_matcher
route takes it (a catch-all prefix route does not), 400 for a CONNECT with a path; each refusal closes the
connection, so bytes behind the head never reach anything.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (ProxyLauncher, RunningProxy, http_listener, json_access_log, raw_exchange,
                                  read_json_lines, route, static_cluster, wait_until)
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.test_proxy_upgrade import read_until
from tests.proxy.upstreams import TcpEcho

CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
TERMINATE = [{"upgrade_type": "CONNECT", "connect_config": {}}]
CONNECT_ON = [{"upgrade_type": "CONNECT"}]


class EchoServer(TcpEcho):
    """Echoes what it reads, prefixed with "echo:"; a CONNECT head is answered 200 first (the proxied case), and
    "bye" ends the connection from the upstream's side."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.received: list[bytes] = []
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            first = True
            while chunk := conn.recv(4096):
                if first and chunk.startswith(b"CONNECT "):
                    head, _, chunk = chunk.partition(b"\r\n\r\n")
                    self.heads.append(head)
                    conn.sendall(b"HTTP/1.1 200 Connection Established\r\nx-up: yes\r\n\r\n")
                first = False
                self.received.append(chunk)
                if chunk == b"bye":
                    return
                if chunk:
                    conn.sendall(b"echo:" + chunk)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = f"hello from {self.path} host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Setup:
    def __init__(self, proxy: RunningProxy, echo: EchoServer, log: Path) -> None:
        self.proxy, self.echo, self.log = proxy, echo, log

    def connect(self, listener: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.proxy.ports[listener]), timeout=5)

    def log_lines(self, count: int) -> list[dict[str, Any]]:
        return read_json_lines(self.log, count, timeout=10)


@pytest.fixture
def setup(implementation: str, tmp_path: Path) -> Iterator[Setup]:
    echo, web, launcher = EchoServer(), http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello), ProxyLauncher(tmp_path)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    log = tmp_path / f"{implementation}-access.log"
    try:
        terminate = {"match": {"connect_matcher": {}}, "route": {"cluster": "echo", "upgrade_configs": TERMINATE}}
        to_web = {"match": {"connect_matcher": {}}, "route": {"cluster": "web", "upgrade_configs": TERMINATE}}
        proxied = {"match": {"connect_matcher": {}}, "route": {"cluster": "echo"}}
        disabled = {"match": {"connect_matcher": {}},
                    "route": {"cluster": "echo", "upgrade_configs": [{"upgrade_type": "CONNECT", "enabled": False}]}}
        down = {"match": {"connect_matcher": {}}, "route": {"cluster": "down", "upgrade_configs": TERMINATE}}
        logged = {"access_log": json_access_log(log)}
        listeners = [
            http_listener("term", free_port(), [terminate, route("/", "echo")], upgrade_configs=CONNECT_ON, **logged),
            http_listener("web", free_port(), [to_web], upgrade_configs=CONNECT_ON),
            http_listener("by_route", free_port(), [terminate, route("/", "echo")]),
            http_listener("no_route", free_port(), [route("/", "echo")], upgrade_configs=CONNECT_ON, **logged),
            http_listener("proxied", free_port(), [proxied], upgrade_configs=CONNECT_ON, **logged),
            http_listener("off", free_port(), [proxied]),
            http_listener("disabled", free_port(), [disabled], upgrade_configs=CONNECT_ON),
            http_listener("down", free_port(), [down], upgrade_configs=CONNECT_ON, **logged),
            http_listener("h2term", free_port(), [terminate], upgrade_configs=CONNECT_ON, codec_type="HTTP2",
                          **logged),
            http_listener("h2proxied", free_port(), [proxied], upgrade_configs=CONNECT_ON, codec_type="HTTP2"),
            http_listener("h2off", free_port(), [proxied], codec_type="HTTP2"),
        ]
        clusters = [static_cluster("echo", [echo.port]), static_cluster("web", [web.server_address[1]]),
                    static_cluster("down", [free_port()])]
        yield Setup(launcher.start(listeners, clusters, implementation=implementation), echo, log)
    finally:
        launcher.close()
        echo.close()
        web.shutdown()
        web.server_close()


def test_curl_proxytunnel_reaches_the_clusters_host(setup: Setup) -> None:
    """curl -p -x: CONNECT, then its own HTTP request inside the tunnel, answered by the cluster's host (whatever
    the CONNECT named: the route's cluster decides where a terminated CONNECT goes)."""
    out = subprocess.run(["curl", "-sS", "-p", "-x", f"http://127.0.0.1:{setup.proxy.ports['web']}",
                          "--max-time", "10", "http://origin.example:8080/inside"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from /inside host=origin.example:8080"


def test_a_terminated_connect_is_answered_200_and_relays_bytes(setup: Setup) -> None:
    with setup.connect("term") as client:
        client.sendall(CONNECT + b"early")  # bytes right behind the head belong to the tunnel
        head = read_until(client, b"echo:early")
        status_head = head.split(b"\r\n\r\n")[0].lower()
        assert status_head.startswith(b"http/1.1 200 ")
        assert b"content-length" not in status_head and b"transfer-encoding" not in status_head
        assert b"connection:" not in status_head
        client.sendall(b"ping")
        assert read_until(client, b"echo:ping").endswith(b"echo:ping")
    assert setup.echo.heads == []  # the upstream saw raw bytes only, no HTTP
    assert wait_until(lambda: setup.proxy.stats()["http.term.downstream_cx_upgrades_active"] == 0)
    stats = setup.proxy.stats()
    assert stats["http.term.downstream_cx_upgrades_total"] == 1
    assert wait_until(lambda: setup.proxy.stats()["cluster.echo.upstream_cx_active"] == 0)
    [line] = setup.log_lines(1)
    assert (line["code"], line["method"], line["authority"], line["path"]) == (200, "CONNECT", "example.com:443", None)
    assert (line["cluster"], line["upstream"]) == ("echo", f"127.0.0.1:{setup.echo.port}")
    assert (line["flags"], line["details"]) == ("DC", "downstream_remote_disconnect")  # the client ended it
    assert line["bytes_received"] == len(b"earlyping")
    assert line["bytes_sent"] in (len(b"echo:earlyecho:ping"), len(b"echo:earlyping"))  # as the echo's reads fell


def test_the_upstream_closing_ends_the_tunnel(setup: Setup) -> None:
    with setup.connect("term") as client:
        client.sendall(CONNECT)
        read_until(client, b"\r\n\r\n")
        client.sendall(b"bye")
        assert read_until(client, b"never") == b""  # closed by the proxy once the upstream closed
    assert wait_until(lambda: setup.proxy.stats()["http.term.downstream_cx_upgrades_active"] == 0)


def test_a_route_enables_connect_the_connection_manager_does_not(setup: Setup) -> None:
    with setup.connect("by_route") as client:
        client.sendall(CONNECT + b"x")
        assert read_until(client, b"echo:x").startswith(b"HTTP/1.1 200 ")


def upstream_connect_fields(setup: Setup) -> dict[bytes, bytes]:
    """The one CONNECT head the upstream got, checked for the parts every proxied CONNECT has; its fields."""
    [head] = setup.echo.heads
    lines = head.split(b"\r\n")
    assert lines[0] == b"CONNECT example.com:443 HTTP/1.1"
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    assert fields[b"host"] == b"example.com:443"
    assert b"content-length" not in fields and b"transfer-encoding" not in fields
    return fields


def test_without_connect_config_the_connect_goes_upstream(setup: Setup) -> None:
    with setup.connect("proxied") as client:
        client.sendall(CONNECT)
        head = read_until(client, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"x-up: yes" in head  # the reason phrase is the proxy's
        assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
        client.sendall(b"ping")
        assert read_until(client, b"echo:ping").endswith(b"echo:ping")
    fields = upstream_connect_fields(setup)
    assert b"x-envoy-original-path" not in fields and b"upgrade" not in fields
    [line] = setup.log_lines(1)
    assert (line["code"], line["method"], line["cluster"]) == (200, "CONNECT", "echo")


@pytest.mark.parametrize(("listener", "status", "details"), [
    ("off", 403, "upgrade_failed"),  # neither the connection manager nor the route enables CONNECT
    ("disabled", 403, "upgrade_failed"),  # the route disables what the connection manager enables
    ("no_route", 404, "route_not_found"),  # enabled, but only a catch-all prefix route: it does not take CONNECT
])
def test_a_connect_nothing_allows_is_refused_and_the_connection_closed(setup: Setup, listener: str, status: int,
                                                                       details: str) -> None:
    result = raw_exchange(setup.proxy.ports[listener], CONNECT + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    assert result.statuses() == [status]  # the bytes behind the CONNECT are never read as a request
    assert result.closed
    assert b"connection: close" in result.data.lower()
    assert setup.echo.received == [] and setup.echo.heads == []


def test_a_connect_with_a_path_is_a_bad_request(setup: Setup) -> None:
    result = raw_exchange(setup.proxy.ports["term"], b"CONNECT /foo HTTP/1.1\r\nHost: a\r\n\r\n")
    assert result.status == 400 and result.closed
    assert setup.echo.received == []


def test_a_connect_whose_host_refuses_is_a_503(setup: Setup) -> None:
    result = raw_exchange(setup.proxy.ports["down"], CONNECT)
    assert result.status == 503
    [line] = setup.log_lines(1)
    assert (line["code"], line["flags"]) == (503, "UF")
    assert setup.proxy.stats()["cluster.down.upstream_cx_connect_fail"] >= 1


# --------------------------------------------------------------------------- HTTP/2 CONNECT streams


def h2_connect(setup: Setup, listener: str, first: bytes = b"early") -> tuple[H2Client, int]:
    """A CONNECT stream (no :path, no :scheme: RFC 9113 8.5) with `first` as DATA right behind the HEADERS."""
    client = H2Client(setup.proxy.ports[listener])
    sid = client.h2.send_request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    if first:
        client.h2.send_data(sid, first)
    client.flush()
    return client, sid


def body(client: H2Client, sid: int) -> bytes:
    return bytes(client.owner.body.get(sid, b""))


def ping(client: H2Client, sid: int) -> bytes:
    """Send "ping" on the tunnel stream `sid`; everything it received once "echo:ping" came back."""
    client.h2.send_data(sid, b"ping")
    client.flush()
    client.pump_until(lambda: b"echo:ping" in body(client, sid))
    return body(client, sid)


def test_an_http2_connect_stream_is_terminated_data_both_ways(setup: Setup) -> None:
    """DATA <-> the upstream's bytes, the client's END_STREAM <-> the upstream's half-close, and the upstream's
    EOF <-> END_STREAM: the stream closes cleanly, as Envoy closes it."""
    client, sid = h2_connect(setup, "h2term")
    try:
        client.pump_until(lambda: b"echo:early" in body(client, sid))
        [head] = [e for e in client.owner.events if e[0] == "headers"]
        fields = dict(head[2])
        assert fields[b":status"] == b"200" and head[3] is False  # not the end: the tunnel follows
        assert b"content-length" not in fields
        client.h2.send_data(sid, b"ping", end_stream=True)
        client.flush()
        client.pump_until(lambda: client.ended(sid))
        assert body(client, sid) == b"echo:earlyecho:ping"
        assert ("closed", sid, 0) in client.owner.events and ("end", sid) in client.owner.events
    finally:
        client.close()
    assert setup.echo.heads == [] and b"".join(setup.echo.received) == b"earlyping"
    [line] = setup.log_lines(1)
    assert (line["code"], line["method"], line["protocol"], line["flags"]) == (200, "CONNECT", "HTTP/2", "-")
    assert (line["bytes_received"], line["bytes_sent"]) == (9, 19)
    assert line["upstream"] == f"127.0.0.1:{setup.echo.port}"
    assert wait_until(lambda: setup.proxy.stats()["http.h2term.downstream_cx_upgrades_active"] == 0)


def reset_closes_upstream(client: H2Client, sid: int, marker: bytes, proxy: RunningProxy, cluster: str,
                          listener: str) -> None:
    """Once `marker` came through the tunnel stream `sid`, reset it: its upstream connection and the listener's
    upgrade gauge go to 0. The client is closed in the end."""
    stats = proxy.stats
    try:
        client.pump_until(lambda: marker in body(client, sid))
        assert wait_until(lambda: stats()[f"cluster.{cluster}.upstream_cx_active"] == 1)
        client.h2.reset_stream(sid)
        client.flush()
        assert wait_until(lambda: stats()[f"cluster.{cluster}.upstream_cx_active"] == 0)
        assert wait_until(lambda: stats()[f"http.{listener}.downstream_cx_upgrades_active"] == 0)
    finally:
        client.close()


def test_resetting_an_http2_connect_stream_closes_its_upstream(setup: Setup) -> None:
    client, sid = h2_connect(setup, "h2term")
    reset_closes_upstream(client, sid, b"echo:early", setup.proxy, "echo", "h2term")


def test_an_http2_connect_without_connect_config_goes_upstream_over_http1(setup: Setup) -> None:
    client, sid = h2_connect(setup, "h2proxied", b"")
    try:
        client.pump_until(lambda: client.status(sid) is not None)
        assert client.status(sid) == 200
        assert ping(client, sid) == b"echo:ping"
    finally:
        client.close()
    upstream_connect_fields(setup)


def test_an_http2_connect_nothing_allows_is_refused(setup: Setup) -> None:
    client, sid = h2_connect(setup, "h2off")
    try:
        client.pump_until(lambda: client.ended(sid))
        assert client.status(sid) == 403
    finally:
        client.close()
    assert setup.echo.heads == [] and setup.echo.received == []

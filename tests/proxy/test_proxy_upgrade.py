"""Integration: HTTP/1.1 Upgrade (websocket) tunnelled as `upgrade_configs` allow, through pylon and Envoy.

The upstream here answers an Upgrade with 101 and then echoes every byte it gets, prefixed with "echo:" —
the proxies must not care what the bytes are. Without `upgrade_configs` the upgrade is refused (403); with it,
the 101 reaches the client and bytes flow both ways, including those the client sent right behind its
request head; a refused upgrade (the upstream answers 400) is an ordinary response; when either side closes,
the other is closed too.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until

UPGRADE = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


class _EchoAfterUpgrade(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        self.server.heads.append(head.split(b"\r\n\r\n")[0])  # type: ignore[attr-defined]
        rest = head.split(b"\r\n\r\n", 1)[1]
        if b"/refuse" in head.split(b"\r\n")[0]:
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 7\r\n\r\nrefused")
            return
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello")
        if rest:
            sock.sendall(b"echo:" + rest)
        while chunk := sock.recv(4096):
            sock.sendall(b"echo:" + chunk)


class UpgradeUpstream(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoAfterUpgrade)
        self.heads: list[bytes] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], up: UpgradeUpstream) -> None:
        self.proxy, self.ports, self.up = proxy, ports, up

    def connect(self, listener: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=5)


@pytest.fixture
def setup(implementation: str, tmp_path: Path) -> Iterator[Setup]:
    up, launcher = UpgradeUpstream(), ProxyLauncher(tmp_path)
    try:
        ports = {"ws": free_port(), "plain": free_port()}
        off = route("/off", "up", upgrade_configs=[{"upgrade_type": "WebSocket", "enabled": False}])
        on = route("/on", "up", upgrade_configs=[{"upgrade_type": "websocket"}])
        listeners = [http_listener("ws", ports["ws"], [off, route("/", "up")],
                                   upgrade_configs=[{"upgrade_type": "websocket"}]),
                     http_listener("plain", ports["plain"], [on, route("/", "up")])]
        proxy = launcher.start(listeners, [static_cluster("up", [up.port])], implementation=implementation)
        yield Setup(proxy, ports, up)
    finally:
        launcher.close()
        up.shutdown()
        up.server_close()


def test_websocket_is_tunnelled_both_ways(setup: Setup) -> None:
    with setup.connect("ws") as client:
        client.sendall(UPGRADE + b"early")  # bytes right behind the head belong to the tunnel
        head = read_until(client, b"echo:early")
        assert head.startswith(b"HTTP/1.1 101 ") and b"hello" in head
        assert b"upgrade: websocket" in head.lower()
        client.sendall(b"ping")
        assert read_until(client, b"echo:ping").endswith(b"echo:ping")
    forwarded = setup.up.heads[-1].lower()
    assert b"upgrade: websocket" in forwarded and b"connection: upgrade" in forwarded
    stats = setup.proxy.stats()
    assert wait_until(lambda: setup.proxy.stats()["http.ws.downstream_cx_upgrades_active"] == 0)
    assert stats["http.ws.downstream_cx_upgrades_total"] == 1


def test_upgrade_without_upgrade_configs_is_refused(setup: Setup) -> None:
    with setup.connect("plain") as client:
        client.sendall(UPGRADE)
        assert read_until(client, b"\r\n\r\n").startswith(b"HTTP/1.1 403 ")
    assert setup.up.heads == []


def test_a_route_allows_an_upgrade_the_connection_manager_does_not(setup: Setup) -> None:
    """Route-level upgrade_configs (Envoy's websocket example, envoy-ws-route.yaml): the route's word wins."""
    with setup.connect("plain") as client:
        client.sendall(UPGRADE.replace(b"/chat", b"/on/chat") + b"early")
        head = read_until(client, b"echo:early")
        assert head.startswith(b"HTTP/1.1 101 ") and b"hello" in head
        client.sendall(b"ping")
        assert read_until(client, b"echo:ping").endswith(b"echo:ping")
    assert wait_until(lambda: setup.proxy.stats()["http.plain.downstream_cx_upgrades_total"] == 1)


def test_a_route_refuses_an_upgrade_the_connection_manager_allows(setup: Setup) -> None:
    with setup.connect("ws") as client:
        client.sendall(UPGRADE.replace(b"/chat", b"/off/chat"))
        assert read_until(client, b"\r\n\r\n").startswith(b"HTTP/1.1 403 ")
    assert setup.up.heads == []


def test_an_upgrade_the_upstream_refuses_is_an_ordinary_response(setup: Setup) -> None:
    with setup.connect("ws") as client:
        client.sendall(UPGRADE.replace(b"/chat", b"/refuse"))
        reply = read_until(client, b"refused")
        assert reply.startswith(b"HTTP/1.1 400 ") and reply.endswith(b"refused")


def test_closing_the_client_closes_the_upstream_side(setup: Setup) -> None:
    client = setup.connect("ws")
    client.sendall(UPGRADE)
    read_until(client, b"hello")
    client.close()
    assert wait_until(lambda: setup.proxy.stats()["http.ws.downstream_cx_upgrades_active"] == 0)
    assert wait_until(lambda: setup.proxy.stats()["cluster.up.upstream_cx_active"] == 0)


def test_a_101_nobody_asked_for(implementation: str, setup: Setup) -> None:
    """Envoy relays a 101 the client did not ask for; pylon refuses it as an upstream protocol error (a
    departure, in docs/architecture.md: a server switching protocols unasked is confused, and nothing can
    follow on that connection)."""
    with setup.connect("ws") as client:
        client.sendall(b"GET /chat HTTP/1.1\r\nHost: a\r\n\r\n")  # no Upgrade: the upstream switches anyway
        status_line = read_until(client, b"\r\n\r\n").split(b"\r\n")[0]
    expected = b"HTTP/1.1 101 Switching Protocols" if implementation == "envoy" else b"HTTP/1.1 502 Bad Gateway"
    assert status_line == expected

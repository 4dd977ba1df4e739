"""Integration: Envoy's delayed close after a local reply, through pylon and Envoy alike.

After a reply of its own that ends the connection (a 400 for a malformed
request, a 404 to a client that said `Connection: close`), Envoy waits up to
`delayed_close_timeout` for the client to close first (the client's FIN ends
the wait); a proxied response closes at once; 0 turns the wait off.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream


def seconds_to_eof(port: int, payload: bytes) -> tuple[float, bytes]:
    """Send `payload`, never close, and time how long the proxy takes to close; what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(payload)
        started, received = time.monotonic(), b""
        try:
            while chunk := client.recv(65536):
                received += chunk
        except ConnectionResetError:
            received += b"<reset>"
        return time.monotonic() - started, received


@pytest.fixture
def ports(implementation: str, tmp_path: Path) -> dict[str, int]:
    up, launcher = Upstream(), ProxyLauncher(tmp_path)
    names = {"default": free_port(), "half": free_port(), "off": free_port()}
    listeners = [http_listener("default", names["default"], [route("/status", "a")]),
                 http_listener("half", names["half"], [route("/status", "a")], delayed_close_timeout="0.5s"),
                 http_listener("off", names["off"], [route("/status", "a")], delayed_close_timeout="0s")]
    try:
        launcher.start(listeners, [static_cluster("a", [up.port])], implementation=implementation)
        yield names
    finally:
        launcher.close()
        up.close()


def test_a_local_reply_that_closes_waits_for_the_client(ports: dict[str, int]) -> None:
    waited, reply = seconds_to_eof(ports["half"], b"NOT HTTP\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and 0.4 <= waited < 2.0
    waited, reply = seconds_to_eof(ports["default"], b"GET /elsewhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 ") and 0.9 <= waited < 3.0


def test_zero_closes_at_once(ports: dict[str, int]) -> None:
    waited, reply = seconds_to_eof(ports["off"], b"NOT HTTP\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and waited < 0.3


def test_a_proxied_response_closes_at_once(ports: dict[str, int]) -> None:
    waited, reply = seconds_to_eof(ports["default"], b"GET /status/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and waited < 0.3


def test_the_client_closing_first_ends_the_wait(ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports["default"]), timeout=5) as client:
        client.sendall(b"NOT HTTP\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 400 ")
        client.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        assert client.recv(65536) == b""
        assert time.monotonic() - started < 0.3


"""Integration: max_stream_duration, max_connection_duration and drain_timeout, through pylon and Envoy alike.

common_http_protocol_options.max_stream_duration answers a request still unanswered when it passes with
504 "downstream duration timeout" (details max_duration_timeout); max_connection_duration drains the
connection: the next response says `connection: close`, and an idle one is closed once the HCM's
drain_timeout has passed. Stats: downstream_{rq,cx}_max_duration_reached.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, http_listener, json_access_log, read_json_lines, route, static_cluster, wait_until,
)
from tests.proxy.upstreams import Upstream


def exchange(sock: socket.socket, path: str) -> bytes:
    """One GET on `sock`; the whole response (the upstream's bodies carry a Content-Length)."""
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (socket.timeout, BlockingIOError):
        return False


def test_stream_and_connection_durations(implementation: str, tmp_path: Path) -> None:
    up, launcher = Upstream(), ProxyLauncher(tmp_path)
    try:
        streams, connections, log = free_port(), free_port(), tmp_path / "access.log"
        proxy = launcher.start([
            http_listener("streams", streams, [route("/", "a")], access_log=json_access_log(log),
                          common_http_protocol_options={"max_stream_duration": "1s"}),
            http_listener("connections", connections, [route("/", "a")], drain_timeout="0.5s",
                          common_http_protocol_options={"max_connection_duration": "1s"}),
        ], [static_cluster("a", [up.port])], implementation=implementation)

        with socket.create_connection(("127.0.0.1", streams), timeout=5) as client:
            started = time.monotonic()
            head = exchange(client, "/slow/3")
            assert head.startswith(b"HTTP/1.1 504 ") and 0.9 < time.monotonic() - started < 2.0
            assert b"connection: close" not in head.lower()  # the connection goes on
            assert exchange(client, "/fast").startswith(b"HTTP/1.1 200 ")
        (line, *_) = read_json_lines(log, 2)
        assert (line["code"], line["details"]) == (504, "max_duration_timeout")

        with socket.create_connection(("127.0.0.1", connections), timeout=5) as client:
            assert b"connection: close" not in exchange(client, "/").lower()
            time.sleep(1.2)  # past max_connection_duration: draining
            assert b"connection: close" in exchange(client, "/").lower()
        with socket.create_connection(("127.0.0.1", connections), timeout=0.2) as idle:
            exchange(idle, "/")
            time.sleep(1.1)  # drained while idle: open for drain_timeout, then closed
            assert wait_until(lambda: closed_by_peer(idle), timeout=2.0)
        stats = proxy.stats()
        assert stats["http.streams.downstream_rq_max_duration_reached"] == 1
        assert stats["http.connections.downstream_cx_max_duration_reached"] == 2
    finally:
        launcher.close()
        up.close()

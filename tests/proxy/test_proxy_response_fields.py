"""Integration: the `date` and `server` fields the connection manager adds to responses, through pylon and
Envoy 1.40 alike. Envoy's encodeHeaders adds a `date` to every response head that has none (an upstream's own is
kept) and sets `server` as server_header_transformation says: OVERWRITE always, APPEND_IF_ABSENT when the head
has none, PASS_THROUGH never (so a local reply then has no server field). An empty server_name means "envoy".
Relayed heads (HTTP/1.1 and HTTP/2 clients), the proxy's own replies and a 101 are all checked.
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, raw_exchange, static_cluster
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.upstreams import TcpEcho, request_heads

UPSTREAM_DATE = "Tue, 01 Jan 2030 00:00:00 GMT"
RESPONSES = {
    b"/bare": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"/own": (b"HTTP/1.1 200 OK\r\ndate: " + UPSTREAM_DATE.encode() + b"\r\nserver: upstream-srv\r\n"
              b"content-length: 2\r\n\r\nok"),
    b"/ws": (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
             b"server: upstream-srv\r\n\r\n"),
}
#: listener name: (server_header_transformation, server_name)
LISTENERS = {"overwrite": ("OVERWRITE", "edge"), "append": ("APPEND_IF_ABSENT", "edge"),
             "pass": ("PASS_THROUGH", "edge"), "unnamed": ("OVERWRITE", "")}
#: (listener, path): the server field the client sees (None: none); "now" dates are the proxy's own
EXPECTED_SERVER = {
    ("overwrite", "/bare"): "edge", ("overwrite", "/own"): "edge", ("overwrite", "/local"): "edge",
    ("append", "/bare"): "edge", ("append", "/own"): "upstream-srv", ("append", "/local"): "edge",
    ("pass", "/bare"): None, ("pass", "/own"): "upstream-srv", ("pass", "/local"): None,
    ("unnamed", "/bare"): "envoy", ("unnamed", "/own"): "envoy", ("unnamed", "/local"): "envoy",
}


class ChosenResponses(TcpEcho):
    """Answers each request head with the response its path names in RESPONSES (an upgrade holds the connection)."""

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            try:
                for head in request_heads(conn):
                    conn.sendall(RESPONSES[head.split(b" ", 2)[1]])
            except OSError:
                return


class Setup:
    def __init__(self, impl: str, ports: dict[str, int]) -> None:
        self.impl, self.ports = impl, ports

    def http1(self, listener: str, path: str, *fields: str) -> tuple[int, dict[str, list[str]]]:
        request = f"GET {path} HTTP/1.1\r\nhost: x\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n"
        answer = raw_exchange(self.ports[listener], request.encode(), timeout=1.5)
        assert answer.status is not None, answer.data
        head = answer.data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        named: dict[str, list[str]] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            named.setdefault(name.lower(), []).append(value.strip())
        return answer.status, named

    def http2(self, listener: str, path: str) -> tuple[int, dict[str, list[str]]]:
        client = H2Client(self.ports[listener])
        try:
            sid = client.get(path)
            client.pump_until(lambda: client.status(sid) is not None)
            fields = next(event[2] for event in client.owner.events if event[0] == "headers" and event[1] == sid)
        finally:
            client.close()
        named: dict[str, list[str]] = {}
        for name, value in fields:
            named.setdefault(name.decode(), []).append(value.decode())
        return int(named[":status"][0]), named


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = ChosenResponses()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"response-fields-{request.param}"))
    try:
        routes: list[dict[str, Any]] = [
            {"match": {"prefix": "/local"}, "direct_response": {"status": 404, "body": {"inline_string": "no"}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
        ports = {name: free_port() for name in LISTENERS}
        listeners = [http_listener(name, ports[name], routes, codec_type="AUTO", server_name=server_name,
                                   server_header_transformation=transformation,
                                   upgrade_configs=[{"upgrade_type": "websocket"}])
                     for name, (transformation, server_name) in LISTENERS.items()]
        launcher.start(listeners, [static_cluster("up", [upstream.port])], implementation=request.param)
        yield Setup(request.param, ports)
    finally:
        launcher.close()
        upstream.close()


def _check_date(values: list[str], path: str) -> None:
    assert len(values) == 1, values
    if path == "/own":
        assert values == [UPSTREAM_DATE]  # the upstream's own date is kept
    else:
        assert abs(email.utils.parsedate_to_datetime(values[0]).timestamp() - time.time()) < 5, values


@pytest.mark.parametrize("protocol", ["http1", "http2"])
@pytest.mark.parametrize(("listener", "path"), sorted(EXPECTED_SERVER))
def test_date_and_server_of_a_response(setup: Setup, protocol: str, listener: str, path: str) -> None:
    status, named = setup.http1(listener, path) if protocol == "http1" else setup.http2(listener, path)
    assert status == (404 if path == "/local" else 200)
    _check_date(named.get("date", []), path)
    expected = EXPECTED_SERVER[listener, path]
    assert named.get("server") == ([expected] if expected is not None else None)


@pytest.mark.parametrize(("listener", "server"), [("overwrite", ["edge"]), ("append", ["upstream-srv"]),
                                                  ("pass", ["upstream-srv"])])
def test_an_upgrade_response_gets_a_date_and_its_server_as_transformed(setup: Setup, listener: str,
                                                                        server: list[str]) -> None:
    status, named = setup.http1(listener, "/ws", "connection: upgrade", "upgrade: websocket")
    assert status == 101
    _check_date(named.get("date", []), "/ws")
    assert named.get("server") == server

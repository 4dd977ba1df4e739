"""Integration: route `match.grpc` (Envoy's grpc-bridge server example) through pylon and Envoy alike.

A gRPC route first, a catch-all after it, each to its own upstream: which upstream served each request
(content-type variants, repeated content-type lines, methods) must be the one Envoy 1.40 picks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, static_cluster
from tests.proxy.upstreams import Upstream

CASES = [
    ("POST", ["application/grpc"], "grpc"),
    ("POST", ["application/grpc+proto"], "grpc"),
    ("POST", ["application/grpc;charset=utf-8"], "other"),
    ("POST", ["application/grpc-web"], "other"),
    ("POST", ["application/grpc-web+proto"], "other"),
    ("POST", ["application/grpcx"], "other"),
    ("POST", ["Application/GRPC"], "other"),
    ("POST", ["application/json"], "other"),
    ("POST", [], "other"),
    ("GET", ["application/grpc"], "grpc"),  # the method does not count
    ("PUT", ["application/grpc"], "grpc"),
    ("POST", ["application/grpc", "text/plain"], "other"),
]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[RunningProxy, dict[int, str]]]:
    grpc, other, launcher = Upstream(), Upstream(), ProxyLauncher(tmp_path_factory.mktemp(f"grpc-{request.param}"))
    try:
        routes = [{"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "grpc"}},
                  {"match": {"prefix": "/"}, "route": {"cluster": "other"}}]
        running = launcher.start([http_listener("main", free_port(), routes)],
                                 [static_cluster("grpc", [grpc.port]), static_cluster("other", [other.port])],
                                 implementation=request.param)
        yield running, {grpc.port: "grpc", other.port: "other"}
    finally:
        launcher.close()
        grpc.close()
        other.close()


def served_by(running: RunningProxy, names: dict[int, str], method: str, content_types: list[str]) -> str:
    """Which upstream answered (raw HTTP/1.1, so repeated content-type lines go as sent)."""
    lines = "".join(f"content-type: {value}\r\n" for value in content_types)
    head = f"{method} /pkg.Svc/Call HTTP/1.1\r\nhost: x\r\n{lines}content-length: 0\r\nconnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", running.ports["main"]), timeout=5) as sock:
        sock.sendall(head.encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    for line in reply.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"x-served-by":
            return names[int(value)]
    return f"no upstream: {reply[:60]!r}"


@pytest.mark.parametrize(("method", "content_types", "expected"), CASES)
def test_grpc_routes_take_only_grpc_requests(proxy: tuple[RunningProxy, dict[int, str]], method: str,
                                             content_types: list[str], expected: str) -> None:
    assert served_by(*proxy, method, content_types) == expected

"""Integration: envoy.filters.http.grpc_http1_bridge through pylon and Envoy 1.40 (each expectation observed there).

The upstream speaks gRPC's framing over HTTP/1.1 with trailers (tests/proxy/grpc_h1_upstream.py; the cluster
has enable_trailers): pylon's upstreams are HTTP/1.1 only, where Envoy would use HTTP/2 to a real gRPC server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.grpc_h1_upstream import FRAMED, MESSAGE, GrpcHttp1Upstream

BRIDGE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
TRAILERS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}}
CONFIGS: dict[str, dict[str, Any]] = {"plain": {}, "upgrade": {"upgrade_protobuf_to_grpc": True}}


class Setup:
    def __init__(self, ports: dict[str, int], upstream: GrpcHttp1Upstream) -> None:
        self.ports, self.upstream = ports, upstream

    def post(self, listener: str, path: str, content_type: str, body: bytes
             ) -> tuple[httpx.Response, dict[str, Any] | None]:
        before = len(self.upstream.requests)
        reply = httpx.post(f"http://127.0.0.1:{self.ports[listener]}{path}", headers={"content-type": content_type},
                           content=body, timeout=5)
        requests = self.upstream.requests
        return reply, requests[-1] if len(requests) > before else None


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"grpc-bridge-{request.param}")
    upstream = GrpcHttp1Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in CONFIGS}
        listeners = []
        for name, config in CONFIGS.items():
            listener = http_listener(name, ports[name], [route("/", "up")])
            listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
                "name": "envoy.filters.http.grpc_http1_bridge", "typed_config": {"@type": BRIDGE_TYPE, **config}})
            listeners.append(listener)
        launcher.start(listeners, [static_cluster("up", [upstream.port], typed_extension_protocol_options=TRAILERS)],
                       implementation=request.param)
        yield Setup(ports, upstream)
    finally:
        launcher.close()
        upstream.close()


def test_the_trailers_status_becomes_the_http_status(setup: Setup) -> None:
    reply, upstream = setup.post("plain", "/ok", "application/grpc", FRAMED)
    assert (reply.status_code, reply.content, reply.headers["grpc-status"]) == (200, FRAMED, "0")
    assert reply.headers["content-length"] == str(len(FRAMED)) and "transfer-encoding" not in reply.headers
    assert upstream is not None and upstream["body"] == FRAMED
    reply, _ = setup.post("plain", "/fail", "application/grpc", FRAMED)
    assert (reply.status_code, reply.content) == (503, FRAMED)
    assert (reply.headers["grpc-status"], reply.headers["grpc-message"]) == ("2", "boom")


def test_trailers_only_and_non_grpc_responses_pass_as_they_came(setup: Setup) -> None:
    reply, _ = setup.post("plain", "/trailers-only", "application/grpc", FRAMED)
    assert (reply.status_code, reply.content, reply.headers["grpc-status"]) == (200, b"", "14")
    reply, upstream = setup.post("plain", "/ok", "application/json", b"{}")
    assert (reply.status_code, reply.content) == (200, FRAMED)
    assert "grpc-status" not in reply.headers and reply.headers.get("transfer-encoding") == "chunked"
    assert upstream is not None and dict(upstream["headers"])["content-type"] == "application/json"


def test_protobuf_requests_are_upgraded_to_grpc(setup: Setup) -> None:
    reply, upstream = setup.post("upgrade", "/ok", "application/x-protobuf", MESSAGE)
    assert upstream is not None
    headers = dict(upstream["headers"])
    assert (headers["content-type"], upstream["body"]) == ("application/grpc", FRAMED)
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers and "te" not in headers
    assert (reply.status_code, reply.content, reply.headers["content-type"]) == (200, MESSAGE, "application/grpc")
    reply, _ = setup.post("upgrade", "/fail", "application/x-protobuf", MESSAGE)
    assert (reply.status_code, reply.content, reply.headers["grpc-message"]) == (503, MESSAGE, "boom")
    reply, upstream = setup.post("upgrade", "/ok", "application/grpc", FRAMED)  # already gRPC: not reframed
    assert upstream is not None and upstream["body"] == FRAMED and reply.content == FRAMED

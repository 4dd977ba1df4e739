"""Integration: grpc_http1_reverse_bridge - a grpcio client's calls answered by a plain HTTP/1.1 server - through
pylon and Envoy 1.40 alike.

The upstream sees the message without its gRPC prefix (withhold_grpc_frames) and the configured content-type;
it answers with that content-type and a body the client gets back as one gRPC message; an HTTP error becomes the
matching gRPC status, another content-type a gRPC error naming it. A route with the filter disabled passes the
call through untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route, static_cluster

BRIDGE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfigPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UPSTREAM_TYPE = "application/x-protobuf"


class PlainServer:
    """HTTP/1.1: /pkg.Svc/Echo answers the body reversed, /pkg.Svc/Down 503, /pkg.Svc/Text a text/plain body;
    every request's path, headers and body are kept."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("content-length", "0")))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass  # trailers
                return body

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self._body()
                owner.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                   "body": body})
                status, content_type, answer = 200, UPSTREAM_TYPE, body[::-1]
                if self.path.endswith("/Down"):
                    status = 503
                elif self.path.endswith("/Text"):
                    content_type = "text/plain"
                self.send_response(status)
                self.send_header("content-type", content_type)
                if not self.path.endswith("/NoLen"):
                    self.send_header("x-len", str(len(answer) + (1 if self.path.endswith("/BadLen") else 0)))
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[PlainServer]:
    server = PlainServer()
    yield server
    server.close()


def start(run_proxy: Callable[..., RunningProxy], implementation: str, upstream: PlainServer,
          **bridge: Any) -> RunningProxy:
    routes = [{**route("/pkg.Off/", "plain"), "typed_per_filter_config": {
        "envoy.filters.http.grpc_http1_reverse_bridge": {"@type": PER_ROUTE, "disabled": True}}},
        route("/", "plain")]
    listener = http_listener("main", free_port(), routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.grpc_http1_reverse_bridge", "typed_config": {
            "@type": BRIDGE, "content_type": UPSTREAM_TYPE, "withhold_grpc_frames": True, **bridge}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return run_proxy([listener], [static_cluster("plain", [upstream.port])], implementation=implementation)


def call(proxy: RunningProxy, method: str, message: bytes) -> tuple[grpc.StatusCode, bytes | str]:
    with grpc.insecure_channel(f"127.0.0.1:{proxy.ports['main']}") as channel:
        try:
            return grpc.StatusCode.OK, channel.unary_unary(method)(message, timeout=10)
        except grpc.RpcError as error:
            return error.code(), error.details()


def test_a_call_goes_up_as_plain_http(implementation: str, run_proxy: Callable[..., RunningProxy],
                                     upstream: PlainServer) -> None:
    proxy = start(run_proxy, implementation, upstream)
    assert call(proxy, "/pkg.Svc/Echo", b"hello message") == (grpc.StatusCode.OK, b"egassem olleh")
    (seen,) = upstream.seen
    assert seen["body"] == b"hello message"  # the 5-byte prefix withheld
    assert (seen["headers"]["content-type"], seen["headers"]["accept"]) == (UPSTREAM_TYPE, UPSTREAM_TYPE)


@pytest.mark.parametrize(("method", "code", "details"), [
    ("/pkg.Svc/Down", grpc.StatusCode.UNAVAILABLE, None),
    ("/pkg.Svc/Text", grpc.StatusCode.UNKNOWN,
     "envoy reverse bridge: upstream responded with unsupported content-type text/plain, status code 200"),
])  # fmt: skip
def test_http_errors_become_grpc_statuses(implementation: str, run_proxy: Callable[..., RunningProxy],
                                          upstream: PlainServer, method: str, code: grpc.StatusCode,
                                          details: str | None) -> None:
    proxy = start(run_proxy, implementation, upstream)
    got_code, got_details = call(proxy, method, b"x")
    assert got_code == code
    if details is not None:
        assert got_details == details


def test_a_disabled_route_passes_the_call_as_it_is(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                   upstream: PlainServer) -> None:
    proxy = start(run_proxy, implementation, upstream)
    call(proxy, "/pkg.Off/Echo", b"abc")
    (seen,) = upstream.seen
    assert seen["headers"]["content-type"] == "application/grpc" and seen["body"] == b"\x00\x00\x00\x00\x03abc"




@pytest.mark.parametrize(("method", "code", "details"), [
    ("/pkg.Svc/Echo", grpc.StatusCode.OK, None),
    ("/pkg.Svc/BadLen", grpc.StatusCode.INTERNAL, "envoy reverse bridge: upstream set incorrect content length"),
    ("/pkg.Svc/NoLen", grpc.StatusCode.INTERNAL, "envoy reverse bridge: upstream did not set content length"),
])  # fmt: skip
def test_response_size_header_gives_the_message_length(
        implementation: str, run_proxy: Callable[..., RunningProxy], upstream: PlainServer, method: str,
        code: grpc.StatusCode, details: str | None) -> None:
    proxy = start(run_proxy, implementation, upstream, response_size_header="x-len")
    got_code, got = call(proxy, method, b"sized")
    if implementation == "envoy" and method.endswith("/BadLen"):
        # Envoy streams the head before it can count the body, so it can only reset the stream (INTERNAL); pylon
        # holds the response and answers the gRPC error its code means to send (a departure, documented).
        assert got_code == grpc.StatusCode.INTERNAL
        return
    assert got_code == code
    assert got == (b"dezis" if details is None else details)

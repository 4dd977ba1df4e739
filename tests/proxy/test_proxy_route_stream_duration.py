"""Integration: RouteAction.max_stream_duration (Envoy's newer gRPC timeouts) through pylon and Envoy 1.40.

grpcio clients over h2c; upstreams speak gRPC's framing over HTTP/1.1 with trailers (recording what reaches them)
or never answer. Expectations are Envoy's, observed side by side: the route's `timeout` no longer applies, the
stream's limit is the grpc-timeout capped and offset (or the route's max_stream_duration), the client gets
DEADLINE_EXCEEDED "downstream duration timeout", and the upstream sees that limit as its grpc-timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.grpc_h1_upstream import MESSAGE, GrpcHttp1Upstream
from tests.proxy.test_proxy_grpc_http1_bridge import TRAILERS
from tests.proxy.test_proxy_http2 import BlackHole

ROUTES: list[dict[str, Any]] = [
    route("/route.Capped/", "silent", timeout="0.2s", max_stream_duration={"max_stream_duration": "1.5s"}),
    route("/header.Capped/", "silent", max_stream_duration={"grpc_timeout_header_max": "0.5s"}),
    route("/header.Seen/", "recording", max_stream_duration={"grpc_timeout_header_max": "0.5s",
                                                              "grpc_timeout_header_offset": "0.1s"}),
    route("/fixed.Seen/", "recording", max_stream_duration={"max_stream_duration": "3s"}),
    route("/unlimited.Seen/", "recording", max_stream_duration={"max_stream_duration": "0s"}),
    route("/old.Seen/", "recording", max_grpc_timeout="0.7s",
          max_stream_duration={"max_stream_duration": "3s"}),  # the newer field wins: max_grpc_timeout ignored
]


class Setup:
    def __init__(self, port: int, recording: GrpcHttp1Upstream, stats: Any) -> None:
        self.port, self.recording, self.stats = port, recording, stats

    def call(self, path: str, timeout: float = 20) -> tuple[grpc.StatusCode, str, float]:
        """(status code, details, seconds taken) of one unary call."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            began = time.monotonic()
            try:
                method(MESSAGE, timeout=timeout)
            except grpc.RpcError as error:
                return error.code(), error.details(), time.monotonic() - began
            return grpc.StatusCode.OK, "", time.monotonic() - began

    def upstream_saw(self, path: str) -> dict[str, str]:
        before = len(self.recording.requests)
        assert self.call(path)[0] == grpc.StatusCode.OK
        assert len(self.recording.requests) == before + 1
        return dict(self.recording.requests[-1]["headers"])


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"stream-duration-{request.param}")
    silent, recording = BlackHole(), GrpcHttp1Upstream()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        proxy = launcher.start([http_listener("main", port, ROUTES)], [
            static_cluster("silent", [silent.port]),
            static_cluster("recording", [recording.port], typed_extension_protocol_options=TRAILERS)],
            implementation=request.param)
        yield Setup(port, recording, proxy.stats)
    finally:
        launcher.close()
        silent.close()
        recording.close()


def test_the_route_timeout_gives_way_to_max_stream_duration(setup: Setup) -> None:
    before = setup.stats().get("http.main.downstream_rq_max_duration_reached", 0)
    code, details, took = setup.call("/route.Capped/M")
    assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, "downstream duration timeout")
    assert took >= 1.4  # not the route's 0.2s timeout
    assert setup.stats()["http.main.downstream_rq_max_duration_reached"] == before + 1


def test_grpc_timeout_is_capped_by_grpc_timeout_header_max(setup: Setup) -> None:
    code, details, took = setup.call("/header.Capped/M", timeout=20)
    assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, "downstream duration timeout")
    assert 0.4 <= took < 10


def test_the_upstream_sees_the_limit_as_its_grpc_timeout(setup: Setup) -> None:
    seen = setup.upstream_saw("/header.Seen/M")  # min(client's ~20s, 500ms) - 100ms
    assert seen["grpc-timeout"] == "400m" and "x-envoy-expected-rq-timeout-ms" not in seen
    seen = setup.upstream_saw("/fixed.Seen/M")
    assert seen["grpc-timeout"] == "3000m" and "x-envoy-expected-rq-timeout-ms" not in seen
    seen = setup.upstream_saw("/old.Seen/M")
    assert seen["grpc-timeout"] == "3000m" and "x-envoy-expected-rq-timeout-ms" not in seen


def test_no_limit_leaves_the_clients_grpc_timeout(setup: Setup) -> None:
    seen = setup.upstream_saw("/unlimited.Seen/M")
    assert seen["grpc-timeout"].endswith(("m", "S", "u", "n")) and seen["grpc-timeout"] != "3000m"
    assert "x-envoy-expected-rq-timeout-ms" not in seen


def test_a_plain_request_keeps_its_headers_and_loses_the_route_timeout(setup: Setup) -> None:
    reply = httpx.post(f"http://127.0.0.1:{setup.port}/fixed.Seen/M", content=b"x",
                       headers={"content-type": "application/json", "grpc-timeout": "5S"}, timeout=10)
    assert reply.status_code == 200
    seen = dict(setup.recording.requests[-1]["headers"])
    assert seen["grpc-timeout"] == "5S" and "x-envoy-expected-rq-timeout-ms" not in seen

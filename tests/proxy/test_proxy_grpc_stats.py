"""Integration: envoy.filters.http.grpc_stats through pylon and Envoy 1.40, /stats compared.

grpcio clients over h2c and raw HTTP/1.1 requests; the upstream speaks gRPC's framing over HTTP/1.1 with trailers
(tests/proxy/grpc_h1_upstream.py: the method name picks ok, fail or trailers-only). Each listener has its own
cluster, so each config's counters stand apart. The expected counters are the ones Envoy 1.40 printed.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.grpc_h1_upstream import FRAMED, MESSAGE, GrpcHttp1Upstream
from tests.proxy.test_proxy_grpc_http1_bridge import TRAILERS

STATS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
CONFIGS: dict[str, dict[str, Any]] = {
    "all": {"stats_for_all_methods": True, "enable_upstream_stats": True},
    "allow": {"individual_method_stats_allowlist": {"services": [{"name": "svc.A", "method_names": ["ok"]}]}},
    "dflt": {},
    "dots": {"stats_for_all_methods": True, "replace_dots_in_grpc_service_name": True},
    "local": {"stats_for_all_methods": True, "enable_upstream_stats": True},  # its cluster has no hosts
}
CALLS = [("/svc.A/ok", grpc.StatusCode.OK), ("/svc.A/fail", grpc.StatusCode.UNKNOWN),
         ("/svc.B/ok", grpc.StatusCode.OK), ("/svc.A/trailers-only", grpc.StatusCode.UNAVAILABLE)]


class Setup:
    def __init__(self, proxy: RunningProxy, upstream: GrpcHttp1Upstream) -> None:
        self.proxy, self.upstream = proxy, upstream

    def grpc_calls(self, listener: str) -> list[grpc.StatusCode]:
        codes = []
        with grpc.insecure_channel(f"127.0.0.1:{self.proxy.ports[listener]}") as channel:
            for path, _ in CALLS:
                method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                try:
                    method(MESSAGE, timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
        return codes

    def http1(self, listener: str, path: str, content_type: str, pieces: list[bytes]) -> bytes:
        """One HTTP/1.1 request with a content-length, its body written in `pieces`; the whole answer."""
        body = b"".join(pieces)
        with socket.create_connection(("127.0.0.1", self.proxy.ports[listener]), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
                         f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
            for piece in pieces:
                sock.sendall(piece)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    def grpc_stats(self, cluster: str) -> dict[str, int]:
        prefix = f"cluster.{cluster}.grpc"
        return {name: value for name, value in self.proxy.stats().items() if name.startswith(prefix)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"grpc-stats-{request.param}")
    upstream = GrpcHttp1Upstream()
    launcher = ProxyLauncher(directory)
    try:
        listeners, clusters = [], []
        for name, config in CONFIGS.items():
            listener = http_listener(name, free_port(), [route("/", f"up_{name}")])
            listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
                "name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": STATS_TYPE, **config}})
            listeners.append(listener)
            clusters.append(static_cluster(f"up_{name}", [] if name == "local" else [upstream.port],
                                           typed_extension_protocol_options=TRAILERS))
        proxy = launcher.start(listeners, clusters, implementation=request.param)
        for name in CONFIGS:
            setup = Setup(proxy, upstream)
            if name != "local":
                assert setup.grpc_calls(name) == [code for _, code in CALLS]  # trailers-only: UNAVAILABLE
                setup.http1(name, "/svc.A/ok", "application/grpc", [FRAMED[:3], FRAMED[3:] + FRAMED[:1], FRAMED[1:]])
                setup.http1(name, "/svc.A/ok", "application/json", [b"{}"])  # not gRPC
                setup.http1(name, "/not-a-method", "application/grpc", [FRAMED])  # not /service/method
                setup.http1(name, "/a/b/c", "application/grpc", [FRAMED])
        yield Setup(proxy, upstream)
    finally:
        launcher.close()
        upstream.close()


def test_every_method_has_its_own_counters(setup: Setup) -> None:
    assert wait_until(lambda: setup.grpc_stats("up_all").get("cluster.up_all.grpc.svc.A.ok.total") == 2)
    assert setup.grpc_stats("up_all") == {
        "cluster.up_all.grpc.svc.A.ok.0": 2, "cluster.up_all.grpc.svc.A.ok.success": 2,
        "cluster.up_all.grpc.svc.A.ok.total": 2,
        "cluster.up_all.grpc.svc.A.ok.request_message_count": 3,  # the split HTTP/1.1 body held two messages
        "cluster.up_all.grpc.svc.A.ok.response_message_count": 2,
        "cluster.up_all.grpc.svc.A.fail.2": 1, "cluster.up_all.grpc.svc.A.fail.failure": 1,
        "cluster.up_all.grpc.svc.A.fail.total": 1, "cluster.up_all.grpc.svc.A.fail.request_message_count": 1,
        "cluster.up_all.grpc.svc.A.fail.response_message_count": 1,
        "cluster.up_all.grpc.svc.B.ok.0": 1, "cluster.up_all.grpc.svc.B.ok.success": 1,
        "cluster.up_all.grpc.svc.B.ok.total": 1, "cluster.up_all.grpc.svc.B.ok.request_message_count": 1,
        "cluster.up_all.grpc.svc.B.ok.response_message_count": 1,
        "cluster.up_all.grpc.svc.A.trailers-only.14": 1, "cluster.up_all.grpc.svc.A.trailers-only.failure": 1,
        "cluster.up_all.grpc.svc.A.trailers-only.total": 1,
        "cluster.up_all.grpc.svc.A.trailers-only.request_message_count": 1,  # no body back: no response count
    }


def test_upstream_stats_are_a_histogram_per_method(setup: Setup) -> None:
    text = setup.proxy.admin("/stats").text
    for method in ("svc.A.ok", "svc.A.fail", "svc.B.ok", "svc.A.trailers-only"):
        assert f"cluster.up_all.grpc.{method}.upstream_rq_time: " in text
    assert "cluster.up_allow.grpc.svc.A.ok.upstream_rq_time" not in text  # enable_upstream_stats unset


def test_the_allowlist_names_its_methods_and_the_rest_count_together(setup: Setup) -> None:
    assert setup.grpc_stats("up_allow") == {
        "cluster.up_allow.grpc.svc.A.ok.0": 2, "cluster.up_allow.grpc.svc.A.ok.success": 2,
        "cluster.up_allow.grpc.svc.A.ok.total": 2, "cluster.up_allow.grpc.svc.A.ok.request_message_count": 3,
        "cluster.up_allow.grpc.svc.A.ok.response_message_count": 2,
        "cluster.up_allow.grpc.0": 1, "cluster.up_allow.grpc.2": 1, "cluster.up_allow.grpc.14": 1,
        "cluster.up_allow.grpc.success": 1, "cluster.up_allow.grpc.failure": 2, "cluster.up_allow.grpc.total": 3,
        "cluster.up_allow.grpc.request_message_count": 3, "cluster.up_allow.grpc.response_message_count": 2,
    }


def test_by_default_no_method_has_its_own_name(setup: Setup) -> None:
    assert setup.grpc_stats("up_dflt") == {
        "cluster.up_dflt.grpc.0": 3, "cluster.up_dflt.grpc.2": 1, "cluster.up_dflt.grpc.14": 1,
        "cluster.up_dflt.grpc.success": 3, "cluster.up_dflt.grpc.failure": 2, "cluster.up_dflt.grpc.total": 5,
        "cluster.up_dflt.grpc.request_message_count": 6, "cluster.up_dflt.grpc.response_message_count": 4,
    }


def test_service_dots_can_be_underscores(setup: Setup) -> None:
    assert setup.grpc_stats("up_dots")["cluster.up_dots.grpc.svc_A.ok.total"] == 2
    assert not any(".svc.A." in name for name in setup.grpc_stats("up_dots"))


def test_the_proxys_own_grpc_reply_counts_as_a_failure(setup: Setup) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{setup.proxy.ports['local']}") as channel:
        method = channel.unary_unary("/svc.A/ok", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failure:
            method(MESSAGE, timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    stats = wait_until(lambda: setup.grpc_stats("up_local") or None)
    assert stats == {"cluster.up_local.grpc.svc.A.ok.14": 1, "cluster.up_local.grpc.svc.A.ok.failure": 1,
                     "cluster.up_local.grpc.svc.A.ok.total": 1}
    assert "cluster.up_local.grpc.svc.A.ok.upstream_rq_time" not in setup.proxy.admin("/stats").text


def test_the_bodies_keep_their_framing(setup: Setup) -> None:
    before = len(setup.upstream.requests)
    answer = setup.http1("all", "/svc.A/ok", "application/grpc", [FRAMED])
    request = setup.upstream.requests[before]
    assert dict(request["headers"]).get("content-length") == str(len(FRAMED)) and request["body"] == FRAMED
    assert b"transfer-encoding: chunked" in answer and FRAMED in answer

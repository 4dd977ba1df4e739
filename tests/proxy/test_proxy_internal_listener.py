"""Internal listeners (`envoy.bootstrap.internal_listener`), run through pylon and Envoy 1.40 alike: a listener on a
port, a cluster whose endpoint is an `envoy_internal_address`, the internal listener (HCM or tcp_proxy) in front of
a real upstream. Responses, what the upstream saw, the addresses each side reports and the stats are compared.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    FILE_LOG_TYPE, HCM_TYPE, ROUTER_TYPE, TCP_PROXY_TYPE, ProxyLauncher, http_listener, read_json_lines, route,
    static_cluster, tcp_listener,
)
from tests.proxy.upstreams import TcpEcho, Upstream

EXTENSION = {"name": "envoy.bootstrap.internal_listener", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}


def internal_cluster(name: str, listener: str, endpoint_id: str = "") -> dict[str, Any]:
    address = {"server_listener_name": listener, **({"endpoint_id": endpoint_id} if endpoint_id else {})}
    return {"name": name, "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"envoy_internal_address": address}}}]}]}}


def internal_http_listener(name: str, cluster: str, log: Path) -> dict[str, Any]:
    fmt = {"dr": "%DOWNSTREAM_REMOTE_ADDRESS%", "dl": "%DOWNSTREAM_LOCAL_ADDRESS%", "up": "%UPSTREAM_HOST%"}
    typed = {"@type": HCM_TYPE, "stat_prefix": name, "http_filters": [{"name": "router", "typed_config": {
        "@type": ROUTER_TYPE}}], "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            route("/", cluster)]}]},
        "access_log": [{"name": "log", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(log),
                                                        "log_format": {"json_format": fmt}}}]}
    return {"name": name, "internal_listener": {}, "filter_chains": [{"filters": [{"name": "hcm",
                                                                                  "typed_config": typed}]}]}


def internal_tcp_listener(name: str, cluster: str) -> dict[str, Any]:
    return {"name": name, "internal_listener": {}, "filter_chains": [{"filters": [{"name": "tcp", "typed_config": {
        "@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster}}]}]}


def front_log(path: Path) -> list[dict[str, Any]]:
    fmt = {"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "up": "%UPSTREAM_HOST%",
           "ul": "%UPSTREAM_LOCAL_ADDRESS%", "details": "%RESPONSE_CODE_DETAILS%"}
    return [{"name": "log", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(path),
                                             "log_format": {"json_format": fmt}}}]


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def start_http_chain(implementation: str, tmp_path: Path, upstream: Upstream, buffer_size_kb: int | None = None,
                     http2: bool = False):
    """front (HTTP, a port) -> cluster `inner` (internal address) -> internal listener `inner` (HCM) -> upstream."""
    launcher = ProxyLauncher(tmp_path)
    port = free_port()
    logs = tmp_path / f"{implementation}-front.log", tmp_path / f"{implementation}-inner.log"
    front = http_listener("front", port, [route("/missing", "nowhere"), route("/", "inner")],
                          access_log=front_log(logs[0]))
    extension = dict(EXTENSION)
    if buffer_size_kb is not None:
        extension = {**EXTENSION, "typed_config": {**EXTENSION["typed_config"], "buffer_size_kb": buffer_size_kb}}
    inner = internal_cluster("inner", "inner", "e1")
    if http2:
        inner["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    proxy = launcher.start(
        [front, internal_http_listener("inner", "up", logs[1])],
        [inner, internal_cluster("nowhere", "no_such_listener"), static_cluster("up", [upstream.port])],
        implementation=implementation, bootstrap_extra={"bootstrap_extensions": [extension]})
    return launcher, proxy, port, logs


def test_http_through_an_internal_listener(implementation: str, tmp_path: Path, upstream: Upstream) -> None:
    launcher, proxy, port, logs = start_http_chain(implementation, tmp_path, upstream)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/respond?x-a=1", headers={"x-client": "c"}, timeout=10)
        assert answer.status_code == 200 and answer.text == "respond\n" and answer.headers["x-a"] == "1"
        seen = upstream.requests[-1]
        assert seen["path"] == "/respond?x-a=1" and seen["headers"]["x-client"] == "c"
        # Each HCM adds its hop: the inner one has an internal peer, which it does not append to x-forwarded-for.
        assert "x-forwarded-for" not in seen["headers"]
        assert seen["headers"]["x-forwarded-proto"] == "http"
        front, = read_json_lines(logs[0], 1, timeout=10)
        inner, = read_json_lines(logs[1], 1, timeout=10)
        assert (front["up"], front["ul"], front["code"]) == ("envoy://inner/e1", "envoy://internal_client_address/",
                                                              200)
        assert (inner["dr"], inner["dl"]) == ("envoy://internal_client_address/", "envoy://inner/e1")
        assert inner["up"] == f"127.0.0.1:{upstream.port}"
        stats = proxy.stats()
        assert stats["listener.envoy_internal_inner.downstream_cx_total"] == 1
        assert stats["http.inner.downstream_rq_2xx"] == 1
        assert stats["cluster.inner.upstream_cx_total"] == 1 and stats["cluster.inner.upstream_rq_200"] == 1
    finally:
        launcher.close()


def test_a_missing_internal_listener_fails_the_connect(implementation: str, tmp_path: Path,
                                                      upstream: Upstream) -> None:
    launcher, proxy, port, logs = start_http_chain(implementation, tmp_path, upstream)
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/missing", timeout=10)
        assert answer.status_code == 503
        assert answer.text == ("upstream connect error or disconnect/reset before headers. reset reason: remote "
                               "connection failure")
        line, = read_json_lines(logs[0], 1, timeout=10)
        assert (line["code"], line["flags"], line["up"]) == (503, "UF", "envoy://no_such_listener/")
        assert line["details"] == ("upstream_reset_before_response_started{remote_connection_failure|immediate_connect"
                                   "_error:_Invalid_argument|remote_address:envoy://no_such_listener/}")
        assert proxy.stats()["cluster.nowhere.upstream_cx_connect_fail"] == 1
    finally:
        launcher.close()


def test_large_bodies_both_ways_with_a_small_buffer(implementation: str, tmp_path: Path, upstream: Upstream) -> None:
    """8 MiB up and back, then 16 MiB down three times, through a 1 KiB internal buffer: back-pressure holds each
    side, nothing is lost, the pooled connection serves on."""
    launcher, _proxy, port, _logs = start_http_chain(implementation, tmp_path, upstream, buffer_size_kb=1)
    try:
        body = bytes(range(256)) * (8 * 4096)
        answer = httpx.post(f"http://127.0.0.1:{port}/echo", content=body, timeout=60)
        assert answer.status_code == 200
        assert hashlib.sha256(answer.content).hexdigest() == hashlib.sha256(body).hexdigest()
        for _ in range(3):
            # On the pooled connection the last response left: one that completed as the client's buffer paused its
            # reading must have been handed back reading (pylon once answered the next request 504).
            big = httpx.get(f"http://127.0.0.1:{port}/bytes/{16 << 20}", timeout=60)
            assert big.status_code == 200 and len(big.content) == 16 << 20
    finally:
        launcher.close()


def test_http2_to_an_internal_listener(implementation: str, tmp_path: Path, upstream: Upstream) -> None:
    """An HTTP/2 cluster: h2c over the in-process connection to the internal HCM (codec AUTO); several requests share
    the one connection, bodies both ways."""
    launcher, proxy, port, _logs = start_http_chain(implementation, tmp_path, upstream, http2=True)
    try:
        with httpx.Client(timeout=30) as client:
            for size in (0, 10, 1 << 20):
                body = b"z" * size
                answer = client.post(f"http://127.0.0.1:{port}/echo", content=body)
                assert answer.status_code == 200 and answer.content == body
        assert upstream.echoed == [b"", b"z" * 10, b"z" * (1 << 20)]
        stats = proxy.stats()
        assert stats["cluster.inner.upstream_cx_http2_total"] == 1
        assert stats["http.inner.downstream_cx_http2_total"] == 1 and stats["http.inner.downstream_rq_2xx"] == 3
    finally:
        launcher.close()


def test_tcp_proxy_chain_as_envoys_example(implementation: str, tmp_path: Path) -> None:
    """configs/internal_listener_proxy.yaml's shape: tcp_proxy -> internal listener (tcp_proxy) -> a TCP server;
    4 MiB echoed back, the client's half close reaching the server and the server's coming back."""
    echo = TcpEcho()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        proxy = launcher.start(
            [tcp_listener("ingress", port, "encap_cluster"), internal_tcp_listener("encap", "cluster_0")],
            [internal_cluster("encap_cluster", "encap"), static_cluster("cluster_0", [echo.port])],
            implementation=implementation, bootstrap_extra={"bootstrap_extensions": [EXTENSION]})
        payload = hashlib.sha256(b"seed").digest() * (4 << 20 >> 5)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := client.recv(1 << 16):
                got += chunk
        assert bytes(got) == payload
        stats = proxy.stats()
        assert stats["listener.envoy_internal_encap.downstream_cx_total"] == 1
        assert stats["tcp.encap.downstream_cx_total"] == 1
        assert stats["cluster.encap_cluster.upstream_cx_total"] == 1
    finally:
        launcher.close()
        echo.close()


def test_tcp_proxy_to_a_missing_internal_listener_closes(implementation: str, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        proxy = launcher.start([tcp_listener("ingress", port, "nowhere")], [internal_cluster("nowhere", "no_such")],
                               implementation=implementation, bootstrap_extra={"bootstrap_extensions": [EXTENSION]})
        with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
            assert client.recv(100) == b""  # closed
        stats = proxy.stats()
        assert stats["cluster.nowhere.upstream_cx_connect_fail"] == 1
        assert stats["tcp.ingress.downstream_cx_total"] == 1
    finally:
        launcher.close()


@pytest.mark.parametrize(("change", "path", "message"), [
    ("no_extension", "static_resources.listeners[1].internal_listener",
     "InternalListener bootstrap extension is mandatory"),
    ("address", "static_resources.listeners[1].address",
     "address should not be used when an internal listener config is provided"),
    ("internal_address_on_a_listener", "static_resources.listeners[1].address.envoy_internal_address",
     "use internal_listener field instead of address for internal listeners"),
    ("buffer_0", "bootstrap_extensions[0].typed_config.buffer_size_kb", ">= 1"),
    ("buffer_8193", "bootstrap_extensions[0].typed_config.buffer_size_kb", "<= 8192"),
    ("no_listener_name", "envoy_internal_address.server_listener_name", "missing required field"),
    ("dns_cluster", "endpoint.address.envoy_internal_address", "STRICT_DNS"),
])
@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_config_errors(implementation: str, change: str, path: str, message: str, tmp_path: Path,
                       launcher: ProxyLauncher) -> None:
    """Each refused by both (Envoy's own messages where it has one), pylon's naming the field."""
    import subprocess
    import yaml

    from tests.conftest import pylon_cmd
    from tests.proxy.conftest import ENVOY_BIN

    listeners = [tcp_listener("ingress", 10000, "encap"), internal_tcp_listener("encap", "up")]
    clusters = [internal_cluster("encap", "encap"), static_cluster("up", [10001])]
    extension: dict[str, Any] = {**EXTENSION, "typed_config": dict(EXTENSION["typed_config"])}
    extensions = [extension]
    if change == "no_extension":
        extensions = []
    elif change == "address":
        listeners[1]["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 10002}}
    elif change == "internal_address_on_a_listener":
        del listeners[1]["internal_listener"]
        listeners[1]["address"] = {"envoy_internal_address": {"server_listener_name": "x"}}
    elif change.startswith("buffer_"):
        extension["typed_config"]["buffer_size_kb"] = int(change[len("buffer_"):])
    elif change == "no_listener_name":
        clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
            "envoy_internal_address": {}}
    elif change == "dns_cluster":
        clusters[0]["type"] = "STRICT_DNS"
        if implementation == "envoy":
            pytest.skip("Envoy 1.40 accepts it at load (the cluster then never resolves); pylon refuses it")
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump({"bootstrap_extensions": extensions,
                                      "static_resources": {"listeners": listeners, "clusters": clusters}}))
    if implementation == "envoy":
        if not ENVOY_BIN.exists():
            pytest.skip("Envoy is not installed")
        result = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(config)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0
        return
    result = subprocess.run(pylon_cmd("proxy", "--mode", "validate", "-c", str(config)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert path in output and message in output, output

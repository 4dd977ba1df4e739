"""Integration: every upstream connection applies the cluster's TLS, whoever opens it (pylon and Envoy alike).

`tcp_proxy` to a cluster with a TLS transport socket must originate TLS (SNI,
client certificate, the server's SANs checked), not relay the client's bytes in
cleartext; a server whose SAN the cluster refuses gets no byte. Health checks of
an HTTPS cluster must speak TLS too, or every host stays unhealthy.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pylon.identity.certs import TestPki, make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, tcp_listener, wait_until
from tests.proxy.test_proxy_tls import _server_context, _tls_cluster
from tests.proxy.upstreams import Upstream


class TlsEcho:
    """A TLS server echoing each connection's bytes; records the SNI and client certificate of each handshake."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.server_names: list[str | None] = []
        self.client_certs: list[bool] = []
        context.sni_callback = lambda sslobj, name, ctx: self.server_names.append(name)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.client_certs.append(tls.getpeercert() is not None)
                while data := tls.recv(65536):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_echo(pki: TestPki) -> Iterator[TlsEcho]:
    echo = TlsEcho(_server_context(pki, require_client_cert=True))
    yield echo
    echo.close()


def relay(port: int, payload: bytes) -> bytes:
    """Send `payload` through a tcp_proxy listener and read until the proxy closes or 2 s pass."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        client.sendall(payload)
        received = b""
        try:
            while len(received) < len(payload) and (chunk := client.recv(65536)):
                received += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return received


def start(launcher: ProxyLauncher, implementation: str, cluster: dict[str, Any]) -> RunningProxy:
    return launcher.start([tcp_listener("tcp", free_port(), cluster["name"])], [cluster], implementation=implementation)


def test_tcp_proxy_originates_tls_to_a_tls_cluster(launcher: ProxyLauncher, implementation: str, pki: TestPki,
                                                   tls_echo: TlsEcho) -> None:
    proxy = start(launcher, implementation, _tls_cluster("secure", tls_echo.port, pki))
    assert relay(proxy.ports["tcp"], b"ping over tls") == b"ping over tls"
    assert tls_echo.server_names == ["backend.example"] and tls_echo.client_certs == [True]


def test_tcp_proxy_gives_no_byte_to_a_server_with_the_wrong_san(launcher: ProxyLauncher, implementation: str,
                                                                 pki: TestPki, tls_echo: TlsEcho) -> None:
    proxy = start(launcher, implementation, _tls_cluster("badsan", tls_echo.port, pki, san="wrong.example"))
    assert relay(proxy.ports["tcp"], b"secret") == b""
    assert wait_until(lambda: proxy.stats().get("cluster.badsan.upstream_cx_connect_fail", 0) >= 1)


def test_health_checks_of_an_https_cluster_speak_tls(launcher: ProxyLauncher, implementation: str, pki: TestPki,
                                                     upstreams: Any) -> None:
    (secure,) = upstreams(1, tls=_server_context(pki, require_client_cert=True))
    cluster = _tls_cluster("secure", secure.port, pki)
    cluster["health_checks"] = [{"timeout": "1s", "interval": "0.2s", "healthy_threshold": 1,
                                 "unhealthy_threshold": 1, "no_traffic_interval": "0.2s",
                                 "http_health_check": {"path": "/status/200"}}]
    proxy = start(launcher, implementation, cluster)
    assert wait_until(lambda: proxy.stats().get("cluster.secure.health_check.success", 0) >= 2, timeout=10)
    assert proxy.stats().get("cluster.secure.health_check.failure", 0) == 0
    assert any(r["path"] == "/status/200" for r in secure.requests)


def test_a_tls13_upstream_refusing_the_client_after_its_handshake_gets_a_503(
        launcher: ProxyLauncher, implementation: str, pki: TestPki, tls_echo: TlsEcho) -> None:
    """Over TLS 1.3 the client's handshake is done before the server has checked it: a server that wants a client
    certificate refuses with an alert and closes after that. The connection may end before the pool has used it;
    every request must still get its 503 at once (the route has no timeout to end a wait)."""
    cluster = _tls_cluster("nocert", tls_echo.port, pki, client_cert=False)
    proxy = launcher.start([http_listener("web", free_port(), [
        {"match": {"prefix": "/"}, "route": {"cluster": "nocert", "timeout": "0s"}}])], [cluster],
        implementation=implementation)
    with httpx.Client(timeout=5) as client:
        statuses = [client.get(f"http://127.0.0.1:{proxy.ports['web']}/{i}").status_code for i in range(8)]
    assert statuses == [503] * 8

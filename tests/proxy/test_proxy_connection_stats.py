"""Integration: the connection manager's per-connection stats and the clusters' connection timings, through pylon
and Envoy 1.40 alike.

Envoy counts a downstream connection's end as the proxy's (`downstream_cx_destroy_local`: it closed the socket,
its delayed close's timer included, `downstream_cx_delayed_close_timeout`) or the client's
(`downstream_cx_destroy_remote`: its FIN or reset, also while the proxy waits in a delayed close;
`downstream_cx_destroy_remote_active_rq` when a request was still open, an upgraded tunnel's too). It counts a
downstream connection in `http.<prefix>.downstream_cx_ssl_total` / `_active` when it is TLS, in
`downstream_cx_http1_total` / `_active` or `downstream_cx_http2_total` / `_active` once its first bytes arrive and
its codec exists (a connection that sends nothing, a TCP health probe's, is in neither), and records its length in
`downstream_cx_length_ms` when it closes (and again in its listener's `listener.<address>.downstream_cx_length_ms`,
a probe's connection too). A cluster's pools record `upstream_cx_connect_ms` for each connection
that came up and `upstream_cx_length_ms` for each that closed. Histograms are read as Prometheus sample counts
(Envoy merges them at its stats flush, every 5 s).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pylon.identity.certs import make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.test_proxy_byte_stats import CountingH2Client, CountingServer, read_to_eof, settled
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.test_proxy_tls import _file
from tests.proxy.upstreams import ClosingUpstream, RecordingUpstream

#: listener: how its one connection ends, and the counters that end moves (the others stay 0)
ENDINGS: dict[str, dict[str, int]] = {
    "client_fin": {"downstream_cx_destroy_remote": 1},  # after a keep-alive exchange
    "connection_close": {"downstream_cx_destroy_local": 1},  # the proxy closes after answering
    "bad_request_waited": {"downstream_cx_destroy_local": 1, "downstream_cx_delayed_close_timeout": 1},
    "bad_request_fin": {"downstream_cx_destroy_remote": 1},  # the client's FIN while the proxy waits for it
    "reset_in_flight": {"downstream_cx_destroy_remote": 1, "downstream_cx_destroy_remote_active_rq": 1},
    "h2_reset_in_flight": {"downstream_cx_destroy_remote": 1, "downstream_cx_destroy_remote_active_rq": 1},
    "tunnel": {"downstream_cx_destroy_remote": 1, "downstream_cx_destroy_remote_active_rq": 1},
}
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], ca: Path) -> None:
        self.proxy, self.ports, self.ca = proxy, ports, ca

    def counters(self, prefix: str) -> dict[str, int]:
        return {name[len(prefix):]: value for name, value in self.proxy.stats().items() if name.startswith(prefix)}

    def samples(self, metric: str, **labels: str) -> int:
        """The sample count of one Prometheus histogram series (0 when it has none yet)."""
        text = self.proxy.admin("/stats/prometheus").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric + "_count" and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return int(sample.value)
        return 0

    def settled(self, prefix: str, expected: dict[str, int]) -> dict[str, int]:
        return settled(self.proxy, prefix, expected)

    def listener_lengths(self, name: str) -> int:
        """The samples of the listener's `listener.<address>.downstream_cx_length_ms` so far."""
        address = f"127.0.0.1_{self.ports[name]}"
        return self.samples("envoy_listener_downstream_cx_length_ms", envoy_listener_address=address)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"connection-stats-{request.param}")
    pki = make_test_pki(directory / "pki")
    upstream, closing = ClosingUpstream(per_connection=1000), ClosingUpstream(per_connection=1)
    slow, websocket = RecordingUpstream(), CountingServer()
    launcher = ProxyLauncher(directory)
    ports = {name: free_port() for name in ("auto", "silent", "tls", "closing", "answered", *ENDINGS)}
    try:
        tls = http_listener("tls", ports["tls"], [route("/", "up")])
        tls["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS, "common_tls_context": {"tls_certificates": [{
                "certificate_chain": _file(pki.server_ecdsa.cert), "private_key": _file(pki.server_ecdsa.key)}]}}}
        listeners = [http_listener("auto", ports["auto"], [route("/", "up")], codec_type="AUTO"),
                     http_listener("silent", ports["silent"], [route("/", "up")], codec_type="HTTP1"),
                     http_listener("closing", ports["closing"], [route("/", "closing_up")]), tls]
        listeners += [http_listener(name, ports[name], [route("/", "ws" if name == "tunnel" else "slow")],
                                    codec_type="AUTO", upgrade_configs=[{"upgrade_type": "websocket"}])
                      for name in (*ENDINGS, "answered")]
        clusters = [static_cluster("up", [upstream.port]), static_cluster("closing_up", [closing.port]),
                    static_cluster("slow", [slow.port]), static_cluster("ws", [websocket.port])]
        yield Setup(launcher.start(listeners, clusters, implementation=request.param), ports, pki.ca.cert)
    finally:
        launcher.close()
        for server in (upstream, closing, slow, websocket):
            server.close()


def one_request(sock: socket.socket | ssl.SSLSocket, close: bool = True) -> None:
    """A request and its answer; then (`close`) the half-close, read to the proxy's close."""
    sock.sendall(REQUEST)
    answer = b""
    while not answer.endswith(b"ok\n"):
        data = sock.recv(65536)
        assert data, answer
        answer += data
    if close:
        read_to_eof(sock)


def test_codecs_are_counted_when_the_first_bytes_arrive(setup: Setup) -> None:
    """Under AUTO, an HTTP/1.1 and an h2c connection each count in their codec; both are closed, so neither is
    active; each closed connection's length is recorded."""
    with socket.create_connection(("127.0.0.1", setup.ports["auto"]), timeout=5) as sock:
        one_request(sock)
    client = CountingH2Client(setup.ports["auto"])
    try:
        sid = client.get("/")
        client.pump_until(lambda: client.ended(sid))
        assert client.status(sid) == 200
        read_to_eof(client.sock)
    finally:
        client.close()
    expected = {"downstream_cx_total": 2, "downstream_cx_http1_total": 1, "downstream_cx_http2_total": 1,
                "downstream_cx_http1_active": 0, "downstream_cx_http2_active": 0, "downstream_cx_active": 0,
                "downstream_cx_ssl_total": 0}
    assert setup.settled("http.auto.", expected) == expected
    assert wait_until(lambda: setup.samples("envoy_http_downstream_cx_length_ms",
                                            envoy_http_conn_manager_prefix="auto") == 2, timeout=10)
    assert wait_until(lambda: setup.listener_lengths("auto") == 2, timeout=10)


def test_a_connection_that_sends_nothing_has_no_codec(setup: Setup) -> None:
    """A TCP probe's connection: counted as a connection, in no codec (even where codec_type is HTTP1)."""
    socket.create_connection(("127.0.0.1", setup.ports["silent"]), timeout=5).close()
    with socket.create_connection(("127.0.0.1", setup.ports["silent"]), timeout=5) as sock:
        one_request(sock)
    expected = {"downstream_cx_total": 2, "downstream_cx_destroy": 2, "downstream_cx_http1_total": 1,
                "downstream_cx_http1_active": 0}
    assert setup.settled("http.silent.", expected) == expected
    assert wait_until(lambda: setup.listener_lengths("silent") == 2, timeout=10)  # the probe's connection too


def test_tls_connections_are_counted(setup: Setup) -> None:
    context = ssl.create_default_context(cafile=str(setup.ca))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", setup.ports["tls"]), timeout=5),
                             server_hostname="localhost") as sock:
        one_request(sock, close=False)
        during = setup.counters("http.tls.")
        read_to_eof(sock)
    assert (during["downstream_cx_ssl_total"], during["downstream_cx_ssl_active"]) == (1, 1)
    expected = {"downstream_cx_ssl_total": 1, "downstream_cx_ssl_active": 0, "downstream_cx_http1_total": 1}
    assert setup.settled("http.tls.", expected) == expected


def test_upstream_connections_are_timed(setup: Setup) -> None:
    """Each request to `closing_up` gets a connection the upstream closes after its answer: two connects timed,
    two lengths recorded."""
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", setup.ports["closing"]), timeout=5) as sock:
            one_request(sock)
    assert wait_until(lambda: setup.counters("cluster.closing_up.").get("upstream_cx_destroy") == 2)
    labels: dict[str, Any] = {"envoy_cluster_name": "closing_up"}
    assert wait_until(lambda: setup.samples("envoy_cluster_upstream_cx_connect_ms", **labels) == 2, timeout=10)
    assert wait_until(lambda: setup.samples("envoy_cluster_upstream_cx_length_ms", **labels) == 2, timeout=10)


def end_connection(how: str, port: int) -> None:
    """One connection to `port`, ended as ENDINGS[how] says."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if how == "client_fin":
            one_request(sock, close=False)
        elif how == "connection_close":
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            while sock.recv(65536):
                pass
        elif how.startswith("bad_request"):
            sock.sendall(b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")
            if how == "bad_request_waited":  # the client waits for the proxy's FIN: its delayed close times out
                while sock.recv(65536):
                    pass
        elif how == "reset_in_flight":
            sock.sendall(b"GET /slow/2 HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
        elif how == "tunnel":
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 101")
            sock.sendall(b"hi")
            assert sock.recv(65536) == b"hi"
    finally:
        sock.close()


@pytest.mark.parametrize("how", list(ENDINGS))
def test_who_ended_a_connection(setup: Setup, how: str) -> None:
    if how == "h2_reset_in_flight":
        client = H2Client(setup.ports[how])
        client.get("/slow/2")
        time.sleep(0.3)
        client.close()
    else:
        end_connection(how, setup.ports[how])
    names = ["downstream_cx_destroy_local", "downstream_cx_destroy_remote", "downstream_cx_delayed_close_timeout",
             "downstream_cx_destroy_remote_active_rq"]
    expected = {name: ENDINGS[how].get(name, 0) for name in ["downstream_cx_destroy", *names]}
    expected["downstream_cx_destroy"] = 1
    assert setup.settled(f"http.{how}.", expected) == expected


def test_completed_requests_are_the_answered_ones(setup: Setup) -> None:
    """downstream_rq_completed counts each request a response went out for, with its class (a relayed 200, the
    proxy's own 400 for a malformed head); a request the client reset before its answer is in neither. The router's
    `rq_total` counts the requests that reached it: the reset one too, not the malformed head."""
    port = setup.ports["answered"]
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            one_request(sock)
    end_connection("reset_in_flight", port)
    expected = {"downstream_rq_completed": 2, "downstream_rq_2xx": 2, "downstream_rq_4xx": 0,
                "downstream_rq_5xx": 0, "downstream_cx_destroy": 3, "rq_total": 3}  # rq_total: the router's
    assert setup.settled("http.answered.", expected) == expected
    end_connection("bad_request_fin", port)
    expected.update(downstream_rq_completed=3, downstream_rq_4xx=1, downstream_cx_destroy=4)
    assert setup.settled("http.answered.", expected) == expected

"""Integration: the bytes each connection read and wrote, counted as Envoy counts them, through pylon and Envoy 1.40.

Envoy keeps, for every downstream connection of a connection manager, `http.<prefix>.downstream_cx_rx_bytes_total`
and `downstream_cx_tx_bytes_total`, and for every connection a cluster's pools open,
`cluster.<name>.upstream_cx_rx_bytes_total` and `upstream_cx_tx_bytes_total`: the bytes read from and written to
the socket (the plaintext, under TLS), whatever the protocol (HTTP/1.1, HTTP/2 frames, an upgraded connection's
tunnel, tcp_proxy). Each case here counts the same bytes at the other end of the socket (the client, the upstream
server) and reads the proxy's counters until they match; a connection is closed only after its peer read to EOF,
so nothing written is missed.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pylon.identity.certs import make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, tcp_listener, \
    wait_until
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.test_proxy_tls import _file
from tests.proxy.upstreams import TcpEcho

HTTP2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
CONNECT_ON = [{"upgrade_type": "CONNECT"}]
UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"


class CountingServer(TcpEcho):
    """An HTTP/1.1 keep-alive server (each head answered with RESPONSE; a websocket upgrade answered 101, then an
    echo; with `echo` every byte echoed) that counts the bytes it read and wrote over all its connections."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = self.sent = 0
        self.lock = threading.Lock()
        super().__init__()

    def _recv(self, conn: socket.socket) -> bytes:
        data = conn.recv(65536)
        with self.lock:
            self.received += len(data)
        return data

    def _send(self, conn: socket.socket, data: bytes) -> None:
        with self.lock:  # counted first: the client may read it (and the test the counts) before sendall returns
            self.sent += len(data)
        conn.sendall(data)

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            try:
                buffered, tunnel = b"", self.echo
                while True:
                    data = self._recv(conn)
                    if not data:
                        return
                    if tunnel:
                        self._send(conn, data)
                        continue
                    buffered += data
                    while b"\r\n\r\n" in buffered:
                        head, _, buffered = buffered.partition(b"\r\n\r\n")
                        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), 0)
                        while len(buffered) < length:
                            more = self._recv(conn)
                            if not more:
                                return
                            buffered += more
                        buffered = buffered[length:]
                        if b"\r\nupgrade: websocket" in head.lower():
                            self._send(conn, UPGRADED)
                            tunnel = True
                            if buffered:
                                self._send(conn, buffered)
                            break
                        self._send(conn, RESPONSE)
            except OSError:
                return

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.received, self.sent


class CountingH2Client(H2Client):
    """The test rig's HTTP/2 client, counting what it writes (what it read is `raw`)."""

    sent = 0

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sent += len(data)
            self.sock.sendall(data)


def settled(proxy: RunningProxy, prefix: str, expected: dict[str, int]) -> dict[str, int]:
    """The proxy's stats `prefix` + each name in `expected` (-1: absent), once they equal it (or after 5 s)."""
    def read() -> dict[str, int]:
        stats = proxy.stats()
        return {name: stats.get(prefix + name, -1) for name in expected}
    wait_until(lambda: read() == expected)
    return read()


def read_to_eof(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Half-close, then everything the proxy still writes until it closes (so its counters are final)."""
    if isinstance(sock, ssl.SSLSocket):
        sock = sock.unwrap()  # close_notify both ways: the proxy sees the end, and no record is left unread
    sock.shutdown(socket.SHUT_WR)
    rest = b""
    while data := sock.recv(65536):
        rest += data
    return rest


class Setup:
    def __init__(self, impl: str, proxy: RunningProxy, ports: dict[str, int], servers: dict[str, CountingServer],
                 ca: Path) -> None:
        self.impl, self.proxy, self.ports, self.servers, self.ca = impl, proxy, ports, servers, ca

    def settled(self, expected: dict[str, int]) -> dict[str, int]:
        """The proxy's counters named in `expected`, once they equal it (or as they are after 5 s)."""
        return settled(self.proxy, "", expected)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"byte-stats-{request.param}")
    pki = make_test_pki(directory / "pki")
    servers = {name: CountingServer(echo=name in ("echo", "term", "h2term", "tunnel", "tunnel_h2"))
               for name in ("h1", "h2", "ws", "echo", "tls", "term", "h2term", "tunnel", "tunnel_h2")}
    launcher = ProxyLauncher(directory)
    ports = {name: free_port() for name in ("h1", "h2", "ws", "tcp", "front", "back", "tls", "term", "h2term",
                                            "tunnel", "tunnel_end", "tunnel_h2", "tunnel_h2_end")}
    try:
        http2 = {"typed_extension_protocol_options": {HTTP2_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP2_OPTIONS}", "explicit_http_config": {"http2_protocol_options": {}}}}}
        tls = http_listener("tls", ports["tls"], [route("/", "tls_up")])
        tls["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS, "common_tls_context": {"tls_certificates": [{
                "certificate_chain": _file(pki.server_ecdsa.cert), "private_key": _file(pki.server_ecdsa.key)}]}}}
        listeners = [
            http_listener("h1", ports["h1"], [route("/", "h1_up")]),
            http_listener("h2", ports["h2"], [route("/", "h2_up")], codec_type="AUTO"),
            http_listener("ws", ports["ws"], [route("/", "ws_up")], upgrade_configs=[{"upgrade_type": "websocket"}]),
            tcp_listener("tcp", ports["tcp"], "tcp_up"),
            http_listener("front", ports["front"], [route("/", "back_up")]),
            http_listener("back", ports["back"], [{"match": {"prefix": "/"},
                                                   "direct_response": {"status": 200, "body": {"inline_string": "x"}}}],
                          codec_type="HTTP2"),
            tls,
            http_listener("term", ports["term"], [terminate("term_up")], upgrade_configs=CONNECT_ON),
            http_listener("h2term", ports["h2term"], [terminate("h2term_up")], upgrade_configs=CONNECT_ON,
                          codec_type="HTTP2"),
            tcp_listener("tunnel", ports["tunnel"], "tunnel_up", tunneling_config={"hostname": "h.example:443"}),
            http_listener("tunnel_end", ports["tunnel_end"], [terminate("tunnel_end_up")], upgrade_configs=CONNECT_ON),
            tcp_listener("tunnel_h2", ports["tunnel_h2"], "tunnel_h2_up", tunneling_config={"hostname": "h.example:443"}),
            http_listener("tunnel_h2_end", ports["tunnel_h2_end"], [terminate("tunnel_h2_end_up")],
                          upgrade_configs=CONNECT_ON, codec_type="HTTP2"),
        ]
        clusters = [static_cluster("h1_up", [servers["h1"].port]), static_cluster("h2_up", [servers["h2"].port]),
                    static_cluster("ws_up", [servers["ws"].port]), static_cluster("tcp_up", [servers["echo"].port]),
                    static_cluster("back_up", [ports["back"]], **http2), static_cluster("tls_up", [servers["tls"].port]),
                    static_cluster("term_up", [servers["term"].port]),
                    static_cluster("h2term_up", [servers["h2term"].port]),
                    static_cluster("tunnel_up", [ports["tunnel_end"]]),
                    static_cluster("tunnel_end_up", [servers["tunnel"].port]),
                    static_cluster("tunnel_h2_up", [ports["tunnel_h2_end"]], **http2),
                    static_cluster("tunnel_h2_end_up", [servers["tunnel_h2"].port])]
        proxy = launcher.start(listeners, clusters, implementation=request.param)
        yield Setup(request.param, proxy, ports, servers, pki.ca.cert)
    finally:
        launcher.close()
        for server in servers.values():
            server.close()


def terminate(cluster: str) -> dict[str, Any]:
    """A route that terminates CONNECT requests: the cluster's host gets the tunnel's bytes."""
    return {"match": {"connect_matcher": {}},
            "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}


def echoed_through(sock: socket.socket, payloads: list[bytes]) -> tuple[int, int]:
    """Each payload sent and its echo read; (bytes sent, bytes received)."""
    sent = received = 0
    for payload in payloads:
        sock.sendall(payload)
        sent += len(payload)
        echoed = b""
        while len(echoed) < len(payload):
            data = sock.recv(65536)
            assert data, echoed
            echoed += data
        assert echoed == payload
        received += len(echoed)
    return sent, received


def http1_exchanges(sock: socket.socket | ssl.SSLSocket) -> tuple[int, int]:
    """A GET and a POST with a body on one keep-alive connection, then the close; (bytes sent, bytes received)."""
    requests = [b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
                b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world"]
    sent = received = 0
    for request in requests:
        sock.sendall(request)
        sent += len(request)
        answer = b""
        while not (b"\r\n\r\n" in answer and answer.endswith(b"hello")):
            data = sock.recv(65536)
            assert data, answer
            answer += data
        received += len(answer)
    received += len(read_to_eof(sock))
    return sent, received


def check_both_ends(setup: Setup, listener: str, sent: int, received: int) -> tuple[int, int]:
    """The listener's connection manager counted what its client `sent` and `received`, and its cluster
    (`<listener>_up`) what the upstream server received and sent; returns the server's (received, sent)."""
    up_received, up_sent = setup.servers[listener].counts()
    expected = {f"http.{listener}.downstream_cx_rx_bytes_total": sent,
                f"http.{listener}.downstream_cx_tx_bytes_total": received,
                f"cluster.{listener}_up.upstream_cx_tx_bytes_total": up_received,
                f"cluster.{listener}_up.upstream_cx_rx_bytes_total": up_sent}
    assert setup.settled(expected) == expected
    return up_received, up_sent


def test_an_http1_connection_and_its_upstream(setup: Setup) -> None:
    with socket.create_connection(("127.0.0.1", setup.ports["h1"]), timeout=5) as sock:
        sent, received = http1_exchanges(sock)
    assert check_both_ends(setup, "h1", sent, received)[1] == 2 * len(RESPONSE)


def test_plaintext_is_counted_under_tls(setup: Setup) -> None:
    context = ssl.create_default_context(cafile=str(setup.ca))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", setup.ports["tls"]), timeout=5),
                             server_hostname="localhost") as sock:
        sent, received = http1_exchanges(sock)
    expected = {"http.tls.downstream_cx_rx_bytes_total": sent, "http.tls.downstream_cx_tx_bytes_total": received}
    assert setup.settled(expected) == expected


def test_http2_frames_are_counted(setup: Setup) -> None:
    client = CountingH2Client(setup.ports["h2"])
    try:
        sids = [client.get("/a"), client.get("/b")]
        client.pump_until(lambda: all(client.ended(sid) for sid in sids))
        assert [client.status(sid) for sid in sids] == [200, 200]
        client.raw += read_to_eof(client.sock)
    finally:
        client.close()
    check_both_ends(setup, "h2", client.sent, len(client.raw))


def test_an_http2_upstream_connection_counts_what_the_other_end_counts(setup: Setup) -> None:
    """The cluster's HTTP/2 connection goes to another listener of the same proxy: what one end wrote the other
    read (the listener's own counting is checked against a client above)."""
    with socket.create_connection(("127.0.0.1", setup.ports["front"]), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nx"):
                data = sock.recv(65536)
                assert data, answer
                answer += data
    stats = setup.proxy.stats()

    def mirrored() -> bool:
        stats.update(setup.proxy.stats())
        return (stats.get("cluster.back_up.upstream_cx_tx_bytes_total", -1)
                == stats.get("http.back.downstream_cx_rx_bytes_total") > 0
                and stats.get("cluster.back_up.upstream_cx_rx_bytes_total", -1)
                == stats.get("http.back.downstream_cx_tx_bytes_total") > 0)

    assert wait_until(mirrored), {name: value for name, value in stats.items() if "back" in name and "bytes" in name}


def test_an_upgraded_connection_counts_its_tunnel(setup: Setup) -> None:
    sent = received = 0
    with socket.create_connection(("127.0.0.1", setup.ports["ws"]), timeout=5) as sock:
        head = b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        sock.sendall(head)
        sent += len(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        received += len(answer)
        tunnel_sent, tunnel_received = echoed_through(sock, [b"ping", b"through the tunnel"])
        sent, received = sent + tunnel_sent, received + tunnel_received + len(read_to_eof(sock))
    check_both_ends(setup, "ws", sent, received)


def test_tcp_proxy_counts_its_upstream_in_the_cluster(setup: Setup) -> None:
    payload = b"0123456789" * 100
    with socket.create_connection(("127.0.0.1", setup.ports["tcp"]), timeout=5) as sock:
        echoed_through(sock, [payload])
        assert read_to_eof(sock) == b""
    up_received, up_sent = setup.servers["echo"].counts()
    expected: dict[str, Any] = {
        "tcp.tcp.downstream_cx_rx_bytes_total": len(payload), "tcp.tcp.downstream_cx_tx_bytes_total": len(payload),
        "cluster.tcp_up.upstream_cx_tx_bytes_total": up_received, "cluster.tcp_up.upstream_cx_rx_bytes_total": up_sent}
    assert setup.settled(expected) == expected
    assert up_received == up_sent == len(payload)


def test_a_terminated_connect_counts_its_tunnel(setup: Setup) -> None:
    with socket.create_connection(("127.0.0.1", setup.ports["term"]), timeout=5) as sock:
        head = b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n"
        sock.sendall(head + b"early")
        answer = b""
        while not answer.endswith(b"\r\n\r\nearly"):
            data = sock.recv(65536)
            assert data, answer
            answer += data
        assert answer.startswith(b"HTTP/1.1 200"), answer
        sent, received = echoed_through(sock, [b"ping", b"more bytes"])
        sent, received = sent + len(head) + 5, received + len(answer) + len(read_to_eof(sock))
    assert check_both_ends(setup, "term", sent, received) == (len(b"earlypingmore bytes"),) * 2


def test_an_http2_connect_stream_counts_its_upstream(setup: Setup) -> None:
    client = CountingH2Client(setup.ports["h2term"])
    try:
        sid = client.h2.send_request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        client.h2.send_data(sid, b"early", end_stream=True)
        client.flush()
        client.pump_until(lambda: client.ended(sid))
        assert bytes(client.owner.body.get(sid, b"")) == b"early"
        client.raw += read_to_eof(client.sock)
    finally:
        client.close()
    assert check_both_ends(setup, "h2term", client.sent, len(client.raw)) == (5, 5)


@pytest.mark.parametrize("listener", ["tunnel", "tunnel_h2"])
def test_tcp_proxy_tunneling_counts_its_connect_upstream(setup: Setup, listener: str) -> None:
    """tcp_proxy's tunneling_config sends a CONNECT (over HTTP/1.1, or as a stream of an HTTP/2 cluster's
    connection) to the cluster's host, the proxy's own terminating listener: the cluster counts what that
    listener counts, the CONNECT's head and framing included, once."""
    with socket.create_connection(("127.0.0.1", setup.ports[listener]), timeout=5) as sock:
        sent, received = echoed_through(sock, [b"tunnelled", b"bytes"])
        received += len(read_to_eof(sock))
    expected: dict[str, Any] = {f"tcp.{listener}.downstream_cx_rx_bytes_total": sent,
                                f"tcp.{listener}.downstream_cx_tx_bytes_total": received}
    assert setup.settled(expected) == expected
    stats = setup.proxy.stats()

    def mirrored() -> bool:
        stats.update(setup.proxy.stats())
        return (stats.get(f"cluster.{listener}_up.upstream_cx_tx_bytes_total", -1)
                == stats.get(f"http.{listener}_end.downstream_cx_rx_bytes_total") > sent
                and stats.get(f"cluster.{listener}_up.upstream_cx_rx_bytes_total", -1)
                == stats.get(f"http.{listener}_end.downstream_cx_tx_bytes_total") > received)

    assert wait_until(mirrored), {name: value for name, value in stats.items() if listener in name and "bytes" in name}

"""Integration: extended CONNECT (RFC 8441, websockets over HTTP/2) under `allow_connect`, through pylon and Envoy.

An HTTP/2 client opens a stream with `:method CONNECT` and `:protocol websocket`; a proxy whose HCM has
`http2_protocol_options.allow_connect` (which advertises SETTINGS_ENABLE_CONNECT_PROTOCOL) and a websocket
`upgrade_configs` sends it to the HTTP/1.1 upstream as a GET with `Upgrade: websocket` / `Connection: upgrade`,
relays the upstream's 101 as a 200 HEADERS frame that does not end the stream, and then carries the bytes as DATA
both ways. Without allow_connect the codec refuses the `:protocol` stream (RST_STREAM PROTOCOL_ERROR); with it but
no websocket upgrade_configs the request is refused 403; an upgrade the upstream declines is an ordinary response.
The client is pylon's own codec in client mode (no stock client sends extended CONNECT on request).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.http.h2_helpers import frames
from tests.proxy.test_proxy_connect import body, ping, reset_closes_upstream
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.test_proxy_http2_upstream import h2_options
from tests.proxy.test_proxy_tcp_tunneling_h2 import H2TunnelServer
from tests.proxy.test_proxy_upgrade import UPGRADE, UpgradeUpstream, read_until

WEBSOCKET = [{"upgrade_type": "websocket"}]
SETTINGS = 4
ENABLE_CONNECT_PROTOCOL = 8
PROTOCOL_ERROR = 1


class Setup:
    def __init__(self, proxy: RunningProxy, up: UpgradeUpstream, implementation: str) -> None:
        self.proxy, self.up, self.implementation = proxy, up, implementation

    def open(self, listener: str, path: str = "/chat", first: bytes = b"") -> tuple[H2Client, int]:
        """An extended CONNECT stream, sent once the proxy's SETTINGS arrived (they say whether it may be sent)."""
        client = H2Client(self.proxy.ports[listener])
        client.pump_until(lambda: any(kind == SETTINGS for kind, *_ in frames(client.raw)))
        sid = client.h2.send_request([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                                      (b":authority", b"ws.example"), (b":path", path.encode())])  # fmt: skip
        if first:
            client.h2.send_data(sid, first)
        client.flush()
        return client, sid


@pytest.fixture(params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    up, launcher = UpgradeUpstream(), ProxyLauncher(tmp_path)
    try:
        allow = {"codec_type": "HTTP2", "http2_protocol_options": {"allow_connect": True}}
        listeners = [
            http_listener("ws", free_port(), [route("/", "up")], upgrade_configs=WEBSOCKET, **allow),
            http_listener("no_upgrades", free_port(), [route("/", "up")], **allow),
            http_listener("off", free_port(), [route("/", "up")], upgrade_configs=WEBSOCKET, codec_type="HTTP2"),
        ]
        yield Setup(launcher.start(listeners, [static_cluster("up", [up.port])], implementation=request.param), up,
                    request.param)
    finally:
        launcher.close()
        up.shutdown()
        up.server_close()


def settings_of(client: H2Client) -> dict[int, int]:
    [payload] = [p for kind, flags, _sid, p in frames(client.raw) if kind == SETTINGS and not flags & 1][:1]
    return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
            for i in range(0, len(payload), 6)}


def test_allow_connect_is_advertised(setup: Setup) -> None:
    on, _ = setup.open("ws")
    off, _ = setup.open("off")
    try:
        assert settings_of(on).get(ENABLE_CONNECT_PROTOCOL) == 1
        assert settings_of(off).get(ENABLE_CONNECT_PROTOCOL, 0) == 0
    finally:
        on.close()
        off.close()


def test_a_websocket_over_http2_reaches_an_http1_upstream_as_an_upgrade(setup: Setup) -> None:
    client, sid = setup.open("ws", first=b"early")
    try:
        client.pump_until(lambda: b"echo:early" in body(client, sid))
        [head] = [e for e in client.owner.events if e[0] == "headers"]
        fields = dict(head[2])
        assert fields[b":status"] == b"200" and head[3] is False  # the 101, as a 200 that does not end the stream
        assert b"upgrade" not in fields and b"connection" not in fields
        assert ping(client, sid) == b"helloecho:earlyecho:ping"
    finally:
        client.close()
    request_line, *fields_seen = setup.up.heads[-1].split(b"\r\n")
    assert request_line == b"GET /chat HTTP/1.1"
    seen = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip().lower() for line in fields_seen}
    assert (seen[b"upgrade"], seen[b"connection"], seen[b"host"]) == (b"websocket", b"upgrade", b"ws.example")
    assert b"transfer-encoding" not in seen and b"content-length" not in seen
    assert wait_until(lambda: setup.proxy.stats()["http.ws.downstream_cx_upgrades_active"] == 0)
    assert setup.proxy.stats()["http.ws.downstream_cx_upgrades_total"] == 1


def test_ending_the_stream_closes_the_upstream(setup: Setup) -> None:
    client, sid = setup.open("ws")
    reset_closes_upstream(client, sid, b"hello", setup.proxy, "up", "ws")


def test_without_allow_connect_the_stream_is_refused(setup: Setup) -> None:
    """pylon resets the stream (PROTOCOL_ERROR: a malformed request, RFC 8441 3); Envoy 1.40 closes the whole
    connection, without a GOAWAY (observed). Neither answers it nor sends anything upstream."""
    client, sid = setup.open("off")
    try:
        client.pump_until(lambda: client.ended(sid) or client.closed)
        if setup.implementation == "pylon":
            assert ("closed", sid, PROTOCOL_ERROR) in client.owner.events and not client.closed
        else:
            assert client.closed
        assert client.status(sid) is None
    finally:
        client.close()
    assert setup.up.heads == []


def test_without_websocket_upgrade_configs_it_is_refused_403(setup: Setup) -> None:
    client, sid = setup.open("no_upgrades")
    try:
        client.pump_until(lambda: client.ended(sid))
        assert client.status(sid) == 403
    finally:
        client.close()
    assert setup.up.heads == []


def test_an_upgrade_the_upstream_declines_is_an_ordinary_response(setup: Setup) -> None:
    client, sid = setup.open("ws", path="/refuse")
    try:
        client.pump_until(lambda: client.ended(sid))
        assert client.status(sid) == 400
        assert body(client, sid) == b"refused"
    finally:
        client.close()


# --- to an HTTP/2 cluster: the upgrade goes as an extended CONNECT stream --------------------------------------


class UpstreamSetup:
    def __init__(self, proxy: RunningProxy, servers: dict[str, H2TunnelServer], implementation: str) -> None:
        self.proxy, self.servers, self.implementation = proxy, servers, implementation


@pytest.fixture(params=["pylon", "envoy"])
def to_h2(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UpstreamSetup]:
    servers = {"ext": H2TunnelServer(allow_connect=True), "plain": H2TunnelServer()}
    launcher = ProxyLauncher(tmp_path)
    try:
        listeners = [
            http_listener("h1", free_port(), [route("/", "ext")], upgrade_configs=WEBSOCKET),
            http_listener("h2", free_port(), [route("/", "ext")], upgrade_configs=WEBSOCKET, codec_type="HTTP2",
                          http2_protocol_options={"allow_connect": True}),
            http_listener("plain", free_port(), [route("/", "plain")], upgrade_configs=WEBSOCKET),
        ]
        clusters = [static_cluster(name, [server.port], **h2_options()) for name, server in servers.items()]
        yield UpstreamSetup(launcher.start(listeners, clusters, implementation=request.param), servers, request.param)
    finally:
        launcher.close()
        for server in servers.values():
            server.close()


def upstream_head(server: H2TunnelServer) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """The one header block the server saw: its pseudo-headers sorted (Envoy sends :authority first, an order with
    no meaning), then the names of its other fields in order."""
    [head] = server.heads
    return sorted(p for p in head if p[0][:1] == b":"), [name for name, _ in head if name[:1] != b":"]


EXTENDED = [(b":authority", b"a"), (b":method", b"CONNECT"), (b":path", b"/chat"), (b":protocol", b"websocket"),
            (b":scheme", b"http")]
FIELDS = [b"x-forwarded-proto", b"x-request-id", b"x-envoy-expected-rq-timeout-ms"]


def test_an_http1_upgrade_to_an_http2_cluster_is_an_extended_connect_stream(to_h2: UpstreamSetup) -> None:
    with socket.create_connection(("127.0.0.1", to_h2.proxy.ports["h1"]), timeout=10) as sock:
        sock.sendall(UPGRADE + b"early")
        got = read_until(sock, b"echo:early")
        head, _, rest = got.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"http/1.1 101 switching protocols"  # the server's 200, as the 101 the client asked for
        assert b"upgrade: websocket" in lines and b"connection: upgrade" in lines
        assert any(line.startswith(b"date: ") for line in lines)  # the server sent none: the proxy's own
        assert rest == b"echo:early"
        sock.sendall(b"ping")
        assert read_until(sock, b"echo:ping") == b"echo:ping"
        assert upstream_head(to_h2.servers["ext"]) == (EXTENDED, FIELDS)
    assert wait_until(lambda: to_h2.proxy.stats()["http.h1.downstream_cx_upgrades_active"] == 0)
    assert wait_until(lambda: to_h2.proxy.stats()["cluster.ext.upstream_rq_active"] == 0)
    assert to_h2.proxy.stats()["http.h1.downstream_cx_upgrades_total"] == 1


def test_extended_connect_both_sides(to_h2: UpstreamSetup) -> None:
    """An HTTP/2 client's extended CONNECT to an HTTP/2 cluster: the server's 200 relayed as a 200, DATA both ways,
    the client's END_STREAM as the upstream stream's, the server's END_STREAM back: a clean close."""
    client = H2Client(to_h2.proxy.ports["h2"])
    try:
        client.pump_until(lambda: any(kind == SETTINGS for kind, *_ in frames(client.raw)))
        sid = client.h2.send_request([(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                                      (b":authority", b"a"), (b":path", b"/chat")])  # fmt: skip
        client.h2.send_data(sid, b"early")
        client.flush()
        client.pump_until(lambda: b"echo:early" in body(client, sid))
        [head] = [e for e in client.owner.events if e[0] == "headers"]
        assert dict(head[2])[b":status"] == b"200" and head[3] is False
        client.h2.send_data(sid, b"ping", end_stream=True)
        client.flush()
        client.pump_until(lambda: client.ended(sid))
        assert body(client, sid) == b"echo:earlyecho:ping"
        assert ("closed", sid, 0) in client.owner.events
    finally:
        client.close()
    assert upstream_head(to_h2.servers["ext"]) == (EXTENDED, FIELDS)
    assert b"".join(to_h2.servers["ext"].received) == b"earlyping"


def test_a_server_that_does_not_admit_extended_connect_gets_no_stream(to_h2: UpstreamSetup) -> None:
    """Its SETTINGS lack ENABLE_CONNECT_PROTOCOL: the proxy resets the stream itself (502, "protocol error")."""
    with socket.create_connection(("127.0.0.1", to_h2.proxy.ports["plain"]), timeout=10) as sock:
        sock.sendall(UPGRADE)
        got = read_until(sock, b"protocol error")
    assert got.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert got.endswith(b"upstream connect error or disconnect/reset before headers. reset reason: protocol error")
    assert to_h2.servers["plain"].heads == []


class FirstBytes:
    """A server that keeps what a client's connection sends first (its preface and SETTINGS), and answers nothing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while chunk := conn.recv(4096):
                self.received += chunk

    def settings(self) -> dict[int, int] | None:
        """The client's first SETTINGS frame, once it came."""
        for kind, _flags, _sid, payload in frames(self.received[24:]):
            if kind == SETTINGS:
                return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                        for i in range(0, len(payload), 6)}
        return None


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_a_clusters_allow_connect_is_advertised_upstream(implementation: str, tmp_path: Path) -> None:
    """A cluster's allow_connect puts ENABLE_CONNECT_PROTOCOL=1 in the proxy's own SETTINGS, as Envoy 1.40 sends."""
    server, launcher = FirstBytes(), ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([http_listener("l", free_port(), [route("/", "c")])],
                               [static_cluster("c", [server.port], **h2_options(allow_connect=True))],
                               implementation=implementation)
        with socket.create_connection(("127.0.0.1", proxy.ports["l"]), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            assert wait_until(lambda: server.settings() is not None, timeout=10)
        assert server.settings().get(ENABLE_CONNECT_PROTOCOL) == 1  # type: ignore[union-attr]
    finally:
        launcher.close()
        server.listener.close()

"""Integration: `downstream_rq_tx_reset` and `downstream_rq_rx_reset`, through pylon and Envoy 1.40 alike.

When the upstream fails after the response began, the proxy can only reset the client's stream: HTTP/1 by closing
the connection, HTTP/2 with RST_STREAM. Envoy counts that in `downstream_rq_tx_reset`, and (its connection manager
hears every reset the same way) in `downstream_rq_rx_reset` too. A client's own reset is `rx_reset` alone.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.test_proxy_cluster_failure_stats import HalfAnswer, answer
from tests.proxy.test_proxy_http2 import H2Client
from tests.proxy.upstreams import RecordingUpstream

NAMES = ("downstream_rq_tx_reset", "downstream_rq_rx_reset")


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    half, slow = HalfAnswer(), RecordingUpstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"reset-stats-{request.param}"))
    try:
        listeners = [http_listener(name, free_port(), [route("/half", "half"), route("/", "slow")], stat_prefix=name,
                                   codec_type="AUTO") for name in ("h1", "h2", "client")]
        clusters = [static_cluster("half", [half.port]), static_cluster("slow", [slow.port])]
        yield launcher.start(listeners, clusters, implementation=request.param)
    finally:
        launcher.close()
        half.close()
        slow.close()


def counters(proxy: RunningProxy, prefix: str) -> dict[str, int]:
    stats = proxy.stats()
    return {name: stats.get(f"http.{prefix}.{name}", 0) for name in NAMES}


def test_a_response_cut_short_resets_an_http1_client(proxy: RunningProxy) -> None:
    got = answer(proxy, "/half", "h1")
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"partial")  # the head and what came, no more
    expected = {"downstream_rq_tx_reset": 1, "downstream_rq_rx_reset": 1}
    assert wait_until(lambda: counters(proxy, "h1") == expected), counters(proxy, "h1")


def test_a_response_cut_short_resets_an_http2_stream(proxy: RunningProxy) -> None:
    client = H2Client(proxy.ports["h2"])
    try:
        client.get("/half")
        expected = {"downstream_rq_tx_reset": 1, "downstream_rq_rx_reset": 1}
        assert wait_until(lambda: counters(proxy, "h2") == expected), counters(proxy, "h2")
    finally:
        client.close()


def test_a_clients_reset_is_received_only(proxy: RunningProxy) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.ports["client"]), timeout=5)
    sock.sendall(b"GET /slow/1 HTTP/1.1\r\nhost: x\r\n\r\n")
    time.sleep(0.3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    expected = {"downstream_rq_tx_reset": 0, "downstream_rq_rx_reset": 1}
    assert wait_until(lambda: counters(proxy, "client") == expected), counters(proxy, "client")

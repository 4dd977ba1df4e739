"""Integration: a connection manager's completed requests counted again under its listener, through pylon and Envoy
1.40 alike.

Envoy keeps `listener.<address>.http.<prefix>.downstream_rq_completed` and `downstream_rq_<N>xx` beside the
connection manager's own: with one connection manager on two listeners, these say which listener served what.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

NAMES = ("downstream_rq_completed", "downstream_rq_2xx", "downstream_rq_4xx", "downstream_rq_5xx")


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    up = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"listener-http-stats-{request.param}"))
    try:
        routes = [route("/dead", "dead"), route("/up", "up")]
        listeners = [http_listener("one", free_port(), routes, stat_prefix="shared"),
                     http_listener("two", free_port(), routes, stat_prefix="shared")]
        clusters = [static_cluster("up", [up.port]), static_cluster("dead", [free_port()])]
        yield launcher.start(listeners, clusters, implementation=request.param)
    finally:
        launcher.close()
        up.close()


def bad_head(port: int) -> bytes:
    """A request line the codec refuses: the proxy's own 400, then it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1 extra\r\nhost: x\r\n\r\n")
        return sock.recv(65536).split(b"\r\n", 1)[0]


def test_each_listener_counts_what_it_served(proxy: RunningProxy) -> None:
    one, two = proxy.ports["one"], proxy.ports["two"]
    statuses = [httpx.get(f"http://127.0.0.1:{one}{path}", timeout=5).status_code for path in ("/up", "/up", "/dead")]
    statuses.append(httpx.get(f"http://127.0.0.1:{two}/nowhere", timeout=5).status_code)
    assert statuses == [200, 200, 503, 404]
    assert bad_head(two).startswith(b"HTTP/1.1 400")
    expected = {
        "one": {"downstream_rq_completed": 3, "downstream_rq_2xx": 2, "downstream_rq_4xx": 0, "downstream_rq_5xx": 1},
        "two": {"downstream_rq_completed": 2, "downstream_rq_2xx": 0, "downstream_rq_4xx": 2, "downstream_rq_5xx": 0},
    }

    def counted() -> dict[str, dict[str, int]]:
        stats = proxy.stats()
        return {name: {stat: stats.get(f"listener.127.0.0.1_{port}.http.shared.{stat}", 0) for stat in NAMES}
                for name, port in (("one", one), ("two", two))}

    assert wait_until(lambda: counted() == expected), counted()
    shared = {stat: proxy.stats().get(f"http.shared.{stat}", 0) for stat in NAMES}
    assert shared == {stat: expected["one"][stat] + expected["two"][stat] for stat in NAMES}

"""Integration: pooled upstream connections that the server closed right after a complete response.

A server whose keep-alive limit ends a connection sends its last response
without `Connection: close` and then closes. A request already given that
connection fails before any byte of a response; pylon sends it again, once,
on a new connection. Envoy (the reference) runs the same load: it notices many
such closes before reusing the connection, does not send a request again, and
loses the rest (a few percent to 15% here, by how soon the close follows).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import ClosingUpstream

CLIENTS = 10
REQUESTS_PER_CLIENT = 60


@pytest.fixture(params=[1, 3], ids=["close-after-each", "close-after-3"])
def closing_upstream(request: pytest.FixtureRequest) -> Iterator[ClosingUpstream]:
    upstream = ClosingUpstream(per_connection=request.param)
    yield upstream
    upstream.close()


def run_load(port: int, path: str) -> list[int]:
    """CLIENTS keep-alive clients, each sending REQUESTS_PER_CLIENT requests; every status (0: transport error)."""

    def client() -> list[int]:
        statuses = []
        with httpx.Client(timeout=5) as http:
            for _ in range(REQUESTS_PER_CLIENT):
                try:
                    statuses.append(http.get(f"http://127.0.0.1:{port}{path}").status_code)
                except httpx.HTTPError:
                    statuses.append(0)
        return statuses

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [s for statuses in pool.map(lambda _: client(), range(CLIENTS)) for s in statuses]


def test_stale_pooled_connections_do_not_fail_requests(implementation: str, closing_upstream: ClosingUpstream,
                                                       tmp_path: Any) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        proxy = launcher.start([http_listener("main", port, [route("/", "closing")])],
                               [static_cluster("closing", [closing_upstream.port])], implementation=implementation)
        statuses = run_load(port, "/")
        failures = sum(1 for s in statuses if s != 200)
        if implementation == "pylon":
            assert failures == 0, f"{failures} of {len(statuses)} failed: {sorted(set(statuses))}"
            assert proxy.stats()["cluster.closing.upstream_rq_200"] == len(statuses)
        elif closing_upstream.per_connection == 1:
            # The reference shows the race is real here: Envoy does not send a request again and loses some.
            assert 0 < failures < len(statuses) / 2, failures
    finally:
        launcher.close()

"""Integration: a route whose cluster a request header names (RouteAction.cluster_header), through pylon and Envoy
1.40 alike.

The header's first value names the cluster. A request without it, or naming no cluster, gets the router's
cluster-not-found reply: the route's `cluster_not_found_response_code` (503 by default), an empty body, and one
more `http.<prefix>.no_cluster`. No cluster sees such a request.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, static_cluster, wait_until
from tests.proxy.upstreams import Upstream


def by_header(prefix: str, **action: str) -> dict[str, object]:
    return {"match": {"prefix": prefix}, "route": {"cluster_header": "X-Pick-Cluster", **action}}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningProxy, dict[str, Upstream]]]:
    upstreams = {"a": Upstream(), "b": Upstream()}
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"cluster-header-{request.param}"))
    try:
        routes = [by_header("/nf", cluster_not_found_response_code="NOT_FOUND"),
                  by_header("/ise", cluster_not_found_response_code="INTERNAL_SERVER_ERROR"), by_header("/")]
        clusters = [static_cluster(name, [up.port]) for name, up in upstreams.items()]
        running = launcher.start([http_listener("main", free_port(), routes)], clusters, implementation=request.param)
        yield running, upstreams
    finally:
        launcher.close()
        for up in upstreams.values():
            up.close()


def send(proxy: RunningProxy, path: str, *picks: str) -> httpx.Response:
    headers = [("x-pick-cluster", pick) for pick in picks]
    return httpx.get(proxy.url("main", path), headers=headers, timeout=5)


def seen_by(upstreams: dict[str, Upstream], path: str) -> list[str]:
    return [name for name, up in upstreams.items() if path in up.paths()]


@pytest.mark.parametrize(("path", "picks", "cluster"), [
    ("/one", ["a"], "a"),
    ("/two", ["b"], "b"),
    ("/first-of-two", ["b", "a"], "b"),  # the first value picks, as Envoy reads a client's header
])
def test_the_header_names_the_cluster(proxy: tuple[RunningProxy, dict[str, Upstream]], path: str,
                                      picks: list[str], cluster: str) -> None:
    running, upstreams = proxy
    response = send(running, path, *picks)
    assert response.status_code == 200
    assert seen_by(upstreams, path) == [cluster]


@pytest.mark.parametrize(("path", "picks", "status"), [
    ("/missing", [], 503),
    ("/unknown", ["nowhere"], 503),
    ("/empty", [""], 503),
    ("/nf/unknown", ["nowhere"], 404),
    ("/ise/missing", [], 500),
])
def test_no_such_cluster_is_the_routes_cluster_not_found_reply(proxy: tuple[RunningProxy, dict[str, Upstream]],
                                                                path: str, picks: list[str], status: int) -> None:
    running, upstreams = proxy
    before = running.stats().get("http.main.no_cluster", 0)
    response = send(running, path, *picks)
    assert (response.status_code, response.content) == (status, b"")
    assert wait_until(lambda: running.stats().get("http.main.no_cluster", 0) == before + 1)
    assert seen_by(upstreams, path) == []

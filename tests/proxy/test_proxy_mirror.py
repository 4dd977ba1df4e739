"""Integration: route `request_mirror_policies` (Envoy's route-mirror example) through pylon and Envoy alike.

One listener, a main upstream and a shadow upstream (plus a second shadow named by a request header, and a
host that takes connections and never answers). The same requests go through both proxies; what each
upstream saw (path, Host, the headers Envoy's internal client adds, the body), the client's answers and the
shadow clusters' stats must agree with Envoy 1.40 (each expectation was first observed there).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import Upstream


class Mirror:
    def __init__(self, proxy: RunningProxy, main: Upstream, shadow: Upstream, other: Upstream) -> None:
        self.proxy, self.main, self.shadow, self.other = proxy, main, shadow, other

    def get(self, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
        return httpx.request(method, self.proxy.url("main", path), timeout=5, **kw)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def mirror(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    directory = tmp_path_factory.mktemp(f"mirror-{request.param}")
    main, shadow, other, launcher = Upstream(), Upstream(), Upstream(), ProxyLauncher(directory)
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections (the backlog), never answers
    try:
        routes = [
            route("/fixed", "main", request_mirror_policies=[{"cluster": "shadow"}]),
            route("/sink", "main", request_mirror_policies=[{"cluster": "shadow"}]),  # the upstreams count its body
            route("/header", "main", request_mirror_policies=[{"cluster_header": "x-mirror-cluster"}]),
            route("/half", "main", request_mirror_policies=[
                {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 50}}}]),
            route("/keep-host", "main", request_mirror_policies=[
                {"cluster": "shadow", "disable_shadow_host_suffix_append": True}]),
            route("/silent", "main", timeout="1s", request_mirror_policies=[{"cluster": "silent"}]),
            route("/two", "main", request_mirror_policies=[{"cluster": "shadow"}, {"cluster": "other"}]),
        ]
        listener = http_listener("main", free_port(), routes)
        clusters = [static_cluster("main", [main.port]), static_cluster("shadow", [shadow.port]),
                    static_cluster("other", [other.port]), static_cluster("silent", [silent.getsockname()[1]])]
        proxy = launcher.start([listener], clusters, implementation=request.param)
        yield Mirror(proxy, main, shadow, other)
    finally:
        launcher.close()
        for upstream in (main, shadow, other):
            upstream.close()
        silent.close()


def seen(upstream: Upstream, path: str) -> list[dict[str, Any]]:
    return [r for r in upstream.requests if r["path"] == path]


def test_a_mirrored_request_reaches_both_with_the_shadow_host(mirror: Mirror) -> None:
    reply = mirror.get("/fixed/a?q=1", headers={"host": "example.com:8080", "x-forwarded-for": "10.1.1.1",
                                                "x-custom": "v"})
    assert reply.status_code == 200 and reply.text == "ok\n"
    assert wait_until(lambda: seen(mirror.shadow, "/fixed/a?q=1"))
    (main,), (shadow,) = seen(mirror.main, "/fixed/a?q=1"), seen(mirror.shadow, "/fixed/a?q=1")
    assert main["headers"]["host"] == "example.com:8080"
    assert shadow["headers"]["host"] == "example.com-shadow:8080"
    assert shadow["headers"]["x-custom"] == "v"
    assert shadow["headers"]["x-request-id"] == main["headers"]["x-request-id"]
    assert shadow["headers"]["x-envoy-internal"] == "true" and "x-envoy-internal" not in main["headers"]
    assert shadow["headers"]["x-forwarded-for"] == "10.1.1.1,192.0.2.2"
    assert main["headers"]["x-forwarded-for"] == "10.1.1.1"
    assert shadow["headers"]["x-envoy-expected-rq-timeout-ms"] == "15000"


def test_the_body_is_mirrored_too(mirror: Mirror) -> None:
    before = mirror.shadow.sink_bytes
    body = b"x" * 300_000
    assert mirror.get("/sink", "POST", content=body).status_code == 200
    assert wait_until(lambda: mirror.shadow.sink_bytes - before == len(body))
    chunked = mirror.get("/sink", "POST", content=iter([b"a" * 1000, b"b" * 24]))
    assert chunked.status_code == 200
    assert wait_until(lambda: mirror.shadow.sink_bytes - before == len(body) + 1024)
    assert seen(mirror.shadow, "/sink")[-1]["headers"]["transfer-encoding"] == "chunked"


def test_cluster_header_names_the_shadow_cluster(mirror: Mirror) -> None:
    assert mirror.get("/header/1", headers={"x-mirror-cluster": "other"}).status_code == 200
    assert wait_until(lambda: seen(mirror.other, "/header/1"))
    assert mirror.get("/header/2", headers={"x-mirror-cluster": "nope"}).status_code == 200  # unknown: no copy
    assert mirror.get("/header/3").status_code == 200  # no header: no copy
    assert mirror.get("/fixed/after").status_code == 200
    assert wait_until(lambda: seen(mirror.shadow, "/fixed/after"))
    assert [len(seen(u, p)) for u in (mirror.shadow, mirror.other) for p in ("/header/2", "/header/3")] == [0] * 4
    assert len(seen(mirror.main, "/header/2")) == len(seen(mirror.main, "/header/3")) == 1


def test_runtime_fraction_mirrors_a_share(mirror: Mirror) -> None:
    with httpx.Client(timeout=5) as client:
        for _ in range(200):
            assert client.get(mirror.proxy.url("main", "/half")).status_code == 200
    time.sleep(0.5)
    assert len(seen(mirror.main, "/half")) == 200
    assert 60 <= len(seen(mirror.shadow, "/half")) <= 140


def test_disable_shadow_host_suffix_append(mirror: Mirror) -> None:
    assert mirror.get("/keep-host", headers={"host": "svc"}).status_code == 200
    assert wait_until(lambda: seen(mirror.shadow, "/keep-host"))
    assert seen(mirror.shadow, "/keep-host")[0]["headers"]["host"] == "svc"


def test_several_policies_each_send_a_copy(mirror: Mirror) -> None:
    assert mirror.get("/two").status_code == 200
    assert wait_until(lambda: seen(mirror.shadow, "/two") and seen(mirror.other, "/two"))


def test_a_shadow_that_never_answers_neither_delays_nor_fails_the_request(mirror: Mirror) -> None:
    started = time.monotonic()
    reply = mirror.get("/silent")
    assert reply.status_code == 200 and time.monotonic() - started < 0.9
    # the route timeout (1 s) ends the copy; the shadow cluster counts it
    assert wait_until(lambda: mirror.proxy.stats().get("cluster.silent.upstream_rq_timeout") == 1, timeout=5)
    assert wait_until(lambda: mirror.proxy.stats().get("cluster.silent.upstream_rq_active") == 0)


def test_the_shadow_cluster_counts_its_requests(mirror: Mirror) -> None:
    stats = mirror.proxy.stats()
    before = stats.get("cluster.other.upstream_rq_200", 0)
    assert mirror.get("/header/count", headers={"x-mirror-cluster": "other"}).status_code == 200
    assert wait_until(lambda: mirror.proxy.stats().get("cluster.other.upstream_rq_200", 0) == before + 1)
    stats = mirror.proxy.stats()
    assert stats["cluster.other.upstream_rq_total"] == stats["cluster.other.upstream_rq_2xx"] == before + 1


def test_a_client_leaving_mid_body_takes_its_copy_with_it(mirror: Mirror) -> None:
    """The client sends half its body and goes: the copy is abandoned too (nothing stays active or queued)."""
    with socket.create_connection(("127.0.0.1", mirror.proxy.ports["main"]), timeout=5) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nhost: h\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
        assert wait_until(lambda: mirror.proxy.stats().get("cluster.shadow.upstream_rq_active") == 1)
    assert wait_until(lambda: mirror.proxy.stats().get("cluster.shadow.upstream_rq_active") == 0)
    assert wait_until(lambda: mirror.proxy.stats().get("cluster.main.upstream_rq_active") == 0)
    assert mirror.get("/fixed/still-fine").status_code == 200

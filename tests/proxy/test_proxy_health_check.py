"""Integration: envoy.filters.http.health_check through pylon and Envoy 1.40 (each expectation observed there).

One proxy, one listener per configuration: answered locally, by cluster health (a healthy cluster, an empty
one, one that does not exist), passed through upstream, passed through with a cached answer; and the server's
health switched with the admin's POST /healthcheck/fail and /healthcheck/ok.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster,
)
from tests.proxy.upstreams import Upstream

HC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
PATH = [{"name": ":path", "string_match": {"exact": "/healthz"}}]
CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"pass_through_mode": False, "headers": PATH},
    "legacy": {"pass_through_mode": False, "headers": [{"name": ":path", "exact_match": "/healthcheck"}]},
    "pct": {"pass_through_mode": False, "headers": PATH,
            "cluster_min_healthy_percentages": {"up": {"value": 100.0}, "empty": {"value": 50}}},
    "pct0": {"pass_through_mode": False, "headers": PATH,
             "cluster_min_healthy_percentages": {"up": {"value": 99.9}, "empty": {"value": 0}}},
    "nocl": {"pass_through_mode": False, "headers": PATH, "cluster_min_healthy_percentages": {"nope": {"value": 0}}},
    "pass": {"pass_through_mode": True, "headers": PATH},
    "cache": {"pass_through_mode": True, "cache_time": "30s", "headers": PATH},
    "hclog": {"pass_through_mode": True, "headers": PATH},  # also logs through a not_health_check_filter
}
CHECKED = "x-envoy-upstream-healthchecked-cluster"
FAIL = "x-envoy-immediate-health-check-fail"


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream, logs: Path) -> None:
        self.proxy, self.ports, self.upstream, self.logs = proxy, ports, upstream, logs

    def ask(self, listener: str, path: str = "/healthz", method: str = "GET", body: bytes = b""
            ) -> tuple[httpx.Response, bool]:
        """(the response, whether the upstream saw the request)."""
        before = len(self.upstream.requests)
        reply = httpx.request(method, f"http://127.0.0.1:{self.ports[listener]}{path}", content=body, timeout=5)
        return reply, len(self.upstream.requests) > before

    def admin(self, path: str) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.proxy.admin_port}{path}", timeout=5)

    def stats(self, listener: str) -> dict[str, int]:
        prefix = f"http.{listener}.health_check."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation = request.param
    directory = tmp_path_factory.mktemp(f"health-check-{implementation}")
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in CONFIGS}
        listeners = []
        for name, config in CONFIGS.items():
            logs = json_access_log(directory / f"{name}.log")
            if name == "hclog":
                logs.append({**json_access_log(directory / "hclog-not-hc.log")[0],
                             "filter": {"not_health_check_filter": {}}})
            listener = http_listener(name, ports[name], [route("/", "up")], access_log=logs)
            listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
                "name": "envoy.filters.http.health_check", "typed_config": {"@type": HC_TYPE, **config}})
            listeners.append(listener)
        empty = {"name": "empty", "connect_timeout": "1s", "type": "STATIC",
                 "load_assignment": {"cluster_name": "empty", "endpoints": []}}
        proxy = launcher.start(listeners, [static_cluster("up", [upstream.port]), empty],
                               implementation=implementation,
                               bootstrap_extra={"node": {"id": "n1", "cluster": "svc-cluster"}})
        yield Setup(proxy, ports, upstream, directory)
    finally:
        launcher.close()
        upstream.close()


def _details(setup: Setup, listener: str, count: int) -> list[tuple[int, str, str]]:
    return [(line["code"], line["flags"], line["details"])
            for line in read_json_lines(setup.logs / f"{listener}.log", count)]


def test_health_checks_are_answered_locally(setup: Setup) -> None:
    reply, upstream = setup.ask("plain")
    assert (reply.status_code, reply.content, upstream) == (200, b"", False)
    assert reply.headers[CHECKED] == "svc-cluster" and "content-type" not in reply.headers
    assert FAIL not in reply.headers and reply.headers.get("connection") != "close"
    reply, upstream = setup.ask("plain", method="POST", body=b"abc")
    assert (reply.status_code, upstream) == (200, False)
    reply, upstream = setup.ask("legacy", "/healthcheck")
    assert (reply.status_code, upstream) == (200, False)
    for path in ("/healthz?x=1", "/other"):  # :path is matched whole, query included
        reply, upstream = setup.ask("plain", path)
        assert (reply.status_code, upstream) == (200, True) and reply.content  # the upstream's answer
        assert CHECKED not in reply.headers


def test_cluster_health_decides(setup: Setup) -> None:
    for listener, status in (("pct", 503), ("pct0", 200), ("nocl", 503)):
        reply, upstream = setup.ask(listener)
        assert (listener, reply.status_code, reply.content, upstream) == (listener, status, b"", False)
    assert _details(setup, "pct", 1) == [(503, "LH", "health_check_failed_cluster_empty")]
    assert _details(setup, "pct0", 1) == [(200, "-", "health_check_ok_cluster_healthy")]
    assert _details(setup, "nocl", 1) == [(503, "LH", "health_check_failed_no_cluster_found")]
    assert setup.stats("pct")["failed_cluster_empty"] == 1 and setup.stats("nocl")["failed_cluster_not_found"] == 1


def test_pass_through_and_the_cache(setup: Setup) -> None:
    reply, upstream = setup.ask("pass")
    assert (reply.status_code, reply.text, upstream) == (200, "health\n", True)
    assert reply.headers[CHECKED] == "svc-cluster"
    first, upstream = setup.ask("cache")
    assert (first.status_code, first.text, upstream) == (200, "health\n", True)
    for _ in range(2):
        reply, upstream = setup.ask("cache")
        assert (reply.status_code, reply.content, upstream) == (200, b"", False)
        assert reply.headers[CHECKED] == "svc-cluster"
    stats = setup.stats("cache")
    assert (stats["cached_response"], stats["ok"], stats["request_total"]) == (2, 2, 2)
    assert [d for _, _, d in _details(setup, "cache", 3)] == ["via_upstream", "health_check_cached",
                                                             "health_check_cached"]


def test_an_access_log_filter_leaves_health_checks_out(setup: Setup) -> None:
    """Passed through or not, a request the filter took as a health check is one for not_health_check_filter."""
    for path in ("/healthz", "/other", "/healthz", "/more"):
        assert setup.ask("hclog", path)[0].status_code == 200
    assert [line["path"] for line in read_json_lines(setup.logs / "hclog.log", 4)] == [
        "/healthz", "/other", "/healthz", "/more"]
    assert [line["path"] for line in read_json_lines(setup.logs / "hclog-not-hc.log", 2)] == ["/other", "/more"]


def test_failing_health_checks_by_the_admin(setup: Setup) -> None:
    assert httpx.get(f"http://127.0.0.1:{setup.proxy.admin_port}/healthcheck/fail", timeout=5).status_code == 405
    try:
        reply = setup.admin("/healthcheck/fail")
        assert (reply.status_code, reply.text) == (200, "OK\n")
        time.sleep(0.1)
        for listener in ("plain", "pass", "cache"):
            reply, upstream = setup.ask(listener)
            assert (listener, reply.status_code, reply.content, upstream) == (listener, 503, b"", False)
            assert (reply.headers[CHECKED], reply.headers[FAIL], reply.headers["connection"]) == (
                "svc-cluster", "true", "close")
            other, upstream = setup.ask(listener, "/other")
            assert (other.status_code, upstream, other.headers[FAIL], other.headers["connection"]) == (
                200, True, "true", "close")
        lines = _details(setup, "pass", 3)
        assert lines[-2] == (503, "LH", "health_check_failed")
    finally:
        assert setup.admin("/healthcheck/ok").status_code == 200
    time.sleep(0.1)
    reply, _ = setup.ask("plain")
    assert reply.status_code == 200 and FAIL not in reply.headers and reply.headers.get("connection") != "close"

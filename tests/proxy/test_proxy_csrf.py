"""Integration: envoy.filters.http.csrf through pylon and Envoy alike.

One listener shaped like Envoy's published csrf example: the filter's own policy enforces, a virtual host
adds trusted origins, routes turn it off, put it in shadow mode or allow any origin. The same requests go
through both proxies; status, body, whether the upstream saw the request and the csrf stats must agree with
Envoy 1.40 (each expectation was first observed there). This is an access-control check: these tests fail
if the origin comparison goes (checked once with the comparison removed, and with it always true).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

CSRF_TYPE = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
CSRF = "envoy.filters.http.csrf"
ALWAYS = {"default_value": {"numerator": 100}, "runtime_key": "csrf.enabled"}
NEVER = {"default_value": {"numerator": 0}}


def policy(**fields: Any) -> dict[str, Any]:
    return {CSRF: {"@type": CSRF_TYPE, **fields}}


def listener(port: int) -> dict[str, Any]:
    config = http_listener("main", port, [])
    hcm = config["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": CSRF, "typed_config": {"@type": CSRF_TYPE, "filter_enabled": ALWAYS}}, ROUTER]
    hcm["route_config"] = {"name": "main", "virtual_hosts": [
        {"name": "trusting", "domains": ["trusting"],
         "typed_per_filter_config": policy(filter_enabled=ALWAYS,
                                           additional_origins=[{"suffix": ".trusted.example"}]),
         "routes": [route("/", "up")]},
        {"name": "site", "domains": ["*"], "routes": [
            {**route("/disabled", "up"), "typed_per_filter_config": policy(filter_enabled=NEVER)},
            {**route("/shadow", "up"), "typed_per_filter_config": policy(filter_enabled=NEVER,
                                                                         shadow_enabled=ALWAYS)},
            {**route("/any", "up"), "typed_per_filter_config": policy(
                filter_enabled=ALWAYS, additional_origins=[{"safe_regex": {"regex": ".*"}}])},
            route("/", "up")]}]}
    return config


class Csrf:
    def __init__(self, proxy: RunningProxy, port: int, upstream: Upstream) -> None:
        self.proxy, self.port, self.upstream = proxy, port, upstream

    def ask(self, method: str, path: str = "/", host: str = "site", **headers: str) -> tuple[int, bytes, bool]:
        """(status, body, whether the upstream saw the request)."""
        before = len(self.upstream.requests)
        reply = httpx.request(method, f"http://127.0.0.1:{self.port}{path}", timeout=5,
                              headers={"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}})
        return reply.status_code, reply.content, len(self.upstream.requests) > before

    def stats(self) -> dict[str, int]:
        return {k[len("http.main.csrf."):]: v for k, v in self.proxy.stats().items()
                if k.startswith("http.main.csrf.")}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def csrf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Csrf]:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"csrf-{request.param}"))
    try:
        port = free_port()
        proxy = launcher.start([listener(port)], [static_cluster("up", [upstream.port])],
                               implementation=request.param)
        yield Csrf(proxy, port, upstream)
    finally:
        launcher.close()
        upstream.close()


REFUSED = (403, b"Invalid origin", False)
PASSED = (200, b"ok\n", True)


def test_same_origin_passes_and_another_is_refused(csrf: Csrf) -> None:
    assert csrf.ask("POST", origin="http://site") == PASSED
    assert csrf.ask("POST", origin="https://site/") == PASSED  # host and port only: the scheme does not count
    assert csrf.ask("POST", origin="http://evil.example") == REFUSED
    assert csrf.ask("POST", origin="http://site.evil.example") == REFUSED
    assert csrf.ask("POST", origin="http://evil.example/site") == REFUSED
    assert csrf.ask("POST", origin="null") == REFUSED
    assert csrf.ask("POST", origin="http://site:8080") == REFUSED  # the port is part of it
    assert csrf.ask("POST", host="site:8080", origin="http://site:8080") == PASSED
    assert csrf.ask("POST", origin="http://SITE") == REFUSED  # compared exactly


def test_only_state_changing_methods_are_checked(csrf: Csrf) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        assert csrf.ask(method, origin="http://evil.example") == REFUSED
    for method in ("GET", "HEAD", "OPTIONS"):
        status, _, upstream = csrf.ask(method, origin="http://evil.example")
        assert (status, upstream) == (200, True)


def test_referer_when_no_origin(csrf: Csrf) -> None:
    assert csrf.ask("POST", referer="http://site/form?x=1") == PASSED
    assert csrf.ask("POST", referer="http://evil.example/form") == REFUSED
    assert csrf.ask("POST", origin="http://site", referer="http://evil.example/") == PASSED  # Origin first
    assert csrf.ask("POST") == REFUSED  # neither: no source origin


def test_per_route_and_virtual_host_policies(csrf: Csrf) -> None:
    assert csrf.ask("POST", "/disabled", origin="http://evil.example") == PASSED
    assert csrf.ask("POST", "/shadow", origin="http://evil.example") == PASSED  # counted only
    assert csrf.ask("POST", "/any", origin="http://evil.example") == PASSED
    assert csrf.ask("POST", "/any") == REFUSED  # a missing origin is never valid
    assert csrf.ask("POST", host="trusting", origin="https://a.trusted.example") == PASSED
    assert csrf.ask("POST", host="trusting", origin="https://a.trusted.example.evil") == REFUSED
    assert csrf.ask("POST", host="trusting", origin="http://trusting") == PASSED


def test_stats(csrf: Csrf) -> None:
    before = csrf.stats()
    csrf.ask("POST", origin="http://site")  # valid
    csrf.ask("POST", origin="http://evil.example")  # invalid
    csrf.ask("POST")  # missing (only)
    csrf.ask("POST", "/shadow", origin="http://evil.example")  # invalid, shadow
    csrf.ask("POST", "/disabled", origin="http://evil.example")  # not counted
    csrf.ask("GET", origin="http://evil.example")  # not counted
    after = csrf.stats()
    assert {k: after[k] - before.get(k, 0) for k in after} == {
        "missing_source_origin": 1, "request_invalid": 2, "request_valid": 1}

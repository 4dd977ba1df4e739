"""Integration: envoy.filters.http.local_ratelimit through pylon and Envoy 1.40 side by side.

One proxy with four listeners: `main` (a bucket of 3 that refills one token a minute, enforced, with
x-ratelimit headers and a response header, and a route with its own config: a bucket of 1, status 503, its
own stat prefix), `shadow` (limited but never enforced: the request goes on with a header), `off` (no
filter_enabled: Envoy's default is off) and `per_conn` (a bucket per downstream connection). Each expectation
was first observed on Envoy 1.40. Then both proxies with two workers: the bucket is shared, so two workers
never pass twice the configured budget.
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

RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.local_ratelimit"
ALL = {"default_value": {"numerator": 100}}


def limit(stat_prefix: str, max_tokens: int, fill_interval: str = "60s", **fields: Any) -> dict[str, Any]:
    return {"@type": RL_TYPE, "stat_prefix": stat_prefix,
            "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": 1, "fill_interval": fill_interval},
            **fields}


LISTENERS: dict[str, dict[str, Any]] = {
    "main": limit("main_rl", 3, filter_enabled=ALL, filter_enforced=ALL, enable_x_ratelimit_headers="DRAFT_VERSION_03",
                  response_headers_to_add=[{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                            "header": {"key": "x-local-rate-limit", "value": "true"}}]),
    "shadow": limit("shadow_rl", 1, filter_enabled=ALL,
                    request_headers_to_add_when_not_enforced=[{"header": {"key": "x-rl-shadow", "value": "yes"}}]),
    "off": limit("off_rl", 1),
    "per_conn": limit("conn_rl", 1, filter_enabled=ALL, filter_enforced=ALL,
                      local_rate_limit_per_downstream_connection=True),
    "refill": limit("refill_rl", 1, "1s", filter_enabled=ALL, filter_enforced=ALL),
}
ROUTE_LIMIT = limit("route_rl", 1, filter_enabled=ALL, filter_enforced=ALL, status={"code": "ServiceUnavailable"})


def listener(name: str, port: int, log: Path, config: dict[str, Any]) -> dict[str, Any]:
    routes = [{**route("/route", "up"), "typed_per_filter_config": {NAME: ROUTE_LIMIT}}, route("/", "up")]
    result = http_listener(name, port, routes, access_log=json_access_log(log))
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": NAME, "typed_config": config},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream, logs: dict[str, Path]) -> None:
        self.proxy, self.ports, self.upstream, self.logs = proxy, ports, upstream, logs

    def get(self, listener: str, path: str = "/", client: httpx.Client | None = None
            ) -> tuple[int, bytes, httpx.Headers, dict[str, str] | None]:
        """(status, body, response headers, the headers the upstream saw or None)."""
        before = len(self.upstream.requests)
        url = f"http://127.0.0.1:{self.ports[listener]}{path}"
        reply = client.get(url) if client is not None else httpx.get(url, timeout=5)
        requests = self.upstream.requests
        return reply.status_code, reply.content, reply.headers, requests[-1]["headers"] if len(requests) > before \
            else None

    def stats(self, prefix: str) -> dict[str, int]:
        start = f"{prefix}.http_local_rate_limit."
        return {k[len(start):]: v for k, v in self.proxy.stats().items() if k.startswith(start)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation = request.param
    directory = tmp_path_factory.mktemp(f"local-rl-{implementation}")
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in LISTENERS}
        logs = {name: directory / f"{name}.log" for name in LISTENERS}
        proxy = launcher.start([listener(name, ports[name], logs[name], config) for name, config in LISTENERS.items()],
                               [static_cluster("up", [upstream.port])], implementation=implementation)
        yield Setup(proxy, ports, upstream, logs)
    finally:
        launcher.close()
        upstream.close()


def rate_headers(headers: httpx.Headers) -> tuple[str | None, ...]:
    return tuple(headers.get(f"x-ratelimit-{name}") for name in ("limit", "remaining", "reset"))


def test_bucket_empties_then_requests_are_429(setup: Setup) -> None:
    replies = [setup.get("main") for _ in range(5)]
    assert [(status, upstream is not None) for status, _, _, upstream in replies] == \
        [(200, True), (200, True), (200, True), (429, False), (429, False)]
    assert [rate_headers(headers) for _, _, headers, _ in replies] == \
        [("3", "2", "0"), ("3", "1", "0"), ("3", "0", "60"), ("3", "0", "60"), ("3", "0", "60")]
    status, body, headers, _ = replies[3]
    assert body == b"local_rate_limited"
    assert headers["x-local-rate-limit"] == "true" and headers["content-type"] == "text/plain"
    assert "x-local-rate-limit" not in replies[0][2]  # only on limited responses
    lines = read_json_lines(setup.logs["main"], 4)
    assert ("429", "RL", "local_rate_limited") in {(str(line["code"]), line["flags"], line["details"])
                                                    for line in lines}
    assert setup.stats("main_rl") == {"enabled": 5, "ok": 3, "rate_limited": 2, "enforced": 2, "shadow_mode": 0}


def test_a_route_has_its_own_bucket_status_and_stats(setup: Setup) -> None:
    assert [setup.get("off", "/route")[0] for _ in range(2)] == [200, 503]
    status, body, headers, upstream = setup.get("off", "/route")
    assert (status, body, upstream, rate_headers(headers)) == (503, b"local_rate_limited", None, (None, None, None))
    assert setup.stats("route_rl") == {"enabled": 3, "ok": 1, "rate_limited": 2, "enforced": 2, "shadow_mode": 0}


def test_not_enforced_requests_go_on_with_the_header(setup: Setup) -> None:
    first, second = setup.get("shadow"), setup.get("shadow")
    assert first[0] == second[0] == 200
    assert first[3] is not None and "x-rl-shadow" not in first[3]
    assert second[3] is not None and second[3]["x-rl-shadow"] == "yes"
    assert setup.stats("shadow_rl") == {"enabled": 2, "ok": 1, "rate_limited": 1, "enforced": 0, "shadow_mode": 0}


def test_without_filter_enabled_the_filter_is_off(setup: Setup) -> None:
    assert [setup.get("off")[0] for _ in range(3)] == [200, 200, 200]
    assert setup.stats("off_rl") == {"enabled": 0, "ok": 0, "rate_limited": 0, "enforced": 0, "shadow_mode": 0}


def test_a_bucket_per_downstream_connection(setup: Setup) -> None:
    with httpx.Client(timeout=5) as one, httpx.Client(timeout=5) as two:
        assert [setup.get("per_conn", client=one)[0] for _ in range(2)] == [200, 429]
        assert [setup.get("per_conn", client=two)[0] for _ in range(2)] == [200, 429]


def test_tokens_come_back_continuously(setup: Setup) -> None:
    assert [setup.get("refill")[0] for _ in range(2)] == [200, 429]
    time.sleep(1.2)
    assert [setup.get("refill")[0] for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_two_workers_share_one_budget(implementation: str, tmp_path: Path) -> None:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        config = limit("shared_rl", 10, filter_enabled=ALL, filter_enforced=ALL)
        proxy = launcher.start([listener("main", port, tmp_path / "log", config)],
                               [static_cluster("up", [upstream.port])], implementation=implementation, concurrency=2)
        statuses = []
        for _ in range(40):  # a connection each: the kernel spreads them over both workers
            with httpx.Client(timeout=5) as client:
                statuses.append(client.get(f"http://127.0.0.1:{port}/").status_code)
        assert statuses.count(200) == 10 and statuses.count(429) == 30
        if implementation == "pylon":
            assert len(proxy.worker_pids()) == 2
    finally:
        launcher.close()
        upstream.close()

"""Integration: Envoy's dynamic forward proxy (HTTP filter, cluster, DNS cache) through pylon and Envoy 1.40 alike.

One proxy per implementation with a listener per scenario, each with a cache of its own so that the stats of one
scenario are its own. Names resolved: `localhost` and `*.localhost` (c-ares answers them with loopback
addresses, RFC 6761, as inside Envoy), 127.0.0.1, and `.invalid` names, which never resolve (RFC 6761): nothing
here resolves or reaches a name outside this machine. Every expectation holds for both proxies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ROUTER_TYPE, ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, wait_until,
)
from tests.proxy.upstreams import Upstream

CLUSTER_CONFIG = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"
FILTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig"
FILTER_NAME = "envoy.filters.http.dynamic_forward_proxy"
#: Refreshes out of the way (TTL-0 answers would otherwise be resolved again every 5 s): stats stay exact.
QUIET = {"dns_lookup_family": "V4_ONLY", "dns_min_refresh_rate": "3600s", "dns_refresh_rate": "3600s"}
#: Each scenario's listener: its cache settings, whether it has the filter, its extra routes.
SCENARIOS: dict[str, dict[str, Any]] = {
    "names": {"cache": QUIET},
    "rewrites": {"cache": QUIET, "routes": [
        {"match": {"prefix": "/literal"}, "route": {"cluster": "rewrites"}, "typed_per_filter_config": {
            FILTER_NAME: {"@type": PER_ROUTE, "host_rewrite_literal": "localhost:{port}"}}},
        {"match": {"prefix": "/header"}, "route": {"cluster": "rewrites"}, "typed_per_filter_config": {
            FILTER_NAME: {"@type": PER_ROUTE, "host_rewrite_header": "x-target"}}}]},
    "small": {"cache": {**QUIET, "max_hosts": 1}},
    "tight": {"cache": {**QUIET, "dns_cache_circuit_breaker": {"max_pending_requests": 0}}},
    "short": {"cache": {"dns_lookup_family": "V4_ONLY", "dns_min_refresh_rate": "1s", "host_ttl": "1s"}},
    "nofilter": {"cache": QUIET, "filter": False},
}


def scenario_listener(name: str, port: int, upstream_port: int, log: Path) -> dict[str, Any]:
    spec = SCENARIOS[name]
    routes = [{**r, "typed_per_filter_config": {FILTER_NAME: {
        **r["typed_per_filter_config"][FILTER_NAME],
        **{k: v.format(port=upstream_port) for k, v in r["typed_per_filter_config"][FILTER_NAME].items() if k != "@type"},
    }}} for r in spec.get("routes", [])]
    listener = http_listener(name, port, [*routes, {"match": {"prefix": "/"}, "route": {"cluster": name}}],
                             access_log=json_access_log(log))
    filters = [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    if spec.get("filter", True):
        filters.insert(0, {"name": FILTER_NAME, "typed_config": {
            "@type": FILTER_CONFIG, "dns_cache_config": {"name": name, **spec["cache"]}}})
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = filters
    return listener


def scenario_cluster(name: str) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED", "cluster_type": {
        "name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
            "@type": CLUSTER_CONFIG, "dns_cache_config": {"name": name, **SCENARIOS[name]["cache"]}}}}


@dataclass
class Front:
    proxy: RunningProxy
    upstream: Upstream
    logs: dict[str, Path]

    def get(self, listener: str, host: str, path: str = "/", **headers: str) -> httpx.Response:
        return httpx.get(self.proxy.url(listener, path), headers={"host": host, **headers}, timeout=10)

    def seen_host(self) -> str:
        return self.upstream.requests[-1]["headers"]["host"]

    def cache_stats(self, name: str) -> dict[str, int]:
        prefix = f"dns_cache.{name}."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}

    def log(self, listener: str, count: int) -> list[dict[str, Any]]:
        return read_json_lines(self.logs[listener], count)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def front(request: pytest.FixtureRequest, upstream: Upstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    directory = tmp_path_factory.mktemp(f"dfp-{request.param}")
    launcher = ProxyLauncher(directory)
    try:
        logs = {name: directory / f"{name}.log" for name in SCENARIOS}
        listeners = [scenario_listener(name, free_port(), upstream.port, logs[name]) for name in SCENARIOS]
        proxy = launcher.start(listeners, [scenario_cluster(name) for name in SCENARIOS],
                               implementation=request.param)
        yield Front(proxy, upstream, logs)
    finally:
        launcher.close()


def test_requests_reach_the_local_server_by_name_and_by_address(front: Front) -> None:
    port = front.upstream.port
    with httpx.Client(proxy=front.proxy.url("names"), timeout=10) as client:  # the proxy as clients use one
        for url in (f"http://localhost:{port}/a", f"http://127.0.0.1:{port}/b"):
            assert client.get(url).status_code == 200
            assert front.seen_host() == url.split("/")[2]
    assert front.get("names", f"a.localhost:{port}").status_code == 200
    assert front.seen_host() == f"a.localhost:{port}"
    assert [(e["authority"], e["upstream"], e["flags"]) for e in front.log("names", 3)] == [
        (f"localhost:{port}", f"127.0.0.1:{port}", "-"), (f"127.0.0.1:{port}", f"127.0.0.1:{port}", "-"),
        (f"a.localhost:{port}", f"127.0.0.1:{port}", "-")]
    stats = front.cache_stats("names")
    assert {k: stats[k] for k in ("dns_query_attempt", "dns_query_success", "dns_query_failure", "host_added",
                                  "host_address_changed", "host_removed", "num_hosts")} == {
        "dns_query_attempt": 3, "dns_query_success": 3, "dns_query_failure": 0, "host_added": 3,
        "host_address_changed": 3, "host_removed": 0, "num_hosts": 3}
    assert front.proxy.stats()["cluster.names.membership_total"] == 3


def test_an_unresolvable_name_is_answered_with_envoys_503(front: Front) -> None:
    for _ in range(2):  # the second from the cache: no new query
        reply = front.get("names", "nowhere.invalid:8080", "/x")
        assert (reply.status_code, reply.text) == (503, "DNS resolution failure")
    entry = front.log("names", 5)[-1]
    assert (entry["flags"], entry["details"]) == ("DF", "dns_resolution_failure{cares_norecords:Domain_name_not_found}")
    stats = front.cache_stats("names")
    assert (stats["dns_query_attempt"], stats["dns_query_success"], stats["num_hosts"]) == (4, 4, 4)
    assert front.proxy.stats()["cluster.names.membership_total"] == 3  # a name without an address is no host


def test_per_route_rewrites_name_the_host_resolved_and_sent(front: Front) -> None:
    port = front.upstream.port
    assert front.get("rewrites", "nowhere.invalid", "/literal").status_code == 200
    assert front.seen_host() == f"localhost:{port}"
    assert front.get("rewrites", "nowhere.invalid", "/header", **{"x-target": f"127.0.0.1:{port}"}).status_code == 200
    assert front.seen_host() == f"127.0.0.1:{port}"
    assert front.get("rewrites", f"localhost:{port}", "/header").status_code == 200  # no header: the Host stays
    assert [e["authority"] for e in front.log("rewrites", 3)] == [f"localhost:{port}", f"127.0.0.1:{port}",
                                                                 f"localhost:{port}"]


def test_a_full_cache_and_too_many_waiting_requests_are_refused(front: Front) -> None:
    port = front.upstream.port
    assert front.get("small", f"localhost:{port}").status_code == 200
    reply = front.get("small", f"b.localhost:{port}")
    assert (reply.status_code, reply.text) == (503, "DNS cache overflow")
    assert front.get("small", f"localhost:{port}").status_code == 200  # a name in the cache still goes
    assert [(e["code"], e["details"]) for e in front.log("small", 3)][1] == (503, "dns_cache_overflow")
    assert front.cache_stats("small")["host_overflow"] == 1

    reply = front.get("tight", f"localhost:{port}")
    assert (reply.status_code, reply.text) == (503, "Dynamic forward proxy pending request overflow")
    assert front.log("tight", 1)[0]["details"] == "dynamic_forward_proxy_pending_request_overflow"
    stats = front.cache_stats("tight")
    assert (stats["dns_rq_pending_overflow"], stats["circuit_breakers.rq_pending_open"],
            stats["circuit_breakers.rq_pending_remaining"]) == (1, 0, 0)  # "open" moves with use only


def test_a_host_unused_for_host_ttl_leaves_the_cache_and_the_cluster(front: Front) -> None:
    port = front.upstream.port
    assert front.get("short", f"localhost:{port}").status_code == 200
    assert wait_until(lambda: front.cache_stats("short")["host_removed"] == 1, timeout=8)
    assert front.cache_stats("short")["num_hosts"] == 0
    assert front.proxy.stats()["cluster.short.membership_total"] == 0
    assert front.get("short", f"localhost:{port}").status_code == 200  # resolved again
    assert front.cache_stats("short")["host_added"] == 2


def test_without_the_filter_the_cluster_resolves_names_itself(front: Front) -> None:
    """Envoy 1.40's cluster resolves a name it has no host for; one that does not resolve is no healthy upstream."""
    port = front.upstream.port
    assert front.get("nofilter", f"b.localhost:{port}").status_code == 200
    assert front.seen_host() == f"b.localhost:{port}"
    reply = front.get("nofilter", "nowhere.invalid")
    assert (reply.status_code, reply.text) == (503, "no healthy upstream")
    entry = front.log("nofilter", 2)[1]
    assert (entry["flags"], entry["details"]) == ("UH", "dns_resolution_failure{cares_norecords:Domain_name_not_found}")
    assert front.proxy.stats()["cluster.nofilter.upstream_cx_none_healthy"] == 0

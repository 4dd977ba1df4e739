"""Integration: the route and cluster behaviour Istio's gateway config asks for, through pylon and Envoy alike.

x-envoy-attempt-count per attempt, retries that avoid hosts already tried (previous_hosts with
host_selection_retry_max_attempts), retries on the response's grpc-status, max_grpc_timeout /
grpc_timeout_offset, and the circuit breakers' remaining_* gauges. Every test runs against `pylon proxy`
and real Envoy 1.40 (the reference) with the same bootstrap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
FAST_BACK_OFF = {"base_interval": "0.001s", "max_interval": "0.002s"}
GRPC = {"content-type": "application/grpc"}


@pytest.fixture
def ups() -> Iterator[dict[str, Upstream]]:
    servers = {"a": Upstream(), "b": Upstream()}
    yield servers
    for server in servers.values():
        server.close()


def start(run_proxy: Callable[..., RunningProxy], implementation: str, routes: list[dict[str, Any]],
          clusters: list[dict[str, Any]], **vhost: Any) -> RunningProxy:
    listener = http_listener("main", free_port(), routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0].update(vhost)
    return run_proxy([listener], clusters, implementation=implementation)


def seen(ups: dict[str, Upstream], header: str) -> list[tuple[str, str | None]]:
    """(upstream, value of `header`) for every request the upstreams got, a's first."""
    return [(name, r["headers"].get(header)) for name, up in ups.items() for r in up.requests]


def test_attempt_count_and_previous_hosts(implementation: str, run_proxy: Callable[..., RunningProxy],
                                          ups: dict[str, Upstream]) -> None:
    """Each request is tried twice (grpc-status 14 is `unavailable`), on two different hosts of a RANDOM
    cluster, with x-envoy-attempt-count 1 then 2 replacing the client's value."""
    policy = {"retry_on": "unavailable", "num_retries": 1, "retry_back_off": FAST_BACK_OFF,
              "retry_host_predicate": [PREVIOUS_HOSTS], "host_selection_retry_max_attempts": 50}
    cluster = static_cluster("two", [ups["a"].port, ups["b"].port], lb_policy="RANDOM")
    proxy = start(run_proxy, implementation, [route("/", "two", retry_policy=policy)], [cluster],
                  include_request_attempt_count=True)
    for i in range(8):
        reply = httpx.get(proxy.url("main", f"/respond?grpc-status=14&k={i}"), headers={"x-envoy-attempt-count": "7"})
        assert reply.status_code == 200 and reply.headers["grpc-status"] == "14"
    for i in range(8):
        tried = [(name, r["headers"]["x-envoy-attempt-count"]) for name, up in ups.items() for r in up.requests
                 if r["path"].endswith(f"&k={i}")]
        assert sorted(count for _, count in tried) == ["1", "2"] and {name for name, _ in tried} == {"a", "b"}
    assert proxy.stats()["cluster.two.upstream_rq_retry"] == 8


def test_no_attempt_count_unless_asked(implementation: str, run_proxy: Callable[..., RunningProxy],
                                       ups: dict[str, Upstream]) -> None:
    proxy = start(run_proxy, implementation, [route("/", "a")], [static_cluster("a", [ups["a"].port])])
    assert httpx.get(proxy.url("main", "/x")).status_code == 200
    assert seen(ups, "x-envoy-attempt-count") == [("a", None)]


@pytest.mark.parametrize(("retry_on", "grpc_status", "tries"), [
    ("cancelled", "1", 2), ("deadline-exceeded", "4", 2), ("resource-exhausted", "8", 2), ("internal", "13", 2),
    ("unavailable", "14", 2), ("cancelled,unavailable", "3", 1), ("cancelled", "14", 1), ("unavailable", "", 1),
    ("5xx", "14", 1),
])  # fmt: skip
def test_retry_on_grpc_status(implementation: str, run_proxy: Callable[..., RunningProxy], ups: dict[str, Upstream],
                              retry_on: str, grpc_status: str, tries: int) -> None:
    policy = {"retry_on": retry_on, "num_retries": 1, "retry_back_off": FAST_BACK_OFF}
    proxy = start(run_proxy, implementation, [route("/", "a", retry_policy=policy)],
                  [static_cluster("a", [ups["a"].port])])
    query = f"?grpc-status={grpc_status}" if grpc_status else ""
    assert httpx.get(proxy.url("main", f"/respond{query}")).status_code == 200
    assert len(ups["a"].requests) == tries


@pytest.mark.parametrize(("action", "headers", "times_out", "upstream_sees"), [
    # The header's value replaces the route timeout (here: none), less the offset; the upstream is told.
    ({"max_grpc_timeout": "0s", "grpc_timeout_offset": "0.05s"}, {**GRPC, "grpc-timeout": "250m"}, True, ("200m", "200")),
    # Capped by max_grpc_timeout.
    ({"max_grpc_timeout": "0.2s"}, {**GRPC, "grpc-timeout": "5S"}, True, ("200m", "200")),
    ({"max_grpc_timeout": "0.2s"}, {"content-type": "application/grpc+proto", "grpc-timeout": "5S"}, True, ("200m", "200")),
    # No grpc-timeout header: infinity, unless capped.
    ({"max_grpc_timeout": "0s"}, GRPC, False, (None, None)),
    ({"max_grpc_timeout": "0.2s"}, GRPC, True, ("200m", "200")),
    # The offset applies only when smaller than the header's value.
    ({"max_grpc_timeout": "0s", "grpc_timeout_offset": "1s"}, {**GRPC, "grpc-timeout": "200m"}, True, ("200m", "200")),
    # Not gRPC: the route timeout, and grpc-timeout passes untouched.
    ({"max_grpc_timeout": "0.2s"}, {"content-type": "application/grpcx", "grpc-timeout": "5S"}, False, ("5S", None)),
    # Without max_grpc_timeout the header is not read.
    ({}, {**GRPC, "grpc-timeout": "200m"}, False, ("200m", None)),
])  # fmt: skip
def test_grpc_timeout(implementation: str, run_proxy: Callable[..., RunningProxy], ups: dict[str, Upstream],
                      action: dict[str, Any], headers: dict[str, str], times_out: bool,
                      upstream_sees: tuple[str | None, str | None]) -> None:
    proxy = start(run_proxy, implementation, [route("/", "a", timeout="0s", **action)],
                  [static_cluster("a", [ups["a"].port])])
    began = time.monotonic()
    reply = httpx.post(proxy.url("main", "/slow/0.8"), headers=headers, content=b"", timeout=5)
    elapsed = time.monotonic() - began
    # Both answer a gRPC request's timeout the gRPC way (200, grpc-status 14; tests/proxy/test_proxy_grpc_local_reply.py).
    timed_out = reply.status_code == 504 or reply.headers.get("grpc-status") == "14"
    assert (timed_out, elapsed < 0.7) == (times_out, times_out)
    (request,) = ups["a"].requests
    assert (request["headers"].get("grpc-timeout"), request["headers"].get("x-envoy-expected-rq-timeout-ms")) == upstream_sees


def test_circuit_breaker_remaining_gauges(implementation: str, run_proxy: Callable[..., RunningProxy],
                                          ups: dict[str, Upstream]) -> None:
    thresholds = [{"max_connections": 10, "max_pending_requests": 11, "max_requests": 12, "max_retries": 4,
                   "track_remaining": True}]
    cluster = static_cluster("a", [ups["a"].port], circuit_breakers={"thresholds": thresholds})
    proxy = start(run_proxy, implementation, [route("/", "a")], [cluster])
    prefix = "cluster.a.circuit_breakers.default.remaining_"
    names = ("cx", "pending", "rq", "retries")
    assert [proxy.stats()[prefix + n] for n in names] == [10, 11, 12, 4]
    assert httpx.get(proxy.url("main", "/x")).status_code == 200
    # The keep-alive connection stays open and counts against max_connections.
    assert [proxy.stats()[prefix + n] for n in names] == [9, 11, 12, 4]

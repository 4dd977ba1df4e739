"""Integration: the subset load balancer (`lb_subset_config`, endpoint `envoy.lb` metadata, route and weighted
cluster `metadata_match`) through pylon and Envoy 1.40 alike.

Four upstreams carry version/stage metadata (one version a number, one a list). Routes chosen by an `x-case`
header send requests with different criteria to clusters with each fallback policy; for each case the set of
upstreams that answered (or the 503) and the cluster's `lb_subsets_*` stats must be what Envoy gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener
from tests.proxy.upstreams import Upstream

REQUESTS = 8
#: each upstream's envoy.lb metadata
METADATA: list[dict[str, Any]] = [
    {"version": "v1", "stage": "prod"},
    {"version": "v1", "stage": "canary"},
    {"version": "v2", "stage": "prod", "hw": ["c64", "m32"]},
    {"version": 1, "stage": "prod", "hw": ["m32"]},
]
SELECTORS = [{"keys": ["version"]},
             {"keys": ["stage"], "fallback_policy": "NO_FALLBACK"},
             {"keys": ["version", "stage"], "fallback_policy": "KEYS_SUBSET", "fallback_keys_subset": ["version"]}]


def cluster(name: str, ports: list[int], **subset: Any) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
                  "metadata": {"filter_metadata": {"envoy.lb": meta}}} for port, meta in zip(ports, METADATA)]
    return {"name": name, "connect_timeout": "1s", "type": "STATIC", "lb_policy": "ROUND_ROBIN",
            "lb_subset_config": subset,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}}


def case(name: str, cluster_name: str, match: dict[str, Any] | None, **action: Any) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster_name, **action}
    if match is not None:
        route["metadata_match"] = {"filter_metadata": {"envoy.lb": match}}
    return {"match": {"prefix": "/", "headers": [{"name": "x-case", "string_match": {"exact": name}}]},
            "route": route}


#: case -> (upstream indexes that answer it, or None for Envoy's 503 "no healthy upstream")
CASES: dict[str, tuple[dict[str, Any], set[int] | None]] = {
    # cluster "main": DEFAULT_SUBSET {stage: prod}, selectors above
    "v1": (case("v1", "main", {"version": "v1"}), {0, 1}),
    "v2": (case("v2", "main", {"version": "v2"}), {2}),
    "number": (case("number", "main", {"version": 1}), {3}),
    "string-one": (case("string-one", "main", {"version": "1"}), {0, 2, 3}),  # no such subset: the default
    "v1-canary": (case("v1-canary", "main", {"version": "v1", "stage": "canary"}), {1}),
    "v2-canary": (case("v2-canary", "main", {"version": "v2", "stage": "canary"}), {2}),  # KEYS_SUBSET
    "stage-test": (case("stage-test", "main", {"stage": "test"}), None),  # the selector's NO_FALLBACK
    "extra-key": (case("extra-key", "main", {"version": "v1", "color": "red"}), {0, 2, 3}),
    "no-criteria": (case("no-criteria", "main", None), {0, 2, 3}),
    "weighted": ({"match": {"prefix": "/", "headers": [{"name": "x-case", "string_match": {"exact": "weighted"}}]},
                  "route": {"metadata_match": {"filter_metadata": {"envoy.lb": {"version": "v1", "stage": "prod"}}},
                            "weighted_clusters": {"clusters": [
                                {"name": "main", "weight": 1,
                                 "metadata_match": {"filter_metadata": {"envoy.lb": {"stage": "canary"}}}}]}}},
                 {1}),
    # the other clusters' fallback policies
    "none": (case("none", "none", {"version": "v9"}), None),
    "none-no-criteria": (case("none-no-criteria", "none", None), None),
    "any": (case("any", "any", {"version": "v9"}), {0, 1, 2, 3}),
    "panic": (case("panic", "panic", {"version": "v9"}), {0, 1, 2, 3}),
    "list": (case("list", "list", {"hw": "m32"}), {2, 3}),
    "list-default": (case("list-default", "list", {"hw": "x"}), {2}),
}


@pytest.fixture(params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningProxy]:
    ups = [Upstream() for _ in METADATA]
    launcher = ProxyLauncher(tmp_path)
    ports = [up.port for up in ups]
    try:
        clusters = [
            cluster("main", ports, fallback_policy="DEFAULT_SUBSET", default_subset={"stage": "prod"},
                    subset_selectors=SELECTORS),
            cluster("none", ports, subset_selectors=[{"keys": ["version"]}]),
            cluster("any", ports, fallback_policy="ANY_ENDPOINT", subset_selectors=[{"keys": ["version"]}]),
            cluster("panic", ports, fallback_policy="DEFAULT_SUBSET", default_subset={"stage": "nowhere"},
                    panic_mode_any=True, subset_selectors=[{"keys": ["version"]}]),
            cluster("list", ports, list_as_any=True, fallback_policy="DEFAULT_SUBSET",
                    default_subset={"hw": "c64"},
                    subset_selectors=[{"keys": ["hw"]}]),
        ]
        routes = [route for route, _ in CASES.values()]
        proxy = launcher.start([http_listener("main", free_port(), routes)], clusters, implementation=request.param)
        proxy.upstream_ports = {port: i for i, port in enumerate(ports)}  # type: ignore[attr-defined]
        yield proxy
    finally:
        launcher.close()
        for up in ups:
            up.close()


def served(proxy: RunningProxy, name: str) -> set[int] | None:
    """The upstreams that answered REQUESTS requests of one case, or None when each got a 503."""
    answered: set[int] = set()
    statuses = set()
    with httpx.Client(timeout=5) as client:
        for _ in range(REQUESTS):
            reply = client.get(proxy.url("main", "/"), headers={"x-case": name})
            statuses.add(reply.status_code)
            if reply.status_code == 200:
                answered.add(proxy.upstream_ports[int(reply.headers["x-served-by"])])  # type: ignore[attr-defined]
    if statuses == {503}:
        return None
    assert statuses == {200}, (name, statuses)
    return answered


def test_subsets_and_fallbacks_as_envoy(proxy: RunningProxy) -> None:
    got = {name: served(proxy, name) for name in CASES}
    assert got == {name: expected for name, (_, expected) in CASES.items()}
    stats = proxy.stats()
    # main: version v1, v2, 1 / (stage, version) x3 + (prod, 1) / stage prod, canary
    subset_stats = {stat: stats[f"cluster.main.lb_subsets_{stat}"]
                    for stat in ("active", "created", "removed", "selected", "fallback", "fallback_panic")}
    # selected: v1, v2, number, v1-canary, v2-canary (after its KEYS_SUBSET), weighted; fallback: string-one,
    # extra-key, no-criteria
    # Each of Envoy's threads has its own subset balancer, its main thread's too (one worker: twice the count);
    # pylon's supervisor balances nothing: once per worker.
    copies = 2 if proxy.config_path.name.startswith("envoy") else 1
    assert subset_stats == {"active": 9 * copies, "created": 9 * copies, "removed": 0, "selected": 6 * REQUESTS,
                            "fallback": 3 * REQUESTS, "fallback_panic": 0}
    assert stats["cluster.panic.lb_subsets_fallback_panic"] == REQUESTS
    assert stats["cluster.panic.lb_subsets_fallback"] == 0
    assert stats["cluster.any.lb_subsets_fallback"] == REQUESTS
    assert stats["cluster.list.lb_subsets_active"] == 2 * copies  # hw c64, m32

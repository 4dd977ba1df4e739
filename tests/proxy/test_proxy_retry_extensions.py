"""Integration: Envoy's retry extensions beyond previous_hosts, through pylon and Envoy 1.40 alike.

The previous_priorities retry priority sends a retry to a priority level not tried yet (a cluster whose
priority 0 is healthy gives all its load to it, so without the extension every retry hits the same failing
level); omit_host_metadata and omit_canary_hosts keep retries away from hosts by their `envoy.lb` metadata.
Each scenario runs the same bootstrap through both proxies; the upstreams count what reached them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route
from tests.proxy.upstreams import Upstream

FAST_BACK_OFF = {"base_interval": "0.001s", "max_interval": "0.002s"}
TYPE = "type.googleapis.com/envoy.extensions.retry."


def previous_priorities(update_frequency: int) -> dict[str, Any]:
    return {"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
        "@type": TYPE + "priority.previous_priorities.v3.PreviousPrioritiesConfig",
        "update_frequency": update_frequency}}


def endpoint(port: int, **lb_metadata: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    if lb_metadata:
        entry["metadata"] = {"filter_metadata": {"envoy.lb": lb_metadata}}
    return entry


def cluster(name: str, levels: list[list[dict[str, Any]]], **extra: Any) -> dict[str, Any]:
    """A STATIC cluster with one locality entry per priority level, in order."""
    endpoints = [{"priority": i, "lb_endpoints": level} for i, level in enumerate(levels)]
    return {"name": name, "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": endpoints}, **extra}


@pytest.fixture
def ups() -> Iterator[dict[str, Upstream]]:
    servers = {name: Upstream() for name in ("p0", "p1", "p2", "good", "bad", "canary")}
    yield servers
    for server in servers.values():
        server.close()


def start(run_proxy: Callable[..., RunningProxy], implementation: str, policy: dict[str, Any],
          clusters: list[dict[str, Any]]) -> RunningProxy:
    listener = http_listener("main", free_port(), [route("/", clusters[0]["name"], retry_policy=policy)])
    return run_proxy([listener], clusters, implementation=implementation)


def counts(ups: dict[str, Upstream]) -> dict[str, int]:
    return {name: len(up.requests) for name, up in ups.items() if up.requests}


@pytest.mark.parametrize(("frequency", "retries", "expected"), [
    # Every retry leaves out the levels tried so far: p0, then p1, then p2 answers.
    (1, 2, {"p0": 1, "p1": 1, "p2": 1}),
    # Updated every second attempt: the first retry still goes by the cluster's load (p0), the second leaves p0 out.
    (2, 2, {"p0": 2, "p1": 1}),
])  # fmt: skip
def test_previous_priorities(implementation: str, run_proxy: Callable[..., RunningProxy], ups: dict[str, Upstream],
                             frequency: int, retries: int, expected: dict[str, int]) -> None:
    ups["p0"].override_status = 503
    ups["p1"].override_status = 503
    policy = {"retry_on": "5xx", "num_retries": retries, "retry_back_off": FAST_BACK_OFF,
              "retry_priority": previous_priorities(frequency)}
    levels = [[endpoint(ups["p0"].port)], [endpoint(ups["p1"].port)], [endpoint(ups["p2"].port)]]
    proxy = start(run_proxy, implementation, policy, [cluster("tiers", levels)])
    reply = httpx.get(proxy.url("main", "/x"))
    assert counts(ups) == expected
    assert reply.status_code == (200 if "p2" in expected else 503)


def test_without_retry_priority_retries_stay_on_the_loaded_level(
        implementation: str, run_proxy: Callable[..., RunningProxy], ups: dict[str, Upstream]) -> None:
    """The control: priority 0 is healthy, so it takes all the load, retries included."""
    ups["p0"].override_status = 503
    policy = {"retry_on": "5xx", "num_retries": 2, "retry_back_off": FAST_BACK_OFF}
    proxy = start(run_proxy, implementation, policy,
                  [cluster("tiers", [[endpoint(ups["p0"].port)], [endpoint(ups["p1"].port)]])])
    assert httpx.get(proxy.url("main", "/x")).status_code == 503
    assert counts(ups) == {"p0": 3}


def test_all_levels_tried_falls_back_to_the_cluster_load(
        implementation: str, run_proxy: Callable[..., RunningProxy], ups: dict[str, Upstream]) -> None:
    """Both levels tried and failing: the third retry has no level left and goes by the cluster's load (p0)."""
    ups["p0"].override_status = 503
    ups["p1"].override_status = 503
    policy = {"retry_on": "5xx", "num_retries": 3, "retry_back_off": FAST_BACK_OFF,
              "retry_priority": previous_priorities(1)}
    proxy = start(run_proxy, implementation, policy,
                  [cluster("tiers", [[endpoint(ups["p0"].port)], [endpoint(ups["p1"].port)]])])
    assert httpx.get(proxy.url("main", "/x")).status_code == 503
    assert sum(counts(ups).values()) == 4 and counts(ups)["p0"] >= 2 and counts(ups)["p1"] >= 1


@pytest.mark.parametrize("predicate", [
    {"name": "envoy.retry_host_predicates.omit_host_metadata", "typed_config": {
        "@type": TYPE + "host.omit_host_metadata.v3.OmitHostMetadataConfig",
        "metadata_match": {"filter_metadata": {"envoy.lb": {"stage": "old"}}}}},
    {"name": "envoy.retry_host_predicates.omit_canary_hosts", "typed_config": {
        "@type": TYPE + "host.omit_canary_hosts.v3.OmitCanaryHostsPredicate"}},
])  # fmt: skip
def test_host_predicates_keep_retries_off_marked_hosts(
        implementation: str, run_proxy: Callable[..., RunningProxy], ups: dict[str, Upstream],
        predicate: dict[str, Any]) -> None:
    """Two failing hosts marked (stage: old, and canary: true; a list value holding "old" counts, as Envoy's
    lists-as-any) and one good host: whatever the first attempt hit, the retry never lands on a marked one."""
    ups["bad"].override_status = 503
    ups["canary"].override_status = 503
    policy = {"retry_on": "5xx", "num_retries": 1, "retry_back_off": FAST_BACK_OFF,
              "retry_host_predicate": [predicate], "host_selection_retry_max_attempts": 50}
    hosts = [endpoint(ups["bad"].port, stage=["new", "old"], canary=True),
             endpoint(ups["canary"].port, stage="old", canary=True), endpoint(ups["good"].port, stage="new")]
    proxy = start(run_proxy, implementation, policy, [cluster("mixed", [hosts], lb_policy="RANDOM")])
    for i in range(12):
        assert httpx.get(proxy.url("main", f"/x{i}")).status_code == 200
    assert len(ups["good"].requests) == 12

"""The subset load balancer (sans-IO, upstream/subset.py) on a worker's Cluster: EDS and health updates keep the
subsets current, criteria compare as Envoy compares metadata values, and each fallback path."""

from __future__ import annotations

from typing import Any

import msgspec

from pylon.config.envoy import Cluster as ClusterConfig, ClusterLoadAssignment, dec_hook
from pylon.proxy.upstream.cluster import Cluster
from pylon.proxy.upstream.host import FAILED_ACTIVE_HC
from pylon.proxy.upstream.subset import criteria_of, merged_criteria, value_key
from pylon.stats.store import StatsStore


def lb_endpoint(port: int, **lb: Any) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
            "metadata": {"filter_metadata": {"envoy.lb": lb}}}


def assignment(*endpoints: dict[str, Any]) -> ClusterLoadAssignment:
    return msgspec.convert({"cluster_name": "c", "endpoints": [{"lb_endpoints": list(endpoints)}]},
                           ClusterLoadAssignment, dec_hook=dec_hook)


def eds_cluster(stats: StatsStore, **subset: Any) -> Cluster:
    config = msgspec.convert({"name": "c", "connect_timeout": "1s", "type": "EDS",
                              "eds_cluster_config": {"eds_config": {"ads": {}}},
                              "lb_subset_config": subset}, ClusterConfig, dec_hook=dec_hook)
    return Cluster(config, stats)


def ports(cluster: Cluster, criteria: dict[str, Any] | None, picks: int = 6) -> set[int]:
    assert cluster.subsets is not None
    wanted = criteria_of(criteria) if criteria is not None else None
    found = {cluster.subsets.choose_matching(wanted) for _ in range(picks)}
    return {host.address[1] for host in found if host is not None}


def counters(stats: StatsStore) -> dict[str, int]:
    names = ("created", "removed", "selected", "fallback", "fallback_panic")
    return {name: stats.counters[f"cluster.c.lb_subsets_{name}"].value for name in names} | {
        "active": stats.gauges["cluster.c.lb_subsets_active"].value}


def test_eds_updates_create_and_remove_subsets() -> None:
    stats = StatsStore()
    cluster = eds_cluster(stats, fallback_policy="ANY_ENDPOINT", subset_selectors=[{"keys": ["v"]}])
    cluster.set_assignment(assignment(lb_endpoint(1, v="a"), lb_endpoint(2, v="b")))
    assert ports(cluster, {"v": "a"}) == {1}
    assert counters(stats) == {"created": 2, "removed": 0, "selected": 6, "fallback": 0, "fallback_panic": 0,
                               "active": 2}
    # host 2 moves to v=c (same address: its Host stays, its metadata changes); a new host joins a
    cluster.set_assignment(assignment(lb_endpoint(1, v="a"), lb_endpoint(2, v="c"), lb_endpoint(3, v="a")))
    assert ports(cluster, {"v": "a"}) == {1, 3}
    assert ports(cluster, {"v": "c"}) == {2}
    assert ports(cluster, {"v": "b"}) == {1, 2, 3}  # gone: the fallback
    assert counters(stats)["created"] == 3 and counters(stats)["removed"] == 1 and counters(stats)["active"] == 2
    cluster.set_assignment(assignment())
    assert counters(stats)["removed"] == 3 and counters(stats)["active"] == 0
    assert cluster.subsets.choose_matching(criteria_of({"v": "a"})) is None


def test_a_subset_of_unhealthy_hosts_is_still_chosen() -> None:
    stats = StatsStore()
    cluster = eds_cluster(stats, fallback_policy="ANY_ENDPOINT", subset_selectors=[{"keys": ["v"]}],
                          panic_mode_any=True)
    cluster.set_assignment(assignment(lb_endpoint(1, v="a"), lb_endpoint(2, v="a"), lb_endpoint(3, v="b")))
    one, two, _ = cluster.hosts
    one.set_flag(FAILED_ACTIVE_HC)
    assert ports(cluster, {"v": "a"}) == {2}
    two.set_flag(FAILED_ACTIVE_HC)  # all of the subset unhealthy: its own panic balances over all of it
    assert ports(cluster, {"v": "a"}) == {1, 2}
    assert counters(stats)["fallback"] == 0


def test_default_subset_then_panic_mode_any() -> None:
    stats = StatsStore()
    cluster = eds_cluster(stats, fallback_policy="DEFAULT_SUBSET", default_subset={"tier": "gold"},
                          panic_mode_any=True, subset_selectors=[{"keys": ["v"]}])
    cluster.set_assignment(assignment(lb_endpoint(1, v="a", tier="gold"), lb_endpoint(2, v="b")))
    assert ports(cluster, None) == {1}
    assert counters(stats)["fallback"] == 6
    cluster.set_assignment(assignment(lb_endpoint(2, v="b")))  # no gold host left: any host, counted as panic
    assert ports(cluster, None) == {2}
    assert counters(stats)["fallback_panic"] == 6


def test_no_fallback_and_selector_policies() -> None:
    stats = StatsStore()
    cluster = eds_cluster(stats, default_subset={"tier": "gold"}, subset_selectors=[
        {"keys": ["v"], "fallback_policy": "DEFAULT_SUBSET"},
        {"keys": ["x"], "fallback_policy": "ANY_ENDPOINT"},
        {"keys": ["v", "x"], "fallback_policy": "KEYS_SUBSET", "fallback_keys_subset": ["x"]}])
    cluster.set_assignment(assignment(lb_endpoint(1, v="a", x="1", tier="gold"), lb_endpoint(2, v="b", x="2")))
    assert ports(cluster, None) == set()  # NO_FALLBACK, the cluster's default
    assert ports(cluster, {"v": "z"}) == {1}  # the selector's DEFAULT_SUBSET
    assert ports(cluster, {"x": "9"}) == {1, 2}  # the selector's ANY_ENDPOINT
    assert ports(cluster, {"v": "a", "x": "2"}) == {2}  # KEYS_SUBSET: x=2 alone
    assert ports(cluster, {"v": "a", "x": "9"}) == {1, 2}  # ... then x's ANY_ENDPOINT


def test_values_compare_as_protobuf_values() -> None:
    assert value_key(1) == value_key(1.0) != value_key("1")
    assert value_key(True) != value_key(1)
    assert value_key({"b": [1, "x"], "a": None}) == value_key({"a": None, "b": [1.0, "x"]})
    assert criteria_of({"b": 1, "a": "x"}) == (("a", ("string", "x")), ("b", ("number", 1.0)))
    assert merged_criteria({"a": "x", "b": 1}, {"b": 2}) == criteria_of({"a": "x", "b": 2})


def test_list_as_any_puts_a_host_in_each_of_its_values_subsets() -> None:
    stats = StatsStore()
    cluster = eds_cluster(stats, list_as_any=True, subset_selectors=[{"keys": ["hw"]}])
    cluster.set_assignment(assignment(lb_endpoint(1, hw=["a", "b"]), lb_endpoint(2, hw="b")))
    assert ports(cluster, {"hw": "a"}) == {1}
    assert ports(cluster, {"hw": "b"}) == {1, 2}
    assert ports(cluster, {"hw": ["a", "b"]}) == set()  # the list itself is no subset


def test_without_selectors_the_cluster_balances_as_usual() -> None:
    stats = StatsStore()
    cluster = eds_cluster(stats, fallback_policy="NO_FALLBACK")
    assert cluster.subsets is None
    cluster.set_assignment(assignment(lb_endpoint(1, v="a")))
    assert cluster.choose_host(None) is not None

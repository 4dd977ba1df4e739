"""Load-balancing policies: distributions, weights, panic threshold, ring-hash stability."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import pytest

from pylon.config.envoy import Cluster as ClusterConfig, dec_hook
from pylon.proxy.upstream.host import FAILED_ACTIVE_HC, Host
from pylon.proxy.upstream.lb import (
    LB_POLICIES, LeastRequest, Maglev, Random, RingHash, RoundRobin, create_load_balancer, stable_hash,
)


def make_hosts(*weights: int) -> list[Host]:
    return [Host((f"10.0.0.{i + 1}", 80), weight) for i, weight in enumerate(weights)]


def counts(lb, picks: int, key=None) -> Counter:
    return Counter(lb.choose(key).address[0] for _ in range(picks))


# -- round robin ---------------------------------------------------------------------------


def test_round_robin_equal_weights_visits_each_host_once_per_cycle():
    hosts = make_hosts(1, 1, 1)
    lb = RoundRobin(rng=random.Random(1))
    lb.update(hosts)
    for _ in range(5):
        assert {lb.choose().address for _ in range(3)} == {h.address for h in hosts}


def test_round_robin_honours_weights_and_interleaves():
    hosts = make_hosts(3, 1)
    lb = RoundRobin(rng=random.Random(1))
    lb.update(hosts)
    picks = [lb.choose().address[0] for _ in range(400)]
    assert Counter(picks) == {"10.0.0.1": 300, "10.0.0.2": 100}
    # Smooth: the light host shows up in every window of 4, never starved by a block of the heavy one.
    longest_run = max(len(run) for run in "".join("a" if p == "10.0.0.1" else "b" for p in picks).split("b"))
    assert longest_run <= 3


def test_round_robin_weights_with_three_hosts():
    lb = RoundRobin(rng=random.Random(2))
    lb.update(make_hosts(5, 3, 2))
    assert counts(lb, 1000) == {"10.0.0.1": 500, "10.0.0.2": 300, "10.0.0.3": 200}


# -- least request -------------------------------------------------------------------------


def test_least_request_p2c_avoids_the_busy_host():
    hosts = make_hosts(1, 1, 1, 1)
    hosts[0].active_requests = 10
    lb = LeastRequest(rng=random.Random(3))
    lb.update(hosts)
    picked = counts(lb, 4000)
    # The busy host wins only when both draws land on it: 1/16 of the time.
    assert picked["10.0.0.1"] / 4000 == pytest.approx(1 / 16, abs=0.02)


def test_least_request_more_choices_means_busy_host_picked_less():
    hosts = make_hosts(1, 1, 1, 1)
    hosts[0].active_requests = 10
    two = LeastRequest(choice_count=2, rng=random.Random(4))
    four = LeastRequest(choice_count=4, rng=random.Random(4))
    two.update(hosts)
    four.update(hosts)
    assert counts(four, 4000)["10.0.0.1"] < counts(two, 4000)["10.0.0.1"] / 2


def test_least_request_unequal_weights_follow_weights_when_idle():
    lb = LeastRequest(rng=random.Random(5))
    lb.update(make_hosts(2, 1))
    assert counts(lb, 300) == {"10.0.0.1": 200, "10.0.0.2": 100}


def test_least_request_unequal_weights_shift_away_from_load():
    hosts = make_hosts(2, 1)
    hosts[0].active_requests = 9  # effective weight 2/10 vs 1/1
    lb = LeastRequest(rng=random.Random(6))
    lb.update(hosts)
    picked = counts(lb, 600)
    assert picked["10.0.0.2"] > 3 * picked["10.0.0.1"]


# -- random --------------------------------------------------------------------------------


def test_random_is_uniform_like_envoy_ignoring_weights():
    lb = Random(rng=random.Random(7))
    lb.update(make_hosts(10, 1, 1, 1))
    picked = counts(lb, 8000)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        assert picked[ip] / 8000 == pytest.approx(0.25, abs=0.03)


# -- ring hash -----------------------------------------------------------------------------


def test_stable_hash_is_not_pythons_salted_hash():
    # A fixed value: the same in every process and every run (hash() would differ per process).
    assert stable_hash(b"user-42") == 0xA6EFE67B4DCAA06F


def test_ring_hash_same_key_same_host_across_instances():
    hosts = make_hosts(1, 1, 1, 1, 1)
    a, b = RingHash(rng=random.Random(1)), RingHash(rng=random.Random(2))
    a.update(hosts)
    b.update(list(reversed(hosts)))
    for i in range(200):
        key = f"session-{i}".encode()
        assert a.choose(key) is a.choose(key)
        assert a.choose(key) is b.choose(key)


def removal_moves(lb, count: int) -> tuple[int, float]:
    """Five equal hosts, then one removed: how many of `count` keys the removed host owned (none may stay on
    it), and the share of the other keys that moved anyway."""
    hosts = make_hosts(1, 1, 1, 1, 1)
    lb.update(hosts)
    keys = [f"k{i}".encode() for i in range(count)]
    before = {k: lb.choose(k) for k in keys}
    gone = hosts[2]
    lb.update([h for h in hosts if h is not gone])
    after = {k: lb.choose(k) for k in keys}
    assert all(after[k] is not gone for k in keys)
    others = [k for k in keys if before[k] is not gone]
    return count - len(others), sum(after[k] is not before[k] for k in others) / len(others)


def test_ring_hash_removing_a_host_moves_only_its_keys():
    owned, moved = removal_moves(RingHash(rng=random.Random(1)), 2000)
    assert owned > 200, "the removed host owned about a fifth of the keys"
    # Envoy's ring keeps its minimum size, so survivors gain a few entries and a small
    # share of their keys moves; a naive mod-N hash would move ~80% of them.
    assert moved < 0.2


def test_ring_hash_health_flap_rebuilds_the_same_ring():
    hosts = make_hosts(1, 2, 1)
    lb = RingHash(rng=random.Random(1))
    lb.update(hosts)
    ring = list(lb._ring_hashes)
    hosts[1].set_flag(FAILED_ACTIVE_HC)
    lb.update(hosts)
    assert lb._ring_hashes != ring
    hosts[1].clear_flag(FAILED_ACTIVE_HC)
    lb.update(hosts)
    assert lb._ring_hashes == ring


def test_ring_hash_spreads_keys_by_weight_and_sizes_ring():
    lb = RingHash(minimum_ring_size=1024, maximum_ring_size=4096, rng=random.Random(1))
    lb.update(make_hosts(2, 1, 1))
    assert 1024 <= lb.ring_size <= 4096
    picked = Counter(lb.choose(f"key{i}".encode()).address[0] for i in range(8000))
    assert picked["10.0.0.1"] / 8000 == pytest.approx(0.5, abs=0.06)
    assert picked["10.0.0.2"] / 8000 == pytest.approx(0.25, abs=0.06)


def test_ring_hash_without_key_picks_randomly():
    lb = RingHash(rng=random.Random(8))
    lb.update(make_hosts(1, 1, 1))
    assert len(counts(lb, 300, key=None)) == 3


def test_ring_hash_maximum_ring_size_caps_entries():
    lb = RingHash(minimum_ring_size=64, maximum_ring_size=100, rng=random.Random(1))
    lb.update(make_hosts(1, 1000))
    assert lb.ring_size <= 101


# -- maglev ----------------------------------------------------------------------------------


def test_maglev_same_key_same_host_across_instances_and_host_order():
    hosts = make_hosts(1, 1, 1, 1, 1)
    a, b = Maglev(table_size=251, rng=random.Random(1)), Maglev(table_size=251, rng=random.Random(2))
    a.update(hosts)
    b.update(list(reversed(hosts)))  # the table depends on the hosts, not on their order... for equal weights
    same = sum(a.choose(f"s{i}".encode()) is b.choose(f"s{i}".encode()) for i in range(500))
    assert all(a.choose(f"s{i}".encode()) is a.choose(f"s{i}".encode()) for i in range(200))
    assert same > 450  # turn order decides a few contested slots


def test_maglev_removing_a_host_moves_almost_only_its_keys():
    owned, moved = removal_moves(Maglev(rng=random.Random(1)), 3000)
    assert owned > 300 and moved < 0.02


def test_maglev_spreads_by_weight_and_a_key_less_request_is_random():
    lb = Maglev(rng=random.Random(3))
    lb.update(make_hosts(1, 3))
    spread = Counter(lb.choose(f"u{i}".encode()).address[0] for i in range(4000))
    assert 0.2 < spread["10.0.0.1"] / 4000 < 0.3
    assert len(counts(lb, 200)) == 2


def test_maglev_health_flap_back_reuses_the_same_table():
    hosts = make_hosts(1, 1, 1)
    lb = Maglev(table_size=101, rng=random.Random(1))
    lb.update(hosts)
    table = lb._table
    lb.update(hosts)
    assert lb._table is table


@pytest.mark.parametrize(("size", "error"), [(100, "must be prime"), (5000012, "<= 5000011")])
def test_maglev_table_size_is_a_prime_within_envoys_bound(size, error):
    with pytest.raises(msgspec.ValidationError, match=error):
        cluster_config(lb_policy="MAGLEV", maglev_lb_config={"table_size": size})
    assert create_load_balancer(cluster_config(lb_policy="MAGLEV", maglev_lb_config={"table_size": 7})).table_size == 7


# -- panic threshold and empty sets --------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(LB_POLICIES))
def test_healthy_hosts_only_above_panic_threshold(policy):
    hosts = make_hosts(1, 1, 1, 1)
    hosts[0].set_flag(FAILED_ACTIVE_HC)
    hosts[1].set_flag(FAILED_ACTIVE_HC)  # 50% healthy: not below the default 50% threshold
    lb = LB_POLICIES[policy](rng=random.Random(9))
    lb.update(hosts)
    assert not lb.in_panic
    picked = {lb.choose(f"{i}".encode()).address[0] for i in range(400)}
    assert picked == {"10.0.0.3", "10.0.0.4"}


@pytest.mark.parametrize("policy", sorted(LB_POLICIES))
def test_panic_balances_across_all_hosts(policy):
    hosts = make_hosts(1, 1, 1, 1)
    for h in hosts[:3]:
        h.set_flag(FAILED_ACTIVE_HC)  # 25% healthy < 50%
    lb = LB_POLICIES[policy](rng=random.Random(10))
    lb.update(hosts)
    assert lb.in_panic
    picked = {lb.choose(f"{i}".encode()).address[0] for i in range(400)}
    assert picked == {h.address[0] for h in hosts}


def test_panic_threshold_zero_disables_panic():
    hosts = make_hosts(1, 1)
    for h in hosts:
        h.set_flag(FAILED_ACTIVE_HC)
    lb = RoundRobin(panic_threshold=0, rng=random.Random(1))
    lb.update(hosts)
    assert not lb.in_panic
    assert lb.choose() is None


@pytest.mark.parametrize("policy", sorted(LB_POLICIES))
def test_no_hosts_gives_none(policy):
    lb = LB_POLICIES[policy](rng=random.Random(1))
    lb.update([])
    assert lb.choose(b"key") is None
    assert lb.choose() is None


# -- registry and config -------------------------------------------------------------------


def cluster_config(**fields) -> ClusterConfig:
    return msgspec.convert({"name": "c", **fields}, ClusterConfig, dec_hook=dec_hook)


def test_registry_is_keyed_by_envoy_enum_names():
    assert set(LB_POLICIES) == {"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"}


def test_create_from_config_reads_policy_specific_blocks():
    lr = create_load_balancer(cluster_config(
        lb_policy="LEAST_REQUEST", least_request_lb_config={"choice_count": 5},
        common_lb_config={"healthy_panic_threshold": {"value": 20}},
    ))
    assert isinstance(lr, LeastRequest) and lr.choice_count == 5 and lr.panic_threshold == 20
    rh = create_load_balancer(cluster_config(
        lb_policy="RING_HASH", ring_hash_lb_config={"minimum_ring_size": 16, "maximum_ring_size": 32},
    ))
    assert isinstance(rh, RingHash) and (rh.minimum_ring_size, rh.maximum_ring_size) == (16, 32)
    assert create_load_balancer(cluster_config()).panic_threshold == 50


@pytest.mark.parametrize("policy", [RingHash, Maglev])
def test_internal_listener_hosts_hash_by_their_address_text(policy) -> None:
    """Hosts that are internal listeners (`envoy://name/id`) hash by that whole text, as Envoy's asString: hosts of
    one cluster that differ only after `envoy:` must not land on the same points."""
    from pylon.proxy.internal_listener import InternalAddress

    hosts = [Host(InternalAddress("inner", str(i)), 1) for i in range(4)]
    lb = policy(rng=random.Random(1))
    lb.update(hosts)
    picked = Counter(lb.choose(f"k{i}".encode()).address for i in range(2000))
    assert set(picked) == {h.address for h in hosts} and min(picked.values()) > 250

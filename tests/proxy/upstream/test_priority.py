"""Priority levels and locality-weighted balancing (upstream/priority.py), with seeded RNGs over many picks."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pylon.proxy.upstream.host import FAILED_ACTIVE_HC, Host, Placement
from pylon.proxy.upstream.lb import RingHash, RoundRobin
from pylon.proxy.upstream.priority import PrioritizedBalancer, priority_health, priority_loads
from pylon.proxy.upstream.retry_priority import RetryPriorityState

PICKS = 20_000


def hosts_at(priority: int, entry: int, count: int, weight: int = 0, first: int = 1) -> list[Host]:
    out = []
    for i in range(count):
        host = Host((f"10.{priority}.{entry}.{first + i}", 80))
        host.placement = Placement(priority, entry, ("r", f"z{entry}", ""), weight)
        out.append(host)
    return out


def down(*hosts: Host) -> None:
    for host in hosts:
        host.set_flag(FAILED_ACTIVE_HC)


def balancer(locality_weighted: bool = False, panic: float = 50.0, seed: int = 7) -> PrioritizedBalancer:
    rng = random.Random(seed)
    return PrioritizedBalancer(lambda: RoundRobin(rng=rng), locality_weighted=locality_weighted,
                               panic_threshold=panic, rng=rng)


def shares(lb: PrioritizedBalancer, key=None) -> Counter:
    """The share (0..1) of picks by (priority, entry)."""
    picks = Counter()
    for _ in range(PICKS):
        host = lb.choose(key)
        picks[(host.placement.priority, host.placement.entry)] += 1
    return Counter({k: v / PICKS for k, v in picks.items()})


@pytest.mark.parametrize(("healthy", "total", "health"), [(1, 1, 100), (2, 3, 93), (1, 3, 46), (0, 2, 0), (5, 7, 100)])
def test_priority_health_is_envoy_s_integer_arithmetic(healthy: int, total: int, health: int) -> None:
    hosts = [Host((f"10.0.0.{i}", 80)) for i in range(total)]
    down(*hosts[healthy:])
    assert priority_health(hosts) == health


@pytest.mark.parametrize(("health", "loads"), [
    ([100, 100], [100, 0]),
    ([93, 100], [93, 7]),
    ([46, 46, 100], [46, 46, 8]),
    ([46, 0], [100, 0]),          # normalised: the only healthy priority takes everything
    ([30, 30], [50, 50]),
    ([0, 0, 70], [0, 0, 100]),
    ([33, 34, 0], [50, 50, 0]),   # 49 and 50 (of 67); what rounding leaves goes to the first
    ([0, 0], [0, 0]),
])
def test_priority_loads_follow_distribute_load(health: list[int], loads: list[int]) -> None:
    assert priority_loads(health) == loads


def test_one_priority_without_locality_weights_is_the_policy_itself() -> None:
    lb = balancer()
    lb.update(hosts_at(0, 0, 3))
    assert lb.choose.__self__ is lb._single  # the hot path: no wrapper frame


def test_lower_priority_takes_the_spill_over() -> None:
    p0, p1 = hosts_at(0, 0, 3), hosts_at(1, 1, 2)
    lb = balancer()
    lb.update(p0 + p1)
    assert shares(lb) == {(0, 0): 1.0}
    down(p0[0])  # health 93: 7% spill to priority 1
    lb.update(p0 + p1)
    got = shares(lb)
    assert lb.loads == [93, 7]
    assert got[(1, 1)] == pytest.approx(0.07, abs=0.01)
    assert {h.address for h in (lb.choose() for _ in range(300))} >= {p0[1].address, p0[2].address, p1[0].address}
    assert p0[0].address not in {lb.choose().address for _ in range(1000)}


def test_a_priority_in_panic_balances_over_all_its_hosts() -> None:
    p0, p1 = hosts_at(0, 0, 4), hosts_at(1, 1, 1)
    down(*p0[1:], *p1)  # p0: 1 of 4 healthy (25% < 50%); p1: none
    lb = balancer()
    lb.update(p0 + p1)
    assert lb.loads == [100, 0] and lb.in_panic
    assert {lb.choose().address for _ in range(100)} == {h.address for h in p0}


def test_no_health_anywhere_spreads_by_host_counts_or_fails_without_panic() -> None:
    p0, p1 = hosts_at(0, 0, 1), hosts_at(1, 1, 3)
    down(*p0, *p1)
    lb = balancer()
    lb.update(p0 + p1)
    assert lb.loads == [25, 75]
    assert shares(lb)[(1, 1)] == pytest.approx(0.75, abs=0.015)
    strict = balancer(panic=0.0)
    strict.update(p0 + p1)
    assert strict.choose() is None


def test_localities_by_weight_then_round_robin_inside() -> None:
    a, b, c = hosts_at(0, 0, 2, weight=1), hosts_at(0, 1, 1, weight=3), hosts_at(0, 2, 1, weight=0)
    lb = balancer(locality_weighted=True)
    lb.update(a + b + c)
    got = shares(lb)
    assert got[(0, 0)] == pytest.approx(0.25, abs=0.005)  # EDF: exact up to the schedule's phase
    assert got[(0, 1)] == pytest.approx(0.75, abs=0.005)
    assert (0, 2) not in got  # no weight: never picked
    picks = Counter(lb.choose().address for _ in range(400) if True)
    assert picks[a[0].address] == pytest.approx(picks[a[1].address], abs=2)


def test_locality_weight_times_its_healthy_share() -> None:
    a, b = hosts_at(0, 0, 4, weight=1), hosts_at(0, 1, 4, weight=1)
    down(*a[:2])  # a: 2 of 4 healthy -> min(1, 1.4 * 0.5) = 0.7 of its weight
    lb = balancer(locality_weighted=True)
    lb.update(a + b)
    got = shares(lb)
    assert got[(0, 0)] == pytest.approx(0.7 / 1.7, abs=0.005)
    assert got[(0, 1)] == pytest.approx(1 / 1.7, abs=0.005)
    assert {lb.choose().address for _ in range(2000)}.isdisjoint({a[0].address, a[1].address})


def test_the_locality_load_balancing_example_s_shape() -> None:
    """Envoy's locality-load-balancing sandbox: p0 one host, p1 two localities, p2 one."""
    p0, p1a, p1b, p2 = (hosts_at(0, 0, 1, 1), hosts_at(1, 1, 1, 1), hosts_at(1, 2, 1, 1), hosts_at(2, 3, 1, 1))
    everything = p0 + p1a + p1b + p2
    lb = balancer(locality_weighted=True)
    lb.update(everything)
    assert shares(lb) == {(0, 0): 1.0}
    down(*p0)
    lb.update(everything)
    got = shares(lb)
    assert got[(1, 1)] == pytest.approx(0.5, abs=0.01) and got[(1, 2)] == pytest.approx(0.5, abs=0.01)
    down(*p1a)  # p1: 1 of 2 healthy, health 70: 30% to p2; p1's healthy locality takes its 70%
    lb.update(everything)
    got = shares(lb)
    assert lb.loads == [0, 70, 30]
    assert got[(1, 2)] == pytest.approx(0.70, abs=0.015) and got[(2, 3)] == pytest.approx(0.30, abs=0.015)


def test_a_hash_key_keeps_its_priority() -> None:
    p0, p1 = hosts_at(0, 0, 2), hosts_at(1, 1, 2)
    down(p0[0])  # health 70: 30% of the keys go to p1
    rng = random.Random(3)
    lb = PrioritizedBalancer(lambda: RingHash(rng=rng), locality_weighted=False, panic_threshold=50.0, rng=rng)
    lb.update(p0 + p1)
    keys = [b"user-%d" % i for i in range(3000)]
    first = [lb.choose(k).address for k in keys]
    assert first == [lb.choose(k).address for k in keys]
    moved = sum(1 for address in first if address[0].startswith("10.1."))
    assert moved / len(keys) == pytest.approx(0.30, abs=0.03)


def test_a_retry_priority_spreads_the_load_over_the_levels_left() -> None:
    """previous_priorities leaves out the levels tried: the rest share the load by health as the cluster does
    (priority 1 at health 70 of 2 hosts with one down, priority 2 takes the 30 left); nothing left: as usual."""
    p0, p1, p2 = hosts_at(0, 0, 2), hosts_at(1, 1, 2), hosts_at(2, 2, 2)
    down(p1[0])
    lb = balancer()
    lb.update(p0 + p1 + p2)
    retry = RetryPriorityState(update_frequency=1)
    retry.attempted.append(p0[0])
    retry.advance()
    picks = Counter(lb.choose_excluding(retry).placement.priority for _ in range(PICKS))
    assert picks[0] == 0 and picks[1] / PICKS == pytest.approx(0.70, abs=0.02)
    assert picks[2] / PICKS == pytest.approx(0.30, abs=0.02)
    retry.attempted += [p1[1], p2[0]]
    retry.advance()  # every level tried: the cluster's own load, and the tries forgotten
    assert lb.choose_excluding(retry).placement.priority == 0 and retry.attempted == [] and retry.excluded is None


@pytest.mark.parametrize(("frequency", "attempts", "excluded"), [
    (1, [0], {0}), (1, [0, 1], {0, 1}), (2, [0], None), (2, [0, 0], {0}), (2, [0, 0, 1], {0}), (2, [0, 0, 1, 1], {0, 1}),
])  # fmt: skip
def test_previous_priorities_updates_every_update_frequency_attempts(frequency: int, attempts: list[int],
                                                                    excluded: set[int] | None) -> None:
    retry = RetryPriorityState(frequency)
    for priority in attempts:
        retry.attempted.append(hosts_at(priority, priority, 1)[0])
        retry.advance()
    assert retry.excluded == (None if excluded is None else frozenset(excluded))

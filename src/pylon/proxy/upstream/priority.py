"""Envoy's priority levels and locality-weighted balancing, above one LB policy (sans-IO).

A cluster whose hosts all sit at priority 0 and that does not ask for
`common_lb_config.locality_weighted_lb_config` is balanced by its policy alone:
`choose` is then the policy's own bound method (the cluster re-binds it after
each update), so the common case pays nothing for this module. Otherwise, as
Envoy's `LoadBalancerBase` and `ZoneAwareLoadBalancerBase` do:

- Each priority's health is `min(100, 140 * healthy hosts // hosts)` (Envoy's
  default overprovisioning factor 1.4, in its integer arithmetic). The load goes
  to the priorities in order, each taking `health * 100 // total health` (total
  health capped at 100) of what is left; what rounding leaves goes to the first
  priority with any health. So a priority with 1 host of 3 unhealthy keeps all
  the load (140 * 2 // 3 = 93 -> 100 after normalising when it is the only one
  with health, 93% when the next priority is healthy: that one takes 7%).
- A priority is in panic when fewer than `healthy_panic_threshold` percent of
  its hosts are healthy, unless the total health is 100: then its policy
  balances over all its hosts. With no health anywhere the load is spread over
  the priorities by their host counts, each in panic (panic threshold 0: no
  host, 503).
- With locality_weighted_lb_config (and no panic), a priority first picks one
  of its localities (entries of the ClusterLoadAssignment) by effective weight,
  `load_balancing_weight * min(1, 1.4 * healthy / hosts)`, in an EDF schedule
  (Envoy's locality weighted round robin); the policy then picks within it. A
  locality without a weight is never picked; when no locality can be, the
  priority's healthy hosts are balanced as one set.
- The priority of a request: a random number below 100 against the cumulative
  loads; with a hash key (RING_HASH, MAGLEV), the key's hash, so a key keeps its
  priority.
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Callable, Sequence

from pylon.proxy.upstream.host import Host
from pylon.proxy.upstream.lb import LoadBalancer, panic_threshold_of, stable_hash
from pylon.proxy.upstream.retry_priority import RetryPriorityState

#: Envoy's default ClusterLoadAssignment.policy.overprovisioning_factor, in percent
OVERPROVISIONING = 140

__all__ = ["OVERPROVISIONING", "PrioritizedBalancer", "prioritized", "priority_loads"]


def priority_health(hosts: Sequence[Host]) -> int:
    """Envoy's health of one priority level, 0..100."""
    if not hosts:
        return 0
    healthy = sum(1 for h in hosts if h.healthy)
    return min(100, OVERPROVISIONING * healthy // len(hosts))


def priority_loads(health: Sequence[int]) -> list[int]:
    """Envoy's distributeLoad: the percent of requests each priority takes, given each one's health."""
    total = min(100, sum(health))
    loads = [0] * len(health)
    if total == 0:
        return loads
    left = 100
    first = -1
    for i, h in enumerate(health):
        if h > 0 and first < 0:
            first = i
        loads[i] = min(left, h * 100 // total)
        left -= loads[i]
    if left and first >= 0:
        loads[first] += left
    return loads


class _Localities:
    """A priority's localities by effective weight, each with its own policy over its healthy hosts."""

    __slots__ = ("_heap", "_seq")

    def __init__(self, balancers: list[tuple[float, LoadBalancer]]) -> None:
        self._seq = len(balancers)
        self._heap = [(1.0 / weight, seq, weight, lb) for seq, (weight, lb) in enumerate(balancers)]
        heapq.heapify(self._heap)

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        deadline, _, weight, lb = self._heap[0]
        self._seq += 1
        heapq.heapreplace(self._heap, (deadline + 1.0 / weight, self._seq, weight, lb))
        return lb.choose(hash_key)


class PrioritizedBalancer:
    """The cluster's balancer: priorities and localities (see the module docstring) over `make()`'s policy."""

    def __init__(self, make: Callable[[], LoadBalancer], *, locality_weighted: bool, panic_threshold: float,
                 rng: random.Random | None = None) -> None:
        self.make = make
        self.locality_weighted = locality_weighted
        self.panic_threshold = panic_threshold
        self.rng = rng if rng is not None else random.Random()
        self.in_panic = False
        self.hosts: list[Host] = []
        self._single = make()  # kept across updates: the common case keeps its rotation state
        self._levels: list[tuple[int, Callable[[bytes | None], Host | None]]] = []  # (cumulative load, choose)
        #: each level's health and chooser, loaded or not (a retry priority spreads the load over them again)
        self._health: list[int] = []
        self._choosers: list[Callable[[bytes | None], Host | None] | None] = []
        self.choose: Callable[[bytes | None], Host | None] = self._single.choose
        #: the percent of requests each priority level takes (0..max priority), for /clusters-style reports
        self.loads: list[int] = [100]

    def update(self, hosts: Sequence[Host]) -> None:
        """Recompute levels, loads and localities; call after any membership or health change."""
        self.hosts = list(hosts)
        top = max((h.placement.priority for h in hosts), default=0)
        if top == 0 and not self.locality_weighted:
            self._single.update(hosts)
            self.in_panic = self._single.in_panic
            self.loads = [100]
            self.choose = self._single.choose
            self._health = [priority_health(hosts)]
            self._choosers = [self._single.choose]
            return
        levels: list[list[Host]] = [[] for _ in range(top + 1)]
        for h in hosts:
            levels[h.placement.priority].append(h)
        health = [priority_health(level) for level in levels]
        total = min(100, sum(health))
        if total == 0:
            # Envoy's total panic: by host counts, every level with all its hosts (none when panic is off)
            count = len(hosts)
            loads = [100 * len(level) // count for level in levels] if count and self.panic_threshold else []
            if loads:
                loads[next(i for i, level in enumerate(levels) if level)] += 100 - sum(loads)
            panic = [True] * len(levels)
        else:
            loads = priority_loads(health)
            panic = [total < 100 and self._in_panic(level) for level in levels]
        self.loads = loads
        self.in_panic = any(p for p, load in zip(panic, loads) if load)
        self._health = health
        self._choosers = [self._level_chooser(level, level_panic) if level else None
                          for level, level_panic in zip(levels, panic)]
        self._levels = self._cumulative(loads)
        self.choose = self._choose

    def _cumulative(self, loads: Sequence[int]) -> list[tuple[int, Callable[[bytes | None], Host | None]]]:
        levels = []
        cumulative = 0
        for load, chooser in zip(loads, self._choosers):
            if load and chooser is not None:
                cumulative += load
                levels.append((cumulative, chooser))
        return levels

    def choose_excluding(self, retry: RetryPriorityState, hash_key: bytes | None = None) -> Host | None:
        """A retry's host, the load spread over the levels `retry` does not leave out (retry_priority.py); when
        none of those has any health, as `choose` (and `retry` starts over)."""
        excluded = retry.excluded
        if excluded is None:
            return self.choose(hash_key)
        health = [0 if i in excluded else h for i, h in enumerate(self._health)]
        if not sum(health):
            retry.exhausted()
            return self.choose(hash_key)
        return self._pick(self._cumulative(priority_loads(health)), hash_key)

    def _in_panic(self, level: list[Host]) -> bool:
        return bool(level) and 100.0 * sum(1 for h in level if h.healthy) / len(level) < self.panic_threshold

    def _policy(self, hosts: list[Host]) -> LoadBalancer:
        """A policy instance balancing exactly `hosts` (panic was decided above it)."""
        lb = self.make()
        lb.hosts = hosts
        lb._rebuild(hosts)
        return lb

    def _level_chooser(self, level: list[Host], panic: bool) -> Callable[[bytes | None], Host | None]:
        if panic:
            return self._policy(level).choose
        healthy = [h for h in level if h.healthy]
        if self.locality_weighted:
            groups: dict[int, list[Host]] = {}
            for h in level:
                groups.setdefault(h.placement.entry, []).append(h)
            weighted = []
            for members in groups.values():
                alive = [h for h in members if h.healthy]
                share = min(1.0, OVERPROVISIONING / 100 * len(alive) / len(members))
                weight = members[0].placement.weight * share
                if weight > 0:
                    weighted.append((weight, self._policy(alive)))
            if weighted:
                return _Localities(weighted).choose
        return self._policy(healthy).choose

    def _choose(self, hash_key: bytes | None = None) -> Host | None:
        return self._pick(self._levels, hash_key)

    def _pick(self, levels: list[tuple[int, Callable[[bytes | None], Host | None]]],
              hash_key: bytes | None) -> Host | None:
        if not levels:
            return None
        if len(levels) == 1:
            return levels[0][1](hash_key)
        point = stable_hash(hash_key) % 100 if hash_key is not None else int(self.rng.random() * 100)
        for cumulative, choose in levels:
            if point < cumulative:
                return choose(hash_key)
        return levels[-1][1](hash_key)


def prioritized(make: Callable[[], LoadBalancer], config: Any, rng: random.Random | None) -> PrioritizedBalancer:
    """The balancer of a cluster config whose policy `make` builds."""
    return PrioritizedBalancer(make, locality_weighted=config.common_lb_config.locality_weighted_lb_config is not None,
                               panic_threshold=panic_threshold_of(config), rng=rng)

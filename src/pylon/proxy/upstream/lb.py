"""Load-balancing policies (sans-IO), registered by Envoy's `lb_policy` enum name.

A policy sees the cluster's hosts through `update(hosts)`, called only when
membership or health changes; `update` applies Envoy's panic threshold and
hands the resulting set to the policy's `_rebuild`. `choose(hash_key)` runs per
request and must stay cheap: an index bump, a heap step or a bisect.

Adding a policy means one class with `from_config` plus one line in
`LB_POLICIES`; the cluster looks policies up by name and nothing else changes.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
from typing import Any, Callable, ClassVar, Sequence

from pylon.proxy.connection_info import spell_address
from pylon.proxy.upstream.host import Host

DEFAULT_PANIC_THRESHOLD = 50.0


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (Python's `hash()` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class LoadBalancer:
    """Common part of every policy: healthy-set selection with Envoy's panic threshold.

    If fewer than `panic_threshold` percent of the hosts are healthy, Envoy
    stops trusting health and balances across all hosts ("panic"), so a
    mass health-check failure does not funnel all traffic onto a few hosts.
    A threshold of 0 disables panic mode.
    """

    name: ClassVar[str]

    def __init__(self, *, panic_threshold: float = DEFAULT_PANIC_THRESHOLD, rng: random.Random | None = None) -> None:
        self.panic_threshold = panic_threshold
        self.rng = rng if rng is not None else random.Random()
        self.in_panic = False
        self.hosts: list[Host] = []

    @classmethod
    def from_config(cls, config: Any, rng: random.Random | None = None) -> LoadBalancer:
        """Build from an Envoy `Cluster` config (its `common_lb_config` and policy-specific block)."""
        return cls(panic_threshold=panic_threshold_of(config), rng=rng)

    def update(self, hosts: Sequence[Host]) -> None:
        """Recompute the set to balance over; call after any membership or health change."""
        total = len(hosts)
        healthy = [h for h in hosts if h.healthy]
        self.in_panic = total > 0 and 100.0 * len(healthy) / total < self.panic_threshold
        self.hosts = list(hosts) if self.in_panic else healthy
        self._rebuild(self.hosts)

    def _rebuild(self, hosts: list[Host]) -> None:
        raise NotImplementedError

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        """Pick a host for one request, or None when there is nothing to pick (503 no healthy upstream)."""
        raise NotImplementedError


def panic_threshold_of(config: Any) -> float:
    """`common_lb_config.healthy_panic_threshold.value` (the config model defaults it to Envoy's 50)."""
    return float(config.common_lb_config.healthy_panic_threshold.value)


def _all_weights_equal(hosts: Sequence[Host]) -> bool:
    return len({h.weight for h in hosts}) <= 1


class _EdfScheduler:
    """Earliest-deadline-first schedule: each pick moves the host's deadline on by 1/weight.

    This is Envoy's weighted round robin: hosts come out in proportion to
    their weights and interleaved (weights 3:1 give a a b a a a b a a a ...,
    never blocks). `weight_of` is asked again each time a host is re-queued,
    which is how least-request makes weights follow live load. Equal
    deadlines go to the host queued first, as in Envoy's scheduler.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self, hosts: Sequence[Host], weight_of: Callable[[Host], float]) -> None:
        self._seq = len(hosts)
        self._heap = [(1.0 / weight_of(host), seq, host) for seq, host in enumerate(hosts)]
        heapq.heapify(self._heap)

    def pick(self, weight_of: Callable[[Host], float]) -> Host:
        deadline, _, host = self._heap[0]
        self._seq += 1
        heapq.heapreplace(self._heap, (deadline + 1.0 / weight_of(host), self._seq, host))
        return host


class _StaticEdfScheduler:
    """EDF for fixed weights, with exact deadlines.

    The k-th deadline of a host is computed as `k / weight` rather than by
    adding 1/weight k times: a correctly rounded division makes equal
    rationals equal floats, so ties (3/3 vs 1/1) stay ties and the
    interleaving is exactly the ideal one however long the worker runs.
    """

    __slots__ = ("_heap", "_seq")

    def __init__(self, hosts: Sequence[Host]) -> None:
        self._seq = len(hosts)
        self._heap = [(1.0 / max(h.weight, 1), seq, 1, h) for seq, h in enumerate(hosts)]
        heapq.heapify(self._heap)

    def pick(self) -> Host:
        _, _, k, host = self._heap[0]
        self._seq += 1
        k += 1
        heapq.heapreplace(self._heap, (k / max(host.weight, 1), self._seq, k, host))
        return host


class RoundRobin(LoadBalancer):
    """ROUND_ROBIN: plain rotation for equal weights, EDF interleaving for unequal ones.

    Each worker starts the rotation at a random host so that N workers do
    not all send their first request to the same endpoint.
    """

    name = "ROUND_ROBIN"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._index = 0
        self._edf: _StaticEdfScheduler | None = None

    def _rebuild(self, hosts: list[Host]) -> None:
        self._edf = None if _all_weights_equal(hosts) else _StaticEdfScheduler(hosts)
        self._index = self.rng.randrange(len(hosts)) if hosts else 0

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if self._edf is not None:
            return self._edf.pick()
        index = self._index
        self._index = index + 1
        return hosts[index % len(hosts)]


class LeastRequest(LoadBalancer):
    """LEAST_REQUEST, as Envoy does it.

    Equal weights: power-of-N-choices — draw `choice_count` hosts at random
    (with replacement) and take the one with the fewest active requests.
    Unequal weights: EDF where a host's effective weight is
    `weight / (active_requests + 1)` (Envoy's default active_request_bias of
    1.0), recomputed each time the host is re-queued after a pick.
    """

    name = "LEAST_REQUEST"

    def __init__(self, *, choice_count: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choice_count = choice_count
        self._edf: _EdfScheduler | None = None

    @classmethod
    def from_config(cls, config: Any, rng: random.Random | None = None) -> LoadBalancer:
        return cls(
            panic_threshold=panic_threshold_of(config), rng=rng,
            choice_count=config.least_request_lb_config.choice_count,
        )

    @staticmethod
    def _dynamic_weight(host: Host) -> float:
        return max(host.weight, 1) / (host.active_requests + 1)

    def _rebuild(self, hosts: list[Host]) -> None:
        self._edf = None if _all_weights_equal(hosts) else _EdfScheduler(hosts, self._dynamic_weight)

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if self._edf is not None:
            return self._edf.pick(self._dynamic_weight)
        n = len(hosts)
        rand = self.rng.random  # int(random() * n): a third of randrange's cost on the hot path
        best = hosts[int(rand() * n)]
        for _ in range(self.choice_count - 1):
            candidate = hosts[int(rand() * n)]
            if candidate.active_requests < best.active_requests:
                best = candidate
        return best


class Random(LoadBalancer):
    """RANDOM: a uniformly random host from the set.

    Envoy's random balancer ignores endpoint weights (`random_lb.cc` picks
    `hosts[random % size]`); pylon matches it so the same config balances
    the same way through both proxies.
    """

    name = "RANDOM"

    def _rebuild(self, hosts: list[Host]) -> None:
        pass

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        return hosts[int(self.rng.random() * len(hosts))]


DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024


class RingHash(LoadBalancer):
    """RING_HASH: consistent hashing (Ketama-style), so a key keeps its host across updates.

    Each host gets ring entries in proportion to its weight, built by Envoy's
    rule (`ring_hash_lb.cc`): scale so the ring has at least
    `minimum_ring_size` entries (and at most `maximum_ring_size`), then give
    each host `scale × its share`. Entry i of a host hashes
    `"<ip>:<port>_<i>"`; a request hashes its key and takes the first entry
    clockwise; a request without a key gets a random point.

    A removed host's keys all move to the others. Because the ring keeps its
    minimum size, the survivors each gain a few entries, so (as in Envoy) a
    small share of their keys moves too — about 13% of them going from 5 to
    4 hosts at the default size.
    """

    name = "RING_HASH"

    def __init__(
        self, *, minimum_ring_size: int = DEFAULT_MIN_RING_SIZE, maximum_ring_size: int = DEFAULT_MAX_RING_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.minimum_ring_size = minimum_ring_size
        self.maximum_ring_size = maximum_ring_size
        self._ring_hashes: list[int] = []
        self._ring_hosts: list[Host] = []
        self._hash_cache: dict[tuple[str, int], list[int]] = {}

    @classmethod
    def from_config(cls, config: Any, rng: random.Random | None = None) -> LoadBalancer:
        rh = config.ring_hash_lb_config
        return cls(
            panic_threshold=panic_threshold_of(config), rng=rng,
            minimum_ring_size=rh.minimum_ring_size, maximum_ring_size=rh.maximum_ring_size,
        )

    def _rebuild(self, hosts: list[Host]) -> None:
        entries: list[tuple[int, Host]] = []
        cache: dict[tuple[str, int], list[int]] = {}
        if hosts:
            total_weight = sum(max(h.weight, 1) for h in hosts)
            normalized = [max(h.weight, 1) / total_weight for h in hosts]
            min_normalized = min(normalized)
            scale = min(math.ceil(min_normalized * self.minimum_ring_size) / min_normalized, self.maximum_ring_size)
            target = 0.0
            made = 0
            for host, weight in zip(hosts, normalized):
                target += scale * weight
                count = max(math.ceil(target - made), 0)
                hashes = self._host_hashes(host, count)
                cache[host.address] = hashes
                entries.extend((h, host) for h in hashes[:count])
                made += count
        self._hash_cache = cache
        entries.sort(key=lambda e: e[0])
        self._ring_hashes = [h for h, _ in entries]
        self._ring_hosts = [host for _, host in entries]

    def _host_hashes(self, host: Host, count: int) -> list[int]:
        """Hashes of `"<ip>:<port>_<i>"` for i < count, reusing the last build's (health flaps rebuild often)."""
        hashes = self._hash_cache.get(host.address, [])
        if len(hashes) < count:
            prefix = f"{spell_address(host.address)}_"  # an internal listener's: its envoy:// text, as Envoy's
            hashes = hashes + [stable_hash(f"{prefix}{i}".encode()) for i in range(len(hashes), count)]
        return hashes

    @property
    def ring_size(self) -> int:
        return len(self._ring_hashes)

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        ring = self._ring_hashes
        if not ring:
            return None
        point = stable_hash(hash_key) if hash_key is not None else self.rng.getrandbits(64)
        index = bisect.bisect_left(ring, point)
        if index == len(ring):
            index = 0
        return self._ring_hosts[index]


class Maglev(LoadBalancer):
    """MAGLEV: consistent hashing through a lookup table (Google's Maglev, as Envoy's `maglev_lb.cc` builds it).

    Every host has its own permutation of the `table_size` slots (an offset and a skip from two hashes of
    its address); hosts take turns, in proportion to their weights, claiming their next preferred free slot
    until the table is full. A request's key picks `table[hash(key) % size]` (no key: a random slot), one
    index per request. Compared with RING_HASH a removed host moves fewer of the survivors' keys and every
    lookup costs the same. The table (65537 slots by default) is rebuilt only when the hosts or their weights
    change; building it takes about 0.1 s in Python, once per change.
    """

    name = "MAGLEV"

    def __init__(self, *, table_size: int = 65537, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_size = table_size
        self._table: list[Host] = []
        self._built_for: list[tuple[tuple[str, int], int]] = []

    @classmethod
    def from_config(cls, config: Any, rng: random.Random | None = None) -> LoadBalancer:
        return cls(panic_threshold=panic_threshold_of(config), rng=rng,
                   table_size=config.maglev_lb_config.table_size)  # fmt: skip

    def _rebuild(self, hosts: list[Host]) -> None:
        built_for = [(h.address, max(h.weight, 1)) for h in hosts]
        if built_for == self._built_for and len(self._table) == (self.table_size if hosts else 0):
            return  # health changed, the set did not: the same table (its Host objects are the same)
        self._built_for = built_for
        self._table = _maglev_table(hosts, self.table_size) if hosts else []

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        table = self._table
        if not table:
            return None
        point = stable_hash(hash_key) if hash_key is not None else self.rng.getrandbits(64)
        return table[point % len(table)]


def _maglev_table(hosts: list[Host], size: int) -> list[Host]:
    """Fill `size` slots: each host walks its permutation (offset + j * skip) claiming free slots, in turns
    weighted so a host of twice the weight claims twice as often."""
    offsets, skips = [], []
    for host in hosts:
        name = spell_address(host.address).encode()
        offsets.append(stable_hash(name) % size)
        skips.append(stable_hash(b"skip:" + name) % (size - 1) + 1 if size > 1 else 1)
    weights = [max(h.weight, 1) for h in hosts]
    top = max(weights)
    shares = [w / top for w in weights]
    credit = [0.0] * len(hosts)
    walked = [0] * len(hosts)
    owner: list[int] = [-1] * size
    filled = 0
    while filled < size:
        for i, share in enumerate(shares):
            credit[i] += share
            while credit[i] >= 1.0 and filled < size:
                credit[i] -= 1.0
                offset, skip, j = offsets[i], skips[i], walked[i]
                slot = (offset + j * skip) % size
                while owner[slot] >= 0:
                    j += 1
                    slot = (offset + j * skip) % size
                walked[i] = j + 1
                owner[slot] = i
                filled += 1
    return [hosts[i] for i in owner]


class ClusterProvided(LoadBalancer):
    """CLUSTER_PROVIDED, ORIGINAL_DST's policy: the host is where the connection was going, so the cluster picks
    it from the connection (`Cluster.original_dst_host`); without one there is nothing to choose (503)."""

    name = "CLUSTER_PROVIDED"

    def _rebuild(self, hosts: list[Host]) -> None:
        pass  # nothing to precompute: hosts are not chosen among

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        return None


LB_POLICIES: dict[str, type[LoadBalancer]] = {
    policy.name: policy for policy in (RoundRobin, LeastRequest, Random, RingHash, Maglev)
}


def create_load_balancer(config: Any, rng: random.Random | None = None) -> LoadBalancer:
    """The policy named by the cluster's `lb_policy`."""
    if config.lb_policy == ClusterProvided.name:
        return ClusterProvided()
    policy = LB_POLICIES.get(config.lb_policy)
    if policy is None:
        raise ValueError(
            f"cluster {config.name!r}: lb_policy {config.lb_policy!r} is not supported "
            f"(supported: {', '.join(sorted(LB_POLICIES))})"
        )
    return policy.from_config(config, rng)

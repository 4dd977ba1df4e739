"""Envoy's subset load balancer (sans-IO): a cluster's hosts grouped by their `envoy.lb` metadata, a route's
`metadata_match` picking the group.

A cluster whose `lb_subset_config` has selectors gets a `SubsetBalancer` in place of its plain balancer. As
Envoy's SubsetLoadBalancer does:

- Each selector's keys (a set: sorted, duplicates dropped) make one subset per combination of values its hosts
  carry; a host lacking one of the keys is in none of that selector's subsets. With `list_as_any` a list value
  puts the host in a subset per element. Every subset (and the fallback sets) is balanced by the cluster's own
  policy over priorities (`priority.py`), locality weights only with `locality_weight_aware`.
- A request's criteria (the route's `envoy.lb` values, a weighted cluster's merged over them) name a subset
  when they have exactly one selector's keys. A subset that exists is used even when its policy finds no host
  (`lb_subsets_selected`). (`allow_redundant_keys` is only in the load_balancing_policies extension's Subset,
  not in Cluster.LbSubsetConfig, in Envoy 1.40.)
- Otherwise the selector whose keys the criteria have decides (`fallback_policy` other than NOT_DEFINED): no
  host, any host, the default subset, or the search again with only `fallback_keys_subset`'s criteria. Else the
  cluster's fallback: none, any host or `default_subset`'s hosts (`lb_subsets_fallback`), then with
  `panic_mode_any` any host when that found none (`lb_subsets_fallback_panic`). A request whose route has no
  criteria takes the cluster's fallback.
- Values compare as protobuf Values: a string is never a number, 1 and 1.0 are one number.

Subsets are rebuilt from the hosts on every membership or health change (EDS, DNS, health checks): a subset
that gains its first host counts `lb_subsets_created`, one that loses its last `lb_subsets_removed`,
`lb_subsets_active` is how many exist.
"""

from __future__ import annotations

from itertools import product
from typing import Any, Callable, Hashable, Mapping, Sequence

from pylon.proxy.upstream.host import Host
from pylon.proxy.upstream.lb import panic_threshold_of
from pylon.proxy.upstream.priority import PrioritizedBalancer, prioritized
from pylon.proxy.upstream.retry_priority import RetryPriorityState
from pylon.stats.store import StatsStore

#: Match criteria: (key, value as `value_key` makes it) pairs, sorted by key.
Criteria = tuple[tuple[str, Hashable], ...]
#: What balances one subset: `update(hosts)` and `choose(hash_key)` (a PrioritizedBalancer).
Balancer = Any

__all__ = ["Criteria", "SubsetBalancer", "cluster_balancer", "criteria_of", "merged_criteria", "merged_over",
           "value_key"]


def value_key(value: Any) -> Hashable:
    """A metadata value as Envoy compares protobuf Values: by kind, then content (numbers are doubles)."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(value_key(item) for item in value))
    if isinstance(value, Mapping):
        return ("struct", tuple(sorted((str(k), value_key(v)) for k, v in value.items())))
    raise TypeError(f"not a metadata value: {value!r}")


def criteria_of(values: Mapping[str, Any]) -> Criteria:
    """Envoy's MetadataMatchCriteriaImpl of an `envoy.lb` struct: its fields, sorted by name."""
    return tuple(sorted((name, value_key(value)) for name, value in values.items()))


def merged_criteria(parent: Mapping[str, Any], child: Mapping[str, Any]) -> Criteria:
    """A weighted cluster's criteria: its own `envoy.lb` values over the route's (mergeMatchCriteria)."""
    return criteria_of({**parent, **child})


def merged_over(criteria: Criteria | None, values: Mapping[str, Any]) -> Criteria:
    """A route's criteria with a request's `envoy.lb` dynamic metadata over them, its values winning (the router's
    mergeMatchCriteria of the stream's metadata)."""
    merged = dict(criteria or ())
    merged.update((name, value_key(value)) for name, value in values.items())
    return tuple(sorted(merged.items()))


class _Selector:
    __slots__ = ("keys", "policy", "fallback_keys")

    def __init__(self, config: Any) -> None:
        self.keys: tuple[str, ...] = tuple(sorted(set(config.keys)))
        self.policy: str = config.fallback_policy
        self.fallback_keys: frozenset[str] = frozenset(config.fallback_keys_subset)


class SubsetBalancer:
    """A subset cluster's balancer; `update` and `choose` as the plain one's, `choose_matching` for criteria."""

    def __init__(self, config: Any, make: Callable[[], Balancer], stats: StatsStore, prefix: str) -> None:
        self.make = make
        self.list_as_any: bool = config.list_as_any
        self.default_subset: Criteria = criteria_of(config.default_subset)
        self.selectors = [_Selector(selector) for selector in config.subset_selectors]
        self._key_sets = list(dict.fromkeys(s.keys for s in self.selectors if s.keys))
        # Envoy keeps a selector's fallback on the node its last key creates in a trie of the selectors' keys:
        # a selector whose keys an earlier one's begin with gets none (NOT_DEFINED).
        self._fallbacks: dict[tuple[str, ...], _Selector] = {}
        seen: set[tuple[str, ...]] = set()
        for selector in self.selectors:
            for i in range(1, len(selector.keys) + 1):
                prefix_keys = selector.keys[:i]
                if prefix_keys not in seen:
                    seen.add(prefix_keys)
                    if i == len(selector.keys):
                        self._fallbacks[prefix_keys] = selector
        policies = {s.policy for s in self.selectors}
        self._any: Balancer | None = None
        if config.fallback_policy == "ANY_ENDPOINT" or config.panic_mode_any or "ANY_ENDPOINT" in policies:
            self._any = make()
        self._default: Balancer | None = None
        if config.fallback_policy == "DEFAULT_SUBSET" or "DEFAULT_SUBSET" in policies:
            self._default = make()
        self._fallback = {"ANY_ENDPOINT": self._any, "DEFAULT_SUBSET": self._default}.get(config.fallback_policy)
        self._panic = self._any if config.panic_mode_any else None
        self._subsets: dict[Criteria, Balancer] = {}
        self.hosts: list[Host] = []
        self.in_panic = False
        self.loads = [100]
        self.active = stats.gauge(prefix + "lb_subsets_active")
        self.created = stats.counter(prefix + "lb_subsets_created")
        self.removed = stats.counter(prefix + "lb_subsets_removed")
        self.selected = stats.counter(prefix + "lb_subsets_selected")
        self.fallback = stats.counter(prefix + "lb_subsets_fallback")
        self.fallback_panic = stats.counter(prefix + "lb_subsets_fallback_panic")

    # -- membership ----------------------------------------------------------------------

    def update(self, hosts: Sequence[Host]) -> None:
        """Regroup the hosts (call after any membership or health change, as the plain balancer's)."""
        self.hosts = list(hosts)
        groups: dict[Criteria, list[Host]] = {}
        for host in hosts:
            for keys in self._key_sets:
                for criteria in self._host_criteria(keys, host.lb_metadata):
                    members = groups.setdefault(criteria, [])
                    if not members or members[-1] is not host:
                        members.append(host)
        old = self._subsets
        subsets: dict[Criteria, Balancer] = {}
        for criteria, members in groups.items():
            balancer = old.get(criteria)
            if balancer is None:
                balancer = self.make()
                self.created.value += 1
            balancer.update(members)
            subsets[criteria] = balancer
        self.removed.value += sum(1 for criteria in old if criteria not in subsets)
        self._subsets = subsets
        self.active.value = len(subsets)
        if self._any is not None:
            self._any.update(hosts)
        if self._default is not None:
            self._default.update([h for h in hosts if self._in_default(h.lb_metadata)])
        self.in_panic = any(b.in_panic for b in subsets.values())

    def _host_criteria(self, keys: tuple[str, ...], metadata: Mapping[str, Any]) -> list[Criteria]:
        """The subsets of one selector's keys a host is in: none when it lacks a key, several with list_as_any."""
        choices = []
        for key in keys:
            if key not in metadata:
                return []
            value = metadata[key]
            if self.list_as_any and isinstance(value, (list, tuple)):
                choices.append([(key, value_key(item)) for item in value])
            else:
                choices.append([(key, value_key(value))])
        return [tuple(combination) for combination in product(*choices)]

    def _in_default(self, metadata: Mapping[str, Any]) -> bool:
        """Envoy's metadataLabelMatch: every default_subset value is the host's (or, with list_as_any, in its
        list)."""
        for key, wanted in self.default_subset:
            if key not in metadata:
                return False
            value = metadata[key]
            if value_key(value) == wanted:
                continue
            if not (self.list_as_any and isinstance(value, (list, tuple))
                    and any(value_key(item) == wanted for item in value)):
                return False
        return True

    def subset_hosts(self, criteria: Criteria) -> list[Host]:
        """The hosts of the subset `criteria` name (empty when there is none): for tests and admin views."""
        balancer = self._subsets.get(criteria)
        return list(balancer.hosts) if balancer is not None else []

    # -- picking -------------------------------------------------------------------------

    def choose(self, hash_key: bytes | None = None) -> Host | None:
        """A host for a request without criteria: the cluster's fallback."""
        return self._choose_fallback(hash_key)

    def choose_matching(self, criteria: Criteria | None, hash_key: bytes | None = None,
                        retry: RetryPriorityState | None = None) -> Host | None:
        """A host for a request with the route's criteria (None: the route has none); a retry under a retry
        priority passes its state, which the chosen subset's priorities follow."""
        if criteria is None:
            return self._choose_fallback(hash_key, retry)
        balancer = self._subsets.get(criteria)
        if balancer is not None:
            self.selected.value += 1
            return _take(balancer, hash_key, retry)
        selector = self._fallbacks.get(tuple(name for name, _ in criteria)) if criteria else None
        if selector is None or selector.policy == "NOT_DEFINED":
            return self._choose_fallback(hash_key, retry)
        if selector.policy == "ANY_ENDPOINT":
            return _take(self._any, hash_key, retry) if self._any is not None else None
        if selector.policy == "DEFAULT_SUBSET":
            return _take(self._default, hash_key, retry) if self._default is not None else None
        if selector.policy == "KEYS_SUBSET":
            kept = tuple(pair for pair in criteria if pair[0] in selector.fallback_keys)
            return self.choose_matching(kept, hash_key, retry)
        return None  # NO_FALLBACK

    def _choose_fallback(self, hash_key: bytes | None, retry: RetryPriorityState | None = None) -> Host | None:
        if self._fallback is None:
            return None
        host = _take(self._fallback, hash_key, retry)
        if host is not None:
            self.fallback.value += 1
            return host
        if self._panic is not None:
            host = _take(self._panic, hash_key, retry)
            if host is not None:
                self.fallback_panic.value += 1
        return host


def _take(balancer: Balancer, hash_key: bytes | None, retry: RetryPriorityState | None) -> Host | None:
    """The balancer's pick; a retry's under its retry priority."""
    return balancer.choose(hash_key) if retry is None else balancer.choose_excluding(retry, hash_key)


def cluster_balancer(config: Any, make_policy: Callable[[], Any], rng: Any, stats: StatsStore, prefix: str
                     ) -> Balancer:
    """A cluster's balancer: priorities over its policy, or subsets of those when `lb_subset_config` has
    selectors (a subset weighs localities only with `locality_weight_aware`, as Envoy's)."""
    subsets = config.lb_subset_config
    if subsets is None or not subsets.enabled:
        return prioritized(make_policy, config, rng)
    locality = subsets.locality_weight_aware and config.common_lb_config.locality_weighted_lb_config is not None
    threshold = panic_threshold_of(config)
    return SubsetBalancer(
        subsets, lambda: PrioritizedBalancer(make_policy, locality_weighted=locality, panic_threshold=threshold,
                                             rng=rng),
        stats, prefix)

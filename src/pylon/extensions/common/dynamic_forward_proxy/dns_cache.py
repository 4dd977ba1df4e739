"""The dynamic forward proxy's DNS cache: request hosts resolved on demand, kept fresh, forgotten when unused.

As Envoy's DnsCacheImpl (observed with Envoy 1.40): an entry per `host:port` (`hosts.cache_key`) is made by the
first request that names it (`load`: in cache, loading - the caller waits - or overflow past `max_hosts`) and
resolved through c-ares (`CaresResolver`, Envoy's default resolver). An answer with addresses is kept and resolved
again after its TTL, but never sooner than `dns_min_refresh_rate` (whole seconds, as Envoy); a name without
addresses (NXDOMAIN) again after `dns_refresh_rate`; a failed query (a timeout after `dns_query_timeout`, a
server error) after `dns_failure_refresh_rate`'s jittered backoff, else `dns_refresh_rate`. An entry keeps its last
addresses through later failures. At each refresh, an entry no request used for `host_ttl` is removed. Its
listeners (the dynamic forward proxy clusters naming the cache) hear of every entry that gets or changes an
address and of every removal; failed entries carry Envoy's details (`dns_resolution_failure{...}`), which the
filter answers with. Stats `dns_cache.<name>.*` as Envoy's, `circuit_breakers.rq_pending_*` for the requests that
may wait for a resolution at once (`dns_cache_circuit_breaker`).

Departure: Envoy keeps one cache per name for the whole process and resolves on its main thread; pylon keeps one
per worker process (`DnsCaches`, the worker's singleton), so each worker resolves the names its requests bring, and
the stats of several workers add up (as circuit breakers and health checks do).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from pylon.extensions.common.dynamic_forward_proxy.config import DnsCacheConfig
from pylon.extensions.common.dynamic_forward_proxy.hosts import cache_key, parse_authority
from pylon.proxy.upstream.dns import CaresResolver, no_records
from pylon.xds.backoff import Backoff

if TYPE_CHECKING:
    from pylon.stats.store import StatsStore

IN_CACHE, LOADING, OVERFLOW = "in_cache", "loading", "overflow"
COMPLETED, FAILURE = "completed", "failure"  # Envoy's resolution status: a name without addresses is COMPLETED

_COUNTERS = ("cache_load", "dns_address_filter_out", "dns_query_attempt", "dns_query_failure", "dns_query_success",
             "dns_query_timeout", "dns_rq_pending_overflow", "host_added", "host_address_changed", "host_overflow",
             "host_removed")
#: The key of the worker's caches among its singletons.
SINGLETON = "envoy.common.dynamic_forward_proxy.dns_cache_manager"


class HostInfo:
    """One cache entry: the name it resolves and what it resolved to."""

    __slots__ = ("key", "name", "port", "addresses", "address", "details", "resolved", "last_used", "waiters",
                 "query", "backoff")

    def __init__(self, key: str, name: str, port: int, now: float, backoff: Backoff | None) -> None:
        self.key = key
        self.name = name  # what is resolved (an IPv6 literal without brackets)
        self.port = port
        self.addresses: list[tuple[str, int]] = []
        self.address: tuple[str, int] | None = None  # the first address: where connections go (None: none yet)
        self.details = ""  # why there is no address (Envoy's response code details)
        self.resolved = False  # the first resolution completed
        self.last_used = now
        self.waiters: list[Callable[[HostInfo], None]] = []  # told when the first resolution completes
        self.query: asyncio.Task[None] | None = None  # the resolution under way (the loop keeps tasks weakly)
        self.backoff = backoff  # dns_failure_refresh_rate's, for this entry's failures


class CacheListener(Protocol):
    """A dynamic forward proxy cluster: its hosts follow the cache's resolved entries."""

    def on_host_added_or_updated(self, info: HostInfo) -> None: ...

    def on_host_removed(self, info: HostInfo) -> None: ...


class PendingRequests:
    """dns_cache_circuit_breaker: how many requests wait for a resolution at once; a gauge of what is left and
    one that says when none is (Envoy's `circuit_breakers.rq_pending_remaining` / `_open`; as Envoy's, `_open`
    changes when a request takes or frees a place, so a limit of 0 never shows it)."""

    __slots__ = ("limit", "count", "overflow", "open", "remaining")

    def __init__(self, limit: int, stats: StatsStore, prefix: str) -> None:
        self.limit = limit
        self.count = 0
        self.overflow = stats.counter(prefix + "dns_rq_pending_overflow")
        self.open = stats.gauge(prefix + "circuit_breakers.rq_pending_open")
        self.remaining = stats.gauge(prefix + "circuit_breakers.rq_pending_remaining")
        self.remaining.value = limit

    def try_acquire(self) -> bool:
        if self.count >= self.limit:
            self.overflow.value += 1
            return False
        self._count(1)
        return True

    def release(self) -> None:
        self._count(-1)

    def _count(self, change: int) -> None:
        self.count += change
        self.remaining.value = self.limit - self.count
        self.open.value = 1 if self.count >= self.limit else 0


class DnsCache:
    """One named cache in one worker (see the module docstring); `start(loop)` before the first `load`."""

    def __init__(self, config: DnsCacheConfig, stats: StatsStore) -> None:
        self.config = config
        prefix = f"dns_cache.{config.name}."
        self.stats = {name: stats.counter(prefix + name) for name in _COUNTERS}
        self.num_hosts = stats.gauge(prefix + "num_hosts")
        self.pending = PendingRequests(config.dns_cache_circuit_breaker.max_pending_requests, stats, prefix)
        self.hosts: dict[str, HostInfo] = {}
        self.listeners: list[CacheListener] = []
        # Envoy keeps refresh intervals in whole seconds (duration_cast<seconds>) once an answer is in.
        self.refresh_rate = math.floor(config.dns_refresh_rate)
        self.min_refresh_rate = math.floor(config.dns_min_refresh_rate)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.resolver: CaresResolver | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Resolve on `loop` from now on (again: nothing), beginning with `preresolve_hostnames`."""
        if self.loop is not None:
            return
        self.loop = loop
        resolver = self.config.typed_dns_resolver_config
        self.resolver = CaresResolver(loop, resolver.decoded() if resolver is not None else None)
        for address in self.config.preresolve_hostnames:
            key = cache_key(address.address, address.port_value)
            if key not in self.hosts:
                self._resolve(self._create(key, address.port_value))

    # -- the request path ------------------------------------------------------------------------
    def load(self, host: str, default_port: int, waiter: Callable[[HostInfo], None]) -> tuple[str, HostInfo | None]:
        """(IN_CACHE, entry) once its first resolution is done (its `address` None if it failed); (LOADING, entry)
        with `waiter` called when it is; (OVERFLOW, None) when the cache is full (503 for the caller)."""
        key = cache_key(host, default_port)
        info = self.hosts.get(key)
        if info is not None and info.resolved:
            return IN_CACHE, info
        if len(self.hosts) >= self.config.max_hosts:
            self.stats["host_overflow"].value += 1
            return OVERFLOW, None
        if info is None:
            info = self._create(key, default_port)
            self._resolve(info)
        info.waiters.append(waiter)
        return LOADING, info

    def touch(self, info: HostInfo) -> None:
        """A request went to this entry's host: it is in use (host_ttl counts from here)."""
        assert self.loop is not None
        info.last_used = self.loop.time()

    def resolved(self) -> Iterator[HostInfo]:
        """The entries that have an address (what a cluster joining the cache starts with)."""
        return (info for info in self.hosts.values() if info.address is not None)

    # -- resolving ---------------------------------------------------------------------------------
    def _create(self, key: str, default_port: int) -> HostInfo:
        assert self.loop is not None
        name, port, _ = parse_authority(key)
        failure_rate = self.config.dns_failure_refresh_rate
        backoff = None if failure_rate is None else Backoff(float(failure_rate.base_interval), failure_rate.maximum)
        info = self.hosts[key] = HostInfo(key, name, port if port is not None else default_port, self.loop.time(),
                                          backoff)
        self.stats["host_added"].value += 1
        self.num_hosts.value += 1
        return info

    def _resolve(self, info: HostInfo) -> None:
        assert self.loop is not None
        self.stats["dns_query_attempt"].value += 1
        info.query = self.loop.create_task(self._query(info))

    async def _query(self, info: HostInfo) -> None:
        assert self.resolver is not None
        addresses: list[str] = []
        ttl = 0
        timeout = float(self.config.dns_query_timeout) or None
        try:
            addresses, ttl = await asyncio.wait_for(
                self.resolver.resolve(info.name, info.port, self.config.dns_lookup_family), timeout)
        except asyncio.TimeoutError:
            self.stats["dns_query_timeout"].value += 1
            status, details = FAILURE, "resolve_timeout"
        except Exception as exc:  # c-ares' DNSError (code, message); anything else is a failure too
            message = exc.args[1] if len(exc.args) > 1 else str(exc)
            status, details = (COMPLETED, f"cares_norecords:{message}") if no_records(exc) else \
                (FAILURE, f"cares_failure:{message}")
        else:
            status, details = COMPLETED, ("cares_success:Successful completion" if addresses
                                          else "cares_norecords:No addresses of the lookup family")
        info.query = None
        self._finish(info, status, details, [(address, info.port) for address in addresses], ttl)

    def _finish(self, info: HostInfo, status: str, details: str, addresses: list[tuple[str, int]], ttl: int) -> None:
        """Envoy's finishResolve: count, keep a new address list (telling the listeners), wake the waiters of a
        first resolution, and time the next refresh."""
        self.stats["dns_query_success" if status == COMPLETED else "dns_query_failure"].value += 1
        if not addresses:
            details = "dns_resolution_failure{" + "_".join(details.split()) + "}"
        next_refresh: float = self.refresh_rate
        if addresses:
            next_refresh = max(self.min_refresh_rate, ttl)
            if addresses != info.addresses:
                info.addresses, info.address, info.details = addresses, addresses[0], details
                self.stats["host_address_changed"].value += 1
                for listener in self.listeners:
                    listener.on_host_added_or_updated(info)
        elif info.address is None:
            info.details = details  # an entry keeps its last addresses (and their details) through failures
        if status == FAILURE:
            next_refresh = info.backoff.next_delay() if info.backoff is not None else float(self.config.dns_refresh_rate)
        elif info.backoff is not None:
            info.backoff.reset()
        first = not info.resolved
        info.resolved = True
        if first:
            waiters, info.waiters = info.waiters, []
            for waiter in waiters:
                waiter(info)
        assert self.loop is not None
        self.loop.call_later(next_refresh, self._on_refresh, info)

    def _on_refresh(self, info: HostInfo) -> None:
        """Resolve the entry again, unless no request used it for host_ttl: then it goes."""
        assert self.loop is not None
        if self.loop.time() - info.last_used > float(self.config.host_ttl):
            self._remove(info)
        else:
            self._resolve(info)

    def _remove(self, info: HostInfo) -> None:
        del self.hosts[info.key]
        if info.address is not None:
            for listener in self.listeners:
                listener.on_host_removed(info)
        self.stats["host_removed"].value += 1
        self.num_hosts.value -= 1


class DnsCaches:
    """A worker's DNS caches by name (Envoy's DnsCacheManager): the filters and clusters that name one share it.

    The supervisor refuses two configs of one name at a time (`SharedByName`); a name whose config changed since
    (every user replaced) gets a new cache, the old one serving its remaining users until they go."""

    def __init__(self) -> None:
        self._caches: dict[str, DnsCache] = {}

    def get(self, config: DnsCacheConfig, stats: StatsStore) -> DnsCache:
        cache = self._caches.get(config.name)
        if cache is None or cache.config != config:
            cache = self._caches[config.name] = DnsCache(config, stats)
        return cache


def worker_caches(singletons: dict[str, Any]) -> DnsCaches:
    """The worker's caches, made when an extension first asks."""
    caches = singletons.get(SINGLETON)
    if caches is None:
        caches = singletons[SINGLETON] = DnsCaches()
    return caches

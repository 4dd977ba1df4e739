"""The dynamic forward proxy's DNS cache on its own: loading, answers and failures, refresh times, host_ttl, limits.

A scripted resolver stands in for c-ares (no query leaves the process) and a clock for the loop's time and
timers, so refreshes hours apart are tested at once. What each case expects is what Envoy 1.40's cache does
(tests/proxy/test_proxy_dynamic_forward_proxy.py checks the same through real Envoy and pylon proxies).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
from aiodns.error import DNSError

from pylon.config.envoy import convert
from pylon.extensions.common.dynamic_forward_proxy.config import DnsCacheConfig
from pylon.extensions.common.dynamic_forward_proxy.dns_cache import (
    IN_CACHE, LOADING, OVERFLOW, DnsCache, DnsCaches, HostInfo,
)
from pylon.stats.store import StatsStore

NXDOMAIN = DNSError(4, "Domain name not found")
REFUSED = DNSError(11, "Could not contact DNS servers")


class Clock:
    """The loop as the cache sees it: a time the test sets, timers the test fires, tasks on the real loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.timers.append((self.now + delay, callback, args))

    def create_task(self, coro: Any) -> asyncio.Task[None]:
        return self.loop.create_task(coro)

    def delays(self) -> list[float]:
        return [when - self.now for when, _, _ in self.timers]

    def advance(self, seconds: float) -> None:
        """Move time on and fire the timers due by then."""
        self.now += seconds
        due = [timer for timer in self.timers if timer[0] <= self.now]
        self.timers = [timer for timer in self.timers if timer[0] > self.now]
        for _, callback, args in due:
            callback(*args)


class Resolver:
    """Scripted answers by name: (addresses, TTL), an error to raise, or None to never answer."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, name: str, port: int, family: str) -> tuple[list[str], int]:
        self.asked.append(name)
        answer = self.answers[name]
        if answer is None:
            await asyncio.Event().wait()
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Recorder:
    """A cluster listening to the cache."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    def on_host_added_or_updated(self, info: HostInfo) -> None:
        self.events.append(("added", info.key, info.address))

    def on_host_removed(self, info: HostInfo) -> None:
        self.events.append(("removed", info.key, None))


def make(answers: dict[str, Any], **config: Any) -> tuple[DnsCache, Clock, Resolver, Recorder, StatsStore]:
    stats = StatsStore()
    cache = DnsCache(convert({"name": "c", **config}, DnsCacheConfig), stats)
    clock = Clock(asyncio.get_running_loop())
    cache.start(clock)  # type: ignore[arg-type]
    resolver = cache.resolver = Resolver(answers)  # type: ignore[assignment]
    listener = Recorder()
    cache.listeners.append(listener)
    return cache, clock, resolver, listener, stats


def counters(stats: StatsStore) -> dict[str, int]:
    out = {name.rsplit(".", 1)[1]: c.value for name, c in stats.counters.items() if c.value}
    out.update((name.split("dns_cache.c.", 1)[1], g.value) for name, g in stats.gauges.items())
    return out


async def settle() -> None:
    """Let the resolutions under way finish (each takes a few loop steps)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def load(cache: DnsCache, host: str, port: int = 80) -> tuple[str, HostInfo | None]:
    """`load` a name and, when it is loading, wait for its first answer."""
    done = asyncio.Event()
    status, info = cache.load(host, port, lambda _: done.set())
    if status == LOADING:
        await done.wait()
    return status, info


def test_a_name_loads_once_then_is_in_the_cache() -> None:
    async def main() -> None:
        cache, clock, resolver, listener, stats = make({"localhost": (["127.0.0.1"], 0)})
        status, info = await load(cache, "localhost:8080")
        assert status == LOADING and info is not None and info.address == ("127.0.0.1", 8080)
        assert cache.load("localhost:8080", 80, lambda _: None) == (IN_CACHE, info)
        assert cache.load("localhost", 80, lambda _: None)[0] == LOADING  # another key: localhost:80
        await settle()
        assert resolver.asked == ["localhost", "localhost"]
        assert listener.events == [("added", "localhost:8080", ("127.0.0.1", 8080)),
                                   ("added", "localhost:80", ("127.0.0.1", 80))]
        assert counters(stats) == {
            "dns_query_attempt": 2, "dns_query_success": 2, "host_added": 2, "host_address_changed": 2,
            "num_hosts": 2, "circuit_breakers.rq_pending_open": 0, "circuit_breakers.rq_pending_remaining": 1024}

    asyncio.run(main())


def test_every_waiter_of_a_loading_name_hears_the_one_answer() -> None:
    async def main() -> None:
        cache, clock, resolver, _, _ = make({"a.localhost": (["127.0.0.1"], 0)})
        heard: list[HostInfo] = []
        assert cache.load("a.localhost", 80, heard.append)[0] == LOADING
        assert cache.load("a.localhost", 80, heard.append)[0] == LOADING
        await settle()
        assert len(heard) == 2 and resolver.asked == ["a.localhost"]

    asyncio.run(main())


def test_a_name_without_addresses_is_a_completed_resolution_with_envoys_details() -> None:
    """NXDOMAIN is c-ares' "no records": Envoy counts it a success, keeps the entry without an address and tries
    again after dns_refresh_rate (whole seconds)."""
    async def main() -> None:
        cache, clock, _, listener, stats = make({"x.invalid": NXDOMAIN}, dns_refresh_rate="2.5s")
        _, info = await load(cache, "x.invalid:8080")
        assert info is not None and info.address is None
        assert info.details == "dns_resolution_failure{cares_norecords:Domain_name_not_found}"
        assert cache.load("x.invalid:8080", 80, lambda _: None) == (IN_CACHE, info)
        assert clock.delays() == [2.0] and listener.events == []
        assert counters(stats)["dns_query_success"] == 1 and "dns_query_failure" not in counters(stats)

    asyncio.run(main())


def test_a_failed_query_is_a_failure_refreshed_at_the_failure_rate() -> None:
    async def main() -> None:
        cache, clock, _, _, stats = make({"a.invalid": REFUSED})
        _, info = await load(cache, "a.invalid")
        assert info is not None and info.details == "dns_resolution_failure{cares_failure:Could_not_contact_DNS_servers}"
        assert counters(stats)["dns_query_failure"] == 1 and clock.delays() == [60.0]  # dns_refresh_rate itself

        backoff, bclock, _, _, _ = make({"a.invalid": REFUSED},
                                        dns_failure_refresh_rate={"base_interval": "2s", "max_interval": "3s"})
        await load(backoff, "a.invalid")
        assert 0 <= bclock.delays()[0] < 2.0  # Envoy's full jitter below the base interval first

    asyncio.run(main())


def test_a_query_that_takes_longer_than_dns_query_timeout_fails() -> None:
    async def main() -> None:
        cache, _, _, _, stats = make({"slow.invalid": None}, dns_query_timeout="0.05s")
        _, info = await load(cache, "slow.invalid")
        assert info is not None and info.details == "dns_resolution_failure{resolve_timeout}"
        assert {k: v for k, v in counters(stats).items() if k.startswith("dns_query")} == {
            "dns_query_attempt": 1, "dns_query_timeout": 1, "dns_query_failure": 1}

    asyncio.run(main())


@pytest.mark.parametrize(("ttl", "config", "delay"), [
    (30, {}, 30), (0, {}, 5), (2, {}, 5),  # an answer's TTL, never under dns_min_refresh_rate (5 s)
    (0, {"dns_min_refresh_rate": "1.9s"}, 1),  # whole seconds, as Envoy keeps them
])  # fmt: skip
def test_an_answer_is_refreshed_at_its_ttl_but_not_sooner_than_the_minimum(ttl: int, config: dict[str, Any],
                                                                           delay: int) -> None:
    async def main() -> None:
        cache, clock, _, _, _ = make({"localhost": (["127.0.0.1"], ttl)}, **config)
        await load(cache, "localhost")
        assert clock.delays() == [delay]

    asyncio.run(main())


def test_an_entry_keeps_its_address_through_a_failure_and_follows_a_change() -> None:
    async def main() -> None:
        cache, clock, resolver, listener, stats = make({"localhost": (["127.0.0.1"], 0)})
        await load(cache, "localhost")
        resolver.answers["localhost"] = REFUSED
        clock.advance(5)
        await settle()
        assert cache.hosts["localhost:80"].address == ("127.0.0.1", 80)
        resolver.answers["localhost"] = (["127.0.0.2", "127.0.0.3"], 0)
        clock.advance(60)  # the failure's refresh (dns_refresh_rate)
        await settle()
        assert cache.hosts["localhost:80"].addresses == [("127.0.0.2", 80), ("127.0.0.3", 80)]
        assert listener.events[-1] == ("added", "localhost:80", ("127.0.0.2", 80))
        assert counters(stats)["host_address_changed"] == 2

    asyncio.run(main())


def test_an_entry_no_request_used_for_host_ttl_goes_at_its_next_refresh() -> None:
    async def main() -> None:
        cache, clock, resolver, listener, stats = make({"localhost": (["127.0.0.1"], 0)}, host_ttl="8s")
        _, info = await load(cache, "localhost")
        assert info is not None
        clock.advance(5)  # refreshed: used 5 s ago, host_ttl 8 s
        await settle()
        cache.touch(info)  # a request went there
        clock.advance(5)
        await settle()
        assert resolver.asked == ["localhost"] * 3 and "localhost:80" in cache.hosts
        clock.advance(5)
        clock.advance(5)  # unused for 10 s at this refresh
        assert "localhost:80" not in cache.hosts and listener.events[-1] == ("removed", "localhost:80", None)
        assert counters(stats)["host_removed"] == 1 and counters(stats)["num_hosts"] == 0

    asyncio.run(main())


def test_max_hosts_overflows_new_names_only() -> None:
    async def main() -> None:
        cache, _, _, _, stats = make({"localhost": (["127.0.0.1"], 0)}, max_hosts=1)
        await load(cache, "localhost")
        assert cache.load("b.localhost", 80, lambda _: None) == (OVERFLOW, None)
        assert cache.load("localhost", 80, lambda _: None)[0] == IN_CACHE
        assert counters(stats)["host_overflow"] == 1

    asyncio.run(main())


def test_preresolve_hostnames_are_loaded_at_start() -> None:
    async def main() -> None:
        stats = StatsStore()
        cache = DnsCache(convert({"name": "c", "preresolve_hostnames": [{"address": "localhost", "port_value": 8080}]},
                                 DnsCacheConfig), stats)
        cache.start(asyncio.get_running_loop())
        assert list(cache.hosts) == ["localhost:8080"] and stats.counters["dns_cache.c.dns_query_attempt"].value == 1

    asyncio.run(main())


def test_the_pending_request_breaker() -> None:
    stats = StatsStore()
    cache = DnsCache(convert({"name": "c", "dns_cache_circuit_breaker": {"max_pending_requests": 1}}, DnsCacheConfig),
                     stats)
    assert counters(stats)["circuit_breakers.rq_pending_remaining"] == 1
    assert cache.pending.try_acquire() and not cache.pending.try_acquire()
    assert counters(stats)["dns_rq_pending_overflow"] == 1
    assert counters(stats)["circuit_breakers.rq_pending_open"] == 1
    cache.pending.release()
    assert counters(stats)["circuit_breakers.rq_pending_remaining"] == 1
    assert counters(stats)["circuit_breakers.rq_pending_open"] == 0


def test_a_worker_shares_one_cache_per_name_and_config() -> None:
    caches, stats = DnsCaches(), StatsStore()
    first = caches.get(convert({"name": "c"}, DnsCacheConfig), stats)
    assert caches.get(convert({"name": "c"}, DnsCacheConfig), stats) is first
    assert caches.get(convert({"name": "c", "max_hosts": 5}, DnsCacheConfig), stats) is not first

"""Circuit breakers: limits, overflow counters and open gauges under Envoy's names."""

from __future__ import annotations

import msgspec

from pylon.config.envoy import Cluster as ClusterConfig, dec_hook
from pylon.proxy.upstream.circuit import CircuitBreakers
from pylon.stats.store import StatsStore


def gauge(stats: StatsStore, name: str) -> int:
    return stats.gauges[f"cluster.c.circuit_breakers.default.{name}"].value


def counter(stats: StatsStore, name: str) -> int:
    return stats.counters[f"cluster.c.{name}"].value


def test_connections_limit_overflow_and_open_gauge():
    stats = StatsStore()
    cb = CircuitBreakers(stats, "cluster.c.", max_connections=2)
    assert cb.connections.try_acquire() and cb.connections.try_acquire()
    assert gauge(stats, "cx_open") == 1
    assert not cb.connections.try_acquire()
    assert counter(stats, "upstream_cx_overflow") == 1
    assert cb.connections.count == 2
    cb.connections.release()
    assert gauge(stats, "cx_open") == 0
    assert cb.connections.try_acquire()


def test_pending_and_requests_overflow_count_as_pending_overflow_like_envoy():
    stats = StatsStore()
    cb = CircuitBreakers(stats, "cluster.c.", max_pending_requests=1, max_requests=1)
    assert cb.pending_requests.try_acquire() and not cb.pending_requests.try_acquire()
    assert cb.requests.try_acquire() and not cb.requests.try_acquire()
    assert counter(stats, "upstream_rq_pending_overflow") == 2
    assert gauge(stats, "rq_pending_open") == 1 and gauge(stats, "rq_open") == 1


def test_retries_default_to_three():
    stats = StatsStore()
    cb = CircuitBreakers(stats, "cluster.c.")
    assert [cb.retries.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert counter(stats, "upstream_rq_retry_overflow") == 1
    assert gauge(stats, "rq_retry_open") == 1
    for _ in range(5):
        cb.retries.release()  # extra releases never go below zero
    assert cb.retries.count == 0 and gauge(stats, "rq_retry_open") == 0


def test_zero_limit_is_open_from_the_start():
    stats = StatsStore()
    cb = CircuitBreakers(stats, "cluster.c.", max_retries=0)
    assert gauge(stats, "rq_retry_open") == 1
    assert not cb.retries.try_acquire()


def test_from_config_uses_default_priority_thresholds():
    config = msgspec.convert({
        "name": "c",
        "circuit_breakers": {"thresholds": [
            {"priority": "HIGH", "max_connections": 1},
            {"priority": "DEFAULT", "max_connections": 7, "max_retries": 1},
        ]},
    }, ClusterConfig, dec_hook=dec_hook)
    cb = CircuitBreakers.from_config(config, StatsStore(), "cluster.c.")
    assert (cb.connections.max, cb.pending_requests.max, cb.requests.max, cb.retries.max) == (7, 1024, 1024, 1)
    plain = CircuitBreakers.from_config(msgspec.convert({"name": "c"}, ClusterConfig), StatsStore(), "cluster.c.")
    assert (plain.connections.max, plain.retries.max) == (1024, 3)


def remaining(stats: StatsStore, priority: str = "default") -> dict[str, int]:
    prefix = f"cluster.c.circuit_breakers.{priority}.remaining_"
    return {n[len(prefix):]: g.value for n, g in stats.gauges.items() if n.startswith(prefix)}


def test_track_remaining_gauges_follow_use_when_read():
    stats = StatsStore()
    config = msgspec.convert({"name": "c", "circuit_breakers": {"thresholds": [
        {"max_connections": 3, "max_pending_requests": 4, "max_requests": 5, "max_retries": 2, "track_remaining": True},
        {"priority": "HIGH", "max_connections": 9, "track_remaining": True}]}}, ClusterConfig, dec_hook=dec_hook)
    cb = CircuitBreakers.from_config(config, stats, "cluster.c.")
    assert remaining(stats) == {"cx": 3, "pending": 4, "rq": 5, "retries": 2}
    assert cb.connections.try_acquire() and cb.requests.try_acquire() and cb.retries.try_acquire()
    assert cb.retries.try_acquire() and not cb.retries.try_acquire()
    assert remaining(stats) == {"cx": 2, "pending": 4, "rq": 4, "retries": 0}
    assert stats.snapshot()["gauges"]["cluster.c.circuit_breakers.default.remaining_cx"] == 2
    cb.connections.release()
    assert remaining(stats)["cx"] == 3
    # HIGH: no request in pylon has that priority, so its limits stay whole (Envoy's defaults where unset).
    assert remaining(stats, "high") == {"cx": 9, "pending": 1024, "rq": 1024, "retries": 3}


def test_no_remaining_gauges_without_track_remaining():
    stats = StatsStore()
    config = msgspec.convert({"name": "c", "circuit_breakers": {"thresholds": [{"max_connections": 3}]}},
                             ClusterConfig, dec_hook=dec_hook)
    CircuitBreakers.from_config(config, stats, "cluster.c.")
    assert remaining(stats) == {} and remaining(stats, "high") == {}

"""Circuit breakers: per-cluster limits on connections, pending requests, requests and retries.

Envoy keeps one resource counter per limit and per priority; pylon uses the
DEFAULT priority only. Each `Resource` is a counter plus its limit: the data
path calls `try_acquire()` when it is about to open a connection, queue a
request, start a request or retry one, and `release()` when that ends. A
refused `try_acquire()` bumps the overflow counter Envoy bumps at that point,
so the caller only decides what to do (queue, 503, skip the retry).

Stats, as Envoy names them under `cluster.<name>.`:
`circuit_breakers.default.{cx_open,rq_pending_open,rq_open,rq_retry_open}`
are 1 while the limit is reached, and the overflow counters are
`upstream_cx_overflow`, `upstream_rq_pending_overflow` (also for max_requests,
as in Envoy) and `upstream_rq_retry_overflow`.

With `track_remaining`, Envoy's `circuit_breakers.<priority>.remaining_{cx,pending,rq,retries}`
gauges (limit minus use) are computed when stats are read, so the data path pays nothing. pylon routes
every request at DEFAULT priority, so a HIGH threshold's remaining gauges always show its limits.
Departure: limits are per worker (see architecture.md) and gauges are summed across workers, so
with N workers a remaining gauge reads N x limit minus what all workers use.
"""

from __future__ import annotations

from typing import Any, Callable

from pylon.stats.store import Counter, Gauge, StatsStore

# Envoy's defaults for the DEFAULT priority (circuit_breaker.proto).
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3


class Resource:
    """One limited resource: `count` in use out of `max`."""

    __slots__ = ("max", "count", "overflow", "open_gauge")

    def __init__(self, limit: int, overflow: Counter, open_gauge: Gauge) -> None:
        self.max = limit
        self.count = 0
        self.overflow = overflow
        self.open_gauge = open_gauge
        open_gauge.value = 1 if limit == 0 else 0

    def try_acquire(self) -> bool:
        """Take one unit if under the limit; otherwise count an overflow and return False."""
        count = self.count
        if count >= self.max:
            self.overflow.value += 1
            return False
        self.count = count = count + 1
        if count >= self.max:
            self.open_gauge.value = 1
        return True

    def release(self) -> None:
        """Give one unit back (the connection closed, the request finished, ...)."""
        if self.count > 0:
            self.count -= 1
            if self.count < self.max:
                self.open_gauge.value = 0


class _ComputedGauge(Gauge):
    """A gauge whose value is computed when read (a scrape), never updated on the data path."""

    __slots__ = ("compute",)

    def __init__(self, name: str, compute: Callable[[], int]) -> None:
        # Not Gauge.__init__: there is no stored value to set.
        self.name = name
        self.compute = compute

    @property  # type: ignore[override]
    def value(self) -> int:
        return self.compute()


def _headroom(resource: Resource) -> Callable[[], int]:
    """Envoy's remaining value: the limit minus what is in use, never below 0."""
    return lambda: max(resource.max - resource.count, 0)


def _fixed(limit: int) -> Callable[[], int]:
    """A HIGH threshold's remaining value: pylon never routes at HIGH priority, so none of it is in use."""
    return lambda: limit


class CircuitBreakers:
    """The DEFAULT-priority limits of one cluster, as four `Resource`s."""

    __slots__ = ("connections", "pending_requests", "requests", "retries")

    def __init__(
        self,
        stats: StatsStore,
        prefix: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        """`prefix` is the cluster's stat prefix, e.g. `cluster.backend.`."""
        cb = f"{prefix}circuit_breakers.default."
        pending_overflow = stats.counter(prefix + "upstream_rq_pending_overflow")
        self.connections = Resource(
            max_connections, stats.counter(prefix + "upstream_cx_overflow"), stats.gauge(cb + "cx_open"),
        )
        self.pending_requests = Resource(max_pending_requests, pending_overflow, stats.gauge(cb + "rq_pending_open"))
        self.requests = Resource(max_requests, pending_overflow, stats.gauge(cb + "rq_open"))
        self.retries = Resource(
            max_retries, stats.counter(prefix + "upstream_rq_retry_overflow"), stats.gauge(cb + "rq_retry_open"),
        )

    @classmethod
    def from_config(cls, config: Any, stats: StatsStore, prefix: str) -> CircuitBreakers:
        """Use the cluster's DEFAULT-priority `Thresholds` (Envoy's defaults when absent)."""
        thresholds = config.circuit_breakers.thresholds if config.circuit_breakers is not None else []
        t = next((t for t in thresholds if t.priority == "DEFAULT"), None)
        breakers = cls(stats, prefix) if t is None else cls(
            stats, prefix, max_connections=t.max_connections, max_pending_requests=t.max_pending_requests,
            max_requests=t.max_requests, max_retries=t.max_retries,
        )
        for t in thresholds:
            if t.track_remaining:
                breakers.track_remaining(stats, prefix, t)
        return breakers

    def track_remaining(self, stats: StatsStore, prefix: str, thresholds: Any) -> None:
        """Envoy's remaining_* gauges for one priority's `Thresholds` (HIGH: its fixed limits, see above)."""
        if thresholds.priority == "DEFAULT":
            values = {"cx": _headroom(self.connections), "pending": _headroom(self.pending_requests),
                      "rq": _headroom(self.requests), "retries": _headroom(self.retries)}
        else:
            values = {"cx": _fixed(thresholds.max_connections), "pending": _fixed(thresholds.max_pending_requests),
                      "rq": _fixed(thresholds.max_requests), "retries": _fixed(thresholds.max_retries)}
        for what, compute in values.items():
            name = f"{prefix}circuit_breakers.{thresholds.priority.lower()}.remaining_{what}"
            stats.gauges[name] = _ComputedGauge(name, compute)  # replaces the gauge of a cluster this one replaces

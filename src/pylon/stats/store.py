"""Per-worker statistics with Envoy's names, cheap enough for the hot path.

Hot-path code keeps a reference to a `Counter`/`Gauge`/`Histogram` and bumps
`.value` directly (an attribute increment, tens of nanoseconds). Nothing here
formats or locks; rendering happens only when the admin endpoint is scraped.
Each worker process owns one `StatsStore`; the supervisor merges the
snapshots of all workers (`merge_snapshots`) before rendering.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable

# Envoy's default histogram bucket bounds (milliseconds for latency histograms).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)


class Counter:
    """A monotonically increasing count: bump `.value` in place."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class Gauge:
    """A value that goes up and down (active connections, healthy hosts)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount

    def set(self, value: int) -> None:
        self.value = value


class Histogram:
    """Fixed-bucket histogram; `counts[i]` counts samples <= `bounds[i]`, the last slot overflows."""

    __slots__ = ("name", "bounds", "counts", "sum", "count")

    def __init__(self, name: str, bounds: Iterable[float] = DEFAULT_BUCKETS) -> None:
        self.name = name
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def record(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class StatsStore:
    """Get-or-create registry of one worker's stats, keyed by full Envoy stat name."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.histograms: dict[str, Histogram] = {}

    def counter(self, name: str) -> Counter:
        stat = self.counters.get(name)
        if stat is None:
            stat = self.counters[name] = Counter(name)
        return stat

    def gauge(self, name: str) -> Gauge:
        stat = self.gauges.get(name)
        if stat is None:
            stat = self.gauges[name] = Gauge(name)
        return stat

    def histogram(self, name: str, bounds: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        stat = self.histograms.get(name)
        if stat is None:
            stat = self.histograms[name] = Histogram(name, bounds)
        return stat

    def snapshot(self) -> dict[str, Any]:
        """A plain-data copy, small enough to send to the supervisor over a pipe."""
        return {
            "counters": {n: c.value for n, c in self.counters.items()},
            "gauges": {n: g.value for n, g in self.gauges.items()},
            "histograms": {
                n: {"bounds": list(h.bounds), "counts": list(h.counts), "sum": h.sum, "count": h.count}
                for n, h in self.histograms.items()
            },
        }


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters, gauges and histogram buckets across workers (Envoy aggregates threads the same way)."""
    counters: dict[str, int] = {}
    gauges: dict[str, int] = {}
    histograms: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for name, value in snap.get("counters", {}).items():
            counters[name] = counters.get(name, 0) + value
        for name, value in snap.get("gauges", {}).items():
            gauges[name] = gauges.get(name, 0) + value
        for name, hist in snap.get("histograms", {}).items():
            merged = histograms.get(name)
            if merged is None:
                histograms[name] = {
                    "bounds": list(hist["bounds"]), "counts": list(hist["counts"]),
                    "sum": hist["sum"], "count": hist["count"],
                }
            else:
                merged["counts"] = [a + b for a, b in zip(merged["counts"], hist["counts"])]
                merged["sum"] += hist["sum"]
                merged["count"] += hist["count"]
    return {"counters": counters, "gauges": gauges, "histograms": histograms}


def cumulative(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The counters and histograms of a snapshot: what a worker that is gone leaves to the totals.

    Gauges describe the present (active connections) and leave with the worker;
    counters and histograms only ever grow, and Prometheus requires that of
    them for the life of the proxy, restarts of workers included.
    """
    return {"counters": snapshot.get("counters", {}), "histograms": snapshot.get("histograms", {})}

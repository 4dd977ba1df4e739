"""Fortio-compatible histograms: the same buckets, so our JSON reads like Fortio's.

Fortio-consuming tools (Istio's perf scripts, Fortio's own UI) interpret the
`Data` intervals and `Percentiles` of a run, so pylon buckets values exactly as
Fortio's `stats.go` does: a fixed list of bucket boundaries (0, 1, 2, … 100000)
scaled by a divider (`-r`, the resolution) and shifted by an offset. Intervals
are open on the left, closed on the right (`]prev, cur]`), so a cumulative
percent up to a bucket means "that share of values is <= End". One special
bucket holds values <= offset, one holds values beyond the last boundary.

Percentiles are estimated from the buckets by linear interpolation inside the
bucket that crosses the requested percentile (Fortio's `CalcPercentile`), with
the first bucket starting at the observed minimum and the last ending at the
observed maximum.

The class is plain data with no I/O, so load-generator processes can ship its
state (`to_state`/`from_state`) and the parent can merge them.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Iterable

# Fortio's bucket boundaries (in units of the divider).
BUCKET_VALUES: tuple[int, ...] = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
    12, 14, 16, 18, 20,
    25, 30, 35, 40, 45, 50,
    60, 70, 80, 90, 100,
    120, 140, 160, 180, 200,
    250, 300, 350, 400, 450, 500,
    600, 700, 800, 900, 1000,
    2000, 3000, 4000, 5000, 7500, 10000,
    20000, 30000, 40000, 50000, 75000, 100000,
)
NUM_VALUES = len(BUCKET_VALUES)
NUM_BUCKETS = NUM_VALUES + 1  # plus the "> last value" bucket
_FIRST = float(BUCKET_VALUES[0])
_LAST = float(BUCKET_VALUES[-1])
# Values within this distance above a boundary still count as "on" it (float noise).
_EPSILON = 1e-12

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 75.0, 90.0, 99.0, 99.9)


def bucket_index(scaled: float) -> int:
    """Index of the bucket `]BUCKET_VALUES[i-1], BUCKET_VALUES[i]]` holding a scaled value."""
    if scaled <= _FIRST:
        return 0
    if scaled > _LAST:
        return NUM_BUCKETS - 1
    # A value exactly on a boundary belongs to the bucket that boundary closes.
    whole = math.floor(scaled)
    if scaled - whole < _EPSILON:
        scaled = whole
    return bisect.bisect_left(BUCKET_VALUES, scaled)


class Histogram:
    """Counts, sum, sum of squares and Fortio buckets of recorded values."""

    __slots__ = ("offset", "divider", "count", "min", "max", "sum", "sum_sq", "buckets")

    def __init__(self, offset: float = 0.0, divider: float = 0.001) -> None:
        if divider <= 0:
            raise ValueError(f"histogram divider (resolution) must be > 0, got {divider}")
        self.offset = offset
        self.divider = divider
        self.count = 0
        self.min = 0.0
        self.max = 0.0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.buckets = [0] * NUM_BUCKETS

    def record(self, value: float, n: int = 1) -> None:
        """Record `value` n times."""
        if self.count == 0:
            self.min = self.max = value
        elif value < self.min:
            self.min = value
        elif value > self.max:
            self.max = value
        self.count += n
        self.sum += value * n
        self.sum_sq += value * value * n
        self.buckets[bucket_index((value - self.offset) / self.divider)] += n

    def merge(self, other: "Histogram") -> None:
        """Add another histogram's data; same scale adds buckets, another re-buckets mid points."""
        if other.count == 0:
            return
        if self.count == 0:
            self.min, self.max = other.min, other.max
        else:
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)
        if other.divider == self.divider and other.offset == self.offset:
            for i, n in enumerate(other.buckets):
                self.buckets[i] += n
        else:
            for bucket in other.export()["Data"] or ():
                mid = (bucket["Start"] + bucket["End"]) / 2
                self.buckets[bucket_index((mid - self.offset) / self.divider)] += bucket["Count"]
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        if not self.count:
            return 0.0
        variance = (self.sum_sq - self.sum * self.sum / self.count) / self.count
        return math.sqrt(variance) if variance > 0 else 0.0

    def export(self, percentiles: Iterable[float] | None = None) -> dict[str, Any]:
        """Fortio's `HistogramData`: counters, non-empty buckets, and percentiles if asked."""
        data: list[dict[str, Any]] = []
        result: dict[str, Any] = {
            "Count": self.count,
            "Min": self.min,
            "Max": self.max,
            "Sum": self.sum,
            "Avg": self.avg,
            "StdDev": self.stddev,
            "Data": None,
        }
        if self.count == 0:
            return result
        prev = BUCKET_VALUES[0]
        total = 0
        for i, n in enumerate(self.buckets):
            if n == 0:
                if i < NUM_VALUES:
                    prev = BUCKET_VALUES[i]
                continue
            total += n
            start = self.min if not data else self.divider * prev + self.offset
            if i < NUM_VALUES:
                end = self.divider * BUCKET_VALUES[i] + self.offset
                prev = BUCKET_VALUES[i]
            else:
                start = self.divider * prev + self.offset
                end = self.max
            data.append({"Start": start, "End": end, "Percent": 100.0 * total / self.count, "Count": n})
        data[-1]["End"] = self.max
        result["Data"] = data
        if percentiles is not None:
            result["Percentiles"] = [
                {"Percentile": _go_number(p), "Value": calc_percentile(result, p)} for p in percentiles
            ]
        return result

    def to_state(self) -> tuple:
        """Picklable state, for shipping from a load process to its parent."""
        return (self.offset, self.divider, self.count, self.min, self.max, self.sum, self.sum_sq, self.buckets)

    @classmethod
    def from_state(cls, state: tuple) -> "Histogram":
        h = cls(state[0], state[1])
        h.count, h.min, h.max, h.sum, h.sum_sq = state[2:7]
        h.buckets = list(state[7])
        return h


def calc_percentile(data: dict[str, Any], percentile: float) -> float:
    """Estimate the value below which `percentile`% of an exported histogram's data falls."""
    buckets = data.get("Data") or []
    if not buckets:
        return 0.0
    if percentile >= 100:
        return data["Max"]
    prev_percent = 100.0 / data["Count"]  # the minimum alone covers at least one point
    if percentile <= prev_percent:
        return data["Min"]
    for bucket in buckets:
        if percentile <= bucket["Percent"]:
            fraction = (percentile - prev_percent) / (bucket["Percent"] - prev_percent)
            return bucket["Start"] + fraction * (bucket["End"] - bucket["Start"])
        prev_percent = bucket["Percent"]
    return data["Max"]


def percentile_value(data: dict[str, Any], percentile: float) -> float | None:
    """The stored value for `percentile` in an exported histogram, computing it if absent."""
    for entry in data.get("Percentiles") or ():
        if float(entry["Percentile"]) == float(percentile):
            return float(entry["Value"])
    if not data.get("Data"):
        return None
    return calc_percentile(data, percentile)


def parse_percentiles(text: str) -> list[float]:
    """Fortio's `-p` list: comma separated, each strictly between 0 and 100."""
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"invalid percentile {part!r}") from None
        if not 0 < value < 100:
            raise ValueError(f"percentile {part} must be > 0 and < 100")
        values.append(value)
    if not values:
        raise ValueError("percentile list can't be empty")
    return values


def _go_number(value: float) -> float | int:
    """Go's JSON writes 50.0 as `50`; Istio's CSV builds column names like `p50` from that text."""
    return int(value) if float(value).is_integer() else value

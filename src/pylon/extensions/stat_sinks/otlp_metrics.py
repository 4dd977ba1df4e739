"""A stats snapshot as an OTLP `ExportMetricsServiceRequest` in protobuf wire format, as Envoy 1.40 fills one
(sans-IO; the state it keeps is what deltas need).

What goes in, each observed beside Envoy 1.40 (tests/extensions/stat_sinks/, tests/proxy/test_proxy_otel_stats.py):
- one ResourceMetrics whose resource carries the telemetry.sdk.* attributes (naming pylon, as its tracer does),
  one ScopeMetrics without a scope, and one Metric per stat (stats that share a tag-extracted name stay separate
  metrics, each with its own tags);
- a gauge: its value (`as_int`), the snapshot time, no start time;
- a counter: a monotonic Sum with the snapshot time and a start time; with `report_counters_as_deltas` its
  increase since the last flush (DELTA, started at the last flush; a counter that did not move is left out),
  else its value (CUMULATIVE, started when the proxy did);
- a histogram: count, sum, Envoy's bucket bounds and the disjoint count of each bucket plus the overflow, of the
  samples since the last flush (`report_histograms_as_deltas`) or of all; one without new samples is left out;
- names are `<prefix>.` and the tag-extracted name (`use_tag_extracted_name`, default true) or the full one; the
  tags (stats/prometheus.py's extractors, Envoy's) are string attributes unless `emit_tags_as_attributes` is false.
Departure: Envoy also sends a counter that was used but is still zero (cumulative); pylon cannot tell those from
counters never used, and sends counters above zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pylon.extensions.tracers.otlp import FIXED64, attributes, field
from pylon.stats.prometheus import extract_tags

DELTA = 1
CUMULATIVE = 2
_SFIXED64 = struct.Struct("<q").pack
_DOUBLE = struct.Struct("<d").pack


@dataclass(frozen=True)
class MetricsOptions:
    """What the sink's config says about the names, tags and temporality of what it sends."""

    counters_as_deltas: bool = False
    histograms_as_deltas: bool = False
    tags_as_attributes: bool = True
    tag_extracted_names: bool = True
    prefix: str = ""


def _number_point(value: int, time_ns: int, start_ns: int, tags: dict[str, str]) -> bytes:
    """NumberDataPoint: attributes 7, start_time_unix_nano 2 (omitted at 0), time_unix_nano 3, as_int 6."""
    start = b"\x11" + FIXED64(start_ns) if start_ns else b""
    return start + b"\x19" + FIXED64(time_ns) + b"\x31" + _SFIXED64(value) + attributes(0x3A, tags)


def _histogram_point(counts: list[int], bounds: list[float], total: float, time_ns: int, start_ns: int,
                     tags: dict[str, str]) -> bytes:
    """HistogramDataPoint: start 2, time 3, count 4, sum 5, bucket_counts 6 and explicit_bounds 7 (packed),
    attributes 9."""
    count = sum(counts)
    return (b"\x11" + FIXED64(start_ns) + b"\x19" + FIXED64(time_ns) + b"\x21" + FIXED64(count)
            + b"\x29" + _DOUBLE(total) + field(0x32, b"".join(FIXED64(c) for c in counts))
            + field(0x3A, b"".join(_DOUBLE(b) for b in bounds)) + attributes(0x4A, tags))


def _metric(name: str, kind_tag: int, body: bytes) -> bytes:
    return field(0x0A, name.encode()) + field(kind_tag, body)


class OtlpMetricsEncoder:
    """Turns each flush's merged snapshot into one request, remembering what deltas are measured from."""

    def __init__(self, options: MetricsOptions, resource: dict[str, str], start_ns: int) -> None:
        self.options = options
        self.resource = resource
        self.start_ns = start_ns  # when the proxy started: cumulative points start there
        self.last_flush_ns = start_ns
        self.last_counters: dict[str, int] = {}
        self.last_histograms: dict[str, tuple[list[int], float]] = {}

    def _name_and_tags(self, stat: str) -> tuple[str, dict[str, str]]:
        options = self.options
        if not options.tag_extracted_names and not options.tags_as_attributes:
            return options.prefix + stat, {}
        extracted, tags = extract_tags(stat)
        return (options.prefix + (extracted if options.tag_extracted_names else stat),
                dict(tags) if options.tags_as_attributes else {})

    def encode(self, snapshot: dict[str, Any], now_ns: int) -> bytes | None:
        """The request for `snapshot` taken at `now_ns`; None when there is nothing to send."""
        metrics: list[bytes] = []
        for stat, value in snapshot.get("gauges", {}).items():
            name, tags = self._name_and_tags(stat)
            metrics.append(_metric(name, 0x2A, field(0x0A, _number_point(int(value), now_ns, 0, tags))))
        metrics.extend(self._counters(snapshot.get("counters", {}), now_ns))
        metrics.extend(self._histograms(snapshot.get("histograms", {}), now_ns))
        self.last_flush_ns = now_ns
        if not metrics:
            return None
        scope_metrics = b"".join(field(0x12, metric) for metric in metrics)
        resource_metrics = field(0x0A, attributes(0x0A, self.resource)) + field(0x12, scope_metrics)
        return field(0x0A, resource_metrics)

    def _counters(self, counters: dict[str, int], now_ns: int) -> list[bytes]:
        deltas = self.options.counters_as_deltas
        start = self.last_flush_ns if deltas else self.start_ns
        temporality = bytes((0x10, DELTA if deltas else CUMULATIVE)) + b"\x18\x01"  # and is_monotonic
        out = []
        for stat, value in counters.items():
            reported = value - self.last_counters.get(stat, 0) if deltas else value
            self.last_counters[stat] = value
            if reported <= 0:
                continue
            name, tags = self._name_and_tags(stat)
            out.append(_metric(name, 0x3A, field(0x0A, _number_point(reported, now_ns, start, tags)) + temporality))
        return out

    def _histograms(self, histograms: dict[str, dict[str, Any]], now_ns: int) -> list[bytes]:
        deltas = self.options.histograms_as_deltas
        start = self.last_flush_ns if deltas else self.start_ns
        temporality = bytes((0x10, DELTA if deltas else CUMULATIVE))
        out = []
        for stat, histogram in histograms.items():
            counts, total = list(histogram["counts"]), float(histogram["sum"])
            if deltas:
                before, before_total = self.last_histograms.get(stat, ([0] * len(counts), 0.0))
                self.last_histograms[stat] = (counts, total)
                counts = [now - then for now, then in zip(counts, before)]
                total -= before_total
            if sum(counts) <= 0:
                continue
            name, tags = self._name_and_tags(stat)
            point = _histogram_point(counts, list(histogram["bounds"]), total, now_ns, start, tags)
            out.append(_metric(name, 0x4A, field(0x0A, point) + temporality))
        return out


"""The bootstrap's `stats_sinks`: Envoy's statsd sink over UDP, fed by the supervisor at each stats flush.

Envoy flushes its stats to its sinks every `stats_flush_interval` (5 s by default); pylon's supervisor gathers the
workers' stats on that same timer (server.py), then hands the merged snapshot to each sink. The statsd sink
(`StatsdLines`, sans-IO) writes Envoy's line format, one line per UDP datagram as Envoy's UDP sink sends them
(observed with Envoy 1.40), each name after the sink's `prefix` (Envoy's default `envoy`):

- a counter: `<prefix>.<name>:<increase since the last flush>|c`, every flush once it has been used (Envoy: a
  counter ever incremented; here, one whose value has been above zero), zero increases included;
- a gauge: `<prefix>.<name>:<value>|g`, every flush once it has been used (here: ever non-zero);
- a histogram: Envoy sends each sample as it is recorded, `<prefix>.<name>:<value>|ms`. pylon's histograms keep
  buckets, a count and a sum, not samples, so at each flush it sends one line per histogram that has new
  samples: their mean with the statsd sample rate `1/count` (`<name>:<mean>|ms|@<rate>`, plain `|ms` for one
  sample), which a statsd server counts as that many samples of that value. Counts and sums agree with Envoy's;
  the distribution within a flush interval does not (a departure).

The DogStatsD sink (`envoy.stat_sinks.dog_statsd`) writes the same lines with Envoy's tag-extracted name and the
tags after `|#` (`edge.http.downstream_rq_total:3|c|#envoy.http_conn_manager_prefix:main`), the tags as the
Prometheus endpoint extracts them (stats/prometheus.py).
"""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import Any, Callable

from pylon.stats.prometheus import extract_tags

log = logging.getLogger("pylon.proxy.stats_sinks")

#: Envoy's statsd prefix when the sink's is empty.
DEFAULT_PREFIX = "envoy"


class StatsdLines:
    """What a statsd sink sends at each flush, from merged snapshots (sans-IO); `tagged`: DogStatsD's lines."""

    def __init__(self, prefix: str, tagged: bool = False) -> None:
        self.prefix = (prefix or DEFAULT_PREFIX) + "."
        self.tagged = tagged
        self._names: dict[str, tuple[str, str]] = {}  # stat name -> (the name a line carries, its tag suffix)
        self._counters: dict[str, int] = {}  # the value each used counter had at the last flush
        self._gauges: set[str] = set()  # gauges used so far
        self._histograms: dict[str, tuple[int, float]] = {}  # (count, sum) at the last flush

    def flush(self, snapshot: dict[str, Any]) -> list[bytes]:
        """The lines for one flush of `snapshot` (store.merge_snapshots' shape)."""
        lines = []
        for name, value in snapshot.get("counters", {}).items():
            last = self._counters.get(name)
            if last is None:
                if not value:
                    continue
                last = 0
            self._counters[name] = value
            lines.append(self._line(name, f"{max(0, value - last)}|c"))
        for name, value in snapshot.get("gauges", {}).items():
            if name not in self._gauges:
                if not value:
                    continue
                self._gauges.add(name)
            lines.append(self._line(name, f"{value}|g"))
        for name, histogram in snapshot.get("histograms", {}).items():
            count, total = histogram["count"], histogram["sum"]
            last_count, last_sum = self._histograms.get(name, (0, 0.0))
            self._histograms[name] = (count, total)
            new = count - last_count
            if new <= 0:
                continue
            mean = _number((total - last_sum) / new)
            lines.append(self._line(name, f"{mean}|ms" if new == 1 else f"{mean}|ms|@{1 / new:.6g}"))
        return [line.encode() for line in lines]

    def _line(self, name: str, value: str) -> str:
        """`<prefix>.<name>:<value>`, and for DogStatsD the tag-extracted name and `|#tag:value,...`."""
        if not self.tagged:
            return f"{self.prefix}{name}:{value}"
        shown = self._names.get(name)
        if shown is None:
            extracted, tags = extract_tags(name)
            suffix = "|#" + ",".join(f"{tag}:{tag_value}" for tag, tag_value in tags) if tags else ""
            shown = self._names[name] = (extracted, suffix)
        return f"{self.prefix}{shown[0]}:{value}{shown[1]}"


def _number(value: float) -> str:
    """A statsd value as Envoy writes one: an integer without a fraction."""
    return str(int(value)) if value == int(value) else f"{value:.6g}"


class UdpStatsdSink:
    """Sends a `StatsdLines` flush to a UDP address, a datagram per line; a failed send is logged, not fatal."""

    def __init__(self, config: Any) -> None:
        address = config.address.socket_address
        self.target = (address.address, address.port_value)
        self.lines = StatsdLines(config.prefix, config.tagged)
        family = socket.AF_INET6 if ":" in address.address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def flush(self, snapshot: dict[str, Any]) -> None:
        for line in self.lines.flush(snapshot):
            try:
                self.sock.sendto(line, self.target)
            except OSError as exc:  # nobody listening (ECONNREFUSED from an earlier datagram), a full buffer
                log.debug("statsd sink %s:%d: %s", *self.target, exc)

    def close(self) -> None:
        self.sock.close()


#: An extension sink's config type -> (its supervisor side, made with the config and a `send(body)` that has a
#: worker export `body`; the worker's exporter, made with the config and the worker). Extensions register
#: (extensions/stat_sinks/open_telemetry.py): the proxy imports none.
_SINKS: dict[type, tuple[Callable[[Any, Callable[[bytes], None]], Any], Callable[[Any, Any], Any]]] = {}


def register_stats_sink(config_type: type, sink: Callable[[Any, Callable[[bytes], None]], Any],
                        exporter: Callable[[Any, Any], Any]) -> None:
    _SINKS[config_type] = (sink, exporter)


def build_sinks(bootstrap: Any, export: Callable[[int, bytes], None]) -> list[Any]:
    """The bootstrap's stats sinks: statsd and DogStatsD over UDP from the supervisor; an extension's sink encodes
    in the supervisor and has a worker send (`export(index of the sink, body)`), through its upstream pools."""
    sinks: list[Any] = []
    for index, sink in enumerate(bootstrap.stats_sinks):
        registered = _SINKS.get(type(sink.typed_config))
        if registered is None:
            sinks.append(UdpStatsdSink(sink.typed_config))
        else:
            sinks.append(registered[0](sink.typed_config, partial(export, index)))
    return sinks


def sink_exporter(config: Any, worker: Any) -> Any:
    """A worker's exporter for an extension sink's config (`send(body)`)."""
    return _SINKS[type(config)][1](config, worker)

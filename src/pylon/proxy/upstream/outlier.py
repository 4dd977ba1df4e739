"""Outlier detection (passive health checking), sans-IO with an injectable clock.

Mirrors Envoy's consecutive-error detectors:

- consecutive_5xx: 5xx responses, plus local-origin failures mapped the way
  Envoy maps them (connect failure → 503, timeout → 504);
- consecutive_gateway_failure: 502/503/504, with the same mappings.

A detector fires when its count *reaches* the threshold and ejects at once
(Envoy runs consecutive detectors inline), subject to the `enforcing_*`
percentage and `max_ejection_percent`. Current Envoy (1.31+,
`outlier_detection_impl.cc`) allows an ejection only if the ejected share
*after* it stays within `max_ejection_percent`; the older "eject at least one
host regardless" rule survives only behind `always_eject_one_host`, which
defaults to false and which pylon's config does not have yet. So with 5 hosts
and the default 10%, nothing is ejected, exactly as in Envoy 1.40.

Ejection time is `min(base_ejection_time × backoff, max(300 s, base))`,
where `backoff` grows by one per ejection and shrinks by one per `interval`
spent healthy after unejection (Envoy's backoff; for a host that keeps
failing it is "base time × number of times ejected"). Unejection happens in
`on_interval()`, which the cluster calls every `interval`.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from pylon.proxy.upstream.host import FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK, Host
from pylon.stats.store import StatsStore

CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"

# Envoy caps ejection time at max_ejection_time, 300 s unless base_ejection_time is larger.
DEFAULT_MAX_EJECTION_TIME = 300.0

_GATEWAY_ERRORS = frozenset((502, 503, 504))


class HostMonitor:
    """Per-host counters; the host calls `put_http_status` from the data path."""

    __slots__ = (
        "host", "detector", "consecutive_5xx", "consecutive_gateway_failure",
        "num_ejections", "backoff", "last_ejection_time", "last_unejection_time",
    )

    def __init__(self, host: Host, detector: OutlierDetector) -> None:
        self.host = host
        self.detector = detector
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.num_ejections = 0
        self.backoff = 0
        self.last_ejection_time: float | None = None
        self.last_unejection_time: float | None = None

    def put_http_status(self, status: int) -> None:
        """A response (or a local-origin failure mapped to one): count 5xx/gateway errors, reset otherwise."""
        if status < 500:
            self.consecutive_5xx = 0
            self.consecutive_gateway_failure = 0
            return
        detector = self.detector
        if status in _GATEWAY_ERRORS:
            self.consecutive_gateway_failure += 1
            if self.consecutive_gateway_failure == detector.consecutive_gateway_failure:
                detector.on_consecutive_error(self, CONSECUTIVE_GATEWAY_FAILURE)
        else:
            self.consecutive_gateway_failure = 0
        self.consecutive_5xx += 1
        if self.consecutive_5xx == detector.consecutive_5xx:
            detector.on_consecutive_error(self, CONSECUTIVE_5XX)


class OutlierDetector:
    """One cluster's detector: attaches a `HostMonitor` to each host and decides ejections."""

    def __init__(
        self,
        stats: StatsStore,
        prefix: str,
        *,
        consecutive_5xx: int = 5,
        consecutive_gateway_failure: int = 5,
        enforcing_consecutive_5xx: int = 100,
        enforcing_consecutive_gateway_failure: int = 0,
        interval: float = 10.0,
        base_ejection_time: float = 30.0,
        max_ejection_percent: int = 10,
        now: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        """Keyword arguments are Envoy's `OutlierDetection` fields (durations in seconds) with its defaults.

        `prefix` is the cluster's stat prefix (`cluster.<name>.`); `now` is a
        monotonic clock in seconds, injectable so tests need not sleep.
        """
        self.consecutive_5xx = consecutive_5xx
        self.consecutive_gateway_failure = consecutive_gateway_failure
        self.enforcing = {
            CONSECUTIVE_5XX: enforcing_consecutive_5xx,
            CONSECUTIVE_GATEWAY_FAILURE: enforcing_consecutive_gateway_failure,
        }
        self.interval = interval
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max(DEFAULT_MAX_EJECTION_TIME, base_ejection_time)
        self.max_ejection_percent = min(max_ejection_percent, 100)
        self.now = now
        self.rng = rng if rng is not None else random.Random()
        self.monitors: dict[Host, HostMonitor] = {}

        od = f"{prefix}outlier_detection."
        self.ejections_active = stats.gauge(od + "ejections_active")
        self.ejections_total = stats.counter(od + "ejections_total")
        self.ejections_overflow = stats.counter(od + "ejections_overflow")
        self.ejections_enforced_total = stats.counter(od + "ejections_enforced_total")
        self.ejections_consecutive_5xx = stats.counter(od + "ejections_consecutive_5xx")
        self.detected = {kind: stats.counter(f"{od}ejections_detected_{kind}") for kind in self.enforcing}
        self.enforced = {kind: stats.counter(f"{od}ejections_enforced_{kind}") for kind in self.enforcing}

    @classmethod
    def from_config(
        cls, config: Any, stats: StatsStore, prefix: str, now: Callable[[], float], rng: random.Random | None = None,
    ) -> OutlierDetector:
        """From an Envoy `OutlierDetection` config block."""
        return cls(
            stats, prefix,
            consecutive_5xx=config.consecutive_5xx,
            consecutive_gateway_failure=config.consecutive_gateway_failure,
            enforcing_consecutive_5xx=config.enforcing_consecutive_5xx,
            enforcing_consecutive_gateway_failure=config.enforcing_consecutive_gateway_failure,
            interval=config.interval,
            base_ejection_time=config.base_ejection_time,
            max_ejection_percent=config.max_ejection_percent,
            now=now, rng=rng,
        )

    # -- membership --------------------------------------------------------------------

    def add_host(self, host: Host) -> None:
        monitor = HostMonitor(host, self)
        self.monitors[host] = monitor
        host.outlier = monitor

    def remove_host(self, host: Host) -> None:
        if self.monitors.pop(host, None) is None:
            return
        host.outlier = None
        if host.has_flag(FAILED_OUTLIER_CHECK):
            self.ejections_active.value -= 1

    # -- detection ---------------------------------------------------------------------

    def on_consecutive_error(self, monitor: HostMonitor, kind: str) -> None:
        """A consecutive-error detector tripped for `monitor.host`: maybe eject, then restart its count."""
        host = monitor.host
        if host not in self.monitors or host.has_flag(FAILED_OUTLIER_CHECK):
            return
        self.detected[kind].value += 1
        self._eject(monitor, kind)
        if kind == CONSECUTIVE_5XX:
            self.ejections_consecutive_5xx.value += 1  # Envoy's deprecated per-type counter
            monitor.consecutive_5xx = 0
        else:
            monitor.consecutive_gateway_failure = 0

    def _eject(self, monitor: HostMonitor, kind: str) -> None:
        ejected_percent = 100.0 * (self.ejections_active.value + 1) / len(self.monitors)
        if ejected_percent > self.max_ejection_percent:
            self.ejections_overflow.value += 1
            return
        if kind == CONSECUTIVE_5XX:
            self.ejections_total.value += 1  # Envoy's deprecated total counts 5xx (and success-rate) only.
        if self.rng.random() * 100.0 >= self.enforcing[kind]:
            return
        self.ejections_active.value += 1
        self.ejections_enforced_total.value += 1
        self.enforced[kind].value += 1
        monitor.num_ejections += 1
        monitor.last_ejection_time = self.now()
        if monitor.backoff * self.base_ejection_time < self.max_ejection_time + self.base_ejection_time:
            monitor.backoff += 1
        monitor.host.set_flag(FAILED_OUTLIER_CHECK)

    def ejection_duration(self, monitor: HostMonitor) -> float:
        """How long the host's current ejection lasts."""
        return min(self.base_ejection_time * monitor.backoff, self.max_ejection_time)

    # -- unejection --------------------------------------------------------------------

    def on_interval(self) -> None:
        """The `interval` sweep: uneject hosts whose time is up, decay the backoff of healthy ones."""
        now = self.now()
        for host, monitor in self.monitors.items():
            if host.has_flag(FAILED_OUTLIER_CHECK):
                assert monitor.last_ejection_time is not None
                if now - monitor.last_ejection_time >= self.ejection_duration(monitor):
                    self.uneject(host)
            elif (
                monitor.backoff > 0
                and monitor.last_unejection_time is not None
                and now - monitor.last_unejection_time >= self.interval
            ):
                monitor.backoff -= 1

    def uneject(self, host: Host) -> None:
        """Return an ejected host to service with fresh counters."""
        monitor = self.monitors[host]
        self.ejections_active.value -= 1
        monitor.consecutive_5xx = 0
        monitor.consecutive_gateway_failure = 0
        monitor.last_unejection_time = self.now()
        host.clear_flag(FAILED_OUTLIER_CHECK)

    def on_active_health_check_success(self, host: Host) -> None:
        """Envoy's default `successful_active_health_check_uneject_host`: a passing active check unejects."""
        if host in self.monitors and host.has_flag(FAILED_OUTLIER_CHECK) and not host.has_flag(FAILED_ACTIVE_HC):
            self.uneject(host)

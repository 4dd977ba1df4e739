"""Active health checking: a sans-IO per-host state machine plus a thin asyncio prober.

State machine (Envoy's `ActiveHealthCheckSession`):
- a new host starts `/failed_active_hc/pending_active_hc`; its first check
  result decides at once (one success makes it healthy);
- after that a healthy host turns unhealthy after `unhealthy_threshold`
  consecutive *network* failures (connect error, timeout, bad response), but
  at once on an *active* failure (an HTTP status outside
  `expected_statuses`), as Envoy's `unhealthy_threshold` doc says;
- an unhealthy host needs `healthy_threshold` consecutive successes.

The prober sends `GET <path> HTTP/1.1` with `Host:` and `User-Agent: Envoy/HC`
on a fresh connection and reads just the status line through httptools, or
for TCP checks only connects. It is not on the request path, so plain asyncio
streams are fine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from typing import Any, Awaitable, Callable, Sequence

import httptools

from pylon.proxy.upstream.connect import ConnectError
from pylon.proxy.upstream.host import ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, PENDING_ACTIVE_HC, Host, format_address
from pylon.stats.store import StatsStore

log = logging.getLogger(__name__)

DEFAULT_EXPECTED_STATUSES: tuple[tuple[int, int], ...] = ((200, 201),)


class Outcome(enum.Enum):
    """One check's result, split the way Envoy counts it toward the thresholds."""

    SUCCESS = "success"
    ACTIVE_FAILURE = "active"      # the host answered "unhealthy": counts immediately
    NETWORK_FAILURE = "network"    # no usable answer: counts toward unhealthy_threshold
    TIMEOUT = "timeout"            # a network failure that also sets /active_hc_timeout


class HealthState:
    """One host's active health-check state; it sets and clears the host's health flags."""

    __slots__ = ("host", "healthy_threshold", "unhealthy_threshold", "num_healthy", "num_unhealthy")

    def __init__(self, host: Host, *, healthy_threshold: int, unhealthy_threshold: int) -> None:
        self.host = host
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.num_healthy = 0
        self.num_unhealthy = 0
        host.set_flag(FAILED_ACTIVE_HC | PENDING_ACTIVE_HC)

    def on_result(self, outcome: Outcome) -> bool:
        """Apply one check result; True if the host's active-HC health changed."""
        if outcome is Outcome.SUCCESS:
            return self.on_success()
        return self.on_failure(immediate=outcome is Outcome.ACTIVE_FAILURE, timeout=outcome is Outcome.TIMEOUT)

    def on_success(self) -> bool:
        host = self.host
        self.num_unhealthy = 0
        changed = False
        if host.has_flag(FAILED_ACTIVE_HC):
            self.num_healthy += 1
            if host.has_flag(PENDING_ACTIVE_HC) or self.num_healthy >= self.healthy_threshold:
                self.num_healthy = 0
                changed = True
        host.clear_flag(PENDING_ACTIVE_HC | ACTIVE_HC_TIMEOUT | (FAILED_ACTIVE_HC if changed else 0))
        return changed

    def on_failure(self, *, immediate: bool = False, timeout: bool = False) -> bool:
        host = self.host
        self.num_healthy = 0
        changed = False
        if not host.has_flag(FAILED_ACTIVE_HC):
            self.num_unhealthy += 1
            if immediate or self.num_unhealthy >= self.unhealthy_threshold:
                self.num_unhealthy = 0
                changed = True
        flags = FAILED_ACTIVE_HC if changed else 0
        if timeout:
            flags |= ACTIVE_HC_TIMEOUT
        if flags:
            host.set_flag(flags)
        host.clear_flag(PENDING_ACTIVE_HC | (0 if timeout else ACTIVE_HC_TIMEOUT))
        return changed


# -- probes (the I/O) ------------------------------------------------------------------------

Probe = Callable[[tuple[str, int]], Awaitable[Outcome]]


def build_http_request(path: str, host_header: str) -> bytes:
    """The check request; `Connection: close` because every check uses a fresh connection."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: Envoy/HC\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


def classify_status(status: int, expected: Sequence[tuple[int, int]]) -> Outcome:
    """Envoy's verdict on a status: in an expected [start, end) range → success, else an active failure."""
    if any(start <= status < end for start, end in expected):
        return Outcome.SUCCESS
    return Outcome.ACTIVE_FAILURE


class _StatusReader:
    """httptools callbacks: note when the response head is complete."""

    def __init__(self) -> None:
        self.done = False

    def on_headers_complete(self) -> None:
        self.done = True


#: Opens a connection to a host the way the cluster's traffic does (its TLS, its connect timeout).
Opener = Callable[[tuple[str, int]], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def http_probe(opener: Opener, path: str, host_header: str,
               expected: Sequence[tuple[int, int]] = DEFAULT_EXPECTED_STATUSES) -> Probe:
    """A probe that GETs `path` on a fresh connection and judges the status."""
    request = build_http_request(path, host_header)

    async def probe(address: tuple[str, int]) -> Outcome:
        try:
            reader, writer = await opener(address)
        except ConnectError:
            return Outcome.NETWORK_FAILURE
        try:
            writer.write(request)
            state = _StatusReader()
            parser = httptools.HttpResponseParser(state)
            while not state.done:
                data = await reader.read(4096)
                if not data:
                    return Outcome.NETWORK_FAILURE
                parser.feed_data(data)
            return classify_status(parser.get_status_code(), expected)
        except (OSError, httptools.HttpParserError):
            return Outcome.NETWORK_FAILURE
        finally:
            writer.close()

    return probe


def tcp_probe(opener: Opener) -> Probe:
    """Connect-only check: the host is healthy if it accepts a connection (and, on a TLS cluster, a handshake)."""

    async def probe(address: tuple[str, int]) -> Outcome:
        try:
            _, writer = await opener(address)
        except ConnectError:
            return Outcome.NETWORK_FAILURE
        writer.close()
        return Outcome.SUCCESS

    return probe


# -- the checker (the async shell) -----------------------------------------------------------


class HealthChecker:
    """Runs one probe loop per host; results go through `HealthState` into the host's flags.

    `had_traffic()` tells whether the cluster has carried traffic yet: until
    then Envoy checks only every `no_traffic_interval`. `on_success(host)` is
    called after each successful check (outlier detection unejects on it).
    """

    def __init__(
        self,
        stats: StatsStore,
        prefix: str,
        probe: Probe,
        *,
        timeout: float,
        interval: float,
        healthy_threshold: int,
        unhealthy_threshold: int,
        interval_jitter: float = 0.0,
        no_traffic_interval: float = 60.0,
        no_traffic_healthy_interval: float | None = None,
        had_traffic: Callable[[], bool] = lambda: True,
        on_success: Callable[[Host], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.probe = probe
        self.timeout = timeout
        self.interval = interval
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.interval_jitter = interval_jitter
        self.no_traffic_interval = no_traffic_interval
        self.no_traffic_healthy_interval = (
            no_traffic_interval if no_traffic_healthy_interval is None else no_traffic_healthy_interval)
        self.had_traffic = had_traffic
        self.on_success = on_success
        self.rng = rng if rng is not None else random.Random()
        self.states: dict[Host, HealthState] = {}
        self._tasks: dict[Host, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        hc = f"{prefix}health_check."
        self.attempt = stats.counter(hc + "attempt")
        self.success = stats.counter(hc + "success")
        self.failure = stats.counter(hc + "failure")
        self.network_failure = stats.counter(hc + "network_failure")
        self.healthy = stats.gauge(hc + "healthy")

    @classmethod
    def from_config(
        cls, config: Any, cluster_name: str, stats: StatsStore, prefix: str, opener: Opener, *,
        had_traffic: Callable[[], bool], on_success: Callable[[Host], None] | None = None,
    ) -> HealthChecker:
        """From one Envoy `HealthCheck`: HTTP (Host header defaults to the cluster name) or TCP connect."""
        http = config.http_health_check
        if http is not None:
            expected = tuple((r.start, r.end) for r in http.expected_statuses) or DEFAULT_EXPECTED_STATUSES
            probe = http_probe(opener, http.path, http.host or cluster_name, expected)
        else:
            probe = tcp_probe(opener)
        return cls(
            stats, prefix, probe,
            timeout=config.timeout, interval=config.interval,
            healthy_threshold=config.healthy_threshold, unhealthy_threshold=config.unhealthy_threshold,
            interval_jitter=config.interval_jitter or 0.0, no_traffic_interval=config.no_traffic_interval,
            no_traffic_healthy_interval=config.no_traffic_healthy_interval,
            had_traffic=had_traffic, on_success=on_success,
        )

    def add_host(self, host: Host) -> None:
        self.states[host] = HealthState(
            host, healthy_threshold=self.healthy_threshold, unhealthy_threshold=self.unhealthy_threshold,
        )
        if self._loop is not None:
            self._tasks[host] = self._loop.create_task(self._run(host))
        self._publish()

    def remove_host(self, host: Host) -> None:
        self.states.pop(host, None)
        task = self._tasks.pop(host, None)
        if task is not None:
            task.cancel()
        self._publish()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for host in self.states:
            self._tasks[host] = loop.create_task(self._run(host))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._loop = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def next_interval(self, host: Host | None = None) -> float:
        """Envoy's wait: until the cluster carries traffic `no_traffic_healthy_interval` for a healthy `host` and
        `no_traffic_interval` for another, else `interval`; plus jitter."""
        if self.had_traffic():
            base = self.interval
        elif host is not None and not host.has_flag(FAILED_ACTIVE_HC):
            base = self.no_traffic_healthy_interval
        else:
            base = self.no_traffic_interval
        if self.interval_jitter:
            base += self.rng.uniform(0.0, self.interval_jitter)
        return base

    async def check_once(self, host: Host) -> Outcome:
        """Probe `host` once within `timeout` and apply the result."""
        self.attempt.value += 1
        try:
            outcome = await asyncio.wait_for(self.probe(host.address), self.timeout)
        except asyncio.TimeoutError:
            outcome = Outcome.TIMEOUT
        state = self.states.get(host)
        if state is None:  # removed while the probe was in flight
            return outcome
        if outcome is Outcome.SUCCESS:
            self.success.value += 1
        else:
            self.failure.value += 1
            if outcome is not Outcome.ACTIVE_FAILURE:
                self.network_failure.value += 1
        if state.on_result(outcome):
            log.info(
                "health check: %s is now %s", format_address(host.address),
                "unhealthy" if host.has_flag(FAILED_ACTIVE_HC) else "healthy",
            )
            self._publish()
        if outcome is Outcome.SUCCESS and self.on_success is not None:
            self.on_success(host)
        return outcome

    async def _run(self, host: Host) -> None:
        while host in self.states:
            await self.check_once(host)
            await asyncio.sleep(self.next_interval(host))

    def _publish(self) -> None:
        self.healthy.value = sum(1 for h in self.states if not h.has_flag(FAILED_ACTIVE_HC))

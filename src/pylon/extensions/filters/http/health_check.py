"""envoy.filters.http.health_check: answer a load balancer's health checks from the proxy itself.

As Envoy 1.40 does (observed side by side, tests/proxy/test_proxy_health_check.py): a request all of whose
`headers` matchers match (":path" included, query and all) is a health check. Without `pass_through_mode` the
proxy answers it once its body is in: 200, or 503 (flag LH) while the server fails health checks (the admin's
POST /healthcheck/fail until /healthcheck/ok; in pylon also while it drains) or a cluster of
`cluster_min_healthy_percentages` is missing, empty (unless its minimum is 0) or has fewer healthy hosts than its
percentage (truncated to a whole number, as Envoy). With `pass_through_mode` the check goes upstream, except while
failing (503) or, with `cache_time`, when an upstream answer is cached: the cache is cleared every `cache_time`
and the next answer fills it (its status, and whether it carried x-envoy-degraded, which a cached 2xx repeats).
Local answers have no body; %RESPONSE_CODE_DETAILS% is `health_check_ok`, `health_check_failed`,
`health_check_cached`, `health_check_ok_cluster_healthy`, `health_check_failed_cluster_unhealthy`,
`health_check_failed_cluster_empty` or `health_check_failed_no_cluster_found`.

Every response to a health check carries `x-envoy-upstream-healthchecked-cluster` (the bootstrap's node.cluster,
empty without one); while failing, every response carries `x-envoy-immediate-health-check-fail: true` (and the
connection closes after it: the stream's drain-close rule).

Stats: `http.<stat_prefix>.health_check.{request_total, ok, failed, cached_response, degraded,
failed_cluster_empty, failed_cluster_not_found, failed_cluster_unhealthy}`, counted for local answers.

Departure: the cache is per worker (Envoy's is shared by its workers: with several, pylon forwards up to one
check per worker per `cache_time`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.envoy import EnvoyStruct, HeaderMatcher, Percent
from pylon.config.errors import FieldError
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList
from pylon.proxy.router import _Conditions, _HeaderMatcher
from pylon.proxy.stream_states import RQ_DONE
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
FLAG = "LH"
CHECKED_CLUSTER = b"x-envoy-upstream-healthchecked-cluster"
IMMEDIATE_FAIL = b"x-envoy-immediate-health-check-fail"
DEGRADED = b"x-envoy-degraded"
_STATS = ("request_total", "ok", "failed", "cached_response", "degraded", "failed_cluster_empty",
          "failed_cluster_not_found", "failed_cluster_unhealthy")


class HealthCheck(EnvoyStruct, kw_only=True):
    """extensions.filters.http.health_check.v3.HealthCheck."""

    pass_through_mode: bool | None = None
    cache_time: Duration | None = None
    cluster_min_healthy_percentages: dict[str, Percent] = msgspec.field(default_factory=dict)
    headers: list[HeaderMatcher] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pass_through_mode is None:
            raise FieldError("pass_through_mode", "value is required")
        if not self.pass_through_mode and self.cache_time is not None and float(self.cache_time) > 0:
            raise FieldError("cache_time", "must not be set when pass_through_mode is disabled")


class HealthCheckFilter:
    """One HCM's health_check filter in one worker."""

    def __init__(self, name: str, config: HealthCheck, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.pass_through = bool(config.pass_through_mode)
        self.cache_time = float(config.cache_time) if config.cache_time is not None else 0.0
        self.started = time.monotonic()  # the cache's periods count from here
        self.cached: tuple[int, int, bool] | None = None  # (cache period, status, degraded)
        engine = get_engine()
        self.conditions = _Conditions([_HeaderMatcher(m, engine) for m in config.headers], [])
        self.minimums = {name: math.floor(percent.value) for name, percent in
                         config.cluster_min_healthy_percentages.items()}
        self.counters = {kind: stats.counter(f"http.{stat_prefix}.health_check.{kind}") for kind in _STATS}
        #: the health checks among this worker's open streams (their responses carry CHECKED_CLUSTER)
        self.checks: set[Any] = set()

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        if not self.conditions.matches(HeaderList(stream.headers), stream.authority.decode("latin-1"),
                                       stream.path.decode("utf-8", "surrogateescape"),
                                       stream.method.decode("latin-1"), stream.conn.scheme.decode("latin-1")):
            return True
        stream.health_check = True
        self.checks.add(stream)
        stream.on_finish(lambda: self.checks.discard(stream))
        if self.pass_through:
            if self._failing(stream):
                self._answer(stream, 503, "health_check_failed")
                return False
            cached = self._cached()
            if cached is None:
                return True  # upstream's answer decides (and fills the cache)
        if stream.rq_state == RQ_DONE or not (stream.req_length or stream.req_chunked):
            self._complete(stream)
        else:
            stream.body_watch = lambda: self._body_arrived(stream)
        return False

    def _body_arrived(self, stream: Any) -> None:
        if stream.rq_state == RQ_DONE:
            stream.body_watch = None
            self._complete(stream)

    def _complete(self, stream: Any) -> None:
        """Envoy's onComplete: the local answer to a health check."""
        if self._failing(stream):
            self._answer(stream, 503, "health_check_failed")
            return
        cached = self._cached() if self.pass_through else None
        if cached is not None:
            status, degraded = cached
            self.counters["cached_response"].inc()
            self._answer(stream, status, "health_check_cached", degraded)
            return
        if self.minimums:
            status, details = self._cluster_verdict(stream.hcm.worker)
            self._answer(stream, status, details)
            return
        self._answer(stream, 200, "health_check_ok")

    def _cluster_verdict(self, worker: Any) -> tuple[int, str]:
        for name, minimum in self.minimums.items():
            cluster = worker.clusters.get(name)
            if cluster is None:
                self.counters["failed_cluster_not_found"].inc()
                return 503, "health_check_failed_no_cluster_found"
            total = len(cluster.hosts)
            if total == 0:
                if minimum == 0:
                    continue
                self.counters["failed_cluster_empty"].inc()
                return 503, "health_check_failed_cluster_empty"
            healthy = sum(1 for host in cluster.hosts if host.healthy)
            if 100 * healthy < total * minimum:
                self.counters["failed_cluster_unhealthy"].inc()
                return 503, "health_check_failed_cluster_unhealthy"
        return 200, "health_check_ok_cluster_healthy"

    def _answer(self, stream: Any, status: int, details: str, degraded: bool = False) -> None:
        self.counters["request_total"].inc()
        if 200 <= status < 300:
            self.counters["ok"].inc()
        else:
            self.counters["failed"].inc()
            stream.flags = FLAG
        extra = []
        if degraded:
            self.counters["degraded"].inc()
            extra.append((DEGRADED, b""))
        stream.respond_from_filter(status, b"", extra, details)

    @staticmethod
    def _failing(stream: Any) -> bool:
        worker = stream.hcm.worker
        return worker.health_check_failed or worker.draining

    def _period(self) -> int:
        return int((time.monotonic() - self.started) // self.cache_time)

    def _cached(self) -> tuple[int, bool] | None:
        """The cached upstream answer (status, degraded), if the cache holds one for the current period."""
        if not self.cache_time or self.cached is None or self.cached[0] != self._period():
            return None
        return self.cached[1], self.cached[2]

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        if stream in self.checks:
            if self.cache_time and not stream.local_reply:
                self.cached = (self._period(), status, headers.get(DEGRADED) is not None)
            node = stream.hcm.worker.node
            headers.set(CHECKED_CLUSTER, (node.cluster if node is not None else "").encode())
        if self._failing(stream):
            headers.set(IMMEDIATE_FAIL, b"true")


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, HealthCheck)
register_filter(HealthCheck, HealthCheckFilter)

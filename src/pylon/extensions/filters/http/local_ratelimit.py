"""envoy.filters.http.local_ratelimit: a token bucket in front of the router, as Envoy 1.40 runs it.

Observed beside Envoy (tests/proxy/test_proxy_local_ratelimit.py): each request the filter is enabled for
(`filter_enabled`, default 0%: off) takes a token from the bucket (`token_bucket`, refilled continuously: see
filters/common/token_bucket.py). Without one it is rate limited, and when `filter_enforced` (default 0%) says
so it is answered `status` (429) "local_rate_limited" with `response_headers_to_add` (flag RL, details
`local_rate_limited`); a limited request that is not enforced goes on with
`request_headers_to_add_when_not_enforced`. With `enable_x_ratelimit_headers: DRAFT_VERSION_03` every response
of an enabled request says x-ratelimit-limit (max_tokens), x-ratelimit-remaining and x-ratelimit-reset.
A route's (virtual host's, route configuration's) `typed_per_filter_config` is a whole LocalRateLimit with its
own bucket and stat prefix. Stats are Envoy's, outside the `http.` tree:
`<stat_prefix>.http_local_rate_limit.{enabled, enforced, ok, rate_limited}` (and `shadow_mode`, at 0 as Envoy
leaves it for a limit that is not enforced).

Buckets and workers: one bucket is shared by every worker (proxy/shared_buckets.py), as Envoy's is shared by
its threads, so `--concurrency N` never serves N times the rate; with
`local_rate_limit_per_downstream_connection` each connection has its own (it lives in one worker anyway).
A bucket is known across workers by the HCM's stat prefix, the filter's name and config, and its occurrence
among identical filters; a per-route bucket by the HCM's stat prefix, the filter's name, the virtual host's
name and the config. Departure: two routes of one virtual host with identical per-route configs share one
bucket (Envoy gives each its own); outside a supervisor's workers (or with the shared table full) a worker's
bucket is its own.

Runtime keys never apply (pylon's runtime refuses them): the default fractions are what count. Refused by
name: `descriptors`, `rate_limits`, `local_cluster_rate_limit`, `max_dynamic_descriptors`, a non-zero `stage`,
`rate_limited_as_resource_exhausted`; header values with substitution formats (`%...%`). `vh_rate_limits` and
`always_consume_default_token_bucket` only change how descriptors apply, so without them they do nothing, as in
Envoy.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import (
    EnvoyStruct,
    FractionalPercent,
    HeaderValueOption,
    NotSupportedYet,
    PositiveUInt32,
    RuntimeFractionalPercent,
    UInt32,
)
from pylon.config.constraints import PositiveDuration
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.config import HttpStatus
from pylon.extensions.filters.common.request_edits import replace_request_headers
from pylon.extensions.filters.common.token_bucket import BucketRule, LocalBucket, Taken
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList, HeaderOps, compile_header_level
from pylon.proxy.shared_buckets import SHARED_BUCKETS, SharedBucket

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BODY = b"local_rate_limited"
DETAILS = "local_rate_limited"
FLAG = "RL"


class TokenBucket(EnvoyStruct, kw_only=True):
    """type.v3.TokenBucket."""

    max_tokens: PositiveUInt32
    tokens_per_fill: PositiveUInt32 = 1
    fill_interval: PositiveDuration | None = None

    def __post_init__(self) -> None:
        if self.fill_interval is None:
            raise FieldError("fill_interval", "missing required field")


def _headers(field: str, options: list[HeaderValueOption]) -> HeaderOps:
    for i, option in enumerate(options):
        if "%" in option.header.value:
            raise FieldError(f"{field}[{i}].header.value", "substitution formats are not supported here yet")
    try:
        return HeaderOps([compile_header_level(options, [])])
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None


class LocalRateLimit(EnvoyStruct, kw_only=True):
    """extensions.filters.http.local_ratelimit.v3.LocalRateLimit; also its own per-route config."""

    stat_prefix: str
    status: HttpStatus | None = None
    token_bucket: TokenBucket | None = None
    filter_enabled: RuntimeFractionalPercent | None = None
    filter_enforced: RuntimeFractionalPercent | None = None
    request_headers_to_add_when_not_enforced: list[HeaderValueOption] = msgspec.field(default_factory=list)
    response_headers_to_add: list[HeaderValueOption] = msgspec.field(default_factory=list)
    descriptors: NotSupportedYet | None = None
    stage: UInt32 = 0
    local_rate_limit_per_downstream_connection: bool = False
    local_cluster_rate_limit: NotSupportedYet | None = None
    enable_x_ratelimit_headers: Literal["OFF", "DRAFT_VERSION_03"] = "OFF"
    vh_rate_limits: Literal["OVERRIDE", "INCLUDE", "IGNORE"] = "OVERRIDE"  # applies to descriptors only
    always_consume_default_token_bucket: bool = True  # applies to descriptors only
    rate_limited_as_resource_exhausted: bool = False
    rate_limits: NotSupportedYet | None = None
    max_dynamic_descriptors: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if not self.stat_prefix:
            raise FieldError("stat_prefix", "missing required field")
        if self.token_bucket is None:
            raise FieldError("token_bucket", "missing required field (descriptors are not supported yet)")
        if self.stage:
            raise FieldError("stage", "not supported yet (stages select route rate_limits, which are not)")
        if self.rate_limited_as_resource_exhausted:
            raise FieldError("rate_limited_as_resource_exhausted", "not supported yet")
        _headers("request_headers_to_add_when_not_enforced", self.request_headers_to_add_when_not_enforced)
        _headers("response_headers_to_add", self.response_headers_to_add)


def _fraction(percent: RuntimeFractionalPercent | None) -> float:
    return percent.default_value.fraction if percent is not None else FractionalPercent().fraction


#: how many identical filters (HCM stat prefix, name, config) this worker built: the next one's bucket key
_occurrences: dict[bytes, itertools.count] = {}


class Limiter:
    """One LocalRateLimit config at work in one worker: its draws, its bucket(s), its stats and headers."""

    def __init__(self, config: LocalRateLimit, key: bytes, stats: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        bucket = config.token_bucket
        assert bucket is not None and bucket.fill_interval is not None
        self.rule = BucketRule(float(bucket.max_tokens), bucket.tokens_per_fill / float(bucket.fill_interval))
        self.key = key
        self.clock = clock
        self.enabled = _fraction(config.filter_enabled)
        self.enforced = _fraction(config.filter_enforced)
        self.status = config.status.number if config.status is not None else 429
        self.per_connection = config.local_rate_limit_per_downstream_connection
        self.limit_header = b"%d" % bucket.max_tokens if config.enable_x_ratelimit_headers != "OFF" else None
        self.request_ops = _headers("request_headers_to_add_when_not_enforced",
                                    config.request_headers_to_add_when_not_enforced)
        self.response_headers = HeaderList()
        _headers("response_headers_to_add", config.response_headers_to_add).apply(self.response_headers)
        prefix = config.stat_prefix + ".http_local_rate_limit."
        self.counters = {name: stats.counter(prefix + name) for name in ("enabled", "enforced", "ok", "rate_limited")}
        stats.counter(prefix + "shadow_mode")  # shown at 0: Envoy 1.40 does not count a limit not enforced there
        self._shared: SharedBucket | LocalBucket | None = None
        self._connections: dict[Any, LocalBucket] = {}

    def take(self, stream: Any) -> Taken:
        now = self.clock()
        if self.per_connection:
            return self._connection_bucket(stream.conn, now).take(now)
        bucket = self._shared
        if bucket is None:
            bucket = self._shared = self._find_bucket(stream, now)
        if isinstance(bucket, LocalBucket):
            return bucket.take(now)
        return bucket.update(lambda start: self.rule.take(start, now))

    def _find_bucket(self, stream: Any, now: float) -> SharedBucket | LocalBucket:
        table = stream.hcm.worker.singletons.get(SHARED_BUCKETS)
        shared = table.bucket(self.key, lambda: self.rule.full_start(now)) if table is not None else None
        return shared if shared is not None else LocalBucket(self.rule, now)

    def _connection_bucket(self, conn: Any, now: float) -> LocalBucket:
        bucket = self._connections.get(conn)
        if bucket is None:
            if len(self._connections) >= 1024:  # forget the closed ones now and then
                self._connections = {c: b for c, b in self._connections.items() if not c.closed}
            bucket = self._connections[conn] = LocalBucket(self.rule, now)
        return bucket


class LocalRateLimitFilter:
    """One HCM's local rate limit filter in one worker."""

    def __init__(self, name: str, config: LocalRateLimit, stat_prefix: str, stats: Any, loop: Any,
                 chance: Callable[[], float] = random.random, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.stats = stats
        self.chance = chance
        self.clock = clock
        self.stat_prefix = stat_prefix
        key = b"|".join((stat_prefix.encode(), name.encode(), repr(config).encode()))
        occurrence = next(_occurrences.setdefault(key, itertools.count()))
        self.limiter = Limiter(config, key + b"|%d" % occurrence, stats, clock)
        self._per_route: dict[int, tuple[LocalRateLimit, Limiter]] = {}
        #: x-ratelimit-* headers for the responses of streams that took a token (until they end)
        self._rate_headers: dict[Any, list[tuple[bytes, bytes]]] = {}

    def decode_headers(self, stream: Any) -> bool:
        limiter = self._limiter_for(stream.route)
        if not _hits(limiter.enabled, self.chance):
            return True
        counters = limiter.counters
        counters["enabled"].inc()
        taken = limiter.take(stream)
        if limiter.limit_header is not None:
            self._rate_headers[stream] = [(b"x-ratelimit-limit", limiter.limit_header),
                                          (b"x-ratelimit-remaining", b"%d" % taken.remaining),
                                          (b"x-ratelimit-reset", b"%d" % taken.reset)]
            stream.on_finish(lambda: self._rate_headers.pop(stream, None))
        if taken.allowed:
            counters["ok"].inc()
            return True
        counters["rate_limited"].inc()
        if not _hits(limiter.enforced, self.chance):
            if not limiter.request_ops.empty:
                _edit_request(stream, limiter.request_ops)
            return True
        counters["enforced"].inc()
        stream.flags = FLAG
        stream.respond_from_filter(limiter.status, BODY, list(limiter.response_headers.items), DETAILS)
        return False

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        added = self._rate_headers.get(stream)
        if added is not None:
            for name, value in added:
                headers.set(name, value)

    def _limiter_for(self, route: Any) -> Limiter:
        config = route.filter_config(self.name) if route is not None else None
        if not isinstance(config, LocalRateLimit):
            return self.limiter
        known = self._per_route.get(id(config))
        if known is not None and known[0] is config:
            return known[1]
        key = b"|".join((self.stat_prefix.encode(), self.name.encode(), route.virtual_host_name.encode(),
                         repr(config).encode()))
        limiter = Limiter(config, key, self.stats, self.clock)
        self._per_route[id(config)] = (config, limiter)  # the config held: its id stays its own
        return limiter


def _hits(fraction: float, chance: Callable[[], float]) -> bool:
    return fraction >= 1.0 or (fraction > 0.0 and chance() < fraction)


def _edit_request(stream: Any, ops: HeaderOps) -> None:
    """The request headers as `ops` leave them, through the stream's header edits (upstream sees them)."""
    edited = HeaderList(list(stream.headers))
    ops.apply(edited)
    replace_request_headers(stream, edited.items)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, LocalRateLimit)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, LocalRateLimit)
register_filter(LocalRateLimit, LocalRateLimitFilter)

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

Descriptors (checked beside Envoy 1.40 in tests/proxy/test_proxy_local_ratelimit_descriptors.py): a config's
`descriptors` are buckets of their own, each for the request descriptors with exactly its entries, in order. The
request's descriptors come from the filter's own `rate_limits` when it has some, else from its route's
`rate_limits` (and its virtual host's: always with the route's `include_vh_rate_limits` or `vh_rate_limits:
INCLUDE`, only when the route has none with OVERRIDE, never with IGNORE), those of the filter's `stage` without a
`disable_key` (proxy/rate_limits.py builds them). As Envoy's LocalRateLimiterImpl: the matched descriptors'
buckets take a token each, slowest refill first, until one has none (limited by it); then the default bucket does,
unless a descriptor matched and `always_consume_default_token_bucket` is false; without a default bucket (a filter
config may leave it out, a per-route one may not) only descriptors limit. The x-ratelimit-* headers describe the
bucket that limited, else the first matched descriptor's, else the default's (a rate limit's `x_ratelimit_option`
overrides the filter's choice). A descriptor in `shadow_mode` that limits counts `shadow_mode` and lets the
request go. A descriptor bucket is shared by the workers like the default one (its key adds the entries).

Runtime keys never apply (pylon's runtime refuses them): the default fractions are what count. Refused by
name: `local_cluster_rate_limit`, `max_dynamic_descriptors` and descriptor entries with an empty value (Envoy's
dynamic wildcard descriptors); header values with substitution formats (`%...%`).
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from pylon.config import registry
from pylon.config.envoy import (
    EnvoyStruct,
    FractionalPercent,
    HeaderValueOption,
    NonEmptyStr,
    NotSupportedYet,
    PositiveUInt32,
    RateLimit,
    RuntimeFractionalPercent,
)
from pylon.config.constraints import PositiveDuration
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.config import HttpStatus
from pylon.extensions.filters.common.request_edits import replace_request_headers
from pylon.extensions.filters.common.token_bucket import BucketRule, LocalBucket, Taken
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList, HeaderOps, compile_header_level
from pylon.proxy.rate_limits import DescriptorRequest, RateLimitPolicy, RequestDescriptor
from pylon.proxy.shared_buckets import SHARED_BUCKETS, SharedBucket
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BODY = b"local_rate_limited"
DETAILS = "local_rate_limited"
FLAG = "RL"
RESOURCE_EXHAUSTED = 8  # grpc-status


class TokenBucket(EnvoyStruct, kw_only=True):
    """type.v3.TokenBucket."""

    max_tokens: PositiveUInt32
    tokens_per_fill: PositiveUInt32 = 1
    fill_interval: PositiveDuration | None = None

    def __post_init__(self) -> None:
        if self.fill_interval is None:
            raise FieldError("fill_interval", "missing required field")
        if float(self.fill_interval) < 0.05:
            raise FieldError("fill_interval", "local rate limit token bucket fill timer must be >= 50ms")


class DescriptorEntry(EnvoyStruct, kw_only=True):
    """common.ratelimit.v3.RateLimitDescriptor.Entry."""

    key: NonEmptyStr
    value: str = ""

    def __post_init__(self) -> None:
        if not self.value:
            raise FieldError("value", "an empty value (a wildcard: dynamic descriptors) is not supported yet")


class LocalRateLimitDescriptor(EnvoyStruct, kw_only=True):
    """common.ratelimit.v3.LocalRateLimitDescriptor: a request descriptor with exactly these entries takes a token
    from this bucket."""

    entries: Annotated[list[DescriptorEntry], msgspec.Meta(min_length=1)]
    token_bucket: TokenBucket
    shadow_mode: bool = False


def _headers(field: str, options: list[HeaderValueOption]) -> HeaderOps:
    for i, option in enumerate(options):
        if "%" in option.header.value:
            raise FieldError(f"{field}[{i}].header.value", "substitution formats are not supported here yet")
    try:
        return HeaderOps([compile_header_level(options, [])])
    except ValueError as exc:
        raise FieldError(field, str(exc)) from None


class LocalRateLimit(EnvoyStruct, kw_only=True):
    """extensions.filters.http.local_ratelimit.v3.LocalRateLimit as the filter's config."""

    stat_prefix: str
    status: HttpStatus | None = None
    #: unset: no default bucket (only descriptors limit), as Envoy allows for the filter's own config
    token_bucket: TokenBucket | None = None
    filter_enabled: RuntimeFractionalPercent | None = None
    filter_enforced: RuntimeFractionalPercent | None = None
    request_headers_to_add_when_not_enforced: list[HeaderValueOption] = msgspec.field(default_factory=list)
    response_headers_to_add: list[HeaderValueOption] = msgspec.field(default_factory=list)
    descriptors: list[LocalRateLimitDescriptor] = msgspec.field(default_factory=list)
    #: which of the route's rate_limits make this filter's descriptors
    stage: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    local_rate_limit_per_downstream_connection: bool = False
    local_cluster_rate_limit: NotSupportedYet | None = None
    enable_x_ratelimit_headers: Literal["OFF", "DRAFT_VERSION_03"] = "OFF"
    vh_rate_limits: Literal["OVERRIDE", "INCLUDE", "IGNORE"] = "OVERRIDE"
    always_consume_default_token_bucket: bool = True
    #: a gRPC request's local reply says RESOURCE_EXHAUSTED (Envoy's default for 429 is UNAVAILABLE)
    rate_limited_as_resource_exhausted: bool = False
    #: the filter's own rate limits: they make the descriptors instead of the route's
    rate_limits: list[RateLimit] = msgspec.field(default_factory=list)
    max_dynamic_descriptors: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if not self.stat_prefix:
            raise FieldError("stat_prefix", "missing required field")
        _headers("request_headers_to_add_when_not_enforced", self.request_headers_to_add_when_not_enforced)
        _headers("response_headers_to_add", self.response_headers_to_add)
        seen = set()
        for i, descriptor in enumerate(self.descriptors):
            entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
            if entries in seen:
                raise FieldError(f"descriptors[{i}]", "duplicate descriptor in the local rate descriptor")
            seen.add(entries)


class LocalRateLimitPerRoute(LocalRateLimit, kw_only=True):
    """The same message as a route's (virtual host's, route configuration's) typed_per_filter_config."""

    def __post_init__(self) -> None:
        if self.token_bucket is None:
            raise FieldError("token_bucket", "local rate limit token bucket must be set for per filter configs")
        super().__post_init__()


def _fraction(percent: RuntimeFractionalPercent | None) -> float:
    return percent.default_value.fraction if percent is not None else FractionalPercent().fraction


def _rule(bucket: TokenBucket) -> BucketRule:
    assert bucket.fill_interval is not None
    return BucketRule(float(bucket.max_tokens), bucket.tokens_per_fill / float(bucket.fill_interval))


#: how many identical filters (HCM stat prefix, name, config) this worker built: the next one's bucket key
_occurrences: dict[bytes, itertools.count] = {}


class _Bucket:
    """One configured bucket (the default one or a descriptor's) of one limiter; its state is shared by the
    workers (or per connection)."""

    __slots__ = ("rule", "key", "limit_header", "shadow", "_shared")

    def __init__(self, bucket: TokenBucket, key: bytes, shadow: bool = False) -> None:
        self.rule = _rule(bucket)
        self.key = key
        self.limit_header = b"%d" % bucket.max_tokens
        self.shadow = shadow
        self._shared: SharedBucket | LocalBucket | None = None

    def take(self, stream: Any, now: float) -> Taken:
        bucket = self._shared
        if bucket is None:
            table = stream.hcm.worker.singletons.get(SHARED_BUCKETS)
            shared = table.bucket(self.key, lambda: self.rule.full_start(now)) if table is not None else None
            bucket = self._shared = shared if shared is not None else LocalBucket(self.rule, now)
        if isinstance(bucket, LocalBucket):
            return bucket.take(now)
        return bucket.update(lambda start: self.rule.take(start, now))


class Decision(NamedTuple):
    allowed: bool
    #: the bucket that decided (its x-ratelimit-* values), None when none did (no default bucket, no match)
    bucket: _Bucket | None
    taken: Taken | None
    x_ratelimit_option: str


class Limiter:
    """One LocalRateLimit config at work in one worker: its draws, its buckets, its stats and headers."""

    def __init__(self, config: LocalRateLimit, key: bytes, stats: Any,
                 clock: Callable[[], float] = time.monotonic, engine: Any = None) -> None:
        self.key = key
        self.clock = clock
        self.default = _Bucket(config.token_bucket, key) if config.token_bucket is not None else None
        self.descriptors = {
            tuple((e.key, e.value) for e in d.entries):
                _Bucket(d.token_bucket, key + b"|" + repr([(e.key, e.value) for e in d.entries]).encode(), d.shadow_mode)
            for d in config.descriptors}
        self.always_consume_default = config.always_consume_default_token_bucket
        self.stage = config.stage
        self.vh_rate_limits = config.vh_rate_limits
        self.own_rate_limits = RateLimitPolicy(config.rate_limits, engine or get_engine()) \
            if config.rate_limits else None
        self.enabled = _fraction(config.filter_enabled)
        self.enforced = _fraction(config.filter_enforced)
        self.status = config.status.number if config.status is not None else 429
        self.grpc_status = RESOURCE_EXHAUSTED if config.rate_limited_as_resource_exhausted else None
        self.per_connection = config.local_rate_limit_per_downstream_connection
        self.x_ratelimit_headers = config.enable_x_ratelimit_headers != "OFF"
        self.request_ops = _headers("request_headers_to_add_when_not_enforced",
                                    config.request_headers_to_add_when_not_enforced)
        self.response_headers = HeaderList()
        _headers("response_headers_to_add", config.response_headers_to_add).apply(self.response_headers)
        prefix = config.stat_prefix + ".http_local_rate_limit."
        self.counters = {name: stats.counter(prefix + name)
                         for name in ("enabled", "enforced", "ok", "rate_limited", "shadow_mode")}
        self._connections: dict[Any, dict[int, LocalBucket]] = {}

    def decide(self, stream: Any, descriptors: list[RequestDescriptor]) -> Decision:
        """Envoy's LocalRateLimiterImpl::requestAllowed: the matched descriptors' buckets, slowest refill first,
        each takes a token until one has none; then the default bucket, unless a descriptor matched and
        always_consume_default_token_bucket is false."""
        now = self.clock()
        matched = [(bucket, d.x_ratelimit_option) for d in descriptors
                   if (bucket := self.descriptors.get(d.entries)) is not None]
        if len(matched) > 1:
            matched.sort(key=lambda m: m[0].rule.rate)
        first: Decision | None = None
        for bucket, option in matched:
            taken = self._take(bucket, stream, now)
            if not taken.allowed:
                return Decision(False, bucket, taken, option)
            if first is None:
                first = Decision(True, bucket, taken, option)
        if matched and not self.always_consume_default:
            return first  # type: ignore[return-value]
        if self.default is None:
            return first if first is not None else Decision(True, None, None, "UNSPECIFIED")
        taken = self._take(self.default, stream, now)
        if not taken.allowed:
            return Decision(False, self.default, taken, "UNSPECIFIED")
        return first if first is not None else Decision(True, self.default, taken, "UNSPECIFIED")

    def _take(self, bucket: _Bucket, stream: Any, now: float) -> Taken:
        if not self.per_connection:
            return bucket.take(stream, now)
        conn = stream.conn
        buckets = self._connections.get(conn)
        if buckets is None:
            if len(self._connections) >= 1024:  # forget the closed ones now and then
                self._connections = {c: b for c, b in self._connections.items() if not c.closed}
            buckets = self._connections[conn] = {}
        own = buckets.get(id(bucket))
        if own is None:
            own = buckets[id(bucket)] = LocalBucket(bucket.rule, now)
        return own.take(now)

    def request_descriptors(self, stream: Any) -> list[RequestDescriptor]:
        """The request's descriptors: from the filter's own rate_limits, else from its route's (and virtual
        host's, as vh_rate_limits and the route's include_vh_rate_limits say). None without descriptors."""
        out: list[RequestDescriptor] = []
        if not self.descriptors:
            return out
        route = stream.route
        policies = [self.own_rate_limits] if self.own_rate_limits is not None else \
            _route_policies(route, self.vh_rate_limits) if route is not None and route.kind == "cluster" else []
        if policies:
            request = _descriptor_request(stream)
            for policy in policies:
                policy.add_descriptors(self.stage, request, out)
        return out


def _route_policies(route: Any, vh_option: str) -> list[RateLimitPolicy]:
    """Envoy's Filter::populateDescriptors: the route's rate limits, then its virtual host's when the route says
    include_vh_rate_limits or vh_rate_limits is INCLUDE, or (OVERRIDE) when the route has none."""
    option = "INCLUDE" if route.include_vh_rate_limits else vh_option
    policies = [route.rate_limits] if route.rate_limits is not None else []
    vh = route.virtual_host_rate_limits
    if vh is not None and (option == "INCLUDE" or option == "OVERRIDE" and route.rate_limits is None):
        policies.append(vh)
    return policies


def _descriptor_request(stream: Any) -> DescriptorRequest:
    hcm = stream.hcm
    node = getattr(hcm.worker, "node", None)
    route = stream.route
    cluster = route.cluster if route is not None and route.cluster else None
    return DescriptorRequest(HeaderList(stream.headers), stream.authority.decode("latin-1"),
                             stream.path.decode("latin-1"), stream.method.decode("latin-1"),
                             stream.conn.scheme.decode("latin-1"), hcm.trusted_client(stream), node.cluster if node is not None else "", cluster)


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
        decision = limiter.decide(stream, limiter.request_descriptors(stream))
        bucket, taken = decision.bucket, decision.taken
        option = decision.x_ratelimit_option
        if bucket is not None and taken is not None and (
                option == "DRAFT_VERSION_03" or option == "UNSPECIFIED" and limiter.x_ratelimit_headers):
            self._rate_headers[stream] = [(b"x-ratelimit-limit", bucket.limit_header),
                                          (b"x-ratelimit-remaining", b"%d" % taken.remaining),
                                          (b"x-ratelimit-reset", b"%d" % taken.reset)]
            stream.on_finish(lambda: self._rate_headers.pop(stream, None))
        if decision.allowed:
            counters["ok"].inc()
            return True
        counters["rate_limited"].inc()
        if bucket is not None and bucket.shadow:
            counters["shadow_mode"].inc()
            return True
        if not _hits(limiter.enforced, self.chance):
            if not limiter.request_ops.empty:
                _edit_request(stream, limiter.request_ops)
            return True
        counters["enforced"].inc()
        stream.flags = FLAG
        stream.respond_from_filter(limiter.status, BODY, list(limiter.response_headers.items), DETAILS,
                                   grpc_status=limiter.grpc_status)
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
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, LocalRateLimitPerRoute)
register_filter(LocalRateLimit, LocalRateLimitFilter)

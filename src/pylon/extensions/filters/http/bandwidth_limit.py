"""envoy.filters.http.bandwidth_limit: request and response bodies paced to `limit_kbps`, as Envoy 1.40 does it.

Why: a route (or a whole connection manager) whose bodies must not move faster than a given rate. The pacing
itself is sans-IO (extensions/filters/common/stream_rate_limiter.py, Envoy's StreamRateLimiter); this module
reads the config, keeps the buckets, arms the timers and hands the paced bytes back to the stream.

As Envoy (bandwidth_limit.cc, checked beside it in tests/proxy/test_proxy_bandwidth_limit.py):
- `enable_mode` (DISABLED by default, REQUEST, RESPONSE, REQUEST_AND_RESPONSE) says which bodies are paced, and
  `runtime_enabled` (a RuntimeFeatureFlag: its `default_value`; pylon's runtime has no such keys, see
  config/runtime.py) turns the filter off; `limit_kbps` is KiB/s (1024 bytes), `fill_interval` (default 50 ms,
  20 ms to 1 s) is how often held bytes are looked at again;
- the bucket is the config's: one for the filter, one per route-level `typed_per_filter_config` (which replaces
  the filter's config whole, the most specific level wins, and must set `limit_kbps`); both directions of every
  stream under that config draw from it, across all workers (Envoy shares it across its threads: here it lives
  in the workers' shared table, proxy/shared_buckets.py);
- a body held beyond the connection's buffer limit pauses its source (the client's reads for a request, the
  upstream's for a response) until half of it has gone;
- `enable_response_trailers` adds, to a response that had a body and passed the limiter, the trailers
  `bandwidth-request-delay-ms`, `bandwidth-response-delay-ms` (how long each body took to pass, ms),
  `bandwidth-request-filter-delay-ms`, `bandwidth-response-filter-delay-ms` (the filter's own delay: one fill
  interval per look that left bytes behind), each only when not 0, named `<response_trailer_prefix>-<name>`
  with a prefix; they reach the client where its codec writes trailers (HTTP/2; HTTP/1.1 chunked with the
  HCM's `enable_trailers`), as Envoy's;
- stats `<stat_prefix>.http_bandwidth_limit.*` (outside the `http.` tree, as Envoy's): request_/response_
  enabled, enforced (counted per look that left bytes behind, as Envoy's code does), pending (gauge),
  incoming_size and allowed_size (gauges: the last piece's size), incoming_total_size and allowed_total_size,
  transfer_duration (histograms, ms).

Departures: the limiter sits next to the codecs (it paces the request body as the client sent it and the
response body as the upstream sent it, which differs from Envoy's only when a filter that changes bodies sits
on the far side of it in the chain); local replies and upgraded streams' tunnels (WebSocket, CONNECT) are not
paced; the request body that came in while an earlier filter held the request (before this filter saw its
headers) is not paced; identical per-route configs of one connection manager share one bucket (Envoy gives each
its own); a stream that ends unfinished is no longer counted pending (Envoy's gauge keeps it).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Literal

from pylon.config import registry
from pylon.config.constraints import Duration, HttpText
from pylon.config.envoy import EnvoyStruct, RuntimeFeatureFlag
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.per_route import MostSpecific
from pylon.extensions.filters.common.stream_rate_limiter import ByteBucket, StreamRateLimiter, kib_to_bytes
from pylon.proxy.filters.http import register_filter
from pylon.proxy.shared_buckets import SHARED_BUCKETS, SharedBucket
from pylon.proxy.stream_states import RS_DONE

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit"
_LEAST_RATE = 1 / (365 * 24 * 3600)  # Envoy's kMinFillRate: a token a year
REQUEST, RESPONSE = 1, 2
_MODES = {"DISABLED": 0, "REQUEST": REQUEST, "RESPONSE": RESPONSE, "REQUEST_AND_RESPONSE": REQUEST | RESPONSE}
_TRAILERS = ("bandwidth-request-delay-ms", "bandwidth-response-delay-ms", "bandwidth-request-filter-delay-ms",
             "bandwidth-response-filter-delay-ms")
_STATS = ("enabled", "enforced", "pending", "incoming_size", "allowed_size", "incoming_total_size",
          "allowed_total_size", "transfer_duration")


class FillInterval(Duration):
    """PGV `gte: {nanos: 20000000}` (and `lte: {seconds: 1}`, checked by the config)."""

    at_least_ns = 20_000_000


class BandwidthLimit(EnvoyStruct, kw_only=True):
    """extensions.filters.http.bandwidth_limit.v3.BandwidthLimit, the filter's config."""

    stat_prefix: str
    enable_mode: Literal["DISABLED", "REQUEST", "RESPONSE", "REQUEST_AND_RESPONSE"] = "DISABLED"
    limit_kbps: int | None = None
    fill_interval: FillInterval | None = None
    runtime_enabled: RuntimeFeatureFlag | None = None
    enable_response_trailers: bool = False
    response_trailer_prefix: HttpText = HttpText("")

    def __post_init__(self) -> None:
        if not self.stat_prefix:
            raise FieldError("stat_prefix", "must not be empty")
        if self.limit_kbps is not None and not 1 <= self.limit_kbps < 1 << 64:
            raise FieldError("limit_kbps", "must be at least 1 (KiB/s)")
        if self.fill_interval is not None and float(self.fill_interval) > 1.0:
            raise FieldError("fill_interval", "must be at most 1s")


class BandwidthLimitPerRoute(BandwidthLimit, kw_only=True):
    """The same message as a route's (virtual host's, route configuration's) typed_per_filter_config."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit_kbps is None:
            raise FieldError("limit_kbps", "limit must be set for per route filter config")


class _Bucket:
    """A config's token bucket in this worker: a slot of the workers' shared table, or its own."""

    __slots__ = ("rule", "key", "first", "clock", "_shared", "_start")

    def __init__(self, rule: ByteBucket, key: bytes, first: float, clock: Callable[[], float]) -> None:
        self.rule = rule
        self.key = key
        self.first = first  # its state when the config was loaded
        self.clock = clock
        self._shared: SharedBucket | None = None
        self._start: float | None = None

    def take(self, stream: Any, wanted: int) -> int:
        now = self.clock()
        rule = self.rule
        if self._shared is None and self._start is None:
            table = stream.hcm.worker.singletons.get(SHARED_BUCKETS)
            first = self.first
            self._shared = table.bucket(self.key, lambda: first) if table is not None else None
            if self._shared is None:
                self._start = first
        if self._shared is not None:
            return self._shared.update(lambda start: rule.consume(start, now, wanted))
        assert self._start is not None
        self._start, taken = rule.consume(self._start, now, wanted)
        return taken


class _Config:
    """One BandwidthLimit at work in one worker: its mode, bucket, stats and trailer names."""

    def __init__(self, config: BandwidthLimit, key: bytes, stats: Any, clock: Callable[[], float],
                 loaded: float) -> None:
        flag = config.runtime_enabled
        self.mode = _MODES[config.enable_mode] if flag is None or flag.default_value else 0
        # Envoy reads the interval as whole milliseconds (PROTOBUF_GET_MS_OR_DEFAULT): nanoseconds cut, not rounded
        interval = config.fill_interval
        interval_ms = round(float(interval) * 1e9) // 1_000_000 if interval is not None else 50
        self.fill_interval = interval_ms / 1000
        # Without a limit (a filter-level config may leave it out) the bucket never fills: Envoy's holds every
        # body byte then, at its least fill rate of one token a year.
        limit = kib_to_bytes(config.limit_kbps or 0)
        # Observed with Envoy 1.40: a bucket holds one fill interval's worth when the config loads and fills from
        # then on, so a route first used a second or more after the load finds it full.
        rule = ByteBucket(float(limit), float(limit) or _LEAST_RATE)
        self.bucket = _Bucket(rule, key, rule.start_with(limit * interval_ms / 1000, loaded), clock)
        self.trailers = config.enable_response_trailers
        prefix = config.response_trailer_prefix.lower()
        self.trailer_names = [(prefix + "-" + name if prefix else name).encode() for name in _TRAILERS]
        root = config.stat_prefix + ".http_bandwidth_limit."
        self.request_stats = _SideStats(stats, root + "request_")
        self.response_stats = _SideStats(stats, root + "response_")


class _SideStats:
    """One direction's stats, as attributes (a request pays attribute increments, no lookups)."""

    __slots__ = _STATS

    def __init__(self, stats: Any, prefix: str) -> None:
        for name in _STATS:
            kind = stats.gauge if name in ("pending", "incoming_size", "allowed_size") else \
                stats.histogram if name == "transfer_duration" else stats.counter
            setattr(self, name, kind(prefix + name))


class _Pacing:
    """One direction of one stream under a limiter: the stream's side of the protocol (proxy/filters/http.py,
    "Pacing"), the limiter's timer, and Envoy's per-stream stats."""

    __slots__ = ("stream", "config", "response", "limiter", "stats", "timer", "started", "then", "finished",
                 "sink_full", "duration", "delay")

    def __init__(self, stream: Any, config: _Config, response: bool) -> None:
        self.stream = stream
        self.config = config
        self.response = response
        bucket = config.bucket
        self.limiter = StreamRateLimiter(lambda wanted: bucket.take(stream, wanted), stream.hcm.buffer_limit,
                                         self._on_full)
        self.stats = config.response_stats if response else config.request_stats
        self.timer: Any = None
        self.started = 0.0  # when the first body byte came (0: none yet)
        self.then: Callable[[], None] | None = None
        self.finished = False
        self.sink_full = False  # the socket the body goes to is full (the stream's own back-pressure)
        self.duration = 0  # ms the body took to pass, once it has (the trailers')
        self.delay = 0  # ms the filter added: a fill interval per look that left bytes behind (the trailers')

    @property
    def full(self) -> bool:
        return self.limiter.above_high

    def write(self, data: bytes) -> bytes:
        """A body piece from its source: what goes on now (the rest later, through the stream)."""
        stats = self.stats
        if not self.started:
            self.started = self.config.bucket.clock()
            stats.pending.value += 1
            self.stream.on_finish(self._cancel)
        size = len(data)
        stats.incoming_size.value = size
        stats.incoming_total_size.value += size
        allowed = self.limiter.write(data)
        if allowed is None:
            return b""
        self._account(len(allowed), self.limiter.ticking)
        return allowed

    def hold_end(self, then: Callable[[], None]) -> bool:
        """The source ended: False when the end may go on now, True when it waits (`then` is called after the
        last held bytes)."""
        if self.finished:
            return False
        if self.started:  # Envoy's codecs end a body with an empty piece, which sets the size gauges
            self.stats.incoming_size.value = 0
            if not self.limiter.ticking:
                self.stats.allowed_size.value = 0
        if self.limiter.end():
            self._finish()
            return False
        self.then = then
        return True

    def _account(self, size: int, again: bool) -> None:
        """Envoy's write_stats_cb for one look at the bucket; with bytes left, the next look a fill interval on."""
        stats = self.stats
        stats.allowed_size.value = size
        stats.allowed_total_size.value += size
        if again:
            stats.enforced.value += 1
            self.delay += int(self.config.fill_interval * 1000)
            if self.timer is None:
                self.timer = self.stream.conn.loop.call_later(self.config.fill_interval, self._tick)

    def _tick(self) -> None:
        self.timer = None
        stream = self.stream
        if stream.rs_state >= RS_DONE:
            return
        tick = self.limiter.tick()
        self._account(len(tick.data), tick.again)
        if tick.data:
            if self.response:
                stream.on_upstream_body(tick.data, paced=True)
                stream.on_upstream_flush()
            else:
                stream.last_activity = stream.conn.loop_time()
                stream.on_body(tick.data, paced=True)
                stream.flush_upstream()
        if tick.end and self.then is not None and stream.rs_state < RS_DONE:
            self._finish()
            then, self.then = self.then, None
            then()
            if not self.response:
                stream.flush_upstream()

    def _on_full(self, full: bool) -> None:
        self.stream.on_pacer_full(self.response, full)

    def _finish(self) -> None:
        """Envoy's updateStatsOn{Decode,Encode}Finish: the transfer's time, and the response's trailers."""
        self.finished = True
        if not self.started:
            return
        self.duration = duration = int((self.config.bucket.clock() - self.started) * 1000)
        self.started = 0.0
        self.stats.transfer_duration.record(duration)
        self.stats.pending.value -= 1
        if self.response and self.config.trailers:
            self._add_trailers()

    def _add_trailers(self) -> None:
        """The delay trailers that are not 0: the request's from its own pacer (none without a request body)."""
        stream = self.stream
        request = stream.request_pacer
        request_duration, request_delay = (request.duration, request.delay) if isinstance(request, _Pacing) \
            else (0, 0)
        values = (request_duration, self.duration, request_delay, self.delay)
        added = [(name, b"%d" % value) for name, value in zip(self.config.trailer_names, values) if value > 0]
        if added:
            stream.resp_trailers = (stream.resp_trailers or []) + added

    def _cancel(self) -> None:
        """The stream ended (maybe unfinished): no more looks, and it is no longer pending."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.started:
            self.started = 0.0
            self.stats.pending.value -= 1


#: how many identical filters (HCM stat prefix, name, config) this worker built: the next one's bucket key
_occurrences: dict[bytes, itertools.count] = {}


class BandwidthLimitFilter:
    """One HCM's bandwidth_limit filter in one worker."""

    def __init__(self, name: str, config: BandwidthLimit, stat_prefix: str, stats: Any, loop: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        key = b"|".join((stat_prefix.encode(), name.encode(), repr(config).encode()))
        own_key = key + b"|%d" % next(_occurrences.setdefault(key, itertools.count()))
        loaded = clock()  # the worker builds its filters as the config loads (per-route configs count from then too)
        own = _Config(config, own_key, stats, clock, loaded)

        def compile(cfg: BandwidthLimit) -> _Config:
            if cfg is config:
                return own
            # a route's bucket is known across workers by its config
            return _Config(cfg, b"|".join((stat_prefix.encode(), name.encode(), b"route", repr(cfg).encode())),
                           stats, clock, loaded)

        self.configs = MostSpecific(name, config, compile)

    def decode_headers(self, stream: Any) -> bool:
        config = self.configs.of(stream)
        if config.mode & REQUEST:
            config.request_stats.enabled.value += 1
            if stream.req_length or stream.req_chunked:  # a request without a body has nothing to pace
                stream.request_pacer = _Pacing(stream, config, False)
        return True

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        config = self.configs.of(stream)
        if config.mode & RESPONSE:
            config.response_stats.enabled.value += 1
            if not stream.is_head and status != 204 and status != 304:  # these have no body
                stream.response_pacer = _Pacing(stream, config, True)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, BandwidthLimit)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, BandwidthLimitPerRoute)
register_filter(BandwidthLimit, BandwidthLimitFilter)

"""envoy.filters.http.cache and envoy.filters.http.cache_v2: responses kept in memory and served again, as Envoy.

The caching rules are in filters/common/http_cache.py. What the filter does with a request, as Envoy 1.40's
filters do (both versions behaved alike in every scenario tried; tests/proxy/test_proxy_http_cache.py):

- A request that cannot be served from the cache goes on down the filter chain untouched.
- A fresh stored response is sent from the cache with its `age` (a range of it as 206, or 416: v1 with the
  stored headers and content-range, v2 with a content-length only, as observed); flag RFCF, details
  `cache.response_from_cache_filter`. v2 asks upstream for the whole response (no `range`) and serves the range
  from what it has just stored.
- Otherwise (nothing stored, or the stored response must be validated) the filter sends the request upstream
  itself, through the worker's async client to the route's cluster (v2: `override_upstream_cluster` instead), as
  Envoy's cache filter does: the request as the connection manager passed it (no route rewrites or route header
  rules, the client's Host and path), with the validation headers when validating and what Envoy's internal client
  adds (`x-envoy-internal: true`, 192.0.2.2 appended to x-forwarded-for). A 304 to a validation sends the stored
  response under the 304's headers (and updates the stored ones); any other answer is stored if cacheable and
  relayed with `x-envoy-upstream-service-time` (v2 stores no response that varies: Envoy 1.40's v2 has no Vary
  support yet and treats one as not cacheable; v1 stores each variant, as its code intends, where Envoy 1.40's v1
  crashed with SIGSEGV, observed). No route: 404 `cache_no_route`; no cluster: 503
  `cache_no_cluster`; the upstream fails: 503 `cache_upstream_reset`.
- v2 counts Envoy's `cache.event.cache_label.<label>.event_type.{hit, miss, validate, failed_validation,
  uncacheable, upstream_reset, lookup_error}` and `cache.cache_sessions_entries.cache_label.<label>`.

Storage: SimpleHttpCacheConfig / SimpleHttpCacheV2Config, one store per worker process for each, shared by every
filter that names it (Envoy's is one per process, shared by its threads; pylon's workers do not share theirs).
The file system stores (cache_file_system.py, filters/common/fs_http_cache.py) are shared by every worker through
their directory; a lookup there answers later, from the store's thread pool.

Departures: the upstream's answer is collected whole before it is relayed (Envoy streams it through while
storing it); v2's request collapsing (concurrent misses for one key wait for one upstream request) is not done,
each goes upstream; the store is bounded (least recently used dropped, see http_cache.SimpleCache). Refused by
name: `key_creator_params` and a non-zero `max_body_bytes` (Envoy 1.40's filters parse them but never read them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from pylon.config import registry
from pylon.config.envoy import (
    EnvoyStruct, NotSupportedYet, StringMatcher, UInt32, _resolve_typed_field,
)
from pylon.config.errors import FieldError
from pylon.extensions.filters.common import http_cache as hc
from pylon.proxy import async_client
from pylon.proxy.filters.http import register_filter
from pylon.proxy.mirror import shadow_headers, shadow_tail
from pylon.proxy.router import _compile_string_matcher
from pylon.proxy.stream_states import RS_DONE
from pylon.regex import get_engine

CACHE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
CACHE_V2_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config"
SIMPLE_TYPE = "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
SIMPLE_V2_TYPE = "type.googleapis.com/envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config"
FLAG = "RFCF"
FROM_CACHE = "cache.response_from_cache_filter"
EVENTS = ("hit", "miss", "validate", "failed_validation", "uncacheable", "upstream_reset", "lookup_error")


class SimpleHttpCacheConfig(EnvoyStruct, kw_only=True):
    """extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig: the in-memory store (no fields)."""

    #: v2's stats label (Envoy names it after the store's extension)
    label: ClassVar[str] = "envoy_extensions_http_cache_simple"


class SimpleHttpCacheV2Config(EnvoyStruct, kw_only=True):
    """extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config: the in-memory store (no fields)."""

    label: ClassVar[str] = "envoy_extensions_http_cache_v2_simple"


class CacheConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.cache.v3.CacheConfig."""

    storage: ClassVar[str] = registry.HTTP_CACHE
    typed_config: Any = None
    disabled: bool | None = None
    allowed_vary_headers: list[StringMatcher] = []
    key_creator_params: NotSupportedYet | None = None
    max_body_bytes: UInt32 = 0
    ignore_request_cache_control_header: bool = False

    def __post_init__(self) -> None:
        if self.max_body_bytes:
            raise FieldError("max_body_bytes", "not supported yet")
        if self.typed_config is None:
            if not self.disabled:
                raise FieldError("typed_config", "at least one of typed_config or disabled must be set")
            return
        _resolve_typed_field(self, "typed_config", self.storage)


class CacheV2Config(CacheConfig, kw_only=True):
    """extensions.filters.http.cache_v2.v3.CacheV2Config: v1's fields and the cluster misses go to."""

    storage: ClassVar[str] = registry.HTTP_CACHE_V2
    override_upstream_cluster: str = ""


#: a worker's stores, one per storage config type (the process's, since a worker is a process)
_STORES: dict[type, hc.SimpleCache] = {}


class CacheFilter:
    """One HCM's cache filter in one worker."""

    def __init__(self, name: str, config: CacheConfig, stat_prefix: str, stats: Any, loop: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.clock = clock
        storage = type(config.typed_config) if not config.disabled else None
        self.store: Any = None
        if storage is not None:
            open_store = getattr(config.typed_config, "open_store", None)  # the file system's: per path
            self.store = open_store(loop, stats) if open_store else _STORES.setdefault(storage, hc.SimpleCache())
        engine = get_engine()
        matchers = [_compile_string_matcher(m, engine, as_bytes=True) for m in config.allowed_vary_headers]
        self.vary_allowed: Callable[[bytes], bool] = lambda name: any(match(name) for match in matchers)
        self.ignore_request_cache_control = config.ignore_request_cache_control_header
        self.cluster_override = getattr(config, "override_upstream_cluster", "")
        self.events: dict[str, Any] | None = None
        self.entries: Any = None
        if isinstance(config, CacheV2Config) and storage is not None:
            label = storage.label  # type: ignore[attr-defined]
            self.events = {event: stats.counter(f"cache.event.cache_label.{label}.event_type.{event}")
                           for event in EVENTS}
            self.entries = stats.gauge(f"cache.cache_sessions_entries.cache_label.{label}")
            for gauge in ("cache_sessions_subscribers", "upstream_buffered_bytes"):  # 0: nothing waits, nothing
                stats.gauge(f"cache.{gauge}.cache_label.{label}")  # is streamed (collected whole instead)

    def _count(self, event: str) -> None:
        if self.events is not None:
            self.events[event].inc()

    def decode_headers(self, stream: Any) -> bool:
        store = self.store
        if store is None:
            return True
        request = stream.headers
        if not hc.can_serve_from_cache(stream.method, request, bool(stream.req_length or stream.req_chunked)):
            self._count("uncacheable")
            return True
        control = hc.RequestCacheControl() if self.ignore_request_cache_control else hc.RequestCacheControl.of(request)
        key = (stream.conn.scheme, stream.authority, stream.path)
        if isinstance(store, hc.SimpleCache):
            self._looked_up(stream, key, control, *store.lookup(key, request, self.vary_allowed))
        else:  # the file system's answers later, from its thread pool

            def found(entry: hc.Entry | None, at: object) -> None:
                if stream.rs_state < RS_DONE:
                    self._looked_up(stream, key, control, entry, at)
            store.lookup(key, request, self.vary_allowed, found)
        return False

    def _looked_up(self, stream: Any, key: hc.Key, control: hc.RequestCacheControl, entry: hc.Entry | None,
                   at: object) -> None:
        """Serve the entry found under `at`, or go upstream to validate it or for want of one."""
        if entry is None:
            self._count("miss")
            return self._upstream(stream, key, None, None, control)
        age = hc.age_of(entry.headers, entry.response_time, self.clock())
        if hc.requires_validation(control, entry.headers, age):
            self._count("validate")
            return self._upstream(stream, key, entry, at, control)
        self._count("hit")
        self._serve(stream, entry, age)

    def _serve(self, stream: Any, entry: hc.Entry, age: int | None, details: str = FROM_CACHE) -> None:
        """A stored response (or the range of it the request asks for), with its `age` (None: none, v2's answer
        to the request that stored it)."""
        status, headers, body = entry.status, list(entry.headers), entry.body
        if age is not None:
            hc.set_header(headers, b"age", b"%d" % age)
        ranges = hc.byte_ranges(stream.headers, len(body))
        if ranges is not None and not ranges.satisfiable:
            status, body = 416, b""
            if self.events is not None:  # v2 answers with no stored header at all (observed)
                headers = [(b"content-length", b"0")]
            else:
                headers.append((b"content-range", b"bytes */%d" % len(entry.body)))
                hc.set_header(headers, b"content-length", b"0")
        elif ranges is not None and len(ranges.ranges) == 1:
            begin, end = ranges.ranges[0]
            status, body = 206, body[begin:end]
            headers.append((b"content-range", b"bytes %d-%d/%d" % (begin, end - 1, len(entry.body))))
            hc.set_header(headers, b"content-length", b"%d" % (end - begin))
        stream.respond_with(status, headers, body, details, FLAG if details == FROM_CACHE else "")

    def _upstream(self, stream: Any, key: hc.Key, entry: hc.Entry | None, at: object,
                  control: hc.RequestCacheControl) -> None:
        """The request goes upstream from the filter (to validate `entry`, stored under `at`, or for want of
        one)."""
        route = stream.route
        if route is None or route.kind != "cluster":
            return stream.respond_from_filter(404, b"", [], "cache_no_route")
        cluster = self.cluster_override or route.pick_cluster(stream)
        if cluster not in stream.hcm.clusters:
            return stream.respond_from_filter(503, b"", [], "cache_no_cluster")
        forward = stream.forwarded_headers()
        if self.events is not None:  # v2 fetches the whole response, and cuts the range out of it itself
            forward = [pair for pair in forward if pair[0] != b"range"]
        if entry is not None:
            etag = hc.header(entry.headers, b"etag")
            if etag is not None:
                forward.append((b"if-none-match", etag))
            modified = hc.header(entry.headers, b"last-modified")
            since = modified if hc.http_time(modified) is not None else hc.header(entry.headers, b"date")
            forward.append((b"if-modified-since", since or b""))
        headers, has_xff = shadow_headers(forward, None)
        loop = stream.conn.loop
        started = loop.time()
        request = list(stream.headers)

        def done(response: async_client.Response | None, reason: str) -> None:
            if stream.rs_state >= RS_DONE:
                return
            if response is None:
                self._count("upstream_reset")
                return stream.respond_from_filter(503, b"", [], "cache_upstream_reset")
            got = list(response.headers)
            if not stream.hcm.suppress_envoy_headers:
                # set, as Envoy's router sets it (one from a proxy behind, an internal listener's, is replaced)
                hc.set_header(got, b"x-envoy-upstream-service-time", b"%d" % int((loop.time() - started) * 1000))
            if entry is not None and response.status == 304:
                return self._validated(stream, entry, at, got)
            if entry is not None:
                self._count("failed_validation")
            if not control.no_store and stream.method != b"HEAD" and \
                    hc.is_cacheable_response(response.status, got, self.vary_allowed) and \
                    not (self.events is not None and hc.vary_names(got) is not None):
                assert self.store is not None
                stored = hc.Entry(response.status, list(got), response.body, self.clock())
                self.store.insert(key, request, self.vary_allowed, stored)
                if self.entries is not None:
                    self.entries.set(len(self.store))
                    return self._serve(stream, stored, None, "via_upstream")  # v2 serves what it stored
            stream.respond_with(response.status, got, response.body, "via_upstream")

        timeout = route.timeout or 0.0
        call = async_client.send(stream.hcm.worker, cluster, stream.method, stream.path, stream.authority,
                                 headers, b"", timeout, done, empty_length=False, extra=shadow_tail(None, has_xff))
        if call is not None:
            stream.on_finish(call.cancel)

    def _validated(self, stream: Any, entry: hc.Entry, at: object, not_modified: hc.Headers) -> None:
        """A 304 to a validation: the stored response goes out under its headers, and is refreshed by them when
        its etag is the stored one (or it has none)."""
        served = hc.validated_response(entry.headers, not_modified)
        etag = hc.header(not_modified, b"etag")
        if etag is None or etag == hc.header(entry.headers, b"etag"):
            entry.headers = hc.updated_headers(entry.headers, served)
            entry.response_time = self.clock()
            if not isinstance(self.store, hc.SimpleCache):  # a file's copy is written again (in memory: in place)
                self.store.store(at, entry, new=False)
        stream.respond_with(entry.status, served, entry.body, FROM_CACHE, FLAG)


registry.register_typed(registry.HTTP_CACHE, SIMPLE_TYPE, SimpleHttpCacheConfig)
registry.register_typed(registry.HTTP_CACHE_V2, SIMPLE_V2_TYPE, SimpleHttpCacheV2Config)
registry.register_typed(registry.HTTP_FILTER, CACHE_TYPE, CacheConfig)
registry.register_typed(registry.HTTP_FILTER, CACHE_V2_TYPE, CacheV2Config)
register_filter(CacheConfig, CacheFilter)
register_filter(CacheV2Config, CacheFilter)

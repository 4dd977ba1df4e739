"""envoy.filters.http.csrf: refuse state-changing requests whose origin is not the host they are sent to.

What Envoy 1.40 does (its csrf_filter.cc), checked beside it
(tests/proxy/test_proxy_csrf.py):

- The policy is the most specific `typed_per_filter_config` (route, virtual
  host, route configuration), else the filter's own `CsrfPolicy`.
- With neither `filter_enabled` nor `shadow_enabled` hitting (their fractions,
  drawn per request), or a method other than POST, PUT, DELETE and PATCH, the
  request goes on uncounted.
- The source origin is the Origin header's host[:port] (of an absolute URL;
  the raw value when it is none), else the Referer's. The target origin is the
  Host's. An empty source counts `csrf.missing_source_origin` (and nothing
  else: Envoy 1.40 counts no `request_invalid` for it); a source that is
  neither the target nor matched by an `additional_origins` matcher counts
  `csrf.request_invalid`; otherwise `csrf.request_valid` and the request goes
  on.
- An invalid request is refused with 403 "Invalid origin" (details
  `csrf_origin_mismatch`) when the filter is enabled; in shadow mode only
  (shadow hits, filter does not) it goes on, counted.

Stats are `http.<stat_prefix>.csrf.*`. Runtime keys never apply (pylon's
runtime refuses keys it does not implement): the default fractions decide.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable
from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, RuntimeFractionalPercent, StringMatcher
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
INVALID_ORIGIN = lr.LocalReply(403, "-", b"Invalid origin", "csrf_origin_mismatch")
_MODIFYING = frozenset((b"POST", b"PUT", b"DELETE", b"PATCH"))
# An absolute URL as Envoy's URL parser takes it: scheme "://" authority, then path, query or fragment.
_ABSOLUTE_URL = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#@]+)(?:[/?#].*)?", re.DOTALL)


class CsrfPolicy(EnvoyStruct, kw_only=True, weakref=True):
    """extensions.filters.http.csrf.v3.CsrfPolicy: the filter's config and its per-route config alike."""

    filter_enabled: RuntimeFractionalPercent
    shadow_enabled: RuntimeFractionalPercent | None = None
    additional_origins: list[StringMatcher] = []


def host_and_port(value: bytes) -> bytes:
    """The host[:port] of an absolute URL, or `value` itself when it is none (Envoy's hostAndPort)."""
    match = _ABSOLUTE_URL.fullmatch(value)
    return match.group(1) if match else value


def _first(headers: Any, name: bytes) -> bytes:
    return next((value for key, value in headers if key == name), b"")


def source_origin(headers: Any) -> bytes:
    """Where the request says it comes from: Origin, else Referer, as host[:port] (b"" when neither says)."""
    origin = _first(headers, b"origin")
    if origin:
        origin = host_and_port(origin)
        if origin:
            return origin
    referer = _first(headers, b"referer")
    return host_and_port(referer) if referer else b""


class _Compiled:
    """A policy's fractions and its additional origins as byte matchers (compiled once per policy)."""

    def __init__(self, policy: CsrfPolicy) -> None:
        self.enabled = policy.filter_enabled.default_value.fraction
        self.shadow = 0.0 if policy.shadow_enabled is None else policy.shadow_enabled.default_value.fraction
        engine = get_engine()
        self.origins = tuple(_compile_string_matcher(m, engine, as_bytes=True) for m in policy.additional_origins)


def _hits(fraction: float, chance: Callable[[], float]) -> bool:
    return fraction >= 1.0 or (fraction > 0.0 and chance() < fraction)


class CsrfFilter:
    """One HCM's CSRF filter in one worker."""

    def __init__(self, name: str, config: CsrfPolicy, stat_prefix: str, stats: Any, loop: Any,
                 chance: Callable[[], float] = random.random) -> None:
        self.name = name
        self.chance = chance
        self.default = _Compiled(config)
        # per-route policies compiled, by identity; dropped with the route table that holds them
        self._compiled: dict[int, tuple[weakref.ref[CsrfPolicy], _Compiled]] = {}
        prefix = f"http.{stat_prefix}.csrf."
        self.missing_source_origin = stats.counter(prefix + "missing_source_origin")
        self.request_invalid = stats.counter(prefix + "request_invalid")
        self.request_valid = stats.counter(prefix + "request_valid")

    def decode_headers(self, stream: Any) -> bool:
        policy = self._policy(stream)
        enabled = _hits(policy.enabled, self.chance)
        if not enabled and not _hits(policy.shadow, self.chance):
            return True
        if stream.method not in _MODIFYING:
            return True
        source = source_origin(stream.headers)
        if not source:
            self.missing_source_origin.inc()
        elif source != self._target(stream) and not any(match(source) for match in policy.origins):
            self.request_invalid.inc()
        else:
            self.request_valid.inc()
            return True
        if not enabled:
            return True  # shadow mode: counted only
        stream.local(INVALID_ORIGIN)
        return False

    @staticmethod
    def _target(stream: Any) -> bytes:
        """Where the request goes: its Host's host[:port]."""
        return host_and_port(b"http://" + stream.authority) if stream.authority else b""

    def _policy(self, stream: Any) -> _Compiled:
        route = stream.route
        config = route.filter_config(self.name) if route is not None else None
        if not isinstance(config, CsrfPolicy):
            return self.default
        key = id(config)
        cached = self._compiled.get(key)
        if cached is None or cached[0]() is not config:
            cached = self._compiled[key] = (weakref.ref(config, lambda _: self._compiled.pop(key, None)),
                                            _Compiled(config))
        return cached[1]


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, CsrfPolicy)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, CsrfPolicy)
register_filter(CsrfPolicy, CsrfFilter)

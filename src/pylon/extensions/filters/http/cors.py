"""envoy.filters.http.cors: Cross-Origin Resource Sharing, as Istio's VirtualService `corsPolicy` configures it.

The filter's own config (`Cors`) has no fields: the policies are per route,
in `typed_per_filter_config` under the filter's name (a `CorsPolicy`) on the
route, its virtual host and the route configuration. What Envoy 1.40 does with
them, read from its source and checked request by request beside it
(tests/proxy/test_proxy_cors.py):

- The levels are merged field by field: each field comes from the most
  specific level that sets it (a non-empty origin list or text, a set bool),
  while `filter_enabled` and `shadow_enabled` come from the most specific
  level alone. Without any level, the deprecated `cors` of the route's action
  and then of its virtual host are used the same way.
- Only routes to clusters: no route, a direct response or a redirect, and the
  filter does nothing (counts nothing).
- A request without an `Origin` (or an empty one) is left alone and not
  counted. Otherwise the origin is checked against `allow_origin_string_match`
  (a matcher matching "*" allows every origin) and counted
  `http.<stat_prefix>.cors.origin_valid` / `origin_invalid`; in shadow mode
  (shadow enabled, filter not) that is all.
- A preflight (OPTIONS with an Origin and an Access-Control-Request-Method)
  from an allowed origin is answered by the proxy: 200, no body, details
  `cors_response`, with access-control-allow-origin (the origin),
  -allow-credentials `true` when allowed, -allow-methods (`*`: the requested
  method), -allow-headers (`*`: the requested headers, empty if none),
  -max-age, and -allow-private-network `true` when allowed and the request's
  access-control-request-private-network is exactly `true`. A preflight from
  another origin goes upstream when `forward_not_matching_preflights` (the
  default), else it gets the same answer without access-control-allow-origin.
- Any other request from an allowed origin goes on, and its response (the
  upstream's or a local reply) gets access-control-allow-origin, -allow-credentials
  and -expose-headers (replacing the upstream's); the preflight answer passes
  that too, so it carries -expose-headers as Envoy's does.

Departure: Envoy draws its runtime fractions for `filter_enabled` and
`shadow_enabled` again each time it asks (up to twice per request); pylon
draws each once per request. Their `runtime_key`s never apply: pylon's
runtime refuses keys it does not implement, so the default value is always
the fraction (as in Envoy without the key).
"""

from __future__ import annotations

import functools
import logging
import random
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pylon.config import registry
from pylon.config.envoy import CorsPolicy, EnvoyStruct, RuntimeFractionalPercent
from pylon.proxy.filters.http import register_filter
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
#: %RESPONSE_CODE_DETAILS% of a preflight the filter answers
DETAILS = "cors_response"

log = logging.getLogger("pylon.cors")

Headers = Sequence[tuple[bytes, bytes]]


class Cors(EnvoyStruct, kw_only=True):
    """extensions.filters.http.cors.v3.Cors: no fields; the policies are per route (`CorsPolicy`)."""


class CorsPerRoute(CorsPolicy, kw_only=True, weakref=True):
    """extensions.filters.http.cors.v3.CorsPolicy: config.route.v3.CorsPolicy's fields under the filter's own type
    (a subclass so that the route's deprecated `cors`, the other message, is not re-encoded with this @type)."""


class Policy(NamedTuple):
    """One route's effective policy: its levels merged as Envoy's filter reads them, texts as header bytes."""

    origins: tuple[Callable[[bytes], bool], ...]
    allow_any_origin: bool  # a matcher matches "*"
    allow_methods: bytes
    allow_headers: bytes
    expose_headers: bytes
    max_age: bytes
    allow_credentials: bool
    allow_private_network_access: bool
    forward_not_matching_preflights: bool
    enabled: float | None  # the fraction of requests enforced; None: all (filter_enabled unset)
    shadow: float  # the fraction evaluated only; 0.0 when shadow_enabled is unset

    @classmethod
    def of(cls, policies: Sequence[CorsPolicy]) -> Policy:
        """Merge `policies`, most specific first: each field from the first that sets it."""
        origins = next((p.allow_origin_string_match for p in policies if p.allow_origin_string_match), [])
        engine = get_engine()
        matchers = tuple(_compile_string_matcher(m, engine, as_bytes=True) for m in origins)

        def text(field: str) -> bytes:
            return next((getattr(p, field) for p in policies if getattr(p, field)), "").encode()

        def flag(field: str, default: bool) -> bool:
            return next((getattr(p, field) for p in policies if getattr(p, field) is not None), default)

        first = policies[0]
        return cls(matchers, any(match(b"*") for match in matchers), text("allow_methods"), text("allow_headers"),
                   text("expose_headers"), text("max_age"), flag("allow_credentials", False),
                   flag("allow_private_network_access", False), flag("forward_not_matching_preflights", True),
                   None if first.filter_enabled is None else _fraction(first.filter_enabled),
                   0.0 if first.shadow_enabled is None else _fraction(first.shadow_enabled))

    def allows(self, origin: bytes) -> bool:
        return self.allow_any_origin or any(match(origin) for match in self.origins)

    def preflight_answer(self, origin: bytes | None, request_method: bytes, headers: Headers) -> list[tuple[bytes, bytes]]:
        """The headers of the proxy's answer to a preflight (`origin` None: not an allowed one)."""
        out = []
        if origin is not None:
            out.append((b"access-control-allow-origin", origin))
        if self.allow_credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        if self.allow_methods:
            out.append((b"access-control-allow-methods",
                        request_method if self.allow_methods == b"*" else self.allow_methods))
        if self.allow_headers:
            out.append((b"access-control-allow-headers", inline_value(headers, b"access-control-request-headers")
                        if self.allow_headers == b"*" else self.allow_headers))
        if self.max_age:
            out.append((b"access-control-max-age", self.max_age))
        if self.allow_private_network_access and \
                inline_value(headers, b"access-control-request-private-network") == b"true":
            out.append((b"access-control-allow-private-network", b"true"))
        return out


def _fraction(percent: RuntimeFractionalPercent) -> float:
    return percent.default_value.fraction


def _hits(fraction: float, chance: Callable[[], float]) -> bool:
    return fraction >= 1.0 or (fraction > 0.0 and chance() < fraction)


def inline_value(headers: Headers, name: bytes) -> bytes:
    """A header Envoy keeps inline (origin, access-control-request-*): its lines as one value, joined with ","."""
    values = [value for key, value in headers if key == name and value]
    return values[0] if len(values) == 1 else b",".join(values)


class Decision(NamedTuple):
    """What the filter does with one request's headers."""

    origin_valid: bool  # counted as origin_valid, else origin_invalid
    latched: bytes | None  # the allowed origin the response will carry (enforced requests only)
    preflight: list[tuple[bytes, bytes]] | None  # answer the request with these headers


def decide(policy: Policy, method: bytes, headers: Headers, chance: Callable[[], float] = random.random
           ) -> Decision | None:
    """Envoy's CORS decision for a request on a route with `policy`; None: not a CORS request (nothing counted)."""
    enforced = policy.enabled is None or _hits(policy.enabled, chance)
    if not enforced and not _hits(policy.shadow, chance):
        return None
    origin = inline_value(headers, b"origin")
    if not origin:
        return None
    valid = policy.allows(origin)
    if not enforced:
        return Decision(valid, None, None)  # shadow mode: counted only
    latched = origin if valid else None
    if method != b"OPTIONS":
        return Decision(valid, latched, None)
    request_method = inline_value(headers, b"access-control-request-method")
    if not request_method or (not valid and policy.forward_not_matching_preflights):
        return Decision(valid, latched, None)
    return Decision(valid, latched, policy.preflight_answer(latched, request_method, headers))


class CorsFilter:
    """One HCM's CORS filter in one worker."""

    def __init__(self, name: str, config: Cors, stat_prefix: str, stats: Any, loop: Any,
                 chance: Callable[[], float] = random.random) -> None:
        self.name = name
        self.chance = chance
        prefix = f"http.{stat_prefix}.cors."
        self.origin_valid = stats.counter(prefix + "origin_valid")
        self.origin_invalid = stats.counter(prefix + "origin_invalid")
        #: streams whose response gets the CORS headers: their allowed origin and policy (until they end)
        self._latched: dict[Any, tuple[bytes, Policy]] = {}
        # merged policies by the identities of their levels, dropped with the route table that holds them
        self._policies: dict[tuple[int, ...], tuple[tuple[weakref.ref[CorsPolicy], ...], Policy]] = {}
        self._wrong_type_logged: set[str] = set()

    def decode_headers(self, stream: Any) -> bool:
        route = stream.route
        if route is None or route.kind != "cluster":
            return True  # Envoy's filter needs a route entry: direct responses and redirects have none
        policy = self._policy(route)
        if policy is None:
            return True
        decision = decide(policy, stream.method, stream.headers, self.chance)
        if decision is None:
            return True
        (self.origin_valid if decision.origin_valid else self.origin_invalid).inc()
        if decision.latched is not None:
            self._latched[stream] = (decision.latched, policy)
            stream.on_finish(functools.partial(self._latched.pop, stream, None))
        if decision.preflight is None:
            return True
        stream.respond_from_filter(200, b"", decision.preflight, DETAILS)
        return False

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        latched = self._latched.get(stream)
        if latched is None:
            return
        origin, policy = latched
        headers.set(b"access-control-allow-origin", origin)
        if policy.allow_credentials:
            headers.set(b"access-control-allow-credentials", b"true")
        if policy.expose_headers:
            headers.set(b"access-control-expose-headers", policy.expose_headers)

    def _policy(self, route: Any) -> Policy | None:
        """The route's merged policy (per-route configs, else its deprecated `cors`), or None without any."""
        levels = route.filter_configs_of(self.name) if route.filter_levels else ()
        if levels and not all(isinstance(level, CorsPolicy) for level in levels):
            levels = self._only_policies(route, levels)
        if not levels:
            levels = route.cors_policies
            if not levels:
                return None
        key = tuple(map(id, levels))
        cached = self._policies.get(key)
        if cached is not None and all(ref() is level for ref, level in zip(cached[0], levels)):
            return cached[1]
        policy = Policy.of(levels)
        refs = tuple(weakref.ref(level, lambda _: self._policies.pop(key, None)) for level in levels)
        self._policies[key] = (refs, policy)
        return policy

    def _only_policies(self, route: Any, levels: list[Any]) -> list[CorsPolicy]:
        """Another filter's per-route config under this filter's name: Envoy refuses the config; the loader cannot
        tell which filters a route table's HCM has, so the filter leaves such a level out (logged once)."""
        wrong = [type(level).__name__ for level in levels if not isinstance(level, CorsPolicy)]
        if route.name not in self._wrong_type_logged:
            self._wrong_type_logged.add(route.name)
            log.error("route %r: typed_per_filter_config[%s] is a %s, not a CorsPolicy: left out",
                      route.name, self.name, ", ".join(wrong))
        return [level for level in levels if isinstance(level, CorsPolicy)]


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Cors)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, CorsPerRoute)
register_filter(Cors, CorsFilter)

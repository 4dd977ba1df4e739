"""envoy.filters.http.rbac: allow or deny requests by RBAC policies, as Istio's AuthorizationPolicies configure it.

The decisions are the shared engine's (`filters/common/rbac.py`); this module
is what Envoy 1.40's HTTP filter does around them, as observed:

- A denied request is answered 403 `RBAC: access denied` (text/plain), with
  response details `rbac_access_denied_matched_policy[<policy>]` (`[none]`
  when an ALLOW config matched nothing; whitespace in the name becomes `_`)
  and no response flag (`%RESPONSE_FLAGS%` is `-`). LOG never denies.
- `shadow_rules` are evaluated and counted only (Envoy also writes the result
  as dynamic metadata, which pylon's RBAC filters do not write).
- Stats, created at 0 with the filter: `http.<stat_prefix>.rbac.<rules_stat_prefix>{allowed,denied}`
  and `http.<stat_prefix>.rbac.<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}`
  (a prefix gets a "." unless it ends with one). LOG counts `allowed`. With
  `track_per_rule_stats`, the matched policy's `...policy.<name>.{allowed,denied}`
  and `...policy.<name>.{shadow_allowed,shadow_denied}`, created on first use.
  Without `rules` and `shadow_rules` the filter does nothing and counts nothing.
- Per route (`typed_per_filter_config` keyed by the filter's name, an
  `RBACPerRoute`): its `rbac` replaces both rule sets and `track_per_rule_stats`
  for that route; without `rbac`, or with an empty one, the filter does nothing
  there. Its stat prefixes are not used: stats keep the filter's names (so,
  as in Envoy, a per-route `rules_stat_prefix` changes nothing). An RBAC (not
  RBACPerRoute) there is refused when the config loads, as in Envoy; another
  filter's per-route config under this filter's name makes Envoy refuse the
  config too, which the loader cannot tell yet: the filter denies such a
  route's requests (logged), failing closed.
- What the rules see of the request is what Envoy's filters see, after its
  connection manager: the hop-by-hop headers (connection, keep-alive,
  proxy-connection, transfer-encoding) and the headers `connection` names are
  gone. `remote_ip` is the client the connection manager trusts (the peer, or
  an x-forwarded-for entry by use_remote_address / xff_num_trusted_hops, as
  `HcmRuntime.trusted_client`; an entry that is not an IP, such as `ip:port`,
  means the peer, as in Envoy).

`matcher` and `shadow_matcher` (the unified matcher API with RBAC actions) decide
instead of the rules, as Envoy's (see `filters/common/rbac_matcher.py`).

Refused by name: header matchers on the request headers pylon's connection manager sets,
replaces or answers only after its filters ran while Envoy's does so before
(x-forwarded-for, x-forwarded-proto, x-request-id, x-forwarded-client-cert,
via, upgrade, expect and every x-envoy-* header): matching on them would not
see what Envoy's RBAC sees.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, NamedTuple

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError, join_path
from pylon.extensions.filters.common import rbac as common
from pylon.extensions.filters.common import rbac_matcher
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.filters.upstream import UpstreamHead, register_upstream_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
DENIED_BODY = b"RBAC: access denied"

log = logging.getLogger("pylon.rbac")

#: Request headers Envoy's connection manager strips before any filter runs (observed with Envoy 1.40).
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding"})
#: Request headers pylon's connection manager settles only after its filters ran (Envoy's: before them).
_SETTLED_AFTER_FILTERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-request-id", "x-forwarded-client-cert",
                                    "via", "upgrade", "expect"})  # fmt: skip


class RBAC(EnvoyStruct, kw_only=True):
    """extensions.filters.http.rbac.v3.RBAC."""

    rules: common.RBAC | None = None
    rules_stat_prefix: str = ""
    #: xds.type.matcher.v3.Matcher trees (rbac_matcher.decode_field in `__post_init__`)
    matcher: Any = None
    shadow_rules: common.RBAC | None = None
    shadow_matcher: Any = None
    shadow_rules_stat_prefix: str = ""
    track_per_rule_stats: bool = False

    def __post_init__(self) -> None:
        headers: list[tuple[str, str]] = []
        for field in ("rules", "shadow_rules"):
            rules = getattr(self, field)
            if rules is not None:
                headers += [(join_path(field, f"{path}.name"), header.name.lower())
                            for path, header in common.header_matchers(rules)]
        for field in ("matcher", "shadow_matcher"):
            if getattr(self, field) is not None:
                rbac_matcher.decode_field(self, field)
                headers += [(join_path(field, path), name)
                            for path, name in rbac_matcher.header_inputs(getattr(self, field))]
        for path, name in headers:
            if name in _SETTLED_AFTER_FILTERS or name.startswith("x-envoy-"):
                raise FieldError(path, f"{name}: Envoy's connection manager sets or strips it before the HTTP "
                                       "filters run, pylon's after them; matching on it is not supported yet")


class RBACPerRoute(EnvoyStruct, kw_only=True, weakref=True):
    """extensions.filters.http.rbac.v3.RBACPerRoute: a route's replacement of the filter's rules."""

    rbac: RBAC | None = None


class _Engines(NamedTuple):
    rules: common.Engine | rbac_matcher.MatcherEngine | None
    shadow: common.Engine | rbac_matcher.MatcherEngine | None
    track: bool

    @classmethod
    def of(cls, config: RBAC | None) -> _Engines:
        if config is None:
            return _DISABLED
        return cls(_engine(config.matcher, config.rules, "rules"),
                   _engine(config.shadow_matcher, config.shadow_rules, "shadow_rules"),
                   config.track_per_rule_stats)


def _engine(matcher: Any, rules: common.RBAC | None, what: str
            ) -> common.Engine | rbac_matcher.MatcherEngine | None:
    """The matcher's engine when there is one (Envoy ignores the rules then, and warns), else the rules'."""
    if matcher is not None:
        if rules is not None:
            log.warning("RBAC %s are ignored when a matcher is configured (as Envoy)", what)
        return rbac_matcher.MatcherEngine(matcher)
    return common.Engine(rules) if rules is not None else None


_DISABLED = _Engines(None, None, False)


def _as_filters_see_them(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers without the hop-by-hop ones and those `connection` nominates."""
    hidden: set[bytes] | None = None
    for name, value in headers:
        if name in _HOP_BY_HOP:
            if hidden is None:
                hidden = set(_HOP_BY_HOP)
            if name == b"connection":
                hidden.update(token.strip().lower() for token in value.split(b","))
    if hidden is None:
        return headers
    return [pair for pair in headers if pair[0] not in hidden]


class RbacFilter:
    """One HCM's RBAC filter in one worker."""

    def __init__(self, name: str, config: RBAC, stat_prefix: str, stats: Any, loop: Any) -> None:
        self._setup(name, config, f"http.{stat_prefix}.", stats)

    def _setup(self, name: str, config: RBAC, scope: str, stats: Any) -> None:
        self.name = name
        self.stats = stats
        base = f"{scope}rbac."
        self.rules_prefix = base + common.stat_part(config.rules_stat_prefix)
        self.shadow_prefix = base + common.stat_part(config.shadow_rules_stat_prefix)
        self.allowed = stats.counter(self.rules_prefix + "allowed")
        self.denied = stats.counter(self.rules_prefix + "denied")
        self.shadow_allowed = stats.counter(self.shadow_prefix + "shadow_allowed")
        self.shadow_denied = stats.counter(self.shadow_prefix + "shadow_denied")
        self.engines = _Engines.of(config)
        # per-route configs compiled once each, dropped with the route table that holds them
        self._per_route: dict[int, tuple[weakref.ref[RBACPerRoute], _Engines]] = {}

    def decode_headers(self, stream: Any) -> bool:
        reply = self._decide(stream, None)
        if reply is None:
            return True
        stream.local(reply)
        return False

    def _decide(self, stream: Any, head: UpstreamHead | None) -> lr.LocalReply | None:
        """The reply denying the request (None: it goes on), counted; `head`: the upstream request, when the
        filter runs upstream."""
        engines = self.engines
        if stream.route is not None:
            per_route = stream.route.filter_config(self.name)
            if per_route is not None:
                if not isinstance(per_route, RBACPerRoute):
                    return self._wrong_route_config(stream, per_route)
                engines = self._route_engines(per_route)
        rules, shadow = engines.rules, engines.shadow
        if rules is None and shadow is None:
            return None
        facts = self._facts(stream, head)
        if shadow is not None:
            decision = shadow.evaluate(facts)
            (self.shadow_allowed if decision.allowed else self.shadow_denied).inc()
            if engines.track and decision.policy is not None:
                result = "shadow_allowed" if decision.allowed else "shadow_denied"
                self.stats.counter(f"{self.shadow_prefix}policy.{decision.policy}.{result}").inc()
        if rules is None:
            return None
        decision = rules.evaluate(facts)
        (self.allowed if decision.allowed else self.denied).inc()
        if engines.track and decision.policy is not None:
            result = "allowed" if decision.allowed else "denied"
            self.stats.counter(f"{self.rules_prefix}policy.{decision.policy}.{result}").inc()
        if decision.allowed:
            return None
        return lr.LocalReply(403, "-", DENIED_BODY, common.denied_details(decision.policy))

    def _facts(self, stream: Any, head: UpstreamHead | None) -> common.Facts:
        """What the rules see: the request as the connection manager passed it on, or, upstream, as the router
        made it (Host and path rewritten, its headers added); the connection is the client's either way (Envoy
        1.40's upstream RBAC matches `destination_port` on the listener's port, observed)."""
        conn = stream.conn
        client = stream.hcm.trusted_client(stream)
        if head is None:
            request = common.Request(_as_filters_see_them(stream.headers), stream.method, stream.authority,
                                     stream.path, conn.scheme)
        else:
            request = common.Request(head.headers.items, head.method, head.authority, head.path, conn.scheme)
        return common.Facts(conn.connection_info(), request, client if isinstance(client, str) else None,
                            stream.dynamic_metadata)

    def _route_engines(self, per_route: RBACPerRoute) -> _Engines:
        key = id(per_route)
        cached = self._per_route.get(key)
        if cached is not None and cached[0]() is per_route:
            return cached[1]
        engines = _Engines.of(per_route.rbac)
        self._per_route[key] = (weakref.ref(per_route, lambda _: self._per_route.pop(key, None)), engines)
        return engines

    def _wrong_route_config(self, stream: Any, per_route: Any) -> lr.LocalReply:
        """A route config of another type under this filter's name: Envoy refuses the config; deny (fail closed)."""
        log.error("route %r: typed_per_filter_config[%s] is a %s, not an RBACPerRoute: request denied",
                  stream.route.name, self.name, type(per_route).__name__)
        return lr.LocalReply(403, "-", DENIED_BODY, common.denied_details(None))


class UpstreamRBAC(RBAC, kw_only=True):
    """The RBAC config in an upstream filter chain: its header matchers may name any header, those the connection
    manager and the router set included, since upstream the request is as they made it (pylon's as Envoy's)."""

    def __post_init__(self) -> None:
        pass


class UpstreamRbacFilter(RbacFilter):
    """The filter as an upstream HTTP filter: it decides on each attempt's request (the `x-envoy-attempt-count`
    it carries included) with the client's connection, and its 403 ends the request unretried (Envoy 1.40,
    observed); stats under the chain's scope (`cluster.<name>.rbac.*` for a cluster's chain)."""

    def __init__(self, name: str, config: UpstreamRBAC, scope: str, stats: Any) -> None:
        self._setup(name, config, scope, stats)

    def upstream_request(self, stream: Any, head: UpstreamHead) -> lr.LocalReply | None:
        return self._decide(stream, head)

    def upstream_response(self, stream: Any, status: int, headers: Any) -> None:
        pass


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, RBAC)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, RBACPerRoute)
register_filter(RBAC, RbacFilter)
registry.register_typed(registry.UPSTREAM_HTTP_FILTER, TYPE_URL, UpstreamRBAC)
register_upstream_filter(UpstreamRBAC, UpstreamRbacFilter)

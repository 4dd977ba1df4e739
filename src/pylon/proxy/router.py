"""The route table: virtual hosts, routes and matchers, compiled once from a RouteConfiguration.

Sans-IO: `RouteTable.match(authority, path, headers)` takes request values and
returns the precomputed `MatchedRoute` (or None for Envoy's 404 "NR"). All
parsing, lower-casing, regex compilation and header-rule compilation happens
in the constructor, so the per-request cost is one dict lookup for the virtual
host (memoised by authority) plus a tight first-match loop over the routes.

Regex routes are not tried one by one (Envoy's cost, ~30–50 ns per route
passed, grows with the table): a virtual host's `safe_regex` patterns are
compiled into one `PatternSet` of the configured engine (one Hyperscan
database, or one RE2::Set), scanned at most once per request, lazily, when
the first regex route is reached. Its candidates (ascending route order) are
then checked for header/query conditions in order, so the first route in
config order still wins. Runs of plain prefix/path routes keep their dict fast
path (`_PlainBlock`): a few dict probes cost less than folding them into the
scan. Building a table logs its time and the RSS it added.

Building stays well under a second at 5,000 regex routes, because a route
update builds the table in the supervisor (to validate it) and again in every
worker, blocking that worker's loop meanwhile: sets are asked for with
`background=True` (Hyperscan answers with RE2::Set until its database is
compiled, off the event loop), per-pattern checks are memoized by the engines,
and routes without header rules of their own share their HeaderOps.

Semantics are Envoy's (v3 `RouteConfiguration`), with one documented choice:

- Virtual host by domain, case-insensitively: exact, then suffix wildcards
  (`*.foo.com`, `*-bar.foo.com`; longest wins; the `*` must cover at least one
  character), then prefix wildcards (`foo.*`; longest wins), then `*`.
  A Host with a port (`foo.com:8080`) is first tried as is against exact and
  wildcard domains; if none matches, the port is stripped and the lookup
  repeated, and only then does `*` apply. (Envoy strips the port only when
  told to, e.g. `ignore_port_in_host_matching`.) The fallback lets
  `curl http://foo.com:8080/` reach the `foo.com` virtual host without
  listing `foo.com:8080`, and changes nothing for configs that list both
  forms, as Istio's do.
- Routes in order, first match wins. Path matchers see the path without query
  string or fragment; `case_sensitive: false` lower-cases both sides (ASCII).
- Header matchers follow Envoy 1.40's `HeaderUtility::matchHeaders` with
  `envoy.reloadable_features.match_headers_individually` at its default (on).
  A header sent several times is matched value by value: the matcher matches
  when one value does, and `invert_match` negates that (no value may match);
  "a" then "b" matches `exact: a` and `exact: b`, never `exact: "a,b"`. The
  exception is Envoy's inline request headers (`ENVOY_INLINE_REQUEST_HEADERS`:
  accept, user-agent, x-forwarded-for, ...), whose lines Envoy's codec folds
  into one value joined with "," (empty values skipped) before any matcher
  runs: they match as that one value. A missing header fails every matcher
  except `present_match: false`, and with `invert_match` only
  `present_match: true` matches it; `treat_missing_header_as_empty` matches
  it as "". `:authority` (and `host`, which is Envoy's name for it), `:path`,
  `:method` and `:scheme` read the request's values.
- Query parameters are matched on their raw (not percent-decoded) first value,
  as Envoy's route matcher does (`QueryParamsMulti::parseQueryString`).
- Header rules (`*_headers_to_add/remove`) run weighted cluster, route, virtual
  host, then route configuration: on overwrite the route configuration wins,
  Envoy's default (`most_specific_header_mutations_wins: false`).
- Rewrites and redirects follow Envoy's `rewritePathByPrefixOrRegex` and
  `Http::Utility::newUri`, including their treatment of ports and query strings.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from bisect import bisect_right
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Sequence

from pylon.config.datasource import read_bytes
from pylon.config.envoy import (
    ENVOY_LB, GRPC_RETRY_ON, FilterConfig, OmitCanaryHostsPredicate, OmitHostMetadataConfig, PreviousHostsPredicate,
)
from pylon.proxy import rate_limits
from pylon.proxy.cluster_specifier import HeaderPicker, build_picker, named_cluster
from pylon.proxy.grpc_timeout import StreamDuration
from pylon.proxy.headers import HeaderList, HeaderOps, compile_header_level
from pylon.proxy.local_reply import NO_CLUSTER, LocalReply
from pylon.proxy.upstream.subset import Criteria, criteria_of, merged_criteria, value_key
from pylon.regex import PatternSet, Regex, RegexEngine, get_engine

if TYPE_CHECKING:
    from pylon.config.envoy import (
        DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
        RouteAction, RouteConfiguration, RouteMatch, StringMatcher, VirtualHost,
    )
    from pylon.proxy.upstream.host import Host

__all__ = ["MatchedRoute", "MirrorRule", "RetryRule", "RouteTable", "is_grpc_request"]

log = logging.getLogger("pylon.router")

MAX_DIRECT_RESPONSE_BODY = 4096  # Envoy's default max_direct_response_body_size_bytes

REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301,
    "FOUND": 302,
    "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}

# Path match kinds, in the order the match loop tests them. A _REGEX route is a
# build-time entry only: runs of them become one _REGEX_RUN entry.
_BLOCK, _REGEX_RUN, _PREFIX, _PATH, _PREFIX_CI, _PATH_CI, _REGEX = range(7)
_NO_CANDIDATE = 1 << 62

# Runs of at least this many condition-free, case-sensitive prefix/path routes are
# matched as one `_PlainBlock` (a few dict probes instead of one test per route).
_BLOCK_MIN_ROUTES = 3

_VHOST_CACHE_MAX = 1024
_MISS = object()

#: The request headers Envoy 1.40 keeps "inline" (its start-up log, `-l info`, lists them as the "request
#: header map"; pseudo-headers left out). Envoy's codec folds repeated lines of one of these into a single
#: value joined with "," (empty values skipped) as it parses, so header matchers see that one value; every
#: other header keeps one entry per line and is matched value by value. pylon refuses bootstrap
#: `inline_headers`, so this set is fixed. (cookie is not in it: Envoy matches each cookie line on its own.)
ENVOY_INLINE_REQUEST_HEADERS = frozenset(name.encode() for name in (
    "accept", "accept-encoding", "access-control-request-headers", "access-control-request-method",
    "access-control-request-private-network", "authentication", "authorization", "cache-control", "cdn-loop",
    "connection", "content-encoding", "content-length", "content-type", "expect", "grpc-accept-encoding",
    "grpc-timeout", "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
    "keep-alive", "origin", "pragma", "proxy-connection", "proxy-status", "referer", "te", "transfer-encoding",
    "upgrade", "user-agent", "via", "x-client-trace-id", "x-envoy-attempt-count", "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node", "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address", "x-envoy-force-trace", "x-envoy-hedge-on-per-try-timeout", "x-envoy-internal",
    "x-envoy-ip-tags", "x-envoy-is-timeout-retry", "x-envoy-max-retries", "x-envoy-original-host",
    "x-envoy-original-path", "x-envoy-original-url", "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes", "x-envoy-retry-grpc-on", "x-envoy-retry-on", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-stream-duration-ms", "x-forwarded-client-cert",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-port", "x-forwarded-proto", "x-request-id",
))  # fmt: skip


# --------------------------------------------------------------------------- string matchers


def _compile_string_matcher(m: StringMatcher, engine: RegexEngine, as_bytes: bool) -> Callable[[Any], bool]:
    """An Envoy StringMatcher as a predicate over bytes (headers) or str (query values)."""
    ignore_case = m.ignore_case

    def literal(s: str) -> Any:
        if as_bytes:
            s = s.encode()  # type: ignore[assignment]
        return s.lower() if ignore_case else s

    if m.exact is not None:
        x = literal(m.exact)
        return (lambda v: v.lower() == x) if ignore_case else (lambda v: v == x)
    if m.prefix is not None:
        x = literal(m.prefix)
        return (lambda v: v.lower().startswith(x)) if ignore_case else (lambda v: v.startswith(x))
    if m.suffix is not None:
        x = literal(m.suffix)
        return (lambda v: v.lower().endswith(x)) if ignore_case else (lambda v: v.endswith(x))
    if m.contains is not None:
        x = literal(m.contains)
        return (lambda v: x in v.lower()) if ignore_case else (lambda v: x in v)
    return _regex_predicate(engine.compile(m.safe_regex.regex), as_bytes)  # type: ignore[union-attr]


def _regex_predicate(regex: Regex, as_bytes: bool) -> Callable[[Any], bool]:
    fullmatch = regex.fullmatch
    if as_bytes:
        return lambda v: fullmatch(v.decode("utf-8", "replace"))
    return fullmatch


class HashSource(NamedTuple):
    """One hash policy of a route, compiled; Stream.hash_key reads them."""

    kind: str  # "header" (name: the lower-case header), "source_ip", "query" (name: the parameter), "cookie", "none"
    name: bytes
    terminal: bool
    cookie_ttl: float | None = None  # a cookie policy: make the cookie when missing (None: never), its Max-Age
    cookie_path: bytes = b""


def _hash_source(policy: Any) -> HashSource:
    if policy.header is not None:
        return HashSource("header", policy.header.header_name.lower().encode(), policy.terminal)
    if policy.query_parameter is not None:
        return HashSource("query", policy.query_parameter.name.encode(), policy.terminal)
    if policy.cookie is not None:
        cookie = policy.cookie
        return HashSource("cookie", cookie.name.encode(), policy.terminal,
                          float(cookie.ttl) if cookie.ttl is not None else None, cookie.path.encode())
    return HashSource("source_ip" if policy.connection_properties.source_ip else "none", b"", policy.terminal)


class _HeaderMatcher:
    """One compiled Envoy HeaderMatcher.

    `matches(value)` decides on one value (None: the header is missing);
    `matches_headers(items)` on a request's whole header list, as Envoy does.
    """

    __slots__ = ("name", "pseudo", "folded", "test", "invert", "treat_missing", "present_kind", "present")

    def __init__(self, config: HeaderMatcher, engine: RegexEngine) -> None:
        name = config.name.lower()
        self.name = name.encode()
        # Envoy stores Host as :authority, and looks `host` up as :authority.
        self.pseudo = ":authority" if name == "host" else name if name.startswith(":") else None
        if self.pseudo not in (None, ":authority", ":path", ":method", ":scheme"):
            raise ValueError(f"header matcher: pseudo-header {name!r} is not supported "
                             "(supported: :authority, :path, :method, :scheme)")
        #: True for Envoy's inline headers: repeated lines are one ","-joined value, not one value each
        self.folded = self.name in ENVOY_INLINE_REQUEST_HEADERS
        self.invert = config.invert_match
        self.treat_missing = config.treat_missing_header_as_empty
        self.present_kind = False
        self.present = False
        self.test: Callable[[bytes], bool]
        if config.string_match is not None:
            self.test = _compile_string_matcher(config.string_match, engine, as_bytes=True)
        elif config.exact_match is not None:
            x = config.exact_match.encode()
            # Envoy's legacy exact_match: an empty value matches any value.
            self.test = (lambda v: True) if not x else (lambda v: v == x)
        elif config.prefix_match is not None:
            x = config.prefix_match.encode()
            self.test = lambda v: v.startswith(x)
        elif config.suffix_match is not None:
            x = config.suffix_match.encode()
            self.test = lambda v: v.endswith(x)
        elif config.contains_match is not None:
            x = config.contains_match.encode()
            self.test = lambda v: x in v
        elif config.safe_regex_match is not None:
            self.test = _regex_predicate(engine.compile(config.safe_regex_match.regex), as_bytes=True)
        else:
            # present_match, or nothing at all (Envoy then means "present").
            present = True if config.present_match is None else config.present_match
            self.present_kind = True
            self.present = present
            self.test = lambda v: present

    def matches(self, value: bytes | None) -> bool:
        """The matcher on one value; None when the header is missing."""
        if value is None:
            if not self.treat_missing:
                if self.invert:
                    return self.present_kind and self.present
                return self.present_kind and not self.present
            value = b""
        return self.test(value) != self.invert

    def matches_headers(self, items: Sequence[tuple[bytes, bytes]]) -> bool:
        """The matcher on a request's `(name, value)` list (lower-case names), as Envoy 1.40 decides.

        Value by value: true when one value passes the test, `invert_match`
        negating the whole (so an inverted matcher needs every value to fail).
        An inline header (`folded`) is one value: its non-empty values joined
        with ",". One scan, and no allocation unless a folded header repeats.
        """
        name = self.name
        if self.folded:
            value = None
            for n, v in items:
                if n == name:
                    if value is None:
                        value = v
                    elif v:
                        value = value + b"," + v if value else v
            return self.matches(value)
        test = self.test
        seen = False
        for n, v in items:
            if n == name:
                if test(v):
                    return not self.invert
                seen = True
        if seen:
            return self.invert
        return self.matches(None)


class _QueryMatcher:
    """One compiled Envoy QueryParameterMatcher (first value of the parameter, raw)."""

    __slots__ = ("name", "present", "test")

    def __init__(self, config: QueryParameterMatcher, engine: RegexEngine) -> None:
        self.name = config.name
        self.present = config.present_match
        self.test = (
            None if config.string_match is None
            else _compile_string_matcher(config.string_match, engine, as_bytes=False)
        )

    def matches(self, params: dict[str, str]) -> bool:
        value = params.get(self.name)
        if self.present is not None:
            return (value is not None) == self.present
        if value is None:
            return False
        return self.test is None or self.test(value)


def first_query_values(path: str) -> dict[str, str]:
    """Raw first value per parameter name (`a` alone means an empty value), as Envoy parses them."""
    q = path.find("?")
    params: dict[str, str] = {}
    if q < 0:
        return params
    query = path[q + 1 :]
    h = query.find("#")
    if h >= 0:
        query = query[:h]
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name not in params:
            params[name] = value
    return params


def is_grpc_request(items: Sequence[tuple[bytes, bytes]]) -> bool:
    """What `match.grpc` asks of a request in Envoy 1.40 (`Grpc::Common::hasGrpcContentType`; observed): its
    content-type (an inline header: repeated lines joined with ",") is `application/grpc`, alone or followed by
    `+` (`application/grpc;charset=...` is not, nor is `application/grpc-web`); any method."""
    content_type = None
    for name, value in items:
        if name == b"content-type":
            if content_type is None:
                content_type = value
            elif value:
                content_type = content_type + b"," + value if content_type else value
    return (content_type is not None and content_type.startswith(b"application/grpc")
            and content_type[16:17] in (b"", b"+"))


class _Conditions:
    """Header, query-parameter and gRPC conditions of a route, checked after its path matched."""

    __slots__ = ("headers", "queries", "grpc")

    def __init__(self, headers: Sequence[_HeaderMatcher], queries: Sequence[_QueryMatcher],
                 grpc: bool = False) -> None:
        self.headers = tuple(headers)
        self.queries = tuple(queries)
        self.grpc = grpc

    def matches(self, headers: HeaderList, authority: str, path: str,
                method: str | None, scheme: str | None) -> bool:
        if self.grpc and not is_grpc_request(headers.items):
            return False
        for hm in self.headers:
            pseudo = hm.pseudo
            if pseudo is None:
                if not hm.matches_headers(headers.items):
                    return False
                continue
            text = (authority if pseudo == ":authority" else path if pseudo == ":path"
                    else method if pseudo == ":method" else scheme)
            if not hm.matches(None if text is None else text.encode()):
                return False
        if self.queries:
            params = first_query_values(path)
            for qm in self.queries:
                if not qm.matches(params):
                    return False
        return True


# --------------------------------------------------------------------------- route results


class RetryRule:
    """A compiled Envoy RetryPolicy: which failures are retried, how often, how fast."""

    __slots__ = (
        "retry_on", "num_retries", "per_try_timeout", "base_interval", "max_interval", "on_5xx",
        "on_gateway_error", "on_5xx_or_gateway", "on_connect_failure", "on_reset", "on_retriable_4xx",
        "retriable_status_codes", "grpc_codes", "host_reselections", "avoid_tried", "avoid_canary", "avoid_labels",
        "priority_update_frequency",
    )

    def __init__(self, config: RetryPolicy) -> None:
        names = config.conditions
        #: every retry_on condition, including those the caller acts on itself
        #: (refused-stream, envoy-ratelimited)
        self.retry_on: frozenset[str] = names
        self.num_retries: int = config.num_retries
        #: None = no per-try timeout (the route timeout bounds all tries)
        self.per_try_timeout: float | None = config.per_try_timeout or None
        backoff = config.retry_back_off
        # Envoy: base 25 ms, max 10x base unless given.
        self.base_interval: float = 0.025 if backoff is None else backoff.base_interval
        self.max_interval: float = (
            backoff.max_interval if backoff is not None and backoff.max_interval is not None
            else 10 * self.base_interval
        )
        self.on_5xx = "5xx" in names
        self.on_gateway_error = "gateway-error" in names
        #: Envoy retries a per-try timeout under 5xx or gateway-error
        self.on_5xx_or_gateway = self.on_5xx or self.on_gateway_error
        # Envoy retries any upstream reset (connection failure included) under 5xx,
        # gateway-error and reset; connect-failure covers failing to connect only.
        self.on_reset = self.on_5xx_or_gateway or "reset" in names
        self.on_connect_failure = self.on_reset or "connect-failure" in names
        self.on_retriable_4xx = "retriable-4xx" in names
        # Envoy only honours the status list when retry_on names retriable-status-codes.
        self.retriable_status_codes: frozenset[int] = (
            frozenset(config.retriable_status_codes) if "retriable-status-codes" in names else frozenset()
        )
        #: grpc-status codes retried (cancelled, unavailable, ...); empty = the response's grpc-status is not read
        self.grpc_codes: frozenset[int] = frozenset(GRPC_RETRY_ON[n] for n in names if n in GRPC_RETRY_ON)
        predicates = [predicate.decoded() for predicate in config.retry_host_predicate]
        #: how many more times a retry picks again when a host predicate refuses the LB's pick. Envoy's default
        #: 0 means one pick and no avoidance, so 0 also means "no predicate runs".
        self.host_reselections: int = config.host_selection_retry_max_attempts if predicates else 0
        #: the predicates: previous_hosts, omit_canary_hosts, omit_host_metadata (each set of envoy.lb values)
        self.avoid_tried = any(isinstance(p, PreviousHostsPredicate) for p in predicates)
        self.avoid_canary = any(isinstance(p, OmitCanaryHostsPredicate) for p in predicates)
        self.avoid_labels: tuple[tuple[tuple[str, Any], ...], ...] = tuple(
            tuple((key, value_key(value)) for key, value in p.labels.items())
            for p in predicates if isinstance(p, OmitHostMetadataConfig) and p.labels)
        #: previous_priorities' update_frequency (0: no retry priority; upstream/retry_priority.py)
        self.priority_update_frequency: int = (
            config.retry_priority.decoded().update_frequency if config.retry_priority is not None else 0)

    def refuses(self, host: Host, tried: list[Host]) -> bool:
        """Whether a retry host predicate sends a retry's pick back to the balancer (Envoy's
        shouldSelectAnotherHost: any predicate refusing is enough)."""
        if self.avoid_tried and host in tried:
            return True
        metadata = host.lb_metadata
        if self.avoid_canary and metadata.get("canary") is True:
            return True
        return any(all(_label_matches(metadata, key, wanted) for key, wanted in labels)
                   for labels in self.avoid_labels)

    def should_retry_status(self, status: int) -> bool:
        """Whether an upstream response with this status is retried under this policy."""
        if self.on_5xx and status >= 500:
            return True
        if self.on_gateway_error and status in (502, 503, 504):
            return True
        if self.on_retriable_4xx and status == 409:
            return True
        return status in self.retriable_status_codes

    def should_retry_grpc(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the response's grpc-status header (first one, as Envoy reads it) names a retried code."""
        for name, value in headers:
            if name == b"grpc-status":
                value = value.strip()
                return value.isdigit() and int(value) in self.grpc_codes
        return False


def _label_matches(metadata: Any, key: str, wanted: Any) -> bool:
    """Envoy's metadataLabelMatch for one value, lists as any: the host's value is it or a list holding it."""
    if key not in metadata:
        return False
    value = metadata[key]
    if value_key(value) == wanted:
        return True
    return isinstance(value, (list, tuple)) and any(value_key(item) == wanted for item in value)


class MirrorRule:
    """One compiled RequestMirrorPolicy: where the copy goes, how often, and how its Host is made."""

    __slots__ = ("cluster", "cluster_header", "fraction", "trace_sampled", "suffix_host")

    def __init__(self, config: Any) -> None:
        self.cluster: str = config.cluster
        #: lower-case header naming the cluster per request (b"" when `cluster` is fixed)
        self.cluster_header: bytes = config.cluster_header.lower().encode()
        #: the share of requests mirrored (Envoy: all when runtime_fraction is unset)
        fraction = config.runtime_fraction
        self.fraction: float = 1.0 if fraction is None else fraction.default_value.fraction
        self.trace_sampled: bool | None = config.trace_sampled
        self.suffix_host: bool = not config.disable_shadow_host_suffix_append

    def cluster_for(self, headers: Sequence[tuple[bytes, bytes]]) -> str:
        """The cluster this request's copy goes to ("" for none: the named header is missing or empty)."""
        if not self.cluster_header:
            return self.cluster
        return named_cluster(headers, self.cluster_header)


#: RouteAction.cluster_not_found_response_code -> the status of the router's reply
_CLUSTER_NOT_FOUND_STATUS = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}

#: The default of every MatchedRoute (a HeaderOps is never mutated, so one instance serves all)
_NO_HEADER_OPS = HeaderOps()


def _cluster_variants(route: MatchedRoute, clusters: Sequence[Any]) -> dict[str, MatchedRoute]:
    """For a weighted route where some cluster has its own `typed_per_filter_config`: each cluster's copy of the
    route, bound to it, with that cluster's configs the most specific level. None has any: {} (no cost)."""
    if not any(cw.typed_per_filter_config for cw in clusters):
        return {}
    variants = {}
    for cw in clusters:
        variant = copy.copy(route)
        variant.cluster, variant._weights, variant.cluster_variants = cw.name, (), {}
        _set_filter_levels(variant, (cw.typed_per_filter_config, *route.all_levels))
        variants[cw.name] = variant
    return variants


def _set_filter_levels(route: MatchedRoute, levels: Sequence[dict[str, Any]]) -> None:
    """The route's per-filter configs from its levels, most specific first: each filter's most specific config,
    every level's (for filters that merge them), and the filters whose most specific level disables them."""
    route.all_levels = tuple(levels)
    merged: dict[str, Any] = {}
    for level in reversed(levels):
        merged.update(level)
    route.disabled_filters = frozenset(name for name, config in merged.items() if isinstance(config, FilterConfig))
    route.filter_configs = {name: config for name, config in merged.items() if name not in route.disabled_filters}
    kept = ({name: config for name, config in level.items() if not isinstance(config, FilterConfig)}
            for level in levels)
    route.filter_levels = tuple(level for level in kept if level)


class MatchedRoute:
    """Everything the proxy needs once a route matched, precomputed. Never mutated after build."""

    __slots__ = (
        "name", "virtual_host_name", "kind", "cluster", "timeout", "idle_timeout", "retry",
        "expected_timeout_header", "attempt_count", "grpc_timeout", "stream_duration",
        "hash_policies", "host_rewrite", "direct_status", "direct_body", "redirect_status",
        "request_header_ops", "response_header_ops", "rewrites", "_matched_len",
        "_prefix_rewrite", "_regex_rewrite", "_substitution", "_weights", "_cumulative",
        "_total_weight", "_random", "_redirect", "_picker", "_cluster_ops", "filter_configs", "filter_levels",
        "cors_policies", "decorator", "mirrors", "upgrades", "subset_criteria", "_cluster_criteria",
        "connect_terminate", "post_terminate", "metadata", "virtual_host_metadata", "rate_limits",
        "virtual_host_rate_limits", "include_vh_rate_limits", "cluster_variants", "disabled_filters", "all_levels",
        "no_cluster_reply",
    )

    def __init__(self) -> None:
        self.name = ""
        self.virtual_host_name = ""
        self.kind: Literal["cluster", "direct_response", "redirect"] = "cluster"
        #: plain cluster name ("" for weighted clusters and non-cluster routes)
        self.cluster = ""
        self.timeout: float | None = None
        #: None = the route sets no idle timeout (the HCM's stream_idle_timeout applies);
        #: 0.0 would be Envoy's "disabled" and is kept as 0.0 so the caller can tell.
        self.idle_timeout: float | None = None
        self.retry: RetryRule | None = None
        #: the `x-envoy-expected-rq-timeout-ms: N\r\n` line for upstream requests, or None
        self.expected_timeout_header: bytes | None = None
        #: the virtual host's include_request_attempt_count: x-envoy-attempt-count on upstream requests
        self.attempt_count = False
        #: (max_grpc_timeout or None for no cap, grpc_timeout_offset) in milliseconds, as Envoy counts them,
        #: when max_grpc_timeout is set; None: the grpc-timeout header is not read
        self.grpc_timeout: tuple[int | None, int] | None = None
        #: RouteAction.max_stream_duration (then `timeout` is None and grpc_timeout unset, as Envoy's new timeouts)
        self.stream_duration: StreamDuration | None = None
        self.hash_policies: tuple[HashSource, ...] | None = None  # where a hashing balancer's key comes from
        self.host_rewrite: bytes | None = None
        self.direct_status = 0
        self.direct_body = b""
        self.redirect_status = 0
        self.request_header_ops = _NO_HEADER_OPS
        self.response_header_ops = _NO_HEADER_OPS
        #: False when `rewrite_path` always returns its argument (the caller may skip it)
        self.rewrites = False
        self._matched_len = -1  # length of the matched prefix; -1 = the whole path (exact, regex)
        self._prefix_rewrite: str | None = None
        self._regex_rewrite: Regex | None = None
        self._substitution = ""
        self._weights: tuple[str, ...] = ()
        self._cumulative: list[float] = []
        self._total_weight = 0.0
        self._random: Callable[[], float] = random.random
        self._redirect: _Redirect | None = None
        #: the picker of a cluster_header or a cluster specifier plugin (proxy/cluster_specifier.py), which reads
        #: the request
        self._picker: Callable[[Any], str] | None = None
        #: the router's answer when the picked cluster does not exist (cluster_not_found_response_code)
        self.no_cluster_reply: LocalReply = NO_CLUSTER
        # Weighted clusters with their own header rules: cluster name -> (request, response) ops.
        self._cluster_ops: dict[str, tuple[HeaderOps, HeaderOps]] = {}
        #: HTTP filter name -> its per-route config (the route's, else the virtual host's, else the route
        #: configuration's: Envoy's most specific one)
        self.filter_configs: dict[str, Any] = {}
        #: the non-empty `typed_per_filter_config`s of the route, its virtual host and the route configuration,
        #: most specific first, for filters that merge the levels (see `filter_configs_of`)
        self.filter_levels: tuple[dict[str, Any], ...] = ()
        #: the deprecated `cors` of the route's action, then of its virtual host (those set): what Envoy's CORS
        #: filter falls back to when no level has a per-route config for it
        self.cors_policies: tuple[Any, ...] = ()
        #: the route's `decorator` (span name, and its propagation upstream), read only by tracing
        self.decorator: Any = None
        #: the route's request_mirror_policies, compiled (proxy/mirror.py sends the copies)
        self.mirrors: tuple[MirrorRule, ...] = ()
        #: the route's upgrade_configs: lower-case upgrade type -> enabled; they override the HCM's list
        self.upgrades: dict[bytes, bool] = {}
        #: the route's `envoy.lb` metadata_match (None: none), what a subset cluster picks hosts by
        self.subset_criteria: Criteria | None = None
        # Weighted clusters with their own metadata_match: cluster name -> theirs merged over the route's.
        self._cluster_criteria: dict[str, Criteria] = {}
        #: a CONNECT upgrade with connect_config: the proxy answers the CONNECT and relays raw TCP (connect.py)
        self.connect_terminate = False
        #: connect_config.allow_post: a POST is terminated as that CONNECT would be (its body the raw payload). As
        #: in Envoy, whether or not the CONNECT upgrade is `enabled`
        self.post_terminate = False
        #: the `filter_metadata` of the route and of its virtual host (filter name -> its Struct's fields), which
        #: filters read (Lua's metadata())
        self.metadata: dict[str, dict[str, Any]] = {}
        self.virtual_host_metadata: dict[str, dict[str, Any]] = {}
        #: the route's and its virtual host's `rate_limits` (proxy/rate_limits.py), None when they have none
        self.rate_limits: Any = None
        self.virtual_host_rate_limits: Any = None
        self.include_vh_rate_limits = False
        #: the HTTP filters a `FilterConfig {disabled: true}` turns off here (at the most specific level naming them)
        self.disabled_filters: frozenset[str] = frozenset()
        #: the levels as configured (disabling marks included), what a weighted cluster's variant builds on
        self.all_levels: tuple[dict[str, Any], ...] = ()
        #: weighted clusters with per-filter configs: cluster name -> this route bound to that cluster, its
        #: configs the most specific level (empty: none has any; see `variant_for`)
        self.cluster_variants: dict[str, MatchedRoute] = {}

    def __repr__(self) -> str:
        return f"MatchedRoute(name={self.name!r}, vhost={self.virtual_host_name!r}, kind={self.kind!r})"

    def variant_for(self, request: Any) -> MatchedRoute:
        """The route as a request sees it once its weighted cluster is picked (Envoy picks it with the route, so
        the filters see that cluster's `typed_per_filter_config` first): the variant bound to the pick, whose
        `pick_cluster` gives that cluster again. Only routes with `cluster_variants` need it."""
        return self.cluster_variants[self.pick_cluster(request)]

    def filter_config(self, name: str) -> Any:
        """The per-route config of the HTTP filter called `name`, or None (the filter's own config applies)."""
        return self.filter_configs.get(name)

    def filter_configs_of(self, name: str) -> list[Any]:
        """Every level's per-route config of the filter called `name`, most specific first (route, virtual
        host, route configuration), as Envoy's getAllPerFilterConfig gives them: the CORS filter takes each
        field from the most specific level that sets it, where other filters take one config whole."""
        return [level[name] for level in self.filter_levels if name in level]

    def pick_cluster(self, request: Any = None) -> str:
        """The upstream cluster for one request: the route's cluster, a weighted random pick, or the route's
        cluster specifier plugin's choice for `request` (the stream)."""
        if self._picker is not None:
            return self._picker(request)
        if not self._weights:
            return self.cluster
        return self._weights[bisect_right(self._cumulative, self._random() * self._total_weight)]

    def criteria_for(self, cluster: str) -> Criteria | None:
        """The metadata match criteria of a request sent to `cluster` (a weighted cluster's, else the route's)."""
        return self._cluster_criteria.get(cluster, self.subset_criteria) if self._cluster_criteria else (
            self.subset_criteria)

    def header_ops_for(self, cluster: str) -> tuple[HeaderOps, HeaderOps]:
        """(request, response) header rules once `cluster` was picked.

        Same as (`request_header_ops`, `response_header_ops`) unless the weighted
        cluster has its own rules, which Envoy applies first.
        """
        ops = self._cluster_ops.get(cluster)
        if ops is None:
            return self.request_header_ops, self.response_header_ops
        return ops

    def rewrite_path(self, path: str) -> str:
        """The upstream request target after prefix_rewrite / regex_rewrite (query string kept)."""
        return _rewrite(path, self._matched_len, self._prefix_rewrite, self._regex_rewrite, self._substitution)

    def redirect_location(self, scheme: str, authority: str, path: str) -> str:
        """The Location of a redirect route, built as Envoy's `Http::Utility::newUri` does.

        `scheme` is the request's (x-forwarded-proto / :scheme), `authority` its Host
        header, `path` its raw request target.
        """
        r = self._redirect
        if r is None:
            raise ValueError(f"route {self.name!r} is not a redirect")
        if r.prefix_rewrite is not None:
            path = _rewrite(path, self._matched_len, r.prefix_rewrite, None, "")
        final_scheme = r.scheme or scheme
        if r.host:
            host = r.host
        else:
            host = _request_host(authority, scheme, final_scheme, r.port)
        if r.path:
            if r.path_has_query:
                path = r.path
            else:
                q = path.find("?")
                path = r.path if q < 0 else r.path + path[q:]
        if not path.startswith("/"):
            path = "/" + path
        if r.strip_query and not r.path_has_query:
            q = path.find("?")
            if q >= 0:
                path = path[:q]
        return f"{final_scheme}://{host}{r.port}{path}"


def _rewrite(path: str, matched_len: int, prefix: str | None, regex: Regex | None, substitution: str) -> str:
    if prefix is not None:
        if matched_len < 0:
            q = _path_end(path)
            return prefix + path[q:]
        return prefix + path[matched_len:]
    if regex is not None:
        q = _path_end(path)
        new = regex.sub(substitution, path[:q])
        # Envoy: a rewrite that produces an empty path leaves the path alone.
        return new + path[q:] if new else path
    return path


def _path_end(path: str) -> int:
    """Index where the path part of a request target ends (at '?' or '#')."""
    end = len(path)
    for sep in ("?", "#"):
        i = path.find(sep, 0, end)
        if i >= 0:
            end = i
    return end


def _port_start(host: str) -> int:
    """Envoy's HeaderUtility::getPortStart: index of the port's ':' or -1 (IPv6-literal aware)."""
    colon = host.rfind(":")
    if colon < 0:
        return -1
    bracket = host.rfind("]")
    if bracket < 0 or bracket < colon:
        return colon
    return -1


def _lb_values(metadata: Any) -> dict[str, Any] | None:
    """A metadata_match's `envoy.lb` values (None: it has none, and sets no criteria, as in Envoy)."""
    return metadata.filter_metadata.get(ENVOY_LB) if metadata is not None else None


def _request_host(authority: str, request_scheme: str, new_scheme: str, new_port: str) -> str:
    """Envoy's processRequestHost: drop the request's port when a new port is given, or when
    the scheme changes and the port was the old scheme's default."""
    if not authority:
        return authority
    if authority[0] == "[":
        end = authority.rfind("]:")
        end = end + 1 if end >= 0 else -1
    else:
        end = authority.rfind(":")
    if end < 0:
        return authority
    port = authority[end:]
    remove = bool(new_port)
    if new_scheme != request_scheme:
        remove = remove or (request_scheme == "https" and port == ":443")
        remove = remove or (request_scheme == "http" and port == ":80")
    return authority[:end] if remove else authority


class _Redirect:
    """A compiled RedirectAction."""

    __slots__ = ("scheme", "host", "port", "path", "path_has_query", "prefix_rewrite", "strip_query")

    def __init__(self, config: RedirectAction) -> None:
        self.scheme = config.scheme_redirect or ("https" if config.https_redirect else "")
        self.host = config.host_redirect or ""
        self.port = f":{config.port_redirect}" if config.port_redirect else ""
        self.path = config.path_redirect or ""
        self.path_has_query = "?" in self.path
        self.prefix_rewrite: str | None = config.prefix_rewrite
        self.strip_query: bool = config.strip_query


# --------------------------------------------------------------------------- the table


class _PlainBlock:
    """A run of plain prefix/exact-path routes, matched by a few dict probes in route order.

    Prefixes are grouped by length: `path[:L]` is looked up in the table of
    prefixes of length L, giving the index of the first route with that prefix.
    Lengths are probed in order of their first route, stopping as soon as no
    remaining length can beat the best index found. A table of 10 `/svcN/`
    prefixes and a final `/` costs two probes for any path, instead of up to 10
    `startswith` calls; in the worst case (all lengths distinct) it costs what
    the linear scan does.
    """

    __slots__ = ("exact", "by_length", "routes")

    _NONE = 1 << 62

    def __init__(self, entries: Sequence[tuple[int, str, MatchedRoute]]) -> None:
        self.exact: dict[str, int] = {}
        by_length: dict[int, dict[str, int]] = {}
        for i, (kind, value, _) in enumerate(entries):
            if kind == _PATH:
                self.exact.setdefault(value, i)
            else:
                by_length.setdefault(len(value), {}).setdefault(value, i)
        self.by_length = sorted(((length, table, min(table.values())) for length, table in by_length.items()),
                                key=lambda item: item[2])
        self.routes = tuple(route for _, _, route in entries)

    def first(self, path: str) -> MatchedRoute | None:
        exact = self.exact
        best = exact.get(path, self._NONE) if exact else self._NONE
        for length, table, lowest in self.by_length:
            if lowest >= best:
                break
            # A path shorter than `length` slices to a shorter string: never in `table`.
            i = table.get(path[:length])
            if i is not None and i < best:
                best = i
        return None if best == self._NONE else self.routes[best]


def _coalesce(entries: list[tuple[int, Any, _Conditions | None, MatchedRoute]]
              ) -> list[tuple[int, Any, _Conditions | None, MatchedRoute | None]]:
    """Replace runs of plain prefix/path routes by `_PlainBlock`s; keeps route order."""
    out: list[tuple[int, Any, _Conditions | None, MatchedRoute | None]] = []
    run: list[tuple[int, str, MatchedRoute]] = []

    def flush() -> None:
        if len(run) >= _BLOCK_MIN_ROUTES:
            out.append((_BLOCK, _PlainBlock(run).first, None, None))
        else:
            out.extend((kind, value, None, route) for kind, value, route in run)
        run.clear()

    for kind, arg, conditions, route in entries:
        if conditions is None and kind in (_PREFIX, _PATH):
            run.append((kind, arg, route))
        else:
            flush()
            out.append((kind, arg, conditions, route))
    flush()
    return out


class _VirtualHost:
    """A virtual host's routes as match-loop entries, its regex routes in one `PatternSet`.

    `regex_routes[k]` is the k-th regex route in config order (with its
    conditions), pattern k of `regex_set`. Each maximal run of consecutive regex
    routes is one `(_REGEX_RUN, end, None, None)` entry: it owns the pattern
    indices below `end` not owned by an earlier run.
    """

    __slots__ = ("name", "entries", "regex_set", "regex_routes", "choose")

    def __init__(self, name: str, entries: list[tuple[int, Any, _Conditions | None, MatchedRoute]],
                 labels: list[str], engine: RegexEngine) -> None:
        self.name = name
        #: a virtual host's `matcher` instead of routes (route_matcher.py): (p, headers, authority, path, method,
        #: scheme) -> the route or None
        self.choose: Callable[..., MatchedRoute | None] | None = None
        patterns: list[str] = []
        pattern_labels: list[str] = []
        self.regex_routes: list[tuple[MatchedRoute, _Conditions | None]] = []
        folded: list[tuple[int, Any, _Conditions | None, MatchedRoute]] = []
        for (kind, arg, conditions, route), label in zip(entries, labels):
            if kind != _REGEX:
                folded.append((kind, arg, conditions, route))
                continue
            patterns.append(arg)
            pattern_labels.append(label)
            self.regex_routes.append((route, conditions))
            if folded and folded[-1][0] == _REGEX_RUN:
                folded.pop()
            folded.append((_REGEX_RUN, len(patterns), None, None))  # type: ignore[arg-type]
        # background: an engine that compiles slowly (Hyperscan) serves from a stand-in meanwhile, so that
        # building a table (a route update, in the supervisor and in every worker) never waits on it.
        self.regex_set: PatternSet | None = (
            engine.compile_set(patterns, pattern_labels, background=True) if patterns else None)
        self.entries = _coalesce(folded)


class RouteTable:
    """A RouteConfiguration compiled for matching. Build once per config; share across requests.

    Raises `ValueError` (with the virtual host and route it concerns) for what
    the model's own validation cannot see: regexes over Envoy's RE2 program-size
    limit, bad rewrite strings, unsupported header operators, oversized bodies.
    `rng` drives weighted-cluster picks (inject a seeded one in tests).
    """

    def __init__(self, config: RouteConfiguration, regex_engine: RegexEngine | None = None,
                 rng: random.Random | None = None) -> None:
        started, rss_before = time.perf_counter(), _rss_bytes()
        self.name = config.name
        self._engine = regex_engine if regex_engine is not None else get_engine()
        self._random = (rng or random.Random()).random
        self._plugins = {p.extension.name: p.extension.typed_config for p in config.cluster_specifier_plugins}
        config_request = compile_header_level(config.request_headers_to_add, config.request_headers_to_remove, True)
        config_response = compile_header_level(config.response_headers_to_add, config.response_headers_to_remove, True)

        self._exact: dict[str, _VirtualHost] = {}
        suffixes: dict[int, dict[str, _VirtualHost]] = {}
        prefixes: dict[int, dict[str, _VirtualHost]] = {}
        self._default: _VirtualHost | None = None
        self._ops_memo: dict[tuple[int, ...], HeaderOps] = {}  # see `_header_ops`; only while building
        regex_count = 0
        for i, vh_config in enumerate(config.virtual_hosts):
            vhost = self._build_vhost(vh_config, f"virtual_hosts[{i}] ({vh_config.name})",
                                      config_request, config_response, config.typed_per_filter_config)
            regex_count += len(vhost.regex_routes)
            for domain in vh_config.domains:  # unique across virtual hosts (checked by the model)
                d = domain.lower()
                if d == "*":
                    self._default = vhost
                elif d.startswith("*"):
                    suffixes.setdefault(len(d) - 1, {})[d[1:]] = vhost
                elif d.endswith("*"):
                    prefixes.setdefault(len(d) - 1, {})[d[:-1]] = vhost
                else:
                    self._exact[d] = vhost
        # Longest wildcard first.
        self._suffixes = sorted(suffixes.items(), reverse=True)
        self._prefixes = sorted(prefixes.items(), reverse=True)
        self._vhost_cache: dict[str, _VirtualHost | None] = {}
        del self._ops_memo
        #: seconds and resident bytes building this table took (reported at start-up and by benchmarks)
        self.build_seconds = time.perf_counter() - started
        self.build_rss_bytes = _rss_bytes() - rss_before
        if regex_count:
            log.info("route_config %r: %d regex routes with %s in %.0f ms, RSS %+.1f MiB", self.name,
                     regex_count, self._engine.name, self.build_seconds * 1e3, self.build_rss_bytes / 2**20)

    # -- build

    def _build_vhost(self, config: VirtualHost, where: str, config_request: Any, config_response: Any,
                     config_filters: dict[str, Any]) -> _VirtualHost:
        """The compiled virtual host; errors start with `where` and the route they concern."""
        try:
            vh_request = compile_header_level(config.request_headers_to_add, config.request_headers_to_remove, True)
            vh_response = compile_header_level(config.response_headers_to_add, config.response_headers_to_remove, True)
            vh_retry = RetryRule(config.retry_policy) if config.retry_policy is not None else None
            vh_rate_limits = rate_limits.RateLimitPolicy(config.rate_limits, self._engine) if config.rate_limits \
                else None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc

        def build(route: Route) -> tuple[int, Any, _Conditions | None, MatchedRoute]:
            entry = self._build_route(route, config.name, vh_retry,
                                      (vh_request, config_request), (vh_response, config_response))
            matched = entry[3]
            _set_filter_levels(matched, (route.typed_per_filter_config, config.typed_per_filter_config,
                                         config_filters))
            if route.route is not None and route.route.cors is not None or config.cors is not None:
                cors = (route.route.cors if route.route is not None else None, config.cors)
                matched.cors_policies = tuple(policy for policy in cors if policy is not None)
            matched.attempt_count = config.include_request_attempt_count
            if config.metadata is not None:
                matched.virtual_host_metadata = config.metadata.filter_metadata
            matched.virtual_host_rate_limits = vh_rate_limits
            if route.route is not None and route.route.weighted_clusters is not None:
                matched.cluster_variants = _cluster_variants(matched, route.route.weighted_clusters.clusters)
            return entry

        if config.matcher is not None:
            from pylon.proxy import route_matcher  # noqa: PLC0415  (only route tables with a matcher need it)

            try:
                choose = route_matcher.compile_route_matcher(config.matcher, build, self._entry_test, self._engine)
            except ValueError as exc:
                raise ValueError(f"{where}: matcher: {exc}") from exc
            vhost = _VirtualHost(config.name, [], [], self._engine)
            vhost.choose = choose
            return vhost
        entries = []
        labels = []  # also name a route in the regex engine's errors and fallback warnings
        for j, route in enumerate(config.routes):
            label = f"{where}: routes[{j}]{f' ({route.name})' if route.name else ''}"
            labels.append(label)
            try:
                entries.append(build(route))
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from exc
        return _VirtualHost(config.name, entries, labels, self._engine)

    def _entry_test(self, kind: int, arg: Any, conditions: _Conditions | None
                    ) -> Callable[[str, HeaderList, str, str, str | None, str | None], bool]:
        """Whether a route of a matcher's action matches: `(p, headers, authority, path, method, scheme)` with
        `p` the path without query (Envoy checks the Route's own `match` after the tree chose it)."""
        if kind == _REGEX:
            fullmatch = self._engine.compile(arg).fullmatch
            path_test: Callable[[str], Any] = fullmatch
        elif kind == _PREFIX:
            path_test = lambda p: p.startswith(arg)  # noqa: E731
        elif kind == _PATH:
            path_test = arg.__eq__
        elif kind == _PREFIX_CI:
            path_test = lambda p: p.lower().startswith(arg)  # noqa: E731
        else:
            path_test = lambda p: p.lower() == arg  # noqa: E731

        def test(p: str, headers: HeaderList, authority: str, path: str, method: str | None,
                 scheme: str | None) -> bool:
            return bool(path_test(p)) and (
                conditions is None or conditions.matches(headers, authority, path, method, scheme))

        return test

    def _build_route(self, config: Route, vhost_name: str, vh_retry: RetryRule | None,
                     request_outer: tuple[Any, Any], response_outer: tuple[Any, Any]
                     ) -> tuple[int, Any, _Conditions | None, MatchedRoute]:
        engine = self._engine
        route = MatchedRoute()
        route.name = config.name
        route.virtual_host_name = vhost_name
        route.decorator = config.decorator
        if config.metadata is not None:
            route.metadata = config.metadata.filter_metadata
        route._random = self._random
        kind, arg, route._matched_len = self._path_matcher(config.match)
        headers = [_HeaderMatcher(h, engine) for h in config.match.headers]
        queries = [_QueryMatcher(q, engine) for q in config.match.query_parameters]
        grpc = config.match.grpc is not None
        conditions = _Conditions(headers, queries, grpc) if headers or queries or grpc else None

        # Envoy's default order: route, virtual host, route configuration (the last one wins).
        route_request = compile_header_level(config.request_headers_to_add, config.request_headers_to_remove, True)
        route_response = compile_header_level(config.response_headers_to_add, config.response_headers_to_remove, True)
        route.request_header_ops = self._header_ops((route_request, *request_outer))
        route.response_header_ops = self._header_ops((route_response, *response_outer))

        if config.route is not None:
            self._build_route_action(route, config.route, vh_retry,
                                     (route_request, *request_outer), (route_response, *response_outer))
        elif config.redirect is not None:
            route.kind = "redirect"
            route._redirect = _Redirect(config.redirect)
            route.redirect_status = REDIRECT_CODES[config.redirect.response_code]
        else:
            self._build_direct_response(route, config.direct_response)
        return (kind, arg, conditions, route)

    def _header_ops(self, levels: tuple[Any, ...]) -> HeaderOps:
        """One HeaderOps per distinct list of levels, shared by the routes that have it.

        Most routes have no header rules of their own, so thousands share their virtual
        host's (a fifth of a 5,000-route build went into making two per route). Keyed by
        the levels' identities: the memo holds them, so no id is reused during the build.
        """
        key = tuple(map(id, levels))
        ops = self._ops_memo.get(key)
        if ops is None:
            ops = self._ops_memo[key] = HeaderOps(levels)
        return ops

    def _path_matcher(self, match: RouteMatch) -> tuple[int, Any, int]:
        """(kind, argument, matched prefix length or -1 for "the whole path") for `match`."""
        if match.connect_matcher is not None:
            return (_PATH, "", -1)  # a CONNECT's path is empty (the stream's), every other request's is not
        if match.prefix is not None:
            p = match.prefix
            return (_PREFIX, p, len(p)) if match.case_sensitive else (_PREFIX_CI, p.lower(), len(p))
        if match.path is not None:
            p = match.path
            return (_PATH, p, -1) if match.case_sensitive else (_PATH_CI, p.lower(), -1)
        return (_REGEX, str(match.safe_regex.regex), -1)  # type: ignore[union-attr]  # compiled per virtual host

    def _build_route_action(self, route: MatchedRoute, action: RouteAction, vh_retry: RetryRule | None,
                            request_levels: tuple[Any, ...], response_levels: tuple[Any, ...]) -> None:
        route.kind = "cluster"
        route_lb = _lb_values(action.metadata_match)
        route.subset_criteria = criteria_of(route_lb) if route_lb is not None else None
        route.no_cluster_reply = NO_CLUSTER._replace(status=_CLUSTER_NOT_FOUND_STATUS[
            action.cluster_not_found_response_code])
        if action.weighted_clusters is not None:
            names: list[str] = []
            cumulative: list[float] = []
            total = 0.0
            clusters = action.weighted_clusters.clusters
            if len({cw.name for cw in clusters}) != len(clusters):
                raise ValueError("route.weighted_clusters: a cluster is listed twice")
            for cw in clusters:
                own_request = compile_header_level(cw.request_headers_to_add, cw.request_headers_to_remove, True)
                own_response = compile_header_level(cw.response_headers_to_add, cw.response_headers_to_remove, True)
                if own_request is not None or own_response is not None:
                    # Envoy applies the weighted cluster's rules before all others.
                    route._cluster_ops[cw.name] = (HeaderOps([own_request, *request_levels]),
                                                   HeaderOps([own_response, *response_levels]))
                own_lb = _lb_values(cw.metadata_match)
                if own_lb is not None:
                    route._cluster_criteria[cw.name] = merged_criteria(route_lb or {}, own_lb)
                if cw.weight:
                    total += cw.weight
                    names.append(cw.name)
                    cumulative.append(total)
            route._weights = tuple(names)
            route._cumulative = cumulative
            route._total_weight = total
        elif action.cluster_header is not None:
            route._picker = HeaderPicker(action.cluster_header)
        elif action.inline_cluster_specifier_plugin is not None:
            route._picker = build_picker(action.inline_cluster_specifier_plugin.extension.typed_config)
        elif action.cluster_specifier_plugin is not None:
            route._picker = build_picker(self._plugins[action.cluster_specifier_plugin])
        else:
            route.cluster = action.cluster  # type: ignore[assignment]
        route.timeout = float(action.timeout) or None  # Envoy: 0 disables the timeout (default 15s)
        route.idle_timeout = None if action.idle_timeout is None else float(action.idle_timeout)
        route.retry = RetryRule(action.retry_policy) if action.retry_policy is not None else vh_retry
        if action.max_stream_duration is not None:
            route.stream_duration = StreamDuration.of(action.max_stream_duration)
            route.timeout = None
        # Envoy announces the per-try timeout when it is the tighter bound, else the route timeout.
        expected = route.timeout
        per_try = route.retry.per_try_timeout if route.retry is not None else None
        if per_try is not None and (expected is None or per_try < expected):
            expected = per_try
        if expected is not None:
            route.expected_timeout_header = b"x-envoy-expected-rq-timeout-ms: %d\r\n" % round(expected * 1000)
        if action.max_grpc_timeout is not None and route.stream_duration is None:
            route.grpc_timeout = (round(action.max_grpc_timeout * 1000) or None,
                                  round((action.grpc_timeout_offset or 0) * 1000))
        if action.hash_policy:
            route.hash_policies = tuple(_hash_source(policy) for policy in action.hash_policy)
        if action.request_mirror_policies:
            route.mirrors = tuple(MirrorRule(policy) for policy in action.request_mirror_policies)
        if action.rate_limits:
            route.rate_limits = rate_limits.RateLimitPolicy(action.rate_limits, self._engine)
        route.include_vh_rate_limits = action.include_vh_rate_limits
        for upgrade in action.upgrade_configs:
            kind = upgrade.upgrade_type.lower().encode()
            if kind not in route.upgrades:  # Envoy keeps the first entry of a type
                route.upgrades[kind] = upgrade.enabled
                connect_config = upgrade.connect_config
                route.connect_terminate |= upgrade.enabled and connect_config is not None
                route.post_terminate |= connect_config is not None and connect_config.allow_post
        if action.host_rewrite_literal:
            route.host_rewrite = action.host_rewrite_literal.encode()
        if action.prefix_rewrite is not None:
            route._prefix_rewrite = action.prefix_rewrite
            route.rewrites = True
        elif action.regex_rewrite is not None:
            route._regex_rewrite = self._engine.compile(action.regex_rewrite.pattern.regex)
            route._substitution = action.regex_rewrite.substitution
            route._regex_rewrite.sub(route._substitution, "")  # reject a bad rewrite string now
            route.rewrites = True

    def _build_direct_response(self, route: MatchedRoute, action: DirectResponseAction) -> None:
        route.kind = "direct_response"
        route.direct_status = action.status
        body = read_bytes(action.body) if action.body is not None else b""
        if len(body) > MAX_DIRECT_RESPONSE_BODY:
            raise ValueError(f"direct_response.body is {len(body)} bytes; Envoy's maximum is "
                             f"{MAX_DIRECT_RESPONSE_BODY} (max_direct_response_body_size_bytes)")
        route.direct_body = body

    # -- per request

    def _select_vhost(self, authority: str) -> _VirtualHost | None:
        host = authority.lower()
        colon = _port_start(host)
        vhost = self._find_domain(host)
        if vhost is None and colon >= 0:
            vhost = self._find_domain(host[:colon])
        if vhost is None:
            vhost = self._default
        cache = self._vhost_cache
        if len(cache) >= _VHOST_CACHE_MAX:
            cache.clear()  # authorities are client-chosen: bound the memo, keep it simple
        cache[authority] = vhost
        return vhost

    def _find_domain(self, host: str) -> _VirtualHost | None:
        vhost = self._exact.get(host)
        if vhost is not None:
            return vhost
        n = len(host)
        for length, table in self._suffixes:
            if length < n:
                vhost = table.get(host[n - length:])
                if vhost is not None:
                    return vhost
        for length, table in self._prefixes:
            if length < n:
                vhost = table.get(host[:length])
                if vhost is not None:
                    return vhost
        return None

    def match(self, authority: str, path: str, headers: HeaderList,
              method: str | None = None, scheme: str | None = None) -> MatchedRoute | None:
        """The first route of the selected virtual host that matches, or None (404 NR).

        `authority` is the Host header, `path` the raw request target (with query).
        `method` and `scheme` only serve `:method` / `:scheme` header matchers.
        """
        vhost = self._vhost_cache.get(authority, _MISS)
        if vhost is _MISS:
            vhost = self._select_vhost(authority)
        if vhost is None:
            return None
        p = path
        q = p.find("?")
        if q >= 0:
            p = p[:q]
        if "#" in p:
            p = p[: p.index("#")]
        lower = None
        candidates = None  # the regex set's matches, ascending; scanned when first needed
        pending = _NO_CANDIDATE
        for kind, arg, conditions, route in vhost.entries:  # type: ignore[union-attr]
            if kind == _BLOCK:
                route = arg(p)
                if route is None:
                    continue
                return route
            if kind == _REGEX_RUN:
                if candidates is None:
                    candidates = iter(vhost.regex_set.matches(p))  # type: ignore[union-attr]
                    pending = next(candidates, _NO_CANDIDATE)
                while pending < arg:
                    route, conditions = vhost.regex_routes[pending]  # type: ignore[union-attr]
                    if conditions is None or conditions.matches(headers, authority, path, method, scheme):
                        return route
                    pending = next(candidates, _NO_CANDIDATE)
                continue
            if kind == _PREFIX:
                if not p.startswith(arg):
                    continue
            elif kind == _PATH:
                if p != arg:
                    continue
            else:
                if lower is None:
                    lower = p.lower()
                if kind == _PREFIX_CI:
                    if not lower.startswith(arg):
                        continue
                elif lower != arg:  # _PATH_CI
                    continue
            if conditions is None or conditions.matches(headers, authority, path, method, scheme):
                return route
        # A virtual host with a `matcher` has no entries: asked only here, so a request a route matched pays nothing
        choose = vhost.choose  # type: ignore[union-attr]
        return None if choose is None else choose(p, headers, authority, path, method, scheme)


def _rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

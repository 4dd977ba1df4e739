"""envoy.filters.http.jwt_authn: requests must carry JWTs the configured providers signed, as Envoy 1.40 checks them.

Observed beside Envoy 1.40 (tests/proxy/test_proxy_jwt_authn.py), and read in its verifier and authenticator. A
request's requirement comes from its route's PerRouteConfig (`disabled`, or `requirement_name` in
`requirement_map`: a name not there is 403 "Failed JWT authentication: Wrong requirement_name: ..."), else from
the first of `rules` whose `match` (a RouteMatch, matched as routes are) takes it; a rule without `requires`, or
no rule, requires nothing. Requirements: `provider_name` (with `provider_and_audiences`' audiences instead of the
provider's), `requires_all` (the first failure), `requires_any` (any success; else Envoy's pick among the
failures: the last that is neither "missing" nor an unknown issuer; `allow_missing` and
`allow_missing_or_failed` among its children are flags on it), `allow_missing` (no token is fine, a bad one is
not) and `allow_missing_or_failed` (always passes); these two look for tokens wherever any provider does and
check each with the provider of its issuer.

A provider's tokens are where its `from_headers` (`value_prefix` before the token), `from_params` and
`from_cookies` say, or by default `Authorization: Bearer <token>` and the `access_token` parameter; every token
found must pass (the last found is checked first), in Envoy's order: its form, its issuer (the provider's
`issuer` when set), its time window (`clock_skew_seconds`, 0 meaning the default 60), its audiences (one of
`audiences` when set: else 403), `require_expiration`, `subjects`, `max_lifetime` (counted from now, as Envoy
1.40 does), then its signature by a key of the provider's JWKS (filters/common/jwt_verify.py): `local_jwks`, or
`remote_jwks` fetched through the worker's async client when a token that passed all the rest needs it (the
request held meanwhile, others waiting on the same fetch) and kept `cache_duration` (default 10 minutes); a failed fetch is "Jwks remote fetch
is failed". With `jwt_cache_config` verified tokens are kept per provider (by default 100 tokens of up to 4096
bytes, as Envoy): a cached one skips parsing and the signature, never the time window. On success the token's header is
removed unless `forward`, the payload goes in `forward_payload_header` (base64url, padded with
`pad_forward_payload_header`) and `claim_to_headers` copy claims (strings as they are, numbers and booleans as
text, objects and lists as base64 of their JSON). A client's own copies of those headers are removed from every
request, the filter disabled or not, as Envoy does.

A failure is 401 (403 for audiences) with the status text as body, `www-authenticate: Bearer
realm="<scheme>://<host><path>"` (plus `, error="invalid_token"` unless the token was missing) and details
`jwt_authn_access_denied{<text with _ for spaces>}`. `bypass_cors_preflight` lets CORS preflights through.
Stats: `http.<prefix>.jwt_authn.[<stat_prefix>.]{allowed, denied, cors_preflight_bypassed, jwks_fetch_success,
jwks_fetch_failed, jwt_cache_hit, jwt_cache_miss}`.

`remote_jwks.retry_policy` retries the fetch as Envoy's fetcher (filters/common/jwks_fetcher.py). With
`remote_jwks.async_fetch` the worker fetches when it builds the filter, again 5 s before the keys expire or
`failed_refetch_duration` (1 s) after a failure, and a request fetches on demand only when no keys are there;
without `fast_listener` a static listener serves only once its first fetch is done (Envoy's init target;
departure: an LDS listener serves at once).

Refused by name (not supported yet): `payload_in_metadata`,
`header_in_metadata`, `failed_status_in_metadata`, `normalize_payload_in_metadata` (pylon has no dynamic
metadata), `clear_route_cache`, `filter_state_rules`, `strip_failure_response`. Departure: a local JWKS that
does not parse is a config error (Envoy loads the provider without keys).
"""

from __future__ import annotations

import base64
import json
import re
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

from pylon.config import registry
from pylon.config.datasource import DataSource, read_bytes
from pylon.config.envoy import (
    DirectResponseAction, Duration, EnvoyStruct, NonEmptyStr, NotSupportedYet, Route, RouteConfiguration, RouteMatch,
    StringMatcher, UInt32, VirtualHost, _exactly_one,
)
from pylon.config.errors import FieldError
from pylon.config.services import HttpUri
from pylon.extensions.filters.common import jwt_verify as jv
from pylon.extensions.filters.common.jwks_fetcher import CoreRetryPolicy, fetch_jwks
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList
from pylon.proxy.router import RouteTable, _compile_string_matcher, first_query_values
from pylon.proxy.stream_states import RS_DONE
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
DEFAULT_CACHE_DURATION = 600.0
#: async_fetch refetches this long before the keys expire (Envoy's RefetchBeforeExpiredSec), so no request waits
ASYNC_REFETCH_EARLY = 5.0


class Empty(EnvoyStruct, kw_only=True):
    """google.protobuf.Empty."""


class JwtHeader(EnvoyStruct, kw_only=True):
    name: NonEmptyStr
    value_prefix: str = ""


class JwtClaimToHeader(EnvoyStruct, kw_only=True):
    header_name: NonEmptyStr
    claim_name: NonEmptyStr


class JwtCacheConfig(EnvoyStruct, kw_only=True):
    """Envoy's verified-token cache per provider (when set: by default 100 tokens of up to 4096 bytes)."""

    jwt_cache_size: UInt32 = 0
    jwt_max_token_size: UInt32 = 0


class JwksAsyncFetch(EnvoyStruct, kw_only=True):
    """jwt_authn.v3.JwksAsyncFetch: fetch the JWKS before requests need it (see the module docstring)."""

    fast_listener: bool = False
    failed_refetch_duration: Duration | None = None


class RemoteJwks(EnvoyStruct, kw_only=True):
    http_uri: HttpUri | None = None
    cache_duration: Duration | None = None
    async_fetch: JwksAsyncFetch | None = None
    retry_policy: CoreRetryPolicy | None = None

    def __post_init__(self) -> None:
        if self.http_uri is None:
            raise FieldError("http_uri", "missing required field")


class JwtProvider(EnvoyStruct, kw_only=True):
    """extensions.filters.http.jwt_authn.v3.JwtProvider."""

    issuer: str = ""
    audiences: list[str] = msgspec.field(default_factory=list)
    subjects: StringMatcher | None = None
    require_expiration: bool = False
    max_lifetime: Duration | None = None
    remote_jwks: RemoteJwks | None = None
    local_jwks: DataSource | None = None
    forward: bool = False
    from_headers: list[JwtHeader] = msgspec.field(default_factory=list)
    from_params: list[str] = msgspec.field(default_factory=list)
    from_cookies: list[str] = msgspec.field(default_factory=list)
    forward_payload_header: str = ""
    pad_forward_payload_header: bool = False
    payload_in_metadata: NotSupportedYet | None = None
    normalize_payload_in_metadata: NotSupportedYet | None = None
    header_in_metadata: NotSupportedYet | None = None
    failed_status_in_metadata: NotSupportedYet | None = None
    clock_skew_seconds: UInt32 = 60
    jwt_cache_config: JwtCacheConfig | None = None
    claim_to_headers: list[JwtClaimToHeader] = msgspec.field(default_factory=list)
    clear_route_cache: bool = False

    def __post_init__(self) -> None:
        _exactly_one(self, "remote_jwks", "local_jwks")
        if self.clear_route_cache:
            raise FieldError("clear_route_cache", "not supported yet")
        if self.local_jwks is not None:
            try:
                jv.parse_jwks(read_bytes(self.local_jwks).decode("utf-8", "replace"))
            except (ValueError, OSError) as exc:
                raise FieldError("local_jwks", str(exc)) from None


class ProviderWithAudiences(EnvoyStruct, kw_only=True):
    provider_name: NonEmptyStr
    audiences: list[str] = msgspec.field(default_factory=list)


class JwtRequirement(EnvoyStruct, kw_only=True):
    """oneof requires_type {provider_name, provider_and_audiences, requires_any, requires_all,
    allow_missing_or_failed, allow_missing}."""

    provider_name: str | None = None
    provider_and_audiences: ProviderWithAudiences | None = None
    requires_any: JwtRequirementOrList | None = None
    requires_all: JwtRequirementAndList | None = None
    allow_missing_or_failed: Empty | None = None
    allow_missing: Empty | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "provider_name", "provider_and_audiences", "requires_any", "requires_all",
                     "allow_missing_or_failed", "allow_missing")


class JwtRequirementOrList(EnvoyStruct, kw_only=True):
    requirements: list[JwtRequirement]

    def __post_init__(self) -> None:
        if len(self.requirements) < 2:
            raise FieldError("requirements", "needs at least 2 items")


class JwtRequirementAndList(EnvoyStruct, kw_only=True):
    requirements: list[JwtRequirement]

    def __post_init__(self) -> None:
        if len(self.requirements) < 2:
            raise FieldError("requirements", "needs at least 2 items")


class RequirementRule(EnvoyStruct, kw_only=True):
    match: RouteMatch
    requires: JwtRequirement | None = None
    requirement_name: str = ""

    def __post_init__(self) -> None:
        if self.requires is not None and self.requirement_name:
            raise FieldError("requirement_name", "only one of requires and requirement_name may be set")


class JwtAuthentication(EnvoyStruct, kw_only=True):
    """extensions.filters.http.jwt_authn.v3.JwtAuthentication."""

    providers: dict[str, JwtProvider] = msgspec.field(default_factory=dict)
    rules: list[RequirementRule] = msgspec.field(default_factory=list)
    filter_state_rules: NotSupportedYet | None = None
    bypass_cors_preflight: bool = False
    requirement_map: dict[str, JwtRequirement] = msgspec.field(default_factory=dict)
    strip_failure_response: bool = False
    stat_prefix: str = ""

    def __post_init__(self) -> None:
        if self.strip_failure_response:
            raise FieldError("strip_failure_response", "not supported yet")
        for i, rule in enumerate(self.rules):
            if rule.requires is not None:
                _check_names(rule.requires, self.providers, f"rules[{i}].requires")
            elif rule.requirement_name and rule.requirement_name not in self.requirement_map:
                raise FieldError(f"rules[{i}].requirement_name", f"{rule.requirement_name!r} is not in "
                                 "requirement_map")
        for name, requirement in self.requirement_map.items():
            _check_names(requirement, self.providers, f"requirement_map[{name}]")


class PerRouteConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.jwt_authn.v3.PerRouteConfig: oneof {disabled (true), requirement_name}."""

    disabled: bool = False
    requirement_name: str = ""

    def __post_init__(self) -> None:
        if self.disabled == bool(self.requirement_name):
            raise FieldError("requirement_name", "exactly one of disabled (true) and requirement_name must be set")


def _check_names(requirement: JwtRequirement, providers: dict[str, JwtProvider], path: str) -> None:
    """Envoy refuses a requirement naming a provider it does not have."""
    name = requirement.provider_name or (requirement.provider_and_audiences.provider_name
                                         if requirement.provider_and_audiences is not None else None)
    if name is not None and name not in providers:
        raise FieldError(path, f"provider {name!r} is not in providers")
    for kind in ("requires_any", "requires_all"):
        group = getattr(requirement, kind)
        if group is not None:
            for i, child in enumerate(group.requirements):
                _check_names(child, providers, f"{path}.{kind}.requirements[{i}]")


# --------------------------------------------------------------------------- the filter's working parts

class Token:
    """One token found in a request: its text, the header it came in (dropped unless forwarded), and the issuers
    whose providers look there (for the requirements that check tokens of every provider)."""

    __slots__ = ("value", "header", "issuers")

    def __init__(self, value: str, header: bytes | None, issuers: frozenset[str]) -> None:
        self.value, self.header, self.issuers = value, header, issuers


_TOKEN = re.compile(r"[A-Za-z0-9\-_.=+/]+")


def _after_prefix(value: str, prefix: str) -> str | None:
    """The token that follows `prefix` in a header value (Envoy takes the token characters after it)."""
    start = value.find(prefix) if prefix else 0
    if start < 0:
        return None
    found = _TOKEN.match(value, start + len(prefix))
    return found.group() if found is not None else None


def _cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                found.setdefault(key, val)
    return found


class Locations:
    """Where tokens are looked for: one provider's places, or every provider's (allow_missing and
    allow_missing_or_failed), each place with the issuers of the providers that look there."""

    def __init__(self, providers: list[JwtProvider]) -> None:
        headers: dict[tuple[bytes, str], set[str]] = {}
        params: dict[str, set[str]] = {}
        cookies: dict[str, set[str]] = {}
        for config in providers:
            from_headers, from_params = config.from_headers, config.from_params
            if not from_headers and not from_params and not config.from_cookies:
                from_headers, from_params = [JwtHeader(name="Authorization", value_prefix="Bearer ")], ["access_token"]
            for header in from_headers:
                headers.setdefault((header.name.lower().encode(), header.value_prefix), set()).add(config.issuer)
            for param in from_params:
                params.setdefault(param, set()).add(config.issuer)
            for cookie in config.from_cookies:
                cookies.setdefault(cookie, set()).add(config.issuer)
        self.headers = [(name, prefix, frozenset(issuers)) for (name, prefix), issuers in headers.items()]
        self.params = [(name, frozenset(issuers)) for name, issuers in params.items()]
        self.cookies = [(name, frozenset(issuers)) for name, issuers in cookies.items()]

    def tokens(self, stream: Any) -> list[Token]:
        found = []
        for name, prefix, issuers in self.headers:
            for n, v in stream.headers:
                if n == name:
                    token = _after_prefix(v.decode("latin-1"), prefix)
                    if token is not None:
                        found.append(Token(token, name, issuers))
        if self.params:
            query = first_query_values(stream.path.decode("latin-1"))
            found.extend(Token(query[p], None, issuers) for p, issuers in self.params if query.get(p))
        if self.cookies:
            jar = _cookies(stream.headers)
            found.extend(Token(jar[c], None, issuers) for c, issuers in self.cookies if jar.get(c))
        return found


class TokenCache:
    """Envoy's per-provider cache of verified tokens (with jwt_cache_config): a hit skips parsing and the signature;
    issuer, time and audiences are still checked. Least recently used first out."""

    def __init__(self, size: int, max_token_size: int) -> None:
        self.size, self.max_token_size = size, max_token_size
        self.entries: dict[str, jv.Jwt] = {}

    def get(self, token: str) -> jv.Jwt | None:
        jwt = self.entries.pop(token, None)
        if jwt is not None:
            self.entries[token] = jwt  # most recent last
        return jwt

    def put(self, jwt: jv.Jwt) -> None:
        if self.size and len(jwt.token) <= self.max_token_size:
            if len(self.entries) >= self.size:
                del self.entries[next(iter(self.entries))]
            self.entries[jwt.token] = jwt


class Provider:
    """One provider at work in one worker: what it checks, its keys and its token cache."""

    def __init__(self, name: str, config: JwtProvider) -> None:
        self.name = name
        self.config = config
        self.issuer = config.issuer
        self.audiences = config.audiences
        self.clock_skew = config.clock_skew_seconds or 60  # 0 is Envoy's default too
        self.subjects = _compile_string_matcher(config.subjects, get_engine(), as_bytes=False) \
            if config.subjects is not None else None
        self.max_lifetime = float(config.max_lifetime) if config.max_lifetime is not None else None
        self.locations = Locations([config])
        cache = config.jwt_cache_config
        self.cache = TokenCache(cache.jwt_cache_size or 100, cache.jwt_max_token_size or 4096) if cache is not None \
            else TokenCache(0, 0)  # off, though looked up (and a miss counted) as in Envoy
        self.keys: list[jv.Jwk] | None = None
        self.keys_until = float("inf")
        if config.local_jwks is not None:
            self.keys = jv.parse_jwks(read_bytes(config.local_jwks).decode("utf-8", "replace"))
        #: a remote JWKS fetch under way: the callbacks of the streams waiting for it
        self.waiting: list[Callable[[], None]] | None = None

    def needs_keys(self, now: float) -> bool:
        return self.keys is None or now >= self.keys_until

    def check_claims(self, jwt: jv.Jwt, audiences: list[str] | None) -> None:
        """What is checked even for a cached token: time, audiences, subject and lifetime (the issuer was)."""
        now = int(time.time())
        jv.check_time(jwt, now, self.clock_skew)
        allowed = self.audiences if audiences is None else audiences
        if allowed and not set(jwt.audiences) & set(allowed):
            raise jv.JwtError(jv.AUDIENCE_NOT_ALLOWED)
        exp = jwt.number("exp")
        if self.config.require_expiration and not exp:
            raise jv.JwtError(jv.VERIFICATION_FAILS)  # what Envoy 1.40 answers (observed)
        if self.subjects is not None:
            sub = jwt.claims.get("sub")
            if not isinstance(sub, str) or not self.subjects(sub):
                raise jv.JwtError(jv.VERIFICATION_FAILS)
        if self.max_lifetime is not None and (not exp or exp - now > self.max_lifetime):
            raise jv.JwtError(jv.VERIFICATION_FAILS)  # a token valid longer than that from now (observed)


class Outcome:
    """What a request's verification found: the tokens that passed and their providers, applied on success;
    `fetched`: the remote JWKS this request already fetched (or failed to)."""

    __slots__ = ("passed", "cache_hits", "cache_misses", "fetched")

    def __init__(self, fetched: set[int]) -> None:
        self.passed: list[tuple[Provider, Token, jv.Jwt]] = []
        self.cache_hits = self.cache_misses = 0
        self.fetched = fetched


class NeedKeys(Exception):
    """A token passed everything but its signature, and its provider's remote JWKS is not here (or stale): fetch
    it, then check the request again - as Envoy's authenticator fetches only then."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider.name)
        self.provider = provider


def _authenticate(tokens: list[Token], provider: Provider | None, providers: list[Provider],
                  audiences: list[str] | None, outcome: Outcome) -> str:
    """Envoy's authenticator over one requirement's tokens, last found first: "" when they all pass, else the
    status of the first that does not (every one is tried when `provider` is None: the allow_* requirements)."""
    status = jv.MISSING
    for token in reversed(tokens):
        status = _verify_one(token, provider, providers, audiences, outcome)
        if status and provider is not None:
            return status
    return status


def _verify_one(token: Token, provider: Provider | None, providers: list[Provider], audiences: list[str] | None,
                outcome: Outcome) -> str:
    jwt = provider.cache.get(token.value) if provider is not None else None
    if provider is not None:
        if jwt is None:
            outcome.cache_misses += 1
        else:
            outcome.cache_hits += 1
    try:
        cached = jwt is not None
        if jwt is None:
            jwt = jv.parse(token.value)
        if "" not in token.issuers and jwt.issuer not in token.issuers:
            raise jv.JwtError(jv.UNKNOWN_ISSUER)
        owner = provider or next((p for p in providers if p.issuer and p.issuer == jwt.issuer), None) \
            or next((p for p in providers if not p.issuer), None)
        if owner is None:
            raise jv.JwtError(jv.UNKNOWN_ISSUER)
        owner.check_claims(jwt, audiences)
        if not cached:
            if owner.config.remote_jwks is not None and owner.needs_keys(time.monotonic()):
                if id(owner) not in outcome.fetched:
                    raise NeedKeys(owner)
                raise jv.JwtError(jv.JWKS_FETCH_FAILED)
            assert owner.keys is not None
            jv.verify_signature(jwt, owner.keys)
            if provider is not None:
                provider.cache.put(jwt)
    except jv.JwtError as exc:
        return str(exc)
    outcome.passed.append((owner, token, jwt))
    return ""


class Requirement:
    """A compiled JwtRequirement: `check` gives "" when it is met, else the status text to answer."""

    def __init__(self, config: JwtRequirement, providers: dict[str, Provider]) -> None:
        self.kind = next(k for k in ("provider_name", "provider_and_audiences", "requires_any", "requires_all",
                                     "allow_missing_or_failed", "allow_missing") if getattr(config, k) is not None)
        self.audiences: list[str] | None = None
        self.children: list[Requirement] = []
        self.provider: Provider | None = None
        self.allow_missing = self.allow_failed = False
        if self.kind == "provider_name":
            self.provider = providers[config.provider_name]  # type: ignore[index]
        elif self.kind == "provider_and_audiences":
            assert config.provider_and_audiences is not None
            self.provider = providers[config.provider_and_audiences.provider_name]
            self.audiences = config.provider_and_audiences.audiences
        elif self.kind == "requires_all":
            assert config.requires_all is not None
            self.children = [Requirement(child, providers) for child in config.requires_all.requirements]
        elif self.kind == "requires_any":
            # Envoy's AnyVerifier: allow_missing(_or_failed) among the children are flags, not children
            assert config.requires_any is not None
            for child in config.requires_any.requirements:
                if child.allow_missing_or_failed is not None:
                    self.allow_failed = True
                elif child.allow_missing is not None:
                    self.allow_missing = True
                else:
                    self.children.append(Requirement(child, providers))
            if not self.children:
                self.children.append(Requirement(JwtRequirement(
                    allow_missing_or_failed=Empty() if self.allow_failed else None,
                    allow_missing=None if self.allow_failed else Empty()), providers))
        if self.provider is not None:
            self.providers = [self.provider]
            self.locations = self.provider.locations
        elif self.children:
            self.providers = list({id(p): p for c in self.children for p in c.providers}.values())
        else:
            self.providers = list(providers.values())
            self.locations = Locations([p.config for p in self.providers])

    def check(self, stream: Any, outcome: Outcome) -> str:
        if self.kind == "requires_all":
            for child in self.children:
                status = child.check(stream, outcome)
                if status:
                    return status
            return ""
        if self.kind == "requires_any":
            statuses = []
            for child in self.children:
                status = child.check(stream, outcome)
                if not status:
                    return ""
                statuses.append(status)
            final = jv.MISSING  # the last real failure; an unknown issuer over a missing token
            for status in statuses:
                if status not in (jv.MISSING, jv.UNKNOWN_ISSUER) or final == jv.MISSING:
                    final = status
            if self.allow_failed or (self.allow_missing and final == jv.MISSING):
                return ""
            return final
        status = _authenticate(self.locations.tokens(stream), self.provider, self.providers, self.audiences,
                               outcome)
        if self.kind == "allow_missing_or_failed" or (self.kind == "allow_missing" and status == jv.MISSING):
            return ""
        return status


def _claim_text(value: Any) -> bytes | None:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return str(value).encode()
    if isinstance(value, (dict, list)):
        return base64.b64encode(json.dumps(value, separators=(",", ":")).encode())
    return None


class JwtAuthnFilter:
    """One HCM's jwt_authn filter in one worker."""

    def __init__(self, name: str, config: JwtAuthentication, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.providers = {key: Provider(key, provider) for key, provider in config.providers.items()}
        self.bypass_cors_preflight = config.bypass_cors_preflight
        self.requirement_map = {key: Requirement(r, self.providers) for key, r in config.requirement_map.items()}
        self.requirement_names = ",".join(sorted(self.requirement_map))
        self.rules: list[Requirement | None] = [
            Requirement(rule.requires, self.providers) if rule.requires is not None
            else self.requirement_map.get(rule.requirement_name) for rule in config.rules]
        routes = [Route(name=str(i), match=rule.match, direct_response=DirectResponseAction(status=200))
                  for i, rule in enumerate(config.rules)]
        self.rule_table = RouteTable(RouteConfiguration(virtual_hosts=[
            VirtualHost(name="jwt_authn_rules", domains=["*"], routes=routes)])) if routes else None
        #: the headers the filter writes: a client's own copies never reach the upstream (Envoy removes them from
        #: every request, even where the filter is disabled)
        self.sanitized = frozenset(name.lower().encode() for p in config.providers.values()
                                   for name in [p.forward_payload_header, *(c.header_name for c in p.claim_to_headers)]
                                   if name)
        prefix = f"http.{stat_prefix}.jwt_authn." + (f"{config.stat_prefix}." if config.stat_prefix else "")
        self.counters = {kind: stats.counter(prefix + kind) for kind in (
            "allowed", "denied", "cors_preflight_bypassed", "jwks_fetch_success", "jwks_fetch_failed",
            "jwt_cache_hit", "jwt_cache_miss")}

    def _requirement(self, stream: Any) -> Requirement | str | None:
        """The request's requirement; None for none (the filter disabled on the route, or no requirement: Envoy
        counts the latter allowed); the refusal's text when a route names a requirement that does not exist."""
        route = stream.route
        per_route = route.filter_config(self.name) if route is not None else None
        if per_route is not None:
            if per_route.disabled:
                return None
            requirement = self.requirement_map.get(per_route.requirement_name)
            if requirement is None:
                return (f"Wrong requirement_name: {per_route.requirement_name}. "
                        f"It should be one of [{self.requirement_names}]")
            return requirement
        requirement = None
        if self.rule_table is not None:
            matched = self.rule_table.match(stream.authority.decode("latin-1"),
                                            stream.path.decode("utf-8", "surrogateescape"),
                                            HeaderList(stream.headers), stream.method.decode("latin-1"),
                                            stream.conn.scheme.decode("latin-1"))
            requirement = self.rules[int(matched.name)] if matched is not None else None
        if requirement is None:
            self.counters["allowed"].inc()
        return requirement

    def decode_headers(self, stream: Any) -> bool:
        if self.sanitized:
            for name in {name for name, _ in stream.headers if name in self.sanitized}:
                stream.edit_request_header("remove", name)
        requirement = self._requirement(stream)
        if requirement is None:
            return True
        if isinstance(requirement, str):
            self.counters["denied"].inc()
            stream.respond_from_filter(403, b"Failed JWT authentication: " + requirement.encode(), [],
                                       _details(requirement))
            return False
        if self.bypass_cors_preflight and stream.method == b"OPTIONS" and _is_preflight(stream.headers):
            self.counters["cors_preflight_bypassed"].inc()
            return True
        return self._decide(stream, requirement, set())

    def _decide(self, stream: Any, requirement: Requirement, fetched: set[int]) -> bool:
        """Check the request; True when it may go on now. A remote JWKS it needs first is fetched (the request
        held), then the request checked again, from the start."""
        outcome = Outcome(fetched)
        try:
            status = requirement.check(stream, outcome)
        except NeedKeys as need:
            fetched.add(id(need.provider))

            def resume() -> None:
                if stream.rs_state < RS_DONE and self._decide(stream, requirement, fetched):
                    stream.continue_decoding()
            self._fetch(stream, need.provider, resume)
            return False
        if outcome.cache_hits:
            self.counters["jwt_cache_hit"].inc(outcome.cache_hits)
        if outcome.cache_misses:
            self.counters["jwt_cache_miss"].inc(outcome.cache_misses)
        if status:
            self.counters["denied"].inc()
            self._deny(stream, status)
            return False
        self.counters["allowed"].inc()
        for provider, token, jwt in outcome.passed:
            config = provider.config
            if config.forward_payload_header:
                payload = jwt.payload_segment + "=" * (-len(jwt.payload_segment) % 4) \
                    if config.pad_forward_payload_header else jwt.payload_segment
                stream.edit_request_header("add", config.forward_payload_header.lower().encode(), payload.encode())
            for claim in config.claim_to_headers:
                text = _claim_text(jwt.claims.get(claim.claim_name))
                if text:
                    stream.edit_request_header("add", claim.header_name.lower().encode(), text)
            if not config.forward and token.header is not None:
                stream.edit_request_header("remove", token.header)
        return True

    @staticmethod
    def _deny(stream: Any, status: str) -> None:
        realm = b'Bearer realm="%s://%s%s"' % (stream.conn.scheme, stream.authority or b"", stream.path)
        if status != jv.MISSING:
            realm += b', error="invalid_token"'
        code = 403 if status == jv.AUDIENCE_NOT_ALLOWED else 401
        stream.respond_from_filter(code, status.encode(), [(b"www-authenticate", realm)], _details(status))

    def _fetch(self, stream: Any, provider: Provider, then: Callable[[], None]) -> None:
        """Fetch the provider's JWKS once for every stream that needs it meanwhile."""
        if provider.waiting is not None:
            provider.waiting.append(then)
            return
        provider.waiting = [then]
        self._start_fetch(stream.hcm.worker, provider)

    def _start_fetch(self, worker: Any, provider: Provider, settled: Callable[[bool], None] | None = None) -> None:
        """One fetch of the provider's remote JWKS (with its retry_policy); the keys kept `cache_duration`, and
        every stream waiting for them told; `settled(ok)` afterwards (async_fetch's timers)."""
        remote = provider.config.remote_jwks
        assert remote is not None and remote.http_uri is not None

        def fetched(keys: list[jv.Jwk] | None) -> None:
            if keys is not None:
                self.counters["jwks_fetch_success"].inc()
                provider.keys, provider.keys_until = keys, time.monotonic() + _cache_duration(remote)
                provider.cache.entries.clear()  # tokens verified with the old keys are verified again
            else:
                self.counters["jwks_fetch_failed"].inc()
                provider.keys = None  # as Envoy: stale keys are not used once a refetch failed
            waiting, provider.waiting = provider.waiting or [], None
            for callback in waiting:
                callback()
            if settled is not None:
                settled(keys is not None)

        fetch_jwks(worker, remote.http_uri, remote.retry_policy, fetched)

    def start(self, worker: Any) -> list[Any]:
        """The worker built this filter: start async_fetch's fetches; the futures a listener waits on before it
        serves (those without fast_listener, as Envoy's init targets), each done after its first fetch."""
        waits = []
        for provider in self.providers.values():
            remote = provider.config.remote_jwks
            if remote is None or remote.async_fetch is None:
                continue
            first = worker.loop.create_future()
            if not remote.async_fetch.fast_listener:
                waits.append(first)
            self._refetch(worker, provider, remote, first)
        return waits

    def _refetch(self, worker: Any, provider: Provider, remote: RemoteJwks, first: Any = None) -> None:
        """async_fetch: fetch now; again 5 s before the keys expire, or `failed_refetch_duration` after a failure."""
        loop = worker.loop

        def settled(ok: bool) -> None:
            if first is not None and not first.done():
                first.set_result(ok)
            if ok:
                duration = _cache_duration(remote)
                again = duration - ASYNC_REFETCH_EARLY if duration > ASYNC_REFETCH_EARLY else duration
            else:
                failed = remote.async_fetch.failed_refetch_duration  # type: ignore[union-attr]
                again = float(failed) if failed is not None else 1.0
            loop.call_later(again, _refetch_while_kept, weakref.ref(self), worker, provider, remote)

        if provider.waiting is None:
            provider.waiting = []
        self._start_fetch(worker, provider, settled)


def _refetch_while_kept(filter_ref: "weakref.ref[JwtAuthnFilter]", worker: Any, provider: Provider,
                        remote: RemoteJwks) -> None:
    """async_fetch's next fetch, unless the filter is gone (its listener or route configuration replaced)."""
    jwt_filter = filter_ref()
    if jwt_filter is not None:
        jwt_filter._refetch(worker, provider, remote)


def _cache_duration(remote: RemoteJwks) -> float:
    return float(remote.cache_duration) if remote.cache_duration is not None else DEFAULT_CACHE_DURATION


def _details(text: str) -> str:
    """Envoy's response details for a refusal: the text with underscores for spaces."""
    return "jwt_authn_access_denied{%s}" % text.replace(" ", "_")


def _is_preflight(headers: list[tuple[bytes, bytes]]) -> bool:
    names = {name for name, _ in headers}
    return b"origin" in names and b"access-control-request-method" in names


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, JwtAuthentication)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, PerRouteConfig)
register_filter(JwtAuthentication, JwtAuthnFilter)

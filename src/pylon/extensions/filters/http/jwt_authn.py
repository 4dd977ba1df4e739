"""envoy.filters.http.jwt_authn: requests must carry JWTs the configured providers signed, as Envoy 1.40 checks them.

Observed beside Envoy 1.40 (tests/proxy/test_proxy_jwt_authn.py). A request's requirement comes from its route's
PerRouteConfig (`disabled`, or `requirement_name` in `requirement_map`), else from the first of `rules` whose
`match` (a RouteMatch, matched as routes are) takes it; a rule without `requires`, or no rule, requires nothing.
Requirements: `provider_name` (with `provider_and_audiences`' audiences instead of the provider's),
`requires_any` (the first success; else the first failure that is not "missing"), `requires_all` (the first
failure), `allow_missing` (no token is fine, a bad one is not) and `allow_missing_or_failed` (always passes).

A provider's tokens are where its `from_headers` (`value_prefix` before the token), `from_params` and
`from_cookies` say, or by default `Authorization: Bearer <token>` and the `access_token` parameter. Each token
found must pass (filters/common/jwt_verify.py): its form, its `iss` (the provider's `issuer` when set), its
time window (`clock_skew_seconds`, default 60), `exp` when `require_expiration`, its `aud` (one of `audiences`
when set: else 403), then its signature by a key of the provider's JWKS (`local_jwks`, or `remote_jwks` fetched
through the worker's async client on first need and kept `cache_duration`, default 10 minutes; a failed fetch
is "Jwks remote fetch is failed"). On success the token's header is removed unless `forward`, the payload goes
in `forward_payload_header` (base64url, padded with `pad_forward_payload_header`) and `claim_to_headers` copy
claims (strings as they are, numbers and booleans as text, objects and lists as base64 of their JSON).

A failure is 401 (403 for audiences) with the status text as body, `www-authenticate: Bearer
realm="<scheme>://<host><path>"` (plus `, error="invalid_token"` unless the token was missing) and details
`jwt_authn_access_denied{<text with _ for spaces>}`. `bypass_cors_preflight` lets CORS preflights through.
Stats: `http.<prefix>.jwt_authn.{allowed, denied, cors_preflight_bypassed, jwks_fetch_success,
jwks_fetch_failed}`.

Refused by name (not supported yet): `subjects`, `max_lifetime`, `remote_jwks.async_fetch` and `.retry_policy`,
`payload_in_metadata`, `header_in_metadata`, `failed_status_in_metadata`, `normalize_payload_in_metadata`,
`jwt_cache_config` (Envoy's token cache: every token is verified), `clear_route_cache`, `filter_state_rules`,
`strip_failure_response`, `stat_prefix`. Departures: a local JWKS that does not parse is a config error (Envoy
loads the provider without keys); a `requirement_name` missing from `requirement_map` fails closed (403).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from pylon.config import registry
from pylon.config.datasource import DataSource, read_bytes
from pylon.config.envoy import (
    DirectResponseAction, Duration, EnvoyStruct, NonEmptyStr, NotSupportedYet, Route, RouteConfiguration, RouteMatch,
    UInt32, VirtualHost, _exactly_one,
)
from pylon.config.errors import FieldError
from pylon.config.services import HttpUri
from pylon.extensions.filters.common import jwt_verify as jv
from pylon.proxy import async_client
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList
from pylon.proxy.router import RouteTable, first_query_values
from pylon.proxy.stream_states import RS_DONE

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
DEFAULT_CACHE_DURATION = 600.0


class Empty(EnvoyStruct, kw_only=True):
    """google.protobuf.Empty."""


class JwtHeader(EnvoyStruct, kw_only=True):
    name: NonEmptyStr
    value_prefix: str = ""


class JwtClaimToHeader(EnvoyStruct, kw_only=True):
    header_name: NonEmptyStr
    claim_name: NonEmptyStr


class RemoteJwks(EnvoyStruct, kw_only=True):
    http_uri: HttpUri | None = None
    cache_duration: Duration | None = None
    async_fetch: NotSupportedYet | None = None
    retry_policy: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.http_uri is None:
            raise FieldError("http_uri", "missing required field")


class JwtProvider(EnvoyStruct, kw_only=True):
    """extensions.filters.http.jwt_authn.v3.JwtProvider."""

    issuer: str = ""
    audiences: list[str] = msgspec.field(default_factory=list)
    subjects: NotSupportedYet | None = None
    require_expiration: bool = False
    max_lifetime: NotSupportedYet | None = None
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
    jwt_cache_config: NotSupportedYet | None = None
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
        if self.stat_prefix:
            raise FieldError("stat_prefix", "not supported yet")
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

class Failure(Exception):
    """A requirement not met; `str()` is the status text."""


class Token:
    """One token found in a request: where (the header to drop unless forwarded) and what."""

    __slots__ = ("value", "header")

    def __init__(self, value: str, header: bytes | None) -> None:
        self.value, self.header = value, header


_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/")


def _after_prefix(value: str, prefix: str) -> str | None:
    """The token that follows `prefix` in a header value (Envoy takes the token characters after it)."""
    start = value.find(prefix) if prefix else 0
    if start < 0:
        return None
    rest = value[start + len(prefix):]
    end = 0
    while end < len(rest) and rest[end] in _TOKEN_CHARS:
        end += 1
    return rest[:end] or None


def _cookies(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                found.setdefault(key, val)
    return found


class Provider:
    """One provider at work in one worker: where its tokens are, what it checks, its keys."""

    def __init__(self, name: str, config: JwtProvider) -> None:
        self.name = name
        self.config = config
        self.issuer = config.issuer
        self.audiences = config.audiences
        self.keys: list[jv.Jwk] | None = None
        self.keys_until = float("inf")
        if config.local_jwks is not None:
            self.keys = jv.parse_jwks(read_bytes(config.local_jwks).decode("utf-8", "replace"))
        headers = config.from_headers
        params = config.from_params
        if not headers and not params and not config.from_cookies:
            headers, params = [JwtHeader(name="Authorization", value_prefix="Bearer ")], ["access_token"]
        self.headers = [(h.name.lower().encode(), h.value_prefix) for h in headers]
        self.params = params
        self.cookies = config.from_cookies
        #: remote JWKS fetches under way: the streams waiting for them
        self.waiting: list[Callable[[], None]] | None = None

    def tokens(self, stream: Any) -> list[Token]:
        found = []
        for name, prefix in self.headers:
            for n, v in stream.headers:
                if n == name:
                    token = _after_prefix(v.decode("latin-1"), prefix)
                    if token is not None:
                        found.append(Token(token, name))
        if self.params:
            query = first_query_values(stream.path.decode("latin-1"))
            found.extend(Token(query[p], None) for p in self.params if query.get(p))
        if self.cookies:
            jar = _cookies(stream.headers)
            found.extend(Token(jar[c], None) for c in self.cookies if jar.get(c))
        return found

    def needs_keys(self, now: float) -> bool:
        return self.keys is None or now >= self.keys_until

    def verify(self, jwt: jv.Jwt, audiences: list[str] | None) -> None:
        """Issuer, time, expiry, audiences, then the signature (Envoy's authenticator order)."""
        if self.issuer and jwt.issuer != self.issuer:
            raise jv.JwtError(jv.UNKNOWN_ISSUER)
        jv.check_time(jwt, int(time.time()), self.config.clock_skew_seconds)
        if self.config.require_expiration and not jwt.number("exp"):
            raise jv.JwtError(jv.VERIFICATION_FAILS)  # what Envoy 1.40 answers (observed)
        allowed = self.audiences if audiences is None else audiences
        if allowed and not set(jwt.audiences) & set(allowed):
            raise jv.JwtError(jv.AUDIENCE_NOT_ALLOWED)
        if self.keys is None:
            raise jv.JwtError(jv.JWKS_FETCH_FAILED)
        jv.verify_signature(jwt, self.keys)


class Outcome:
    """What a request's verification found: the tokens that passed (and their providers), to apply on success."""

    __slots__ = ("passed",)

    def __init__(self) -> None:
        self.passed: list[tuple[Provider, Token, jv.Jwt]] = []


class Requirement:
    """A compiled JwtRequirement: `check` raises Failure, or returns with the passed tokens recorded."""

    def __init__(self, config: JwtRequirement, providers: dict[str, Provider]) -> None:
        self.kind = next(k for k in ("provider_name", "provider_and_audiences", "requires_any", "requires_all",
                                     "allow_missing_or_failed", "allow_missing") if getattr(config, k) is not None)
        self.audiences: list[str] | None = None
        self.children: list[Requirement] = []
        if self.kind == "provider_name":
            self.providers = [providers[config.provider_name]]  # type: ignore[index]
        elif self.kind == "provider_and_audiences":
            assert config.provider_and_audiences is not None
            self.providers = [providers[config.provider_and_audiences.provider_name]]
            self.audiences = config.provider_and_audiences.audiences
        elif self.kind in ("requires_any", "requires_all"):
            group = getattr(config, self.kind)
            self.children = [Requirement(child, providers) for child in group.requirements]
            self.providers = list({id(p): p for c in self.children for p in c.providers}.values())
        else:
            self.providers = list(providers.values())

    def check(self, stream: Any, outcome: Outcome) -> None:
        if self.kind == "requires_any":
            failures = []
            for child in self.children:
                try:
                    child.check(stream, outcome)
                    return
                except Failure as failure:
                    failures.append(str(failure))
            raise Failure(next((f for f in failures if f != jv.MISSING), jv.MISSING))
        if self.kind == "requires_all":
            for child in self.children:
                child.check(stream, outcome)
            return
        if self.kind in ("allow_missing", "allow_missing_or_failed"):
            try:
                self._check_by_issuer(stream, outcome)
            except Failure as failure:
                if self.kind == "allow_missing_or_failed" or str(failure) == jv.MISSING:
                    return
                raise
            return
        provider = self.providers[0]
        tokens = provider.tokens(stream)
        if not tokens:
            raise Failure(jv.MISSING)
        for token in tokens:
            try:
                jwt = jv.parse(token.value)
                provider.verify(jwt, self.audiences)
            except jv.JwtError as exc:
                raise Failure(str(exc)) from None
            outcome.passed.append((provider, token, jwt))

    def _check_by_issuer(self, stream: Any, outcome: Outcome) -> None:
        """allow_missing's tokens: wherever any provider looks, each checked by the provider of its issuer."""
        seen = set()
        for provider in self.providers:
            for token in provider.tokens(stream):
                if token.value in seen:
                    continue
                seen.add(token.value)
                try:
                    jwt = jv.parse(token.value)
                    owner = next((p for p in self.providers if not p.issuer or p.issuer == jwt.issuer), None)
                    if owner is None:
                        raise jv.JwtError(jv.UNKNOWN_ISSUER)
                    owner.verify(jwt, None)
                except jv.JwtError as exc:
                    raise Failure(str(exc)) from None
                outcome.passed.append((owner, token, jwt))
        if not seen:
            raise Failure(jv.MISSING)


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
        self.rules: list[Requirement | None] = [
            Requirement(rule.requires, self.providers) if rule.requires is not None
            else self.requirement_map.get(rule.requirement_name) for rule in config.rules]
        routes = [Route(name=str(i), match=rule.match, direct_response=DirectResponseAction(status=200))
                  for i, rule in enumerate(config.rules)]
        self.rule_table = RouteTable(RouteConfiguration(virtual_hosts=[
            VirtualHost(name="jwt_authn_rules", domains=["*"], routes=routes)])) if routes else None
        prefix = f"http.{stat_prefix}.jwt_authn."
        self.counters = {kind: stats.counter(prefix + kind) for kind in (
            "allowed", "denied", "cors_preflight_bypassed", "jwks_fetch_success", "jwks_fetch_failed")}

    def _requirement(self, stream: Any) -> Requirement | None | bool:
        """The request's requirement; None for none (the filter disabled on the route, or no requirement: Envoy
        counts the latter allowed); False when a route names one that does not exist."""
        route = stream.route
        per_route = route.filter_config(self.name) if route is not None else None
        if per_route is not None:
            if per_route.disabled:
                return None
            return self.requirement_map.get(per_route.requirement_name, False)
        if self.rule_table is None:
            self.counters["allowed"].inc()
            return None
        matched = self.rule_table.match(stream.authority.decode("latin-1"),
                                        stream.path.decode("utf-8", "surrogateescape"), HeaderList(stream.headers),
                                        stream.method.decode("latin-1"), stream.conn.scheme.decode("latin-1"))
        requirement = self.rules[int(matched.name)] if matched is not None else None
        if requirement is None:
            self.counters["allowed"].inc()
        return requirement

    def decode_headers(self, stream: Any) -> bool:
        requirement = self._requirement(stream)
        if requirement is None:
            return True
        if requirement is False:
            stream.respond_from_filter(403, b"", [], "jwt_authn_access_denied{requirement_name_not_found}")
            return False
        if self.bypass_cors_preflight and stream.method == b"OPTIONS" and _is_preflight(stream.headers):
            self.counters["cors_preflight_bypassed"].inc()
            return True
        now = time.monotonic()
        fetch = [p for p in requirement.providers if p.config.remote_jwks is not None and p.needs_keys(now)
                 and p.tokens(stream)]
        if not fetch:
            return self._decide(stream, requirement)
        pending = [len(fetch)]

        def fetched() -> None:
            pending[0] -= 1
            if pending[0] == 0 and stream.rs_state < RS_DONE:
                if self._decide(stream, requirement):
                    stream.continue_decoding()
        for provider in fetch:
            self._fetch(stream, provider, fetched)
        return False

    def _decide(self, stream: Any, requirement: Requirement) -> bool:
        outcome = Outcome()
        try:
            requirement.check(stream, outcome)
        except Failure as failure:
            self.counters["denied"].inc()
            self._deny(stream, str(failure))
            return False
        self.counters["allowed"].inc()
        for provider, token, jwt in outcome.passed:
            config = provider.config
            if not config.forward and token.header is not None:
                stream.edit_request_header("remove", token.header)
            if config.forward_payload_header:
                payload = jwt.payload_segment + "=" * (-len(jwt.payload_segment) % 4) \
                    if config.pad_forward_payload_header else jwt.payload_segment
                stream.edit_request_header("set", config.forward_payload_header.lower().encode(), payload.encode())
            for claim in config.claim_to_headers:
                text = _claim_text(jwt.claims.get(claim.claim_name))
                if text is not None:
                    stream.edit_request_header("set", claim.header_name.lower().encode(), text)
        return True

    @staticmethod
    def _deny(stream: Any, status: str) -> None:
        realm = b'Bearer realm="%s://%s%s"' % (stream.conn.scheme, stream.authority or b"", stream.path)
        if status != jv.MISSING:
            realm += b', error="invalid_token"'
        code = 403 if status == jv.AUDIENCE_NOT_ALLOWED else 401
        stream.respond_from_filter(code, status.encode(), [(b"www-authenticate", realm)],
                                   "jwt_authn_access_denied{%s}" % status.replace(" ", "_"))

    def _fetch(self, stream: Any, provider: Provider, then: Callable[[], None]) -> None:
        """Fetch the provider's JWKS once for every stream that needs it meanwhile."""
        if provider.waiting is not None:
            provider.waiting.append(then)
            return
        provider.waiting = [then]
        remote = provider.config.remote_jwks
        assert remote is not None and remote.http_uri is not None
        uri = remote.http_uri

        def answered(response: async_client.Response | None, reason: str) -> None:
            keys = None
            if response is not None and response.status == 200:
                try:
                    keys = jv.parse_jwks(response.body.decode("utf-8", "replace"))
                except ValueError:
                    keys = None
            if keys is not None:
                self.counters["jwks_fetch_success"].inc()
                duration = float(remote.cache_duration) if remote.cache_duration is not None \
                    else DEFAULT_CACHE_DURATION
                provider.keys, provider.keys_until = keys, time.monotonic() + duration
            else:
                self.counters["jwks_fetch_failed"].inc()
            waiting, provider.waiting = provider.waiting or [], None
            for callback in waiting:
                callback()

        async_client.send(stream.hcm.worker, uri.cluster, b"GET", uri.path.encode(), uri.host.encode(), [], b"",
                          float(uri.timeout), answered)


def _is_preflight(headers: list[tuple[bytes, bytes]]) -> bool:
    names = {name for name, _ in headers}
    return b"origin" in names and b"access-control-request-method" in names


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, JwtAuthentication)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, PerRouteConfig)
register_filter(JwtAuthentication, JwtAuthnFilter)

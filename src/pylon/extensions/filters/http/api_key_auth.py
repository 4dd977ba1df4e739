"""envoy.filters.http.api_key_auth: requests must carry a known API key; routes may allow only some clients.

Why: the simplest credential a proxy can check without calling out. As Envoy 1.40 (checked side by side in
tests/proxy/test_proxy_api_key_auth.py): the key is read from the first of `key_sources` that has one (a header,
its `Bearer ` prefix dropped; a query parameter, decoded; a cookie), looked up in `credentials` (key -> client),
then a route's `allowed_clients` (ApiKeyAuthPerRoute, the most specific level) must list that client if it lists
any. Failures are local replies: 401 "Client authentication failed." (details `missing_key_sources`,
`missing_credentials`, `missing_api_key` or `unknown_api_key`) and 403 "Client is
forbidden." (`client_not_allowed`). A route's config replaces the filter's credentials and key sources where it
sets them, and its forwarding always (a route config without `forwarding` forwards nothing, as Envoy 1.40 does). `forwarding.header` passes the client's name upstream in that header (replacing
a client's own), `hide_credentials` removes the key from every source before the request goes on. A route's
`envoy.config.route.v3.FilterConfig {disabled: true}` turns the filter off there (proxy/filter_chain.py).
Stats: `http.<stat_prefix>.api_key_auth.{allowed,unauthorized,forbidden}`.

Keys and clients are secrets: /config_dump shows them `[redacted]` (proxy/redact.py), nothing logs them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.request_edits import replace_request_headers
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import cookie_value

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute"
_FAILED = b"Client authentication failed."
_FORBIDDEN = lr.LocalReply(403, "-", b"Client is forbidden.", "client_not_allowed")


class Credential(EnvoyStruct, kw_only=True):
    """api_key_auth.v3.Credential: a key and the client it names."""

    key: str = ""
    client: str = ""

    def __post_init__(self) -> None:
        for name in ("key", "client"):
            if not getattr(self, name):
                raise FieldError(name, "must be at least 1 character")

    def __repr__(self) -> str:
        return "Credential(*****)"


class KeySource(EnvoyStruct, kw_only=True):
    """api_key_auth.v3.KeySource: one of a header, a query parameter or a cookie."""

    header: str = ""
    query: str = ""
    cookie: str = ""

    def __post_init__(self) -> None:
        if not (self.header or self.query or self.cookie):
            raise FieldError("header", "One of 'header'/'query'/'cookie' must be set.")


class Forwarding(EnvoyStruct, kw_only=True):
    """api_key_auth.v3.Forwarding: the client's name passed upstream, the key hidden from it."""

    header: str = ""
    hide_credentials: bool = False


class ApiKeyAuthSettings(EnvoyStruct, kw_only=True):
    """The fields ApiKeyAuth and ApiKeyAuthPerRoute share."""

    credentials: list[Credential] = msgspec.field(default_factory=list)
    key_sources: list[KeySource] = msgspec.field(default_factory=list)
    forwarding: Forwarding | None = None

    def __post_init__(self) -> None:
        keys = [credential.key for credential in self.credentials]
        if len(set(keys)) != len(keys):
            raise FieldError("credentials", "Duplicate API key.")


class ApiKeyAuth(ApiKeyAuthSettings, kw_only=True):
    """The filter's config."""


class ApiKeyAuthPerRoute(ApiKeyAuthSettings, kw_only=True):
    """A route's config: its own credentials, key sources or forwarding, and the clients it allows."""

    allowed_clients: list[str] = msgspec.field(default_factory=list)


class Checker:
    """One level's settings compiled: key -> client, the key sources, forwarding (None where the level sets none)."""

    def __init__(self, settings: ApiKeyAuthSettings) -> None:
        self.credentials = {c.key.encode(): c.client.encode() for c in settings.credentials} or None
        self.sources = [(s.header.lower().encode(), s.query, s.cookie.encode()) for s in settings.key_sources] or None
        self.forwarding = settings.forwarding
        self.allowed = frozenset(c.encode() for c in getattr(settings, "allowed_clients", ()))


def _key(stream: Any, sources: list[tuple[bytes, str, bytes]]) -> bytes:
    """The key from the first source that has one (b"" when none has)."""
    for header, query, cookie in sources:
        if header:
            value = next((v for n, v in stream.headers if n == header), b"")
            key = value[7:] if value.startswith(b"Bearer ") else value
        elif query:
            key = _query_value(stream.path, query)
        else:
            key = cookie_value(stream.headers, cookie) or b""
        if key:
            return key
    return b""


def _query_value(path: bytes, name: str) -> bytes:
    _, _, query = path.partition(b"?")
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if unquote_plus(key.decode("latin-1")) == name:
            return unquote_plus(value.decode("latin-1"), encoding="latin-1").encode("latin-1")
    return b""


def _without_query_param(path: bytes, name: str) -> bytes:
    base, mark, query = path.partition(b"?")
    if not mark:
        return path
    kept = [part for part in query.split(b"&")
            if part and unquote_plus(part.partition(b"=")[0].decode("latin-1")) != name]
    return base + (b"?" + b"&".join(kept) if kept else b"")


def _without_cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for header, value in headers:
        if header == b"cookie":
            kept = [pair.strip() for pair in value.split(b";") if pair.strip().partition(b"=")[0] != name]
            if not kept:
                continue
            value = b"; ".join(kept)
        out.append((header, value))
    return out


class ApiKeyAuthFilter:
    """One HCM's API key filter in one worker; route configs compiled on first use."""

    def __init__(self, name: str, config: ApiKeyAuth, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.own = Checker(config)
        prefix = f"http.{stat_prefix}.api_key_auth."
        self.allowed = stats.counter(prefix + "allowed")
        self.unauthorized = stats.counter(prefix + "unauthorized")
        self.forbidden = stats.counter(prefix + "forbidden")
        self._per_route: dict[int, tuple[ApiKeyAuthPerRoute, Checker]] = {}

    def _route_checker(self, stream: Any) -> Checker | None:
        override = stream.route.filter_config(self.name) if stream.route is not None else None
        if override is None:
            return None
        known = self._per_route.get(id(override))
        if known is None or known[0] is not override:
            known = self._per_route[id(override)] = (override, Checker(override))
        return known[1]

    def _deny(self, stream: Any, details: str) -> bool:
        self.unauthorized.inc()
        stream.local(lr.LocalReply(401, "-", _FAILED, details))
        return False

    def decode_headers(self, stream: Any) -> bool:
        own, route = self.own, self._route_checker(stream)
        credentials, sources, forwarding = own.credentials, own.sources, own.forwarding
        if route is not None:
            credentials = route.credentials or credentials
            sources = route.sources or sources
            forwarding = route.forwarding  # a route's config always replaces it, set or not (Envoy 1.40, observed)
        if sources is None:
            return self._deny(stream, "missing_key_sources")
        if credentials is None:
            return self._deny(stream, "missing_credentials")
        key = _key(stream, sources)
        if not key:
            return self._deny(stream, "missing_api_key")
        client = credentials.get(key)
        if client is None:
            return self._deny(stream, "unknown_api_key")
        if route is not None and route.allowed and client not in route.allowed:
            self.forbidden.inc()
            stream.local(_FORBIDDEN)
            return False
        if forwarding is not None:
            self._forward(stream, forwarding, client, sources)
        self.allowed.inc()
        return True

    @staticmethod
    def _forward(stream: Any, forwarding: Forwarding, client: bytes, sources: list[tuple[bytes, str, bytes]]) -> None:
        if forwarding.header:
            stream.edit_request_header("set", forwarding.header.lower().encode(), client)
        if not forwarding.hide_credentials:
            return
        headers = list(stream.headers)
        for header, query, cookie in sources:
            if header:
                headers = [pair for pair in headers if pair[0] != header]
            elif query:
                stream.set_path(_without_query_param(stream.path, query))
            else:
                headers = _without_cookie(headers, cookie)
        replace_request_headers(stream, headers)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, ApiKeyAuth)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, ApiKeyAuthPerRoute)
register_filter(ApiKeyAuth, ApiKeyAuthFilter)

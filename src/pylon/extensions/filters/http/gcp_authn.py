"""envoy.filters.http.gcp_authn: an identity token from the GCE metadata server on requests to audiences.

Why: a service calls another private Cloud Run / GCE service with a Google-signed identity token for that
service's URL; the proxy fetches and attaches it. As Envoy 1.40 (checked side by side in
tests/proxy/test_proxy_gcp_authn.py with a metadata-server stand-in): a request whose route's cluster carries
`typed_filter_metadata["envoy.filters.http.gcp_authn"]` (an Audience) is held while `http_uri` is fetched - a GET
with `[AUDIENCE]` replaced by the audience's `url` as it is, Host the URI's, `Metadata-Flavor: Google` - and the
answer's body goes in Authorization as `Bearer <token>` (or `token_header`'s name and prefix), replacing a
client's. With `cache_config` tokens are kept per audience until the `exp` their JWT payload states (at most
`cache_size` of them, the least recently used dropped), else every request fetches. A failed fetch lets the
request go on without a token (Envoy: the destination then refuses it). A cluster without an audience is left
alone. Stats: `http.<stat_prefix>.gcp_authn.{retrieve_audience_failed,token_fetch_success,token_fetch_failed,
token_cache_hit,token_cache_miss}`.

Refused by name: `retry_policy` (pylon's async client does not retry). Departure: a weighted route's cluster is
known to the filter only when some weighted cluster has per-filter configs (then it is picked with the route);
otherwise such requests get no token.
"""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from typing import Any, Callable

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet, UInt32
from pylon.config.errors import FieldError
from pylon.config.services import HttpUri
from pylon.proxy import async_client
from pylon.proxy.filters.http import register_filter
from pylon.proxy.stream_states import RS_DONE

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.gcp_authn.v3.GcpAuthnFilterConfig"
AUDIENCE_URL = "type.googleapis.com/envoy.extensions.filters.http.gcp_authn.v3.Audience"
FILTER_NAME = "envoy.filters.http.gcp_authn"


class Audience(EnvoyStruct, kw_only=True):
    """gcp_authn.v3.Audience: the receiving service's URL, in a cluster's typed_filter_metadata."""

    url: str = ""


class TokenCacheConfig(EnvoyStruct, kw_only=True):
    """gcp_authn.v3.TokenCacheConfig."""

    cache_size: UInt32 = 100

    def __post_init__(self) -> None:
        if self.cache_size <= 0:
            raise FieldError("cache_size", "must be greater than 0")


class TokenHeader(EnvoyStruct, kw_only=True):
    """gcp_authn.v3.TokenHeader: where the token goes instead of Authorization: Bearer."""

    name: str = ""
    value_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise FieldError("name", "must be at least 1 character")


class GcpAuthnFilterConfig(EnvoyStruct, kw_only=True):
    """gcp_authn.v3.GcpAuthnFilterConfig."""

    http_uri: HttpUri | None = None
    retry_policy: NotSupportedYet | None = None
    cache_config: TokenCacheConfig | None = None
    token_header: TokenHeader | None = None

    def __post_init__(self) -> None:
        if self.http_uri is None:
            raise FieldError("http_uri", "missing required field")


def jwt_expiry(token: bytes) -> float | None:
    """The `exp` of a JWT's payload (not verified: the metadata server is trusted), None if it has none."""
    parts = token.split(b".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except ValueError:
        return None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class TokenCache:
    """Tokens by audience until their JWT expiry, least recently used dropped beyond the size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def get(self, audience: str) -> bytes | None:
        found = self.entries.get(audience)
        if found is None:
            return None
        if found[1] <= time.time():
            del self.entries[audience]
            return None
        self.entries.move_to_end(audience)
        return found[0]

    def put(self, audience: str, token: bytes) -> None:
        expiry = jwt_expiry(token)
        if expiry is None or expiry <= time.time():
            return
        self.entries[audience] = (token, expiry)
        self.entries.move_to_end(audience)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class GcpAuthnFilter:
    """One HCM's gcp_authn filter in one worker."""

    def __init__(self, name: str, config: GcpAuthnFilterConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        assert config.http_uri is not None
        self.uri = config.http_uri
        header = config.token_header
        self.header = header.name.lower().encode() if header is not None else b"authorization"
        self.prefix = header.value_prefix.encode() if header is not None else b"Bearer "
        self.cache = TokenCache(config.cache_config.cache_size) if config.cache_config is not None else None
        prefix = f"http.{stat_prefix}.gcp_authn."
        self.counters = {name: stats.counter(prefix + name) for name in (
            "retrieve_audience_failed", "token_fetch_success", "token_fetch_failed", "token_cache_hit",
            "token_cache_miss")}

    @staticmethod
    def _audience(stream: Any) -> str:
        route = stream.route
        cluster = stream.hcm.clusters.get(route.cluster) if route.cluster else None
        metadata = cluster.config.metadata if cluster is not None else None
        audience = metadata.typed_filter_metadata.get(FILTER_NAME) if metadata is not None else None
        return audience.url if isinstance(audience, Audience) else ""

    def decode_headers(self, stream: Any) -> bool:
        if stream.route is None or stream.route.kind != "cluster":
            return True
        audience = self._audience(stream)
        if not audience:
            self.counters["retrieve_audience_failed"].inc()
            return True
        if self.cache is not None:
            token = self.cache.get(audience)
            if token is not None:
                self.counters["token_cache_hit"].inc()
                stream.edit_request_header("set", self.header, self.prefix + token)
                return True
            self.counters["token_cache_miss"].inc()
        self._fetch(stream, audience, lambda: stream.continue_decoding() if stream.rs_state < RS_DONE else None)
        return False

    def _fetch(self, stream: Any, audience: str, then: Callable[[], None]) -> None:
        url = self.uri.uri.replace("[AUDIENCE]", audience)
        target = HttpUri(uri=url, cluster=self.uri.cluster, timeout=self.uri.timeout)

        def answered(response: async_client.Response | None, reason: str) -> None:
            if response is not None and response.status == 200 and response.body:
                self.counters["token_fetch_success"].inc()
                token = response.body.strip()
                if self.cache is not None:
                    self.cache.put(audience, token)
                if stream.rs_state < RS_DONE:
                    stream.edit_request_header("set", self.header, self.prefix + token)
            else:
                self.counters["token_fetch_failed"].inc()
            then()

        async_client.send(stream.hcm.worker, target.cluster, b"GET", target.path.encode(), target.host.encode(),
                          [(b"metadata-flavor", b"Google")], b"", float(target.timeout), answered)


registry.register_typed(registry.TYPED_METADATA, AUDIENCE_URL, Audience)
registry.register_typed(registry.HTTP_FILTER, TYPE_URL, GcpAuthnFilterConfig)
register_filter(GcpAuthnFilterConfig, GcpAuthnFilter)

"""envoy.filters.http.aws_request_signing: requests signed with AWS SigV4 or SigV4A on their way upstream.

Why: the proxy, not each client, holds the AWS credentials and signs what it sends to an AWS API, API Gateway or
VPC Lattice. As Envoy 1.40 (checked side by side in tests/proxy/test_proxy_aws_request_signing.py): the filter
sets Host to `host_rewrite` if given, then signs the request as it stands when the filter runs - the body's
SHA-256 once it is whole (the stream buffers it up to the connection's limit, 413 beyond, as Envoy), or
`UNSIGNED-PAYLOAD` with `use_unsigned_payload`, or the empty body's hash for a request without one. Header
signing sets x-amz-content-sha256, x-amz-date, x-amz-security-token (a session token), x-amz-region-set (SigV4A)
and Authorization; `query_string` signing puts Envoy's X-Amz-* parameters and the signature in the query
instead (a pre-signed URL valid `expiration_time`, 1 s to 1 h, default 5 s). No credentials: the request goes
on with only x-amz-content-sha256 set (Envoy's anonymous case). Signing code: filters/common/aws_signer.py;
credentials: filters/common/aws_credentials.py.

Per route (`AwsRequestSigningPerRoute`) the route's own signing config replaces the filter's. Stats:
`http.<stat_prefix>.aws_request_signing.{signing_added,signing_failed,payload_signing_added,
payload_signing_failed}` (a per-route config counts under `<its stat_prefix>aws_request_signing.`).

As an upstream HTTP filter (a cluster's `http_filters` or the router's `upstream_http_filters`) it signs each
attempt's request as the router made it (rewritten Host and path, x-forwarded-*, x-envoy-*), so route rewrites
no longer break the signature; with a signed payload the first attempt waits for the whole body.

Departure: pylon's downstream filters run before the connection manager adds x-request-id, so pylon does not
sign the x-request-id it generates (Envoy does); both signatures are valid for what the upstream receives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.envoy import EnvoyStruct, StringMatcher
from pylon.config.errors import FieldError
from pylon.extensions.filters.common import aws_signer
from pylon.extensions.filters.common.aws_credentials import AwsCredentialProvider, CredentialChain
from pylon.extensions.filters.common.aws_stream import apply_signed, end_to_end
from pylon.proxy.filters.http import register_filter
from pylon.proxy.filters.upstream import UpstreamHead, register_upstream_filter
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import get_engine

log = logging.getLogger(__name__)

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning"
PER_ROUTE_TYPE_URL = \
    "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigningPerRoute"


class ExpirationTime(Duration):
    """QueryString.expiration_time: PGV `gte: 1s, lte: 3600s`."""

    at_least_ns = 1_000_000_000


class QueryString(EnvoyStruct, kw_only=True):
    """AwsRequestSigning.QueryString: sign in the query, the URL valid this long (default 5 s)."""

    expiration_time: ExpirationTime | None = None

    def __post_init__(self) -> None:
        if self.expiration_time is not None and self.expiration_time > 3600:
            raise FieldError("expiration_time", "must be at most 3600s")

    @property
    def seconds(self) -> int:
        return int(self.expiration_time) if self.expiration_time is not None else 5


class SigningSettings(EnvoyStruct, kw_only=True):
    """extensions.filters.http.aws_request_signing.v3.AwsRequestSigning's fields (nested in the per-route config,
    where a registered type's `@type` must not appear)."""

    service_name: str = ""
    region: str = ""
    host_rewrite: str = ""
    use_unsigned_payload: bool = False
    match_excluded_headers: list[StringMatcher] = msgspec.field(default_factory=list)
    signing_algorithm: Literal["AWS_SIGV4", "AWS_SIGV4A"] = "AWS_SIGV4"
    query_string: QueryString | None = None
    credential_provider: AwsCredentialProvider | None = None

    def __post_init__(self) -> None:
        if not self.service_name:
            raise FieldError("service_name", "must not be empty")
        if not self.resolved_region():
            raise FieldError("region", "not set, and none in AWS_REGION / AWS_DEFAULT_REGION"
                             + (" / AWS_SIGV4A_SIGNING_REGION_SET" if self.signing_algorithm == "AWS_SIGV4A" else ""))

    def resolved_region(self) -> str:
        """The region (SigV4A: region set): the config's, else the environment's, as Envoy's region chain."""
        if self.region:
            return self.region
        names = ("AWS_SIGV4A_SIGNING_REGION_SET",) if self.signing_algorithm == "AWS_SIGV4A" else ()
        for name in (*names, "AWS_REGION", "AWS_DEFAULT_REGION"):
            if os.environ.get(name):
                return os.environ[name]
        return ""

    def signer_config(self) -> aws_signer.SignerConfig:
        engine = get_engine()
        matchers = [_compile_string_matcher(m, engine, as_bytes=False) for m in self.match_excluded_headers]
        return aws_signer.SignerConfig(
            aws_signer.SIGV4A if self.signing_algorithm == "AWS_SIGV4A" else aws_signer.SIGV4, self.service_name,
            self.resolved_region(), (lambda name: any(match(name) for match in matchers)) if matchers else _none,
            self.query_string.seconds if self.query_string is not None else None)


def _none(name: str) -> bool:
    """No header excluded beyond the signer's own."""
    return False


class AwsRequestSigning(SigningSettings, kw_only=True):
    """The filter's config."""


class AwsRequestSigningPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.aws_request_signing.v3.AwsRequestSigningPerRoute."""

    aws_request_signing: SigningSettings | None = None
    stat_prefix: str = ""

    def __post_init__(self) -> None:
        if self.aws_request_signing is None:
            raise FieldError("aws_request_signing", "missing required field")
        if not self.stat_prefix:
            raise FieldError("stat_prefix", "must be at least 1 character (Envoy's PGV rule)")


class Signer:
    """One signing config, compiled: its signer settings, credentials chain, Host rewrite, payload choice and
    stats."""

    def __init__(self, settings: SigningSettings, scope: str, stats: Any) -> None:
        self.config = settings.signer_config()
        self.credentials = CredentialChain(settings.credential_provider)
        self.host_rewrite = settings.host_rewrite.encode()
        self.unsigned_payload = settings.use_unsigned_payload
        prefix = f"{scope}aws_request_signing."
        self.signing_added = stats.counter(prefix + "signing_added")
        self.signing_failed = stats.counter(prefix + "signing_failed")
        self.payload_signing_added = stats.counter(prefix + "payload_signing_added")
        self.payload_signing_failed = stats.counter(prefix + "payload_signing_failed")

    def sign(self, method: bytes, path: bytes, authority: bytes, headers: list[tuple[bytes, bytes]],
             payload_hash: str, payload: bool) -> aws_signer.Signed | None:
        """The signing edits, counted; None when signing failed (the request then goes on as it is, as Envoy)."""
        try:
            signed = aws_signer.sign(self.config, self.credentials.get(), method, path, authority, headers,
                                     payload_hash, time.time())
        except (ValueError, UnicodeError) as exc:
            log.debug("aws_request_signing: signing failed: %s", exc)
            self.signing_failed.inc()
            if payload:
                self.payload_signing_failed.inc()
            return None
        self.signing_added.inc()
        if payload:
            self.payload_signing_added.inc()
        return signed


class AwsRequestSigningFilter:
    """One HCM's signing filter in one worker; per-route configs compiled on first use."""

    def __init__(self, name: str, config: AwsRequestSigning, stat_prefix: str, stats: Any, loop: Any) -> None:
        self._setup(name, config, f"http.{stat_prefix}.", stats)

    def _setup(self, name: str, config: AwsRequestSigning, scope: str, stats: Any) -> None:
        self.name = name
        self.stats = stats
        self.own = Signer(config, scope, stats)
        self._per_route: dict[int, tuple[AwsRequestSigningPerRoute, Signer]] = {}

    def _signer(self, stream: Any) -> Signer:
        route = stream.route
        override = route.filter_config(self.name) if route is not None else None
        if override is None:
            return self.own
        known = self._per_route.get(id(override))
        if known is None or known[0] is not override:
            assert override.aws_request_signing is not None
            known = self._per_route[id(override)] = (
                override, Signer(override.aws_request_signing, override.stat_prefix, self.stats))
        return known[1]

    def decode_headers(self, stream: Any) -> bool:
        signer = self._signer(stream)
        if signer.host_rewrite:
            stream.set_authority(signer.host_rewrite)
        if signer.unsigned_payload:
            payload_hash = aws_signer.UNSIGNED_PAYLOAD
        elif stream.req_length or stream.req_chunked:
            return True  # signed once the body is whole (decode_body)
        else:
            payload_hash = aws_signer.EMPTY_SHA256
        signed = signer.sign(stream.method, stream.path, stream.authority, end_to_end(stream.headers), payload_hash,
                             False)
        if signed is not None:
            apply_signed(stream, signed)
        return True

    def wants_request_body(self, stream: Any) -> bool:
        return not self._signer(stream).unsigned_payload

    def decode_body(self, stream: Any, body: bytes) -> None:
        signer = self._signer(stream)
        signed = signer.sign(stream.method, stream.path, stream.authority, end_to_end(stream.headers),
                             hashlib.sha256(body).hexdigest(), True)
        if signed is not None:
            apply_signed(stream, signed)
        return None


class UpstreamAwsRequestSigning(AwsRequestSigningFilter):
    """The filter as an upstream HTTP filter: each attempt's request signed as the router made it."""

    def __init__(self, name: str, config: AwsRequestSigning, scope: str, stats: Any) -> None:
        self._setup(name, config, scope, stats)

    def body_limit(self, stream: Any) -> int:
        """With a signed payload the body is held whole before the first attempt, up to the connection's limit."""
        if self._signer(stream).unsigned_payload or not (stream.req_length or stream.req_chunked):
            return 0
        return stream.hcm.buffer_limit

    def upstream_request(self, stream: Any, head: UpstreamHead) -> None:
        signer = self._signer(stream)
        if signer.host_rewrite:
            head.authority = signer.host_rewrite
        payload = False
        if signer.unsigned_payload:
            payload_hash = aws_signer.UNSIGNED_PAYLOAD
        elif stream.req_length or stream.req_chunked:
            payload, payload_hash = True, hashlib.sha256(b"".join(stream.waiting_body)).hexdigest()
        else:
            payload_hash = aws_signer.EMPTY_SHA256
        signed = signer.sign(head.method, head.path, head.authority, head.headers.items, payload_hash, payload)
        if signed is not None:
            for name, value in signed.headers:
                head.headers.set(name, value)
            head.path = signed.path
        return None

    def upstream_response(self, stream: Any, status: int, headers: Any) -> None:
        pass


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, AwsRequestSigning)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, AwsRequestSigningPerRoute)
register_filter(AwsRequestSigning, AwsRequestSigningFilter)
registry.register_typed(registry.UPSTREAM_HTTP_FILTER, TYPE_URL, AwsRequestSigning)
register_upstream_filter(AwsRequestSigning, UpstreamAwsRequestSigning)

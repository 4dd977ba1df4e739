"""envoy.filters.http.aws_lambda: an HTTP request turned into an AWS Lambda Invoke call, signed with SigV4.

Why: a Lambda function answers plain HTTP clients through the proxy, which holds the credentials. As Envoy 1.40
(checked side by side in tests/proxy/test_proxy_aws_lambda.py, a local upstream standing in for Lambda): the
filter acts only on requests whose cluster carries the metadata `com.amazonaws.lambda: {egress_gateway: true}`
(as an upstream HTTP filter, on every request of its cluster). The request becomes `POST
/2015-03-31/functions/<arn>/invocations` with `x-amz-invocation-type` RequestResponse (SYNCHRONOUS) or Event
(ASYNCHRONOUS), Host `host_rewrite` if set, signed for service `lambda` in the ARN's region. With
`payload_passthrough` the body goes as it came; without, it is wrapped in Envoy's JSON (`raw_path`, `method`,
`headers` coalesced with commas, `query_string_parameters` first value each, `body` as it came for a text,
JSON, XML or JavaScript content type, else base64 with `is_base64_encoded`), and a synchronous 2xx answer
without `x-amz-function-error` is unwrapped: `status_code` (200 when absent), `headers` (content-type JSON unless
they say otherwise), each of `cookies` a set-cookie, `body` (base64-decoded when marked); an answer that is not
such JSON becomes an empty 500 and counts `http.<stat_prefix>.aws_lambda.server_error`.

Credentials: `credentials` (inline), else `credentials_profile` (only the credentials file, that profile), else
Envoy's default chain (filters/common/aws_credentials.py). Per route (PerRouteConfig, on a route, virtual host or
weighted cluster) `invoke_config` replaces the filter's.

Departures: the JSON's `headers` lack x-forwarded-proto and x-request-id, which Envoy's connection manager adds
before its filters run and pylon's after; `upstream_rq_payload_size` (a histogram) is not kept. As an upstream
HTTP filter pylon's chain sees headers only, so there it takes `payload_passthrough: true` and refuses false by
name (the body would need rewriting).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from typing import Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError
from pylon.extensions.filters.common import aws_signer
from pylon.extensions.filters.common.aws_credentials import (
    AwsCredentialProvider, CredentialChain, CredentialsFileCredentialProvider, InlineCredentialProvider,
)
from pylon.extensions.filters.common.aws_stream import apply_signed, end_to_end
from pylon.proxy.filters.http import register_filter
from pylon.proxy.filters.upstream import UpstreamHead, register_upstream_filter
from pylon.proxy.headers import HeaderList

log = logging.getLogger(__name__)

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.aws_lambda.v3.Config"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.aws_lambda.v3.PerRouteConfig"
_METADATA_KEY = "com.amazonaws.lambda"
_TEXTUAL = (b"application/json", b"application/javascript", b"application/xml")


def arn_region(arn: str) -> str | None:
    """The region of a Lambda ARN (arn:partition:service:region:account:type:name[:qualifier]), None if malformed."""
    parts = arn.split(":")
    if len(parts) < 7 or parts[0] != "arn":
        return None
    return parts[3]


class Credentials(InlineCredentialProvider, kw_only=True):
    """extensions.filters.http.aws_lambda.v3.Credentials: the fields (and checks) of the common inline ones."""


class InvokeSettings(EnvoyStruct, kw_only=True):
    """extensions.filters.http.aws_lambda.v3.Config's fields (nested in PerRouteConfig without an `@type`)."""

    arn: str = ""
    payload_passthrough: bool = False
    invocation_mode: Literal["SYNCHRONOUS", "ASYNCHRONOUS"] = "SYNCHRONOUS"
    host_rewrite: str = ""
    credentials_profile: str = ""
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        if arn_region(self.arn) is None:
            raise FieldError("arn", f"aws_lambda_filter: Invalid ARN: {self.arn}")


class Config(InvokeSettings, kw_only=True):
    """The filter's config."""


class UpstreamConfig(Config, kw_only=True):
    """The filter's config as an upstream HTTP filter, where pylon passes the payload through only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.payload_passthrough:
            raise FieldError("payload_passthrough", "false needs the request and response bodies rewritten, which "
                                                    "pylon's upstream HTTP filters cannot do (they see heads only); "
                                                    "use the filter in the connection manager's http_filters, or "
                                                    "payload_passthrough: true")


class PerRouteConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.aws_lambda.v3.PerRouteConfig."""

    invoke_config: InvokeSettings | None = None

    def __post_init__(self) -> None:
        if self.invoke_config is None:
            raise FieldError("invoke_config", "missing required field")


class Invocation:
    """One invoke config, compiled: where the call goes, how it is made, and its signer."""

    def __init__(self, settings: InvokeSettings) -> None:
        region = arn_region(settings.arn)
        assert region is not None
        self.path = f"/2015-03-31/functions/{settings.arn}/invocations".encode()
        self.invocation_type = b"RequestResponse" if settings.invocation_mode == "SYNCHRONOUS" else b"Event"
        self.synchronous = settings.invocation_mode == "SYNCHRONOUS"
        self.passthrough = settings.payload_passthrough
        self.host_rewrite = settings.host_rewrite.encode()
        self.config = aws_signer.SignerConfig(aws_signer.SIGV4, "lambda", region, lambda name: False)
        if settings.credentials is not None:
            provider = AwsCredentialProvider(inline_credential=settings.credentials)
        elif settings.credentials_profile:
            provider = AwsCredentialProvider(custom_credential_provider_chain=True, credentials_file_provider=(
                CredentialsFileCredentialProvider(profile=settings.credentials_profile)))
        else:
            provider = None
        self.credentials = CredentialChain(provider)

    def sign(self, method: bytes, path: bytes, authority: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes) -> aws_signer.Signed:
        payload_hash = hashlib.sha256(body).hexdigest() if body else aws_signer.EMPTY_SHA256
        return aws_signer.sign(self.config, self.credentials.get(), method, path, authority, headers, payload_hash,
                               time.time())


def _textual(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body goes into the JSON as text: a known text content type, and no transfer coding."""
    values = dict(headers)
    coding = values.get(b"transfer-encoding")
    if coding is not None and coding.lower() != b"identity":
        return False
    content_type = values.get(b"content-type")
    if content_type is None:
        return False
    content_type = content_type.lower()
    return content_type in _TEXTUAL or content_type.startswith(b"text/")


def jsonized(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None) -> bytes:
    """Envoy's JSON form of a request (its Request message, every field printed, names as in the proto)."""
    coalesced: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        coalesced[key] = f"{coalesced[key]},{text}" if key in coalesced else text
    query: dict[str, str] = {}
    _, _, raw_query = path.partition(b"?")
    for fragment in raw_query.decode("latin-1").split("&") if raw_query else ():
        name, _, value = fragment.partition("=")
        if name:
            query.setdefault(name, value)
    text, encoded = "", False
    if body is not None:
        if _textual(headers):
            text = body.decode("utf-8", "replace")
        else:
            text, encoded = base64.b64encode(body).decode(), True
    return json.dumps({"raw_path": path.decode("latin-1"), "method": method.decode("latin-1"), "headers": coalesced,
                       "query_string_parameters": query, "body": text, "is_base64_encoded": encoded},
                      separators=(",", ":")).encode()


def dejsonized(body: bytes, headers: HeaderList) -> tuple[int, bytes] | None:
    """(status, body) of a Lambda's JSON answer, its headers and cookies set on `headers`; None if not such JSON."""
    try:
        answer = json.loads(body)
        if not isinstance(answer, dict):
            return None
        status = int(answer.get("status_code", 0) or 0)
        own = answer.get("headers") or {}
        cookies = answer.get("cookies") or []
        text = answer.get("body") or ""
        payload = base64.b64decode(text) if answer.get("is_base64_encoded") else str(text).encode()
    except (ValueError, TypeError, AttributeError):
        return None
    headers.set(b"content-type", b"application/json")
    for name, value in own.items():
        if not str(name).startswith(":"):
            headers.set(str(name).lower().encode("latin-1"), str(value).encode("latin-1"))
    for cookie in cookies:
        headers.add(b"set-cookie", str(cookie).encode("latin-1"))
    return status, payload


class AwsLambdaFilter:
    """One HCM's Lambda filter in one worker; the streams it invoked a function for, until their response ends."""

    def __init__(self, name: str, config: Config, stat_prefix: str, stats: Any, loop: Any) -> None:
        self._setup(name, config, f"http.{stat_prefix}.", stats)

    def _setup(self, name: str, config: Config, scope: str, stats: Any) -> None:
        self.name = name
        self.own = Invocation(config)
        self.server_error = stats.counter(f"{scope}aws_lambda.server_error")
        self._per_route: dict[int, tuple[PerRouteConfig, Invocation]] = {}
        #: streams whose answer is a JSON-wrapped response to unwrap
        self.unwrapping: dict[Any, Invocation] = {}
        #: streams whose Invoke call waits for the client's whole body
        self.awaiting_body: dict[Any, Invocation] = {}

    def _invocation(self, route: Any) -> Invocation:
        override = route.filter_config(self.name) if route is not None else None
        if override is None:
            return self.own
        known = self._per_route.get(id(override))
        if known is None or known[0] is not override:
            assert override.invoke_config is not None
            known = self._per_route[id(override)] = (override, Invocation(override.invoke_config))
        return known[1]

    def _invoked(self, stream: Any) -> Invocation | None:
        """The invocation for this request, None unless its cluster is a Lambda egress gateway."""
        route = stream.route
        if route is None or route.kind != "cluster" or not route.cluster:
            return None
        cluster = stream.hcm.clusters.get(route.cluster)
        metadata = cluster.config.metadata if cluster is not None else None
        values = metadata.filter_metadata.get(_METADATA_KEY) if metadata is not None else None
        if not isinstance(values, dict) or values.get("egress_gateway") is not True:
            return None
        return self._invocation(route)

    def decode_headers(self, stream: Any) -> bool:
        invocation = self._invoked(stream)
        if invocation is None:
            return True  # not for Lambda
        if stream.req_length or stream.req_chunked:  # sent once its body is whole (decode_body)
            self.awaiting_body[stream] = invocation
            stream.on_finish(lambda: self.awaiting_body.pop(stream, None))
            return True
        self._invoke(stream, invocation, None)
        return True

    def wants_request_body(self, stream: Any) -> bool:
        return stream in self.awaiting_body

    def decode_body(self, stream: Any, body: bytes) -> bytes | None:
        return self._invoke(stream, self.awaiting_body.pop(stream), body)

    def _invoke(self, stream: Any, invocation: Invocation, body: bytes | None) -> bytes | None:
        """Make the request the Invoke call; the body to send instead of the client's (None: as it came)."""
        headers = end_to_end(stream.headers)
        payload = body
        if not invocation.passthrough:
            payload = jsonized(stream.method, stream.path, headers, body)
            stream.edit_request_header("set", b"content-type", b"application/json")
            if invocation.synchronous:
                self.unwrapping[stream] = invocation
                stream.on_finish(lambda: self.unwrapping.pop(stream, None))
        stream.rewrite_request(b"POST", invocation.path, payload if body is None and payload is not None else None,
                               False, keep_original=False)
        stream.edit_request_header("set", b"x-amz-invocation-type", invocation.invocation_type)
        if invocation.host_rewrite:
            stream.set_authority(invocation.host_rewrite)
        signing = end_to_end(stream.headers)
        if payload is not None:  # the stream frames the new body itself; the signature covers its length
            signing = [pair for pair in signing if pair[0] != b"content-length"]
            signing.append((b"content-length", b"%d" % len(payload)))
        apply_signed(stream, invocation.sign(b"POST", invocation.path, stream.authority, signing, payload or b""))
        return payload if body is not None and payload is not body else None

    def encode_headers(self, stream: Any, status: int, headers: HeaderList) -> None:
        """Lambda's own error answers (a status of 300 or more, or x-amz-function-error) go back as they are."""
        if stream in self.unwrapping and (status >= 300 or b"x-amz-function-error" in headers):
            del self.unwrapping[stream]

    def wants_response_body(self, stream: Any) -> bool:
        return stream in self.unwrapping

    def encode_body(self, stream: Any, status: int, headers: HeaderList, body: bytes) -> bytes | None:
        if self.unwrapping.pop(stream, None) is None:
            return None
        answer = dejsonized(body, headers)
        if answer is None:
            self.server_error.inc()
            stream.status = 500
            return b""
        if answer[0]:
            stream.status = answer[0]
        return answer[1]


class UpstreamAwsLambda(AwsLambdaFilter):
    """The filter as an upstream HTTP filter: every request of its cluster is an Invoke call (no metadata needed),
    its body passed through as it came."""

    def __init__(self, name: str, config: UpstreamConfig, scope: str, stats: Any) -> None:
        self._setup(name, config, scope, stats)

    def body_limit(self, stream: Any) -> int:
        return stream.hcm.buffer_limit if stream.req_length or stream.req_chunked else 0

    def upstream_request(self, stream: Any, head: UpstreamHead) -> None:
        invocation = self._invocation(stream.route)
        head.method, head.path = b"POST", invocation.path
        head.headers.set(b"x-amz-invocation-type", invocation.invocation_type)
        if invocation.host_rewrite:
            head.authority = invocation.host_rewrite
        body = b"".join(stream.waiting_body) if stream.req_length or stream.req_chunked else b""
        signed = invocation.sign(head.method, head.path, head.authority, head.headers.items, body)
        for name, value in signed.headers:
            head.headers.set(name, value)
        return None

    def upstream_response(self, stream: Any, status: int, headers: Any) -> None:
        pass


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, Config)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, PerRouteConfig)
register_filter(Config, AwsLambdaFilter)
registry.register_typed(registry.UPSTREAM_HTTP_FILTER, TYPE_URL, UpstreamConfig)
register_upstream_filter(UpstreamConfig, UpstreamAwsLambda)

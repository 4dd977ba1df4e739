"""envoy.filters.http.ext_authz: ask an authorization service (HTTP or gRPC) before a request may go upstream.

As Envoy 1.40 does (observed side by side, tests/proxy/test_proxy_ext_authz.py): the request is held while
one check request goes to `http_service.server_uri.cluster` through the worker's own pools (proxy/async_client.py,
`server_uri.timeout` as its timeout; what it carries and what its answer means: filters/common/ext_authz.py).
Allowed: the request goes on with the answer's headers. Denied: the client gets the service's status, body and
allowed headers (flag UAEX, details `ext_authz_denied`); the upstream never sees the request. Error (a 5xx, a
timeout, no answer): `status_on_error` (403) with no body (UAEX, `ext_authz_error`), unless
`failure_mode_allow` (default false) lets the request go on (with `x-envoy-auth-failure-mode-allowed: true`
when `failure_mode_allow_header_add`).

`with_request_body` holds the request until its body is in (or `max_request_bytes` of it, with
`allow_partial_message`; without it a longer body is 413) and sends it in the check. `filter_enabled` decides per
request (runtime keys never apply: pylon's runtime refuses them); a request it skips is counted `disabled`, and
denied with `status_on_error` when `deny_at_disable`. `clear_route_cache` matches the route again after an
allowing answer changed the request's headers. A route's `ExtAuthzPerRoute` (route, virtual host, route
configuration: the most specific wins) may disable the check, or turn its body buffering off.

Stats: `http.<stat_prefix>.ext_authz.[<filter stat_prefix>.]{ok, denied, error, disabled,
failure_mode_allowed}` and, with `charge_cluster_response_stats` (default), `cluster.<route's
cluster>.ext_authz.{ok, denied, error, failure_mode_allowed}`.

With `grpc_service` instead (Envoy's envoy.service.auth.v3.Authorization/Check, on the worker's gRPC client to
`envoy_grpc.cluster_name`; filters/http/ext_authz_grpc.py, the messages in filters/common/ext_authz_grpc.py;
tests/proxy/test_proxy_ext_authz_grpc.py beside Envoy): the same hold, body buffering, verdicts, errors, stats
and per-route settings, plus `check_settings.context_extensions`, `include_peer_certificate` and
`pack_as_bytes`, which only a gRPC check carries (an HTTP check accepts them and, as Envoy, does nothing with
them; `transport_api_version` is V3 either way). The gRPC cluster must be cleartext (loader: pylon's gRPC
client has no TLS credentials from a cluster yet). Refused by name: metadata and filter state features
(`*metadata*`, `emit_filter_state_stats`, `dynamic_metadata_from_headers`), header mutation rules and limits,
the top-level `allowed_headers` / `disallowed_headers`, `http_service.retry_policy`, per-route service
overrides (`check_settings.grpc_service`, `check_settings.http_service`); an OK gRPC answer that edits query
parameters is taken as an error (not applied yet).

Departures: the check sees the client's headers plus x-forwarded-proto as the connection manager will set it;
Envoy's also include the x-request-id it generated before the filters (pylon generates it at routing). A gRPC
check's `destination.principal` is the listener certificate's first URI SAN only (no DNS SAN or subject
fallback), and a body that is not UTF-8 goes in `body` with replacement characters (use `pack_as_bytes`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.envoy import (
    EnvoyStruct,
    HeaderValue,
    NotSupportedYet,
    PositiveUInt32,
    RuntimeFractionalPercent,
    StringMatcher,
    UInt32,
)
from pylon.config.errors import FieldError
from pylon.config.services import GrpcClientService
from pylon.extensions.filters.common import ext_authz as check
from pylon.extensions.filters.common.config import HttpStatus, RuntimeFeatureFlag
from pylon.proxy import async_client
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList
from pylon.proxy.router import _compile_string_matcher
from pylon.proxy.stream_states import RQ_DONE, RS_DONE
from pylon.regex import get_engine

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
FLAG = "UAEX"
log = logging.getLogger(__name__)


class ListStringMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.ListStringMatcher."""

    patterns: list[StringMatcher] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.patterns:
            raise FieldError("patterns", "needs at least one pattern")


class HttpUri(EnvoyStruct, kw_only=True):
    """config.core.v3.HttpUri: where the HTTP service is (`cluster`) and how long a check may take."""

    uri: str
    cluster: str
    timeout: Duration

    def __post_init__(self) -> None:
        if not self.uri:
            raise FieldError("uri", "missing required field")
        if not self.cluster:
            raise FieldError("cluster", "missing required field")


class AuthorizationRequest(EnvoyStruct, kw_only=True):
    allowed_headers: ListStringMatcher | None = None
    headers_to_add: list[HeaderValue] = msgspec.field(default_factory=list)


class AuthorizationResponse(EnvoyStruct, kw_only=True):
    allowed_upstream_headers: ListStringMatcher | None = None
    allowed_upstream_headers_to_append: ListStringMatcher | None = None
    allowed_client_headers: ListStringMatcher | None = None
    allowed_client_headers_on_success: ListStringMatcher | None = None
    dynamic_metadata_from_headers: NotSupportedYet | None = None


class HttpService(EnvoyStruct, kw_only=True):
    server_uri: HttpUri | None = None
    path_prefix: str = ""
    authorization_request: AuthorizationRequest = msgspec.field(default_factory=AuthorizationRequest)
    authorization_response: AuthorizationResponse = msgspec.field(default_factory=AuthorizationResponse)
    retry_policy: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.server_uri is None:
            raise FieldError("server_uri", "missing required field")


class BufferSettings(EnvoyStruct, kw_only=True):
    max_request_bytes: PositiveUInt32
    allow_partial_message: bool = False
    pack_as_bytes: bool = False  # how a gRPC check carries the body; an HTTP check sends it as it is


class ExtAuthz(EnvoyStruct, kw_only=True):
    """extensions.filters.http.ext_authz.v3.ExtAuthz."""

    grpc_service: GrpcClientService | None = None
    http_service: HttpService | None = None
    transport_api_version: Literal["AUTO", "V3"] = "AUTO"
    failure_mode_allow: bool = False
    failure_mode_allow_header_add: bool = False
    with_request_body: BufferSettings | None = None
    clear_route_cache: bool = False
    status_on_error: HttpStatus | None = None
    validate_mutations: bool = False
    metadata_context_namespaces: NotSupportedYet | None = None
    typed_metadata_context_namespaces: NotSupportedYet | None = None
    route_metadata_context_namespaces: NotSupportedYet | None = None
    route_typed_metadata_context_namespaces: NotSupportedYet | None = None
    filter_enabled: RuntimeFractionalPercent | None = None
    filter_enabled_metadata: NotSupportedYet | None = None
    deny_at_disable: RuntimeFeatureFlag | None = None
    include_peer_certificate: bool = False  # a gRPC check's attribute; an HTTP check carries headers only
    stat_prefix: str = ""
    bootstrap_metadata_labels_key: NotSupportedYet | None = None
    allowed_headers: NotSupportedYet | None = None
    disallowed_headers: NotSupportedYet | None = None
    include_tls_session: bool = False
    charge_cluster_response_stats: bool = True
    encode_raw_headers: bool = False
    decoder_header_mutation_rules: NotSupportedYet | None = None
    enable_dynamic_metadata_ingestion: NotSupportedYet | None = None
    filter_metadata: NotSupportedYet | None = None
    emit_filter_state_stats: bool = False
    max_denied_response_body_bytes: UInt32 = 0
    enforce_response_header_limits: bool = False

    def cluster_references(self) -> Iterator[tuple[str, str, str]]:
        """(field path, cluster, "grpc") of a gRPC service's cluster, for the loader's transport checks (a
        gRPC check on a TLS cluster is refused: pylon's gRPC client speaks cleartext only)."""
        if self.grpc_service is not None and self.grpc_service.envoy_grpc is not None:
            yield "grpc_service.envoy_grpc.cluster_name", self.grpc_service.envoy_grpc.cluster_name, "grpc"

    def __post_init__(self) -> None:
        if self.grpc_service is not None and self.http_service is not None:
            raise FieldError("http_service", "only one of grpc_service, http_service may be set (services)")
        if self.grpc_service is None and self.http_service is None:
            raise FieldError("http_service", "one of grpc_service, http_service must be set (services)")
        for field in ("validate_mutations", "include_tls_session", "encode_raw_headers", "emit_filter_state_stats",
                      "enforce_response_header_limits"):
            if getattr(self, field):
                raise FieldError(field, "not supported yet")


class CheckSettings(EnvoyStruct, kw_only=True):
    context_extensions: dict[str, str] = msgspec.field(default_factory=dict)  # sent by a gRPC check only
    disable_request_body_buffering: bool = False
    with_request_body: BufferSettings | None = None
    grpc_service: NotSupportedYet | None = None
    http_service: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.disable_request_body_buffering and self.with_request_body is not None:
            raise ValueError("disable_request_body_buffering and with_request_body cannot both be set")


class ExtAuthzPerRoute(EnvoyStruct, kw_only=True):
    """extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute: exactly one of `disabled`, `check_settings`."""

    disabled: bool | None = None
    check_settings: CheckSettings | None = None

    def __post_init__(self) -> None:
        if self.disabled is None and self.check_settings is None:
            raise ValueError("exactly one of disabled, check_settings must be set (override)")
        if self.disabled is not None and self.check_settings is not None:
            raise ValueError("exactly one of disabled, check_settings must be set (got disabled, check_settings)")
        if self.disabled is False:
            raise FieldError("disabled", "must be true when set (Envoy's const rule)")


def _matcher(config: ListStringMatcher | None) -> check.Matcher | None:
    if config is None:
        return None
    engine = get_engine()
    return check.any_of([_compile_string_matcher(m, engine, as_bytes=True) for m in config.patterns])


class ExtAuthzFilter:
    """One HCM's ext_authz filter in one worker."""

    def __init__(self, name: str, config: ExtAuthz, stat_prefix: str, stats: Any, loop: Any,
                 chance: Callable[[], float] = random.random) -> None:
        self.name = name
        self.config = config
        self.loop = loop
        self.chance = chance
        self.stats = stats
        self.grpc: Any = None
        if config.grpc_service is not None:
            from pylon.extensions.filters.http.ext_authz_grpc import GrpcChecker  # grpcio only for gRPC checks

            pack = config.with_request_body is not None and config.with_request_body.pack_as_bytes
            self.grpc = GrpcChecker(config.grpc_service, config.include_peer_certificate, pack)
        else:
            self._http_service(config.http_service)
        self.status_on_error = config.status_on_error.number if config.status_on_error is not None else 403
        self.enabled = config.filter_enabled.default_value.fraction if config.filter_enabled is not None else None
        self.deny_at_disable = config.deny_at_disable is not None and config.deny_at_disable.default_value
        self.prefix = f"http.{stat_prefix}.ext_authz." + (f"{config.stat_prefix}." if config.stat_prefix else "")
        self.counters = {kind: stats.counter(self.prefix + kind)
                         for kind in ("ok", "denied", "error", "disabled", "failure_mode_allowed")}
        #: streams allowed with headers for their response (allowed_client_headers_on_success)
        self._on_success: dict[Any, list[tuple[bytes, bytes]]] = {}
        #: streams allowed by a gRPC answer with headers to add to their response (response_headers_to_add)
        self._on_success_append: dict[Any, list[tuple[bytes, bytes]]] = {}

    def _http_service(self, service: HttpService | None) -> None:
        assert service is not None and service.server_uri is not None
        self.cluster = service.server_uri.cluster
        self.timeout = float(service.server_uri.timeout)
        self.timeout_ms = math.ceil(self.timeout * 1000)
        self.path_prefix = service.path_prefix.encode()
        request = service.authorization_request
        self.allowed = _matcher(request.allowed_headers)
        self.headers_to_add = [(h.key.lower().encode(), str(h.value).encode()) for h in request.headers_to_add]
        response = service.authorization_response
        self.rules = check.ResponseRules(_matcher(response.allowed_upstream_headers),
                                         _matcher(response.allowed_upstream_headers_to_append),
                                         _matcher(response.allowed_client_headers),
                                         _matcher(response.allowed_client_headers_on_success))

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        per_route = stream.route.filter_config(self.name) if stream.route is not None else None
        if isinstance(per_route, ExtAuthzPerRoute) and per_route.disabled:
            return True
        if self.enabled is not None and not (self.enabled >= 1.0 or self.chance() < self.enabled):
            self.counters["disabled"].inc()
            if self.deny_at_disable:
                self._reply(stream, self.status_on_error, b"", [], "ext_authz_error")
                return False
            return True
        buffering = self.config.with_request_body
        settings = per_route.check_settings if isinstance(per_route, ExtAuthzPerRoute) else None
        if settings is not None:
            if settings.disable_request_body_buffering:
                buffering = None
            elif settings.with_request_body is not None:
                buffering = settings.with_request_body
        if buffering is None or not (stream.req_length or stream.req_chunked):
            self._check(stream, None, False)
            return False
        stream.body_watch = lambda: self._body_arrived(stream, buffering)
        self._body_arrived(stream, buffering)
        return False

    def _body_arrived(self, stream: Any, settings: BufferSettings) -> None:
        """A piece of a held request's body came (or all of it): check once it is whole or enough of it is in."""
        limit = settings.max_request_bytes
        size = stream.body_size
        complete = stream.rq_state == RQ_DONE
        if size > limit and not settings.allow_partial_message:
            stream.body_watch = None
            stream.hcm.rq_too_large.value += 1
            stream.local(lr.PAYLOAD_TOO_LARGE)
            return
        if not complete and size < limit:
            return
        stream.body_watch = None
        body = b"".join(stream.waiting_body)
        self._check(stream, body[:limit], size >= limit and settings.allow_partial_message)

    def _check(self, stream: Any, body: bytes | None, partial: bool) -> None:
        if self.grpc is not None:
            self._grpc_check(stream, body, partial)
            return
        headers = stream.headers
        if not any(name == b"x-forwarded-proto" for name, _ in headers):
            headers = [*headers, (b"x-forwarded-proto", stream.conn.scheme)]
        request = check.check_request(stream.method, stream.path, stream.authority, headers, allowed=self.allowed,
                                      path_prefix=self.path_prefix, headers_to_add=self.headers_to_add,
                                      timeout_ms=self.timeout_ms, body=body, partial=partial)

        def answered(response: async_client.Response | None, reason: str) -> None:
            if stream.rs_state >= RS_DONE:
                return
            if response is None:
                self._decide(stream, check.verdict(None, [], b"", self.rules))
            else:
                self._decide(stream, check.verdict(response.status, response.headers, response.body, self.rules))

        call = async_client.send(stream.hcm.worker, self.cluster, request.method, request.path, request.host,
                                 request.headers, request.body, self.timeout, answered)
        if call is not None:
            stream.on_finish(call.cancel)

    def _grpc_check(self, stream: Any, body: bytes | None, partial: bool) -> None:
        per_route = stream.route.filter_config(self.name) if stream.route is not None else None
        settings = per_route.check_settings if isinstance(per_route, ExtAuthzPerRoute) else None
        facts = self.grpc.facts(stream, settings.context_extensions if settings is not None else {})

        def answered(meaning: Any) -> None:
            if stream.rs_state >= RS_DONE:
                return
            if meaning is None:
                self._decide(stream, check.Verdict(check.ERROR))
                return
            if meaning.query_edits:
                # Not supported yet (the path goes upstream as routed): refused as an error, never ignored.
                log.warning("ext_authz: an answer asked to edit query parameters (not supported yet): taken as an error")
                self._decide(stream, check.Verdict(check.ERROR))
                return
            for name, value in meaning.to_join:
                old = [v for n, v in stream.headers if n == name]
                stream.edit_request_header("set", name, b",".join([*old, value]))
            if meaning.client_append:
                self._on_success_append[stream] = meaning.client_append
                stream.on_finish(lambda: self._on_success_append.pop(stream, None))
            self._decide(stream, meaning.verdict, bool(meaning.to_join))

        self.grpc.check(stream, facts, body, partial, answered)

    def _decide(self, stream: Any, verdict: check.Verdict, joined: bool = False) -> None:
        """Act on a verdict (`joined`: a gRPC answer already appended to some request headers)."""
        kind = verdict.kind
        self._count(stream, kind)
        if kind == check.OK:
            self._allow(stream, verdict, joined)
        elif kind == check.DENIED:
            body = verdict.body
            limit = self.config.max_denied_response_body_bytes
            if limit:
                body = body[:limit]
            self._reply(stream, verdict.status, body, verdict.to_client, "ext_authz_denied")
        elif self.config.failure_mode_allow:
            self._count(stream, "failure_mode_allowed")
            if self.config.failure_mode_allow_header_add:
                stream.edit_request_header("set", check.FAILURE_MODE_ALLOWED, b"true")
            stream.continue_decoding()
        else:
            self._reply(stream, self.status_on_error, b"", [], "ext_authz_error")

    def _count(self, stream: Any, kind: str) -> None:
        self.counters[kind].inc()
        route = stream.route
        if self.config.charge_cluster_response_stats and route is not None and route.cluster:
            self.stats.counter(f"cluster.{route.cluster}.ext_authz.{kind}").inc()

    def _allow(self, stream: Any, verdict: check.Verdict, joined: bool) -> None:
        for name in verdict.to_remove:
            stream.edit_request_header("remove", name)
        for name, value in verdict.to_set:
            stream.edit_request_header("set", name, value)
        for name, value in verdict.to_append:
            stream.edit_request_header("add", name, value)
        changed = joined or verdict.to_remove or verdict.to_set or verdict.to_append
        if changed and self.config.clear_route_cache:
            stream.route = stream.hcm.route_table.match(stream.authority.decode("latin-1"),
                                                        stream.path.decode("utf-8", "surrogateescape"),
                                                        HeaderList(stream.headers))
        if verdict.to_client:
            self._on_success[stream] = verdict.to_client
            stream.on_finish(lambda: self._on_success.pop(stream, None))
        stream.continue_decoding()

    @staticmethod
    def _reply(stream: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]], details: str) -> None:
        content_type = b"text/plain"
        extra = []
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name not in (b"date", b"server"):  # the local reply has its own
                extra.append((name, value))
        stream.flags = FLAG
        stream.respond_from_filter(status, body, extra, details, content_type=content_type)

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        added = self._on_success.get(stream)
        if added is not None:
            for name, value in added:
                headers.set(name, value)
        appended = self._on_success_append.get(stream)
        if appended is not None:
            for name, value in appended:
                headers.add(name, value)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, ExtAuthz)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, PER_ROUTE_TYPE_URL, ExtAuthzPerRoute)
register_filter(ExtAuthz, ExtAuthzFilter)

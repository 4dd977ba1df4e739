"""What an HTTP filter costs per request, pylon next to Envoy 1.40: requests per proxy-CPU-second with and
without it.

The `plain` config of proxy_vs_envoy.py (examples/bench/proxy-plain.yaml: one listener, one route, a 1-worker
nginx upstream answering text/plain, `--body` bytes), then the same with one filter ahead of the router:

  gzip             envoy.filters.http.compressor with gzip (Envoy's defaults); wrk sends `Accept-Encoding: gzip`,
                   so every response is compressed (use a body of a realistic size: --body 2048)
  ext_authz        an HTTP authorization service (a second 1-worker nginx answering 200: every request
                   allowed, one check request each, through the proxy's own pool to it)
  local_ratelimit  a bucket too large to ever run dry, enabled and enforced (the token is taken, never refused)
  local_ratelimit_descriptors  the same filter with its own rate_limits (the x-tenant header and a generic key)
                   and two descriptors: wrk's x-tenant makes the second's entries, whose bucket (never dry) is taken
  lua              envoy.filters.http.lua whose envoy_on_request adds one request header
  header_mutation  envoy.filters.http.header_mutation adding one request and one response header
  buffer           envoy.filters.http.buffer (wrk's GETs have no body: what the filter costs where it has nothing
                   to buffer)
  jwt_authn        envoy.filters.http.jwt_authn, one provider with a local RSA JWKS; wrk sends one RS256 token
                   (minted here with joserfc), verified on every request
  jwt_cached       the same with jwt_cache_config: the token verified once, then found in the cache
  aws_sigv4        envoy.filters.http.aws_request_signing, SigV4 with inline credentials and an unsigned payload
  aws_sigv4a       the same with SigV4A (an ECDSA P-256 signature per request)
  api_key_auth     envoy.filters.http.api_key_auth, one key in Authorization, its client forwarded in x-client-id
  credential_injector  envoy.filters.http.credential_injector injecting a static generic secret in Authorization
  bandwidth_limit  envoy.filters.http.bandwidth_limit on both directions with a limit (1 TiB/s) no body reaches:
                   every response body passes the bucket, none is held (the filter's pure overhead)
  json_post        no filter: wrk POSTs a 69-byte JSON body and the upstream (an nginx of its own) answers JSON,
                   the baseline of `transform`
  transform        envoy.filters.http.transform as Envoy's docs configure it: a request header from the body, a field
                   merged into it, two response headers from the JSON answer (wrk and upstream as json_post)
  sse              no filter: the upstream (an nginx of its own) answers text/event-stream: three events (the
                   model, the token usage, [DONE]), 109 bytes; the baseline of `sse_to_metadata`
  sse_to_metadata  envoy.filters.http.sse_to_metadata with the docs' two rules over the `sse` upstream
  internal_listener  not a filter: one more hop inside the proxy, the route to a cluster whose endpoint is an
                   internal listener (envoy.bootstrap.internal_listener) with the same HCM, which routes to the
                   upstream: what an internal hop (a second HCM and pool, no socket) costs per request
  cors             envoy.filters.http.cors with a CorsPolicy on the virtual host; wrk sends an Origin it allows,
                   so every response gets access-control-allow-origin (and -expose-headers) added
  health_check     envoy.filters.http.health_check, pass_through_mode false, health path /healthz: wrk's `/` is
                   compared with it and goes on (the cost of looking)
  brotli, zstd     the compressor with brotli / zstd (Envoy's defaults), wrk sending `Accept-Encoding: br` /
                   `zstd`: every response compressed
  rbac             envoy.filters.http.rbac, ALLOW with two policies: `admin` (path /admin and an x-admin header:
                   no match) then `bench` (a POST-method permission that misses, then method GET, path prefix /
                   and a present :authority, all three evaluated): wrk's request walks both to be allowed
  fault            envoy.filters.http.fault with a 1 s delay and a 503 abort, each at 0 percent: the per-request
                   draw that decides neither applies
  set_metadata     envoy.filters.http.set_metadata putting a two-key struct in namespace `bench` on every request
  header_to_metadata  envoy.filters.http.header_to_metadata: wrk's x-tenant header into metadata bench/tenant
  cache            envoy.filters.http.cache with the in-memory store (SimpleHttpCacheConfig); this variant's own
                   nginx adds `Cache-Control: max-age=86400`, so every request after the first is a hit served by
                   the proxy (the upstream is not asked: the cost is the lookup and replay against a full hop)
  stateful_session envoy.filters.http.stateful_session with a cookie; wrk sends the cookie naming the upstream
                   (`bench-session`, base64 of Envoy's Cookie message with the address), so every request has it
                   parsed, decoded and the host looked up and chosen (counted in stateful_session.bench.routed)
  admission_control  envoy.filters.http.admission_control enabled, default success criteria: every response
                   recorded in the sliding window and every request drawn against the (zero) rejection rate
  csrf             envoy.filters.http.csrf, enabled; only state-changing methods are checked, so wrk sends a POST
                   without a body with `Origin: http://bench.example` (an additional_origins match): the cheapest
                   honest setup. Its cost is against `post`, the same POST through the plain config
  json_to_metadata envoy.filters.http.json_to_metadata: wrk POSTs {"tenant":"wrk","id":1} (application/json); the
                   filter holds the body, parses it and puts `tenant` into metadata. Against `post_json`, the same
                   POST through the plain config
  decompressor     envoy.filters.http.decompressor with gzip, request direction: wrk POSTs a gzip-encoded body
                   (1 KiB of text, `Content-Encoding: gzip`), inflated on its way upstream. Against `post_gzip`,
                   the same POST through the plain config (where the compressed body passes as it is)
  post, post_json, post_gzip  baselines: no filter, the request of csrf / json_to_metadata / decompressor

Each variant is one config file run unchanged by both proxies. Both proxies `--concurrency 1`, `wrk -t1 -c50`
keep-alive; every proxy starts up front, repetitions are interleaved and the order of the two proxies alternates,
as proxy_vs_envoy.py does. The metric is requests per proxy-CPU-second (the proxy's process tree, from /proc),
median of the repetitions; a filter's cost is the difference of CPU microseconds per request with and without it
(without it: `plain`, or the variant's BASELINE when wrk sends something else than a GET).
The authorization server's CPU is not the proxy's.

Usage: python benchmarks/filter_cost.py [--variants plain,gzip,ext_authz,local_ratelimit,lua,...] [--reps 3]
                                        [--duration 10] [--body 100] [--out FILE]
Prints a table; writes nothing unless --out FILE (JSON).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey

from pylon.bench.scenario import render_template
from pylon.bench.targets import Running, TargetError, free_port, run_wrk, start_envoy, start_nginx, start_pylon_proxy
from pylon.extensions.filters.common.session_state import encode_cookie

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "bench" / "proxy-plain.yaml"
PROXIES = ("pylon", "envoy")
CONNECTIONS = 50
GZIP = {"name": "envoy.filters.http.compressor", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
    "response_direction_config": {},
    "compressor_library": {"name": "text", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"}}}}
EXT_AUTHZ = {"name": "envoy.filters.http.ext_authz", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "http_service": {"server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "1s"}}}}
ALL = {"default_value": {"numerator": 100}}
BIG_BUCKET = {"max_tokens": 4_000_000_000, "tokens_per_fill": 4_000_000_000, "fill_interval": "1s"}
LOCAL_RATELIMIT = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "stat_prefix": "bench_rl", "filter_enabled": ALL, "filter_enforced": ALL,
    "token_bucket": BIG_BUCKET}}
LOCAL_RATELIMIT_DESCRIPTORS = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
    **LOCAL_RATELIMIT["typed_config"],
    "rate_limits": [{"actions": [{"request_headers": {"header_name": "x-tenant", "descriptor_key": "tenant"}},
                                 {"generic_key": {"descriptor_value": "bench"}}]}],
    "descriptors": [{"entries": [{"key": "tenant", "value": "other"}], "token_bucket": BIG_BUCKET},
                    {"entries": [{"key": "tenant", "value": "wrk"}, {"key": "generic_key", "value": "bench"}],
                     "token_bucket": BIG_BUCKET}]}}
LUA = {"name": "envoy.filters.http.lua", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
    "default_source_code": {"inline_string":
        'function envoy_on_request(request_handle) request_handle:headers():add("x-lua", "1") end'}}}
HEADER_MUTATION = {"name": "envoy.filters.http.header_mutation", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
    "mutations": {"request_mutations": [{"append": {"header": {"key": "x-hm", "value": "1"}}}],
                  "response_mutations": [{"append": {"header": {"key": "x-hm-resp", "value": "1"}}}]}}}
BUFFER = {"name": "envoy.filters.http.buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 65536}}
_JWT_KEY = RSAKey.generate_key(2048, parameters={"kid": "bench"})
JWT_TOKEN = jwt.encode({"alg": "RS256", "kid": "bench"}, {"iss": "bench", "sub": "wrk"}, _JWT_KEY)


def _jwt_authn(cache: bool) -> dict[str, Any]:
    provider: dict[str, Any] = {"issuer": "bench", "local_jwks": {"inline_string": json.dumps(
        {"keys": [_JWT_KEY.as_dict(private=False)]})}}
    if cache:
        provider["jwt_cache_config"] = {}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}}


def _aws_signing(algorithm: str) -> dict[str, Any]:
    return {"name": "envoy.filters.http.aws_request_signing", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning",
        "service_name": "vpc-lattice-svcs", "region": "us-east-1" if algorithm == "AWS_SIGV4" else "*",
        "signing_algorithm": algorithm, "use_unsigned_payload": True,
        "credential_provider": {"inline_credential": {"access_key_id": "AKIDBENCH", "secret_access_key": "bench"}}}}


API_KEY_AUTH = {"name": "envoy.filters.http.api_key_auth", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
    "credentials": [{"key": "bench-key", "client": "wrk"}], "key_sources": [{"header": "Authorization"}],
    "forwarding": {"header": "x-client-id"}}}
CREDENTIAL_INJECTOR = {"name": "envoy.filters.http.credential_injector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
    "credential": {"name": "envoy.http.injected_credentials.generic", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
        "credential": {"name": "bench-credential"}}}}}
BANDWIDTH_LIMIT = {"name": "envoy.filters.http.bandwidth_limit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit",
    "stat_prefix": "bench_bw", "enable_mode": "REQUEST_AND_RESPONSE", "limit_kbps": 1 << 30}}
BENCH_SECRET = {"name": "bench-credential", "generic_secret": {"secret": {"inline_string": "Basic YmVuY2g6YmVuY2g="}}}
ORIGIN = "http://bench.example"
CORS = {"name": "envoy.filters.http.cors", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
CORS_POLICY = {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
               "allow_origin_string_match": [{"exact": ORIGIN}], "allow_methods": "GET, POST",
               "expose_headers": "x-bench"}
HEALTH_CHECK = {"name": "envoy.filters.http.health_check", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
    "pass_through_mode": False, "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}]}}


def _compressor(library: str, message: str) -> dict[str, Any]:
    return {"name": "envoy.filters.http.compressor", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
        "response_direction_config": {},
        "compressor_library": {"name": "text", "typed_config": {
            "@type": f"type.googleapis.com/envoy.extensions.compression.{library}.compressor.v3.{message}"}}}}


def _header(name: str, exact: str | None = None) -> dict[str, Any]:
    return {"header": {"name": name, **({"string_match": {"exact": exact}} if exact else {"present_match": True})}}


RBAC = {"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "rules": {"action": "ALLOW", "policies": {
        "admin": {"permissions": [{"and_rules": {"rules": [
            {"url_path": {"path": {"prefix": "/admin"}}}, _header("x-admin")]}}],
            "principals": [{"any": True}]},
        "bench": {"permissions": [_header(":method", "POST"), {"and_rules": {"rules": [
            _header(":method", "GET"), {"url_path": {"path": {"prefix": "/"}}}, _header(":authority")]}}],
            "principals": [{"any": True}]}}}}}
NONE = {"numerator": 0, "denominator": "HUNDRED"}
FAULT = {"name": "envoy.filters.http.fault", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
    "delay": {"fixed_delay": "1s", "percentage": NONE}, "abort": {"http_status": 503, "percentage": NONE}}}
SET_METADATA = {"name": "envoy.filters.http.set_metadata", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
    "metadata": [{"metadata_namespace": "bench", "value": {"tenant": "wrk", "tier": "gold"}}]}}
HEADER_TO_METADATA = {"name": "envoy.filters.http.header_to_metadata", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
    "request_rules": [{"header": "x-tenant", "on_header_present": {
        "metadata_namespace": "bench", "key": "tenant", "type": "STRING"}}]}}
CACHE = {"name": "envoy.filters.http.cache", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3."
                              "SimpleHttpCacheConfig"}}}
SESSION_COOKIE = "bench-session"
STATEFUL_SESSION = {"name": "envoy.filters.http.stateful_session", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
    "stat_prefix": "bench", "session_state": {"name": "envoy.http.stateful_session.cookie", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
        "cookie": {"name": SESSION_COOKIE, "path": "/"}}}}}
ADMISSION_CONTROL = {"name": "envoy.filters.http.admission_control", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
    "enabled": {"default_value": True, "runtime_key": "bench.admission_control.enabled"},
    "success_criteria": {}}}
CSRF = {"name": "envoy.filters.http.csrf", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
    "filter_enabled": ALL, "additional_origins": [{"exact": "bench.example"}]}}
JSON_TO_METADATA = {"name": "envoy.filters.http.json_to_metadata", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
    "request_rules": {"rules": [{"selectors": [{"key": "tenant"}],
                                 "on_present": {"metadata_namespace": "bench", "key": "tenant"}}]}}}
DECOMPRESSOR = {"name": "envoy.filters.http.decompressor", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
    "decompressor_library": {"name": "text", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"}}}}


def _lua_string(data: bytes) -> str:
    """A Lua string literal of any bytes (every byte a 3-digit decimal escape: no digit can run into one)."""
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def _post_lua(body: bytes = b"", headers: dict[str, str] | None = None) -> str:
    """wrk Lua making every request a POST of `body` with `headers` (wrk adds the Content-Length)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body)}"]
    lines += [f'wrk.headers["{name}"] = "{value}"' for name, value in (headers or {}).items()]
    return "\n".join(lines)


POST_LUA = _post_lua(headers={"Origin": ORIGIN})
POST_JSON_LUA = _post_lua(b'{"tenant":"wrk","id":1}', {"Content-Type": "application/json"})
POST_GZIP_LUA = _post_lua(gzip.compress(b"pylon filter cost, a line of text to inflate\n" * 23, mtime=0),
                          {"Content-Type": "text/plain", "Content-Encoding": "gzip"})

def _set_header(key: str, value: str) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}


TRANSFORM = {"name": "transform", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.transform.v3.TransformConfig",
    "request_transformation": {
        "headers_mutations": [_set_header("model-header", "%REQUEST_BODY(model)%")],
        "body_transformation": {"body_format": {"json_format": {"model": "new-model"}}, "action": "MERGE"}},
    "response_transformation": {"headers_mutations": [
        _set_header("prompt-tokens", "%RESPONSE_BODY(usage:prompt_tokens)%"),
        _set_header("completion-tokens", "%RESPONSE_BODY(usage:completion_tokens)%")]}}}
SSE_TO_METADATA = {"name": "envoy.filters.http.sse_to_metadata", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata",
    "response_rules": {"content_parser": {"name": "envoy.content_parsers.json", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.content_parsers.json.v3.JsonContentParser",
        "rules": [{"rule": {"selectors": [{"key": "usage"}, {"key": "total_tokens"}],
                            "on_present": {"metadata_namespace": "envoy.lb", "key": "tokens", "type": "NUMBER"}}},
                  {"rule": {"selectors": [{"key": "model"}],
                            "on_present": {"metadata_namespace": "envoy.lb", "key": "model_name", "type": "STRING"}},
                   "stop_processing_after_matches": 1}]}}}}}
JSON_REQUEST = _post_lua(b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}',
                         {"Content-Type": "application/json"})


class Answer(NamedTuple):
    """What an nginx upstream answers (start_nginx's arguments): a `body` of its own, else --body bytes."""

    content_type: str = "text/plain"
    body: str | None = None
    response_headers: tuple[tuple[str, str], ...] = ()


PLAIN_ANSWER = Answer()
JSON_ANSWER = Answer("application/json",
                     '{"id": "x", "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}')
SSE_ANSWER = Answer("text/event-stream", 'data: {"model": "bench", "choices": [{"delta": "hi"}]}\n\n'
                                         'data: {"usage": {"total_tokens": 42}}\n\ndata: [DONE]\n\n')
CACHEABLE_ANSWER = Answer(response_headers=(("Cache-Control", "max-age=86400"),))
#: variant -> what its upstream answers when not the plain nginx's text (each answer has an nginx of its own)
ANSWERS = {"json_post": JSON_ANSWER, "transform": JSON_ANSWER, "sse": SSE_ANSWER, "sse_to_metadata": SSE_ANSWER,
           "cache": CACHEABLE_ANSWER}

#: variant -> (the filter ahead of the router, or None; the request headers wrk sends)
VARIANTS: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "plain": (None, []),
    "gzip": (GZIP, ["Accept-Encoding: gzip"]),
    "ext_authz": (EXT_AUTHZ, []),
    "local_ratelimit": (LOCAL_RATELIMIT, []),
    "local_ratelimit_descriptors": (LOCAL_RATELIMIT_DESCRIPTORS, ["x-tenant: wrk"]),
    "lua": (LUA, []),
    "header_mutation": (HEADER_MUTATION, []),
    "buffer": (BUFFER, []),
    "jwt_authn": (_jwt_authn(cache=False), [f"Authorization: Bearer {JWT_TOKEN}"]),
    "jwt_cached": (_jwt_authn(cache=True), [f"Authorization: Bearer {JWT_TOKEN}"]),
    "aws_sigv4": (_aws_signing("AWS_SIGV4"), []),
    "aws_sigv4a": (_aws_signing("AWS_SIGV4A"), []),
    "api_key_auth": (API_KEY_AUTH, ["Authorization: bench-key"]),
    "credential_injector": (CREDENTIAL_INJECTOR, []),
    "bandwidth_limit": (BANDWIDTH_LIMIT, []),
    "json_post": (None, []),
    "transform": (TRANSFORM, []),
    "sse": (None, []),
    "sse_to_metadata": (SSE_TO_METADATA, []),
    "internal_listener": (None, []),
    "cors": (CORS, [f"Origin: {ORIGIN}"]),
    "health_check": (HEALTH_CHECK, []),
    "brotli": (_compressor("brotli", "Brotli"), ["Accept-Encoding: br"]),
    "zstd": (_compressor("zstd", "Zstd"), ["Accept-Encoding: zstd"]),
    "rbac": (RBAC, []),
    "fault": (FAULT, []),
    "set_metadata": (SET_METADATA, []),
    "header_to_metadata": (HEADER_TO_METADATA, ["x-tenant: wrk"]),
    "cache": (CACHE, []),
    "stateful_session": (STATEFUL_SESSION, []),  # + the session cookie, which names the upstream's port
    "admission_control": (ADMISSION_CONTROL, []),
    "post": (None, []),
    "csrf": (CSRF, []),
    "post_json": (None, []),
    "json_to_metadata": (JSON_TO_METADATA, []),
    "post_gzip": (None, []),
    "decompressor": (DECOMPRESSOR, []),
}
#: variant -> wrk Lua for a request -H cannot describe (a POST with a body)
REQUEST_LUA = {"post": POST_LUA, "csrf": POST_LUA, "post_json": POST_JSON_LUA, "json_to_metadata": POST_JSON_LUA,
               "post_gzip": POST_GZIP_LUA, "decompressor": POST_GZIP_LUA, "json_post": JSON_REQUEST,
               "transform": JSON_REQUEST}
#: variant -> the variant its cost is measured against, where wrk's request is not plain's GET
BASELINE = {"csrf": "post", "json_to_metadata": "post_json", "decompressor": "post_gzip", "transform": "json_post",
            "sse_to_metadata": "sse"}


def session_cookie(upstream_port: int) -> str:
    """The stateful_session cookie naming the upstream, as Envoy writes it: base64 of its `Cookie` message (no
    ttl, so no expiry)."""
    return base64.b64encode(encode_cookie(f"127.0.0.1:{upstream_port}".encode(), 0)).decode()


def request_headers(variant: str, upstream_port: int) -> list[str]:
    """The -H headers wrk sends for `variant`."""
    if variant == "stateful_session":
        return [f"Cookie: {SESSION_COOKIE}={session_cookie(upstream_port)}"]
    return VARIANTS[variant][1]


def _through_internal_listener(bootstrap: dict[str, Any]) -> None:
    """The ingress HCM routes to an internal listener running a copy of itself, which routes to the upstream."""
    resources = bootstrap["static_resources"]
    ingress = resources["listeners"][0]
    inner = json.loads(json.dumps(ingress))
    inner["name"] = "inner"
    del inner["address"]
    inner["internal_listener"] = {}
    inner["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = "inner_http"
    resources["listeners"].append(inner)
    ingress["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0][
        "route"]["cluster"] = "inner"
    resources["clusters"].append({"name": "inner", "load_assignment": {"cluster_name": "inner", "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "inner"}}}}]}]}})
    bootstrap["bootstrap_extensions"] = [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}]


def config(variant: str, listen: int, admin: int, upstream: int, authz: int) -> dict[str, Any]:
    bootstrap = yaml.safe_load(render_template(TEMPLATE.read_text(), {
        "listen_port": listen, "admin_port": admin, "upstream_port": upstream}))
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    http_filter = VARIANTS[variant][0]
    if http_filter is not None:
        hcm["http_filters"].insert(0, json.loads(json.dumps(http_filter)))  # a copy: callers may edit theirs
    if variant == "internal_listener":
        _through_internal_listener(bootstrap)
    if variant == "cors":
        hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = {
            "envoy.filters.http.cors": json.loads(json.dumps(CORS_POLICY))}
    if variant == "credential_injector":
        bootstrap["static_resources"]["secrets"] = [BENCH_SECRET]
    if variant == "ext_authz":
        cluster = json.loads(json.dumps(bootstrap["static_resources"]["clusters"][0]))
        cluster["name"] = cluster["load_assignment"]["cluster_name"] = "authz"
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"] = authz
        bootstrap["static_resources"]["clusters"].append(cluster)
    return bootstrap


def measure(proc: Running, variant: str, duration: float, headers: list[str]) -> dict[str, Any]:
    before = proc.cpu_seconds()
    w = run_wrk(proc.url(), duration=duration, connections=CONNECTIONS, threads=1, headers=headers,
                request_lua=REQUEST_LUA.get(variant, ""))
    cpu = proc.cpu_seconds() - before
    return {"requests": w.requests, "rps": w.requests_per_sec, "errors": w.errors + w.non_2xx_3xx,
            "proxy_cpu_s": cpu, "req_per_proxy_cpu_s": w.requests / cpu if cpu else None,
            "wrk_cpu_s": w.cpu_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--body", type=int, default=100, help="upstream body bytes (100)")
    parser.add_argument("--out", type=Path, default=None, help="also write the runs and medians here (JSON)")
    args = parser.parse_args()
    chosen = [v for v in args.variants.split(",") if v != "plain"]
    variants = ["plain", *dict.fromkeys(v for c in chosen for v in (BASELINE.get(c), c) if v is not None)]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-filter-cost-") as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            authz = stack.enter_context(start_nginx(free_port(), body_size=0))
            upstreams = {answer: stack.enter_context(start_nginx(free_port(), body_size=args.body, **answer._asdict()))
                         for answer in {ANSWERS.get(v, PLAIN_ANSWER) for v in variants}}
            upstream = upstreams[PLAIN_ANSWER]
            proxies: dict[tuple[str, str], Running] = {}
            for variant in variants:
                upstream_port = upstreams[ANSWERS.get(variant, PLAIN_ANSWER)].port
                for proxy in PROXIES:
                    listen, admin = free_port(), free_port()
                    path = work / f"{variant}-{proxy}.yaml"
                    path.write_text(yaml.safe_dump(config(variant, listen, admin, upstream_port, authz.port)))
                    start = start_pylon_proxy if proxy == "pylon" else start_envoy
                    proxies[variant, proxy] = stack.enter_context(start(
                        path, port=listen, admin_port=admin, concurrency=1, log_path=work / f"{variant}-{proxy}.log"))
            headers = {v: request_headers(v, upstream.port) for v in variants}
            for (variant, _), proc in proxies.items():
                run_wrk(proc.url(), duration=args.warmup, connections=CONNECTIONS, headers=headers[variant],
                        request_lua=REQUEST_LUA.get(variant, ""))
            for rep in range(1, args.reps + 1):
                for variant in variants:
                    for proxy in PROXIES if rep % 2 else PROXIES[::-1]:
                        row = {"rep": rep, "variant": variant, "proxy": proxy,
                               **measure(proxies[variant, proxy], variant, args.duration, headers[variant])}
                        runs.append(row)
                        print(f"  rep {rep} {variant:15s} {proxy:5s} {row['rps']:8.0f} req/s "
                              f"{row['req_per_proxy_cpu_s'] or 0:8.0f} req/proxy-CPU-s errors {row['errors']}",
                              flush=True)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    medians = {(v, p): statistics.median(r["req_per_proxy_cpu_s"] for r in runs if (r["variant"], r["proxy"]) == (v, p))
               for v in variants for p in PROXIES}
    print(f"\nmedian of {args.reps} x {args.duration:g} s, wrk -t1 -c{CONNECTIONS} keep-alive, nginx body "
          f"{args.body} B text/plain, --concurrency 1\n")
    print("| variant | pylon req/CPU-s | pylon µs/req | pylon filter µs | Envoy req/CPU-s | Envoy µs/req "
          "| Envoy filter µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        cells = []
        for proxy in PROXIES:
            eff = medians[variant, proxy]
            base = BASELINE.get(variant, "plain")
            cost = 1e6 / eff - 1e6 / medians[base, proxy]
            cells += [f"{eff:.0f}", f"{1e6 / eff:.1f}", "-" if variant == base else f"{cost:+.1f}"]
        against = f" (vs {BASELINE[variant]})" if variant in BASELINE else ""
        print(f"| {variant}{against} | " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": runs, "medians": {f"{v}/{p}": m for (v, p), m in medians.items()}},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

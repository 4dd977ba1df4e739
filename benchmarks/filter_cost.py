"""What an HTTP filter costs per request, pylon next to Envoy 1.40: requests per proxy-CPU-second with and
without it.

The `plain` config of proxy_vs_envoy.py (examples/bench/proxy-plain.yaml: one listener, one route, a 1-worker
nginx upstream answering text/plain, `--body` bytes), then the same with one filter ahead of the router:

  gzip             envoy.filters.http.compressor with gzip (Envoy's defaults); wrk sends `Accept-Encoding: gzip`,
                   so every response is compressed (use a body of a realistic size: --body 2048)
  ext_authz        an HTTP authorization service (a second 1-worker nginx answering 200: every request
                   allowed, one check request each, through the proxy's own pool to it)
  local_ratelimit  a bucket too large to ever run dry, enabled and enforced (the token is taken, never refused)
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
  json_post        no filter: wrk POSTs a 69-byte JSON body and the upstream (a third nginx) answers JSON, the
                   baseline of `transform`
  transform        envoy.filters.http.transform as Envoy's docs configure it: a request header from the body, a field
                   merged into it, two response headers from the JSON answer (wrk and upstream as json_post)
  sse_to_metadata  envoy.filters.http.sse_to_metadata with the docs' two rules over an upstream (a fourth nginx)
                   answering text/event-stream: three events (the model, the token usage, [DONE]), 109 bytes
  internal_listener  not a filter: one more hop inside the proxy, the route to a cluster whose endpoint is an
                   internal listener (envoy.bootstrap.internal_listener) with the same HCM, which routes to the
                   upstream: what an internal hop (a second HCM and pool, no socket) costs per request

Each variant is one config file run unchanged by both proxies. Both proxies `--concurrency 1`, `wrk -t1 -c50`
keep-alive; every proxy starts up front, repetitions are interleaved and the order of the two proxies alternates,
as proxy_vs_envoy.py does. The metric is requests per proxy-CPU-second (the proxy's process tree, from /proc),
median of the repetitions; a filter's cost is the difference of CPU microseconds per request with and without it.
The authorization server's CPU is not the proxy's.

Usage: python benchmarks/filter_cost.py [--variants plain,gzip,ext_authz,local_ratelimit,lua,...] [--reps 3]
                                        [--duration 10] [--body 100] [--out FILE]
Prints a table; writes nothing unless --out FILE (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey

from pylon.bench.scenario import render_template
from pylon.bench.targets import Running, TargetError, free_port, run_wrk, start_envoy, start_nginx, start_pylon_proxy

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
LOCAL_RATELIMIT = {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "stat_prefix": "bench_rl", "filter_enabled": ALL, "filter_enforced": ALL,
    "token_bucket": {"max_tokens": 4_000_000_000, "tokens_per_fill": 4_000_000_000, "fill_interval": "1s"}}}
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
BENCH_SECRET = {"name": "bench-credential", "generic_secret": {"secret": {"inline_string": "Basic YmVuY2g6YmVuY2g="}}}

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
JSON_REQUEST = ('wrk.method = "POST"\n'
                'wrk.body = \'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}\'')
JSON_ANSWER = ("application/json",
               '{"id": "x", "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}')
SSE_ANSWER = ("text/event-stream", 'data: {"model": "bench", "choices": [{"delta": "hi"}]}\n\n'
                                   'data: {"usage": {"total_tokens": 42}}\n\ndata: [DONE]\n\n')
#: variant -> what its upstream answers (content-type, body) when not the plain nginx's text
ANSWERS = {"json_post": JSON_ANSWER, "transform": JSON_ANSWER, "sse_to_metadata": SSE_ANSWER}
#: variant -> Lua run first in wrk's script (its method and body)
PRELUDES = {"json_post": JSON_REQUEST, "transform": JSON_REQUEST}

#: variant -> (the filter ahead of the router, or None; the request headers wrk sends)
VARIANTS: dict[str, tuple[dict[str, Any] | None, list[str]]] = {
    "plain": (None, []),
    "gzip": (GZIP, ["Accept-Encoding: gzip"]),
    "ext_authz": (EXT_AUTHZ, []),
    "local_ratelimit": (LOCAL_RATELIMIT, []),
    "lua": (LUA, []),
    "header_mutation": (HEADER_MUTATION, []),
    "buffer": (BUFFER, []),
    "jwt_authn": (_jwt_authn(cache=False), [f"Authorization: Bearer {JWT_TOKEN}"]),
    "jwt_cached": (_jwt_authn(cache=True), [f"Authorization: Bearer {JWT_TOKEN}"]),
    "aws_sigv4": (_aws_signing("AWS_SIGV4"), []),
    "aws_sigv4a": (_aws_signing("AWS_SIGV4A"), []),
    "api_key_auth": (API_KEY_AUTH, ["Authorization: bench-key"]),
    "credential_injector": (CREDENTIAL_INJECTOR, []),
    "json_post": (None, ["Content-Type: application/json"]),
    "transform": (TRANSFORM, ["Content-Type: application/json"]),
    "sse_to_metadata": (SSE_TO_METADATA, []),
    "internal_listener": (None, []),
}


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
        hcm["http_filters"].insert(0, http_filter)
    if variant == "internal_listener":
        _through_internal_listener(bootstrap)
    if variant == "credential_injector":
        bootstrap["static_resources"]["secrets"] = [BENCH_SECRET]
    if variant == "ext_authz":
        cluster = json.loads(json.dumps(bootstrap["static_resources"]["clusters"][0]))
        cluster["name"] = cluster["load_assignment"]["cluster_name"] = "authz"
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"] = authz
        bootstrap["static_resources"]["clusters"].append(cluster)
    return bootstrap


def measure(proc: Running, variant: str, duration: float) -> dict[str, Any]:
    before = proc.cpu_seconds()
    w = run_wrk(proc.url(), duration=duration, connections=CONNECTIONS, threads=1, headers=VARIANTS[variant][1],
                script_prelude=PRELUDES.get(variant, ""))
    cpu = proc.cpu_seconds() - before
    return {"requests": w.requests, "rps": w.requests_per_sec, "errors": w.errors + w.non_2xx_3xx,
            "proxy_cpu_s": cpu, "req_per_proxy_cpu_s": w.requests / cpu if cpu else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--body", type=int, default=100, help="upstream body bytes (100)")
    parser.add_argument("--out", type=Path, default=None, help="also write the runs and medians here (JSON)")
    args = parser.parse_args()
    variants = ["plain", *(v for v in args.variants.split(",") if v != "plain")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-filter-cost-") as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            upstream = stack.enter_context(start_nginx(free_port(), body_size=args.body))
            authz = stack.enter_context(start_nginx(free_port(), body_size=0))
            answers = {answer: stack.enter_context(start_nginx(free_port(), content_type=answer[0], body=answer[1]))
                       for answer in {ANSWERS[v] for v in variants if v in ANSWERS}}
            proxies: dict[tuple[str, str], Running] = {}
            for variant in variants:
                for proxy in PROXIES:
                    listen, admin = free_port(), free_port()
                    path = work / f"{variant}-{proxy}.yaml"
                    answering = answers[ANSWERS[variant]] if variant in ANSWERS else upstream
                    path.write_text(yaml.safe_dump(config(variant, listen, admin, answering.port, authz.port)))
                    start = start_pylon_proxy if proxy == "pylon" else start_envoy
                    proxies[variant, proxy] = stack.enter_context(start(
                        path, port=listen, admin_port=admin, concurrency=1, log_path=work / f"{variant}-{proxy}.log"))
            for (variant, _), proc in proxies.items():
                run_wrk(proc.url(), duration=args.warmup, connections=CONNECTIONS, headers=VARIANTS[variant][1],
                        script_prelude=PRELUDES.get(variant, ""))
            for rep in range(1, args.reps + 1):
                for variant in variants:
                    for proxy in PROXIES if rep % 2 else PROXIES[::-1]:
                        row = {"rep": rep, "variant": variant, "proxy": proxy,
                               **measure(proxies[variant, proxy], variant, args.duration)}
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
            cost = 1e6 / eff - 1e6 / medians["plain", proxy]
            cells += [f"{eff:.0f}", f"{1e6 / eff:.1f}", "-" if variant == "plain" else f"{cost:+.1f}"]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": runs, "medians": {f"{v}/{p}": m for (v, p), m in medians.items()}},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

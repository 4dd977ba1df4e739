"""VirtualService HTTP routes to Envoy routes, as istiod translates them (shared by gateways and sidecars).

One Envoy route per `match` entry (one catch-all route when there is none); a
catch-all match ends the list, since later routes could never match. Istio's
defaults are kept: no route timeout ("0s", with max_grpc_timeout "0s"), the
default retry policy (2 attempts on connect-failure, refused-stream,
unavailable, cancelled and 503, preferring other hosts) unless `retries` says
otherwise, and header `set` as overwrite / `add` as append, sorted by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylon.pilot.gen.names import subset_key
from pylon.pilot.gen.policy import effective_policy
from pylon.pilot.gen.types import CORS_POLICY, FAULT, PREVIOUS_PRIORITIES, Json
from pylon.pilot.hosts import resolve_short_name
from pylon.pilot.istio.common import Percent, StringMatch, format_duration
from pylon.pilot.istio.cors import CorsPolicy
from pylon.pilot.istio.networking import (
    GRPC_STATUS,
    REDIRECT_CODES,
    ConsistentHashLB,
    Destination,
    Headers,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRoute,
    HTTPRouteDestination,
)
from pylon.pilot.istio.resources import Resource
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts",
                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}  # fmt: skip


@dataclass(frozen=True)
class RouteContext:
    """What translating one VirtualService for one proxy and port needs."""

    proxy: Proxy
    snapshot: Snapshot
    vs: Resource
    listen_port: int
    gateways: frozenset[str]  # "ns/name" of the gateways being generated for, or {"mesh"}


def build_http_routes(ctx: RouteContext) -> list[Json]:
    """The Envoy routes of a VirtualService's `http` list for one listener port."""
    out: list[Json] = []
    for http in ctx.vs.spec.http:
        if not http.match:
            out.append(_translate(ctx, http, None))
            break
        catch_all = False
        for match in http.match:
            if not _applies(ctx, match):
                continue
            route = _translate(ctx, http, match)
            out.append(route)
            if is_catch_all(route):
                catch_all = True
                break
        if catch_all:
            break
    return out


def is_catch_all(route: Json) -> bool:
    match = route["match"]
    path_catch_all = match.get("prefix") == "/" or match.get("safe_regex", {}).get("regex") == ".*"
    return path_catch_all and not match.get("headers") and not match.get("query_parameters")


def _applies(ctx: RouteContext, match: HTTPMatchRequest) -> bool:
    """Istio's per-match filters: port, then gateways (or source labels and namespace when none are named)."""
    if match.port and match.port != ctx.listen_port:
        return False
    if match.gateways:
        return any(_qualify(g, ctx.vs.namespace) in ctx.gateways for g in match.gateways)
    if not all(ctx.proxy.labels.get(k) == v for k, v in match.source_labels.items()):
        return False
    return not match.source_namespace or match.source_namespace == ctx.proxy.namespace


def _qualify(gateway: str, namespace: str) -> str:
    return gateway if "/" in gateway or gateway == "mesh" else f"{namespace}/{gateway}"


def _translate(ctx: RouteContext, http: HTTPRoute, match: HTTPMatchRequest | None) -> Json:
    name = http.name + (f".{match.name}" if match is not None and match.name else "")
    route: Json = {"match": translate_match(match)}
    if name:
        route["name"] = name
    if match is not None and match.stat_prefix:
        route["stat_prefix"] = match.stat_prefix
    authority = ""
    if http.headers is not None:
        authority = _apply_headers(route, http.headers)
    if http.redirect is not None:
        route["redirect"] = translate_redirect(http.redirect, ctx.listen_port)
    elif http.direct_response is not None:
        route["direct_response"] = _direct_response(http)
    else:
        route["route"] = _route_action(ctx, http, route, authority)
    route["decorator"] = {"operation": _operation(route, ctx.vs.name, ctx.listen_port)}
    if http.fault is not None:
        route.setdefault("typed_per_filter_config", {})["envoy.filters.http.fault"] = translate_fault(http.fault)
    if http.cors_policy is not None:
        route.setdefault("typed_per_filter_config", {})["envoy.filters.http.cors"] = translate_cors(http.cors_policy)
    route["metadata"] = {"filter_metadata": {"istio": {
        "config": f"/apis/networking.istio.io/v1/namespaces/{ctx.vs.namespace}/virtual-service/{ctx.vs.name}"}}}  # fmt: skip
    return route


# --------------------------------------------------------------------------- match


def translate_match(match: HTTPMatchRequest | None) -> Json:
    out: Json = {"prefix": "/"}
    if match is None:
        return out
    headers = [_header_matcher(name, m) for name, m in match.headers.items()]
    for name, m in match.without_headers.items():
        matcher = _header_matcher(name, m)
        matcher["invert_match"] = True
        if "present_match" not in matcher:
            matcher["treat_missing_header_as_empty"] = True
        headers.append(matcher)
    headers.sort(key=lambda h: h["name"])
    if match.uri is not None:
        uri = match.uri
        if uri.exact is not None:
            out = {"path": uri.exact}
        elif uri.prefix is not None:
            out = {"prefix": uri.prefix}
        elif uri.regex is not None:
            out = {"safe_regex": {"regex": uri.regex}}
    out["case_sensitive"] = not match.ignore_uri_case
    for pseudo, m in ((":method", match.method), (":authority", match.authority), (":scheme", match.scheme)):
        if m is not None:
            headers.append(_header_matcher(pseudo, m))
    if headers:
        out["headers"] = headers
    if match.query_params:
        out["query_parameters"] = [_query_matcher(name, m) for name, m in match.query_params.items()]
    return out


def _present(m: StringMatch) -> bool:
    """Istio turns an empty match, and the regex "*" (not RE2), into a presence check."""
    return (m.exact is None and m.prefix is None and m.regex is None) or m.regex == "*"


def _string_matcher(m: StringMatch) -> Json:
    if m.exact is not None:
        return {"exact": m.exact}
    if m.prefix is not None:
        return {"prefix": m.prefix}
    return {"safe_regex": {"regex": m.regex}}


def _header_matcher(name: str, m: StringMatch) -> Json:
    if _present(m):
        return {"name": name, "present_match": True}
    return {"name": name, "string_match": _string_matcher(m)}


def _query_matcher(name: str, m: StringMatch) -> Json:
    if _present(m):
        return {"name": name, "present_match": True}
    return {"name": name, "string_match": _string_matcher(m)}


# --------------------------------------------------------------------------- headers


def _header_options(values: dict[str, str], append: bool) -> tuple[list[Json], str]:
    """HeaderValueOptions sorted by name; :authority/host are not headers Envoy adds but an authority rewrite."""
    authority = ""
    options = []
    for key, value in values.items():
        if key.lower() in (":authority", "host"):
            authority = value
        if key.startswith(":") or key.lower() == "host":
            continue
        action = "APPEND_IF_EXISTS_OR_ADD" if append else "OVERWRITE_IF_EXISTS_OR_ADD"
        options.append({"header": {"key": key, "value": value}, "append_action": action})
    options.sort(key=lambda o: o["header"]["key"])
    return options, authority


def _header_mutations(headers: Headers) -> tuple[Json, str]:
    """(the four Envoy header lists that are non-empty, the authority to rewrite to or "")."""
    out: Json = {}
    request, response = headers.request, headers.response
    authority = ""
    if request is not None:
        set_opts, set_authority = _header_options(request.set, append=False)
        add_opts, add_authority = _header_options(request.add, append=True)
        authority = set_authority or add_authority
        if set_opts + add_opts:
            out["request_headers_to_add"] = set_opts + add_opts
        removed = [k for k in request.remove if not k.startswith(":") and k.lower() != "host"]
        if removed:
            out["request_headers_to_remove"] = removed
    if response is not None:
        set_opts, _ = _header_options(response.set, append=False)
        add_opts, _ = _header_options(response.add, append=True)
        if set_opts + add_opts:
            out["response_headers_to_add"] = set_opts + add_opts
        removed = [k for k in response.remove if not k.startswith(":") and k.lower() != "host"]
        if removed:
            out["response_headers_to_remove"] = removed
    return out, authority


def _apply_headers(target: Json, headers: Headers) -> str:
    mutations, authority = _header_mutations(headers)
    for key, values in mutations.items():
        target.setdefault(key, []).extend(values)
    return authority


# --------------------------------------------------------------------------- actions


def _route_action(ctx: RouteContext, http: HTTPRoute, route: Json, authority: str) -> Json:
    action: Json = {}
    timeout = http.timeout if http.timeout is not None else 0.0
    action["timeout"] = format_duration(timeout)
    action["max_grpc_timeout"] = format_duration(timeout)
    if http.rewrite is not None:
        rewrite = http.rewrite
        if rewrite.uri_regex_rewrite is not None:
            action["regex_rewrite"] = {"pattern": {"regex": rewrite.uri_regex_rewrite.match},
                                       "substitution": rewrite.uri_regex_rewrite.rewrite}  # fmt: skip
        elif rewrite.uri:
            action["prefix_rewrite"] = rewrite.uri
        if rewrite.authority:
            authority = rewrite.authority
    if authority:
        action["host_rewrite_literal"] = authority
    mirrors = _mirrors(ctx, http)
    if mirrors:
        action["request_mirror_policies"] = mirrors
    hashing: list[ConsistentHashLB] = []
    if len(http.route) == 1:
        only = http.route[0]
        action["cluster"] = destination_cluster(ctx, only.destination)
        if only.headers is not None:
            mutations, dest_authority = _header_mutations(only.headers)
            for key, values in mutations.items():
                route.setdefault(key, []).extend(values)
            if dest_authority and "host_rewrite_literal" not in action:
                action["host_rewrite_literal"] = dest_authority
        hashing = _hash_for(ctx, only.destination)
    else:
        weighted = []
        for dest in http.route:
            if dest.weight == 0:
                continue  # Istio drops zero-weight destinations when there are others
            weighted.append(_cluster_weight(ctx, dest))
            hashing += _hash_for(ctx, dest.destination)
        action["weighted_clusters"] = {"clusters": weighted}
    if hashing:
        action["hash_policy"] = [_hash_policy(h) for h in hashing]
    retry = translate_retry(http.retries, consistent_hash=bool(hashing))
    if retry is not None:
        action["retry_policy"] = retry
    return action


def _cluster_weight(ctx: RouteContext, dest: HTTPRouteDestination) -> Json:
    weighted: Json = {"name": destination_cluster(ctx, dest.destination), "weight": dest.weight}
    if dest.headers is not None:
        mutations, authority = _header_mutations(dest.headers)
        weighted.update(mutations)
        if authority:
            weighted["host_rewrite_literal"] = authority
    return weighted


def destination_cluster(ctx: RouteContext, destination: Destination) -> str:
    """`outbound|port|subset|host`: the port is the destination's, else the service's only port, else the listener's."""
    host = resolve_short_name(destination.host, ctx.vs.namespace)
    if destination.port is not None:
        port = destination.port.number
    else:
        service = ctx.snapshot.service(host, ctx.vs.namespace, ctx.proxy.namespace)
        port = service.ports[0].number if service is not None and len(service.ports) == 1 else ctx.listen_port
    return subset_key(host, port, destination.subset)


def _hash_for(ctx: RouteContext, destination: Destination) -> list[ConsistentHashLB]:
    """The DestinationRule's consistent hash for a destination, if any (subset and port levels win)."""
    host = resolve_short_name(destination.host, ctx.vs.namespace)
    service = ctx.snapshot.service(host, ctx.vs.namespace, ctx.proxy.namespace)
    rule = ctx.snapshot.destination_rule(host, ctx.proxy.namespace, service.namespace if service else ctx.vs.namespace)
    if rule is None:
        return []
    port = destination.port.number if destination.port is not None else 0
    lb = effective_policy(rule.spec, port, destination.subset).load_balancer
    return [lb.consistent_hash] if lb is not None and lb.consistent_hash is not None else []


def _hash_policy(hashing: ConsistentHashLB) -> Json:
    if hashing.http_header_name is not None:
        return {"header": {"header_name": hashing.http_header_name}}
    if hashing.http_cookie is not None:
        cookie: Json = {"name": hashing.http_cookie.name}
        if hashing.http_cookie.path:
            cookie["path"] = hashing.http_cookie.path
        if hashing.http_cookie.ttl is not None:
            cookie["ttl"] = format_duration(hashing.http_cookie.ttl)
        return {"cookie": cookie}
    if hashing.use_source_ip is not None:
        return {"connection_properties": {"source_ip": hashing.use_source_ip}}
    return {"query_parameter": {"name": hashing.http_query_parameter_name}}


def translate_retry(retries: HTTPRetry | None, consistent_hash: bool = False) -> Json | None:
    """Istio's retry policy: the default when unset, none when attempts is 0, else the default overridden."""
    policy: Json = {"retry_on": DEFAULT_RETRY_ON, "num_retries": 2, "retriable_status_codes": [503],
                    "host_selection_retry_max_attempts": 5}  # fmt: skip
    if not consistent_hash:
        policy["retry_host_predicate"] = [PREVIOUS_HOSTS]
    if retries is None:
        return policy
    if retries.attempts <= 0:
        return None
    policy["num_retries"] = retries.attempts
    if retries.retry_on:
        conditions, codes = _parse_retry_on(retries.retry_on)
        policy["retry_on"] = ",".join(conditions)
        policy["retriable_status_codes"] = codes
        if codes and "retriable-status-codes" not in policy["retry_on"]:
            policy["retry_on"] += ",retriable-status-codes"
        if not codes:
            policy.pop("retriable_status_codes")
    if retries.per_try_timeout is not None:
        policy["per_try_timeout"] = format_duration(retries.per_try_timeout)
    if retries.retry_ignore_previous_hosts is not None:
        if retries.retry_ignore_previous_hosts:
            policy["retry_host_predicate"] = [PREVIOUS_HOSTS]
        else:
            policy.pop("retry_host_predicate", None)
    if retries.retry_remote_localities:
        policy["retry_priority"] = {"name": "envoy.retry_priorities.previous_priorities",
                                    "typed_config": {"@type": PREVIOUS_PRIORITIES, "update_frequency": 2}}  # fmt: skip
    if retries.backoff is not None:
        policy["retry_back_off"] = {"base_interval": format_duration(retries.backoff)}
    return policy


_HTTP_STATUS_CODES = frozenset(range(100, 600))


def _parse_retry_on(retry_on: str) -> tuple[list[str], list[int]]:
    """Split Istio's retryOn into Envoy conditions and status codes (numbers that are HTTP statuses)."""
    conditions, codes = [], []
    for part in (p.strip() for p in retry_on.split(",")):
        if not part:
            continue
        if part.isdigit() and int(part) in _HTTP_STATUS_CODES:
            codes.append(int(part))
        else:
            conditions.append(part)
    return conditions, codes


def translate_redirect(redirect: HTTPRedirect, listen_port: int, is_tls: bool = False) -> Json:
    out: Json = {"path_redirect": redirect.uri}
    if redirect.authority:
        out["host_redirect"] = redirect.authority
    if redirect.scheme:
        out["scheme_redirect"] = redirect.scheme
    port = 0
    if redirect.derive_port == "FROM_REQUEST_PORT":
        port = listen_port
    elif redirect.port is not None:
        port = redirect.port
    if redirect.derive_port is not None or redirect.port is not None:
        scheme = redirect.scheme or ("https" if is_tls else "http")
        if (port == 80 and scheme == "http") or (port == 443 and scheme == "https"):
            port = 0
    if port:
        out["port_redirect"] = port
    out["response_code"] = REDIRECT_CODES[redirect.redirect_code]
    return out


def _direct_response(http: HTTPRoute) -> Json:
    direct = http.direct_response
    assert direct is not None
    out: Json = {"status": direct.status}
    if direct.body is not None:
        if direct.body.string is not None:
            out["body"] = {"inline_string": direct.body.string}
        else:
            out["body"] = {"inline_bytes": direct.body.bytes}
    return out


def _fraction(percent: Percent) -> Json:
    return {"numerator": int(percent.value * 10000), "denominator": "MILLION"}


def translate_fault(fault: HTTPFaultInjection) -> Json:
    """envoy.filters.http.fault per-route config; percentages as Istio writes them (parts per million)."""
    out: Json = {"@type": FAULT}
    if fault.delay is not None and fault.delay.fixed_delay is not None:
        delay = fault.delay
        pct = _fraction(delay.percentage) if delay.percentage is not None else {"numerator": delay.percent,
                                                                                "denominator": "HUNDRED"}  # fmt: skip
        out["delay"] = {"fixed_delay": format_duration(delay.fixed_delay), "percentage": pct}
    if fault.abort is not None:
        abort: Json = {}
        if fault.abort.percentage is not None:
            abort["percentage"] = _fraction(fault.abort.percentage)
        if fault.abort.http_status is not None:
            abort["http_status"] = fault.abort.http_status
        else:
            abort["grpc_status"] = GRPC_STATUS[fault.abort.grpc_status or ""]
        out["abort"] = abort
    return out


def translate_cors(cors: CorsPolicy) -> Json:
    """envoy.filters.http.cors per-route config as istiod writes it: always enabled, preflights from other origins
    forwarded unless `unmatchedPreflights: IGNORE`, `allowOrigins` (else the deprecated exact `allowOrigin`), lists
    joined with "," and maxAge in whole seconds."""
    out: Json = {"@type": CORS_POLICY, "forward_not_matching_preflights": cors.unmatched_preflights != "IGNORE",
                 "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}}
    if cors.allow_origins:
        out["allow_origin_string_match"] = [_string_matcher(origin) for origin in cors.allow_origins]
    elif cors.allow_origin:
        out["allow_origin_string_match"] = [{"exact": origin} for origin in cors.allow_origin]
    if cors.allow_credentials is not None:
        out["allow_credentials"] = cors.allow_credentials
    for field, values in (("allow_headers", cors.allow_headers), ("allow_methods", cors.allow_methods),
                          ("expose_headers", cors.expose_headers)):
        if values:
            out[field] = ",".join(values)
    if cors.max_age is not None:
        out["max_age"] = str(int(cors.max_age))
    return out


def _mirrors(ctx: RouteContext, http: HTTPRoute) -> list[Json]:
    out = []
    if http.mirror is not None:
        if http.mirror_percentage is not None:
            pct = _fraction(http.mirror_percentage) if http.mirror_percentage.value > 0 else None
        elif http.mirror_percent is not None:
            pct = {"numerator": http.mirror_percent, "denominator": "HUNDRED"} if http.mirror_percent > 0 else None
        else:
            pct = {"numerator": 100, "denominator": "HUNDRED"}
        if pct is not None:
            out.append(_mirror(ctx, http.mirror, pct))
    for policy in http.mirrors:
        if policy.percentage is None:
            out.append(_mirror(ctx, policy.destination, {"numerator": 100, "denominator": "HUNDRED"}))
        elif policy.percentage.value > 0:
            out.append(_mirror(ctx, policy.destination, _fraction(policy.percentage)))
    return out


def _mirror(ctx: RouteContext, destination: Destination, pct: Json) -> Json:
    return {"cluster": destination_cluster(ctx, destination), "runtime_fraction": {"default_value": pct},
            "trace_sampled": False}  # fmt: skip


def _operation(route: Json, vs_name: str, port: int) -> str:
    """The tracing decorator Istio writes: `host:port/path` for one cluster, else `vs:port/path`."""
    match = route["match"]
    path = "/*"
    if "prefix" in match:
        path = match["prefix"] + "*"
    elif "path" in match:
        path = match["path"]
    elif "safe_regex" in match:
        path = match["safe_regex"]["regex"]
    cluster = route.get("route", {}).get("cluster", "")
    if cluster.count("|") == 3:
        _, cluster_port, _, host = cluster.split("|")
        return f"{host}:{cluster_port}{path}"
    return f"{vs_name}:{port}{path}"


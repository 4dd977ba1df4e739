"""The CORS filter's decisions (sans-IO): how levels merge, which requests it answers, which headers it writes.

Every expectation was first observed on Envoy 1.40 (tests/proxy/test_proxy_cors.py runs them through both).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pylon.config.envoy import CorsPolicy, RouteConfiguration, convert, dec_hook
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.http.cors import CorsPerRoute, CorsFilter, Cors, Policy, decide, inline_value
from pylon.proxy.headers import HeaderList
from pylon.proxy.router import RouteTable
from pylon.stats.store import StatsStore
from tests.proxy.conftest import http_listener, route, static_cluster

PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
A = b"https://a.example"


def policy(*levels: dict[str, Any]) -> Policy:
    return Policy.of([convert(level, CorsPerRoute) for level in levels])


def headers(origin: bytes | None = A, method: bytes | None = None, **more: bytes) -> list[tuple[bytes, bytes]]:
    out = [(b"host", b"h")]
    if origin is not None:
        out.append((b"origin", origin))
    if method is not None:
        out.append((b"access-control-request-method", method))
    out += [(name.replace("_", "-").encode(), value) for name, value in more.items()]
    return out


ALLOW_A = {"allow_origin_string_match": [{"exact": "https://a.example"}]}


def test_levels_merge_field_by_field_most_specific_first() -> None:
    merged = policy({"allow_methods": "PUT", "filter_enabled": {"default_value": {"numerator": 0}}},
                    {**ALLOW_A, "allow_methods": "GET", "max_age": "60", "allow_credentials": True},
                    {"expose_headers": "x-e", "allow_credentials": False, "forward_not_matching_preflights": False})
    assert (merged.allow_methods, merged.max_age, merged.expose_headers) == (b"PUT", b"60", b"x-e")
    assert merged.allow_credentials and not merged.forward_not_matching_preflights
    assert merged.allows(A) and not merged.allows(b"https://b.example")
    assert merged.enabled == 0.0 and merged.shadow == 0.0  # the most specific level's alone
    assert policy({**ALLOW_A, "filter_enabled": {"default_value": {"numerator": 0}}}, {}).enabled == 0.0
    assert policy({}, {"filter_enabled": {"default_value": {"numerator": 0}}}).enabled is None  # not inherited


def test_defaults() -> None:
    default = policy({})
    assert default.forward_not_matching_preflights and not default.allow_credentials
    assert default.enabled is None and default.shadow == 0.0
    assert not default.allows(A)  # no origins: none allowed


@pytest.mark.parametrize(("matcher", "origin", "allowed"), [
    ({"exact": "*"}, b"https://anything", True),  # a matcher that matches "*" allows every origin
    ({"safe_regex": {"regex": ".*"}}, b"https://anything", True),
    ({"prefix": "https://"}, b"https://x", True),
    ({"prefix": "https://"}, b"http://x", False),
    ({"suffix": ".example", "ignore_case": True}, b"https://A.EXAMPLE", True),
    ({"safe_regex": {"regex": r"https://[a-z]+\.example"}}, b"https://b.example", True),
    ({"safe_regex": {"regex": r"https://[a-z]+\.example"}}, b"https://b.example.evil", False),
])  # fmt: skip
def test_origin_matchers(matcher: dict[str, Any], origin: bytes, allowed: bool) -> None:
    assert policy({"allow_origin_string_match": [matcher]}).allows(origin) is allowed


def test_allowed_preflight_is_answered() -> None:
    rules = policy({**ALLOW_A, "allow_methods": "GET, POST", "allow_headers": "x-a", "max_age": "600",
                    "allow_credentials": True, "expose_headers": "x-e"})
    decision = decide(rules, b"OPTIONS", headers(method=b"PUT"))
    assert decision is not None and decision.origin_valid and decision.latched == A
    assert decision.preflight == [(b"access-control-allow-origin", A), (b"access-control-allow-credentials", b"true"),
                                  (b"access-control-allow-methods", b"GET, POST"),
                                  (b"access-control-allow-headers", b"x-a"), (b"access-control-max-age", b"600")]


def test_stars_echo_the_request_and_private_network_needs_exactly_true() -> None:
    rules = policy({**ALLOW_A, "allow_methods": "*", "allow_headers": "*", "allow_private_network_access": True})
    decision = decide(rules, b"OPTIONS", headers(method=b"PATCH", access_control_request_headers=b"x-b, x-c",
                                                 access_control_request_private_network=b"true"))
    assert decision is not None and dict(decision.preflight or []) == {
        b"access-control-allow-origin": A, b"access-control-allow-methods": b"PATCH",
        b"access-control-allow-headers": b"x-b, x-c", b"access-control-allow-private-network": b"true"}
    decision = decide(rules, b"OPTIONS", headers(method=b"PATCH", access_control_request_private_network=b"TRUE"))
    assert decision is not None and dict(decision.preflight or []) == {
        b"access-control-allow-origin": A, b"access-control-allow-methods": b"PATCH",
        b"access-control-allow-headers": b""}  # "*" without requested headers: an empty value, as Envoy


def test_preflight_from_another_origin_is_forwarded_unless_told_not_to() -> None:
    other = headers(origin=b"https://b.example", method=b"PUT")
    assert decide(policy(ALLOW_A), b"OPTIONS", other) == (False, None, None)
    decision = decide(policy({**ALLOW_A, "forward_not_matching_preflights": False, "allow_methods": "GET"}),
                      b"OPTIONS", other)
    assert decision == (False, None, [(b"access-control-allow-methods", b"GET")])  # answered, no allow-origin


def test_not_preflights() -> None:
    rules = policy(ALLOW_A)
    assert decide(rules, b"GET", headers()) == (True, A, None)  # the response gets the headers
    assert decide(rules, b"OPTIONS", headers()) == (True, A, None)  # no Access-Control-Request-Method
    assert decide(rules, b"GET", headers(origin=b"https://b.example")) == (False, None, None)
    assert decide(rules, b"GET", headers(origin=None)) is None  # no origin: not counted
    assert decide(rules, b"GET", headers(origin=b"")) is None
    assert decide(rules, b"options", headers(method=b"PUT")) == (True, A, None)  # the method is case-sensitive


def test_enabled_and_shadow_fractions() -> None:
    off = policy({**ALLOW_A, "filter_enabled": {"default_value": {"numerator": 0}}})
    assert decide(off, b"OPTIONS", headers(method=b"PUT")) is None
    shadow = policy({**ALLOW_A, "filter_enabled": {"default_value": {"numerator": 0}},
                     "shadow_enabled": {"default_value": {"numerator": 100}, "runtime_key": "cors.shadow"}})
    assert decide(shadow, b"OPTIONS", headers(method=b"PUT")) == (True, None, None)  # counted, not enforced
    half = policy({**ALLOW_A, "filter_enabled": {"default_value": {"numerator": 50}}})
    assert decide(half, b"GET", headers(), chance=lambda: 0.49) == (True, A, None)
    assert decide(half, b"GET", headers(), chance=lambda: 0.5) is None


def test_inline_headers_fold_as_envoy() -> None:
    assert inline_value([(b"origin", b"a"), (b"origin", b""), (b"origin", b"b")], b"origin") == b"a,b"
    assert decide(policy(ALLOW_A), b"GET", [(b"origin", A), (b"origin", b"https://c")]) == (False, None, None)


def table(**config: Any) -> RouteTable:
    return RouteTable(msgspec.convert(config, RouteConfiguration, dec_hook=dec_hook))


def test_route_levels_and_legacy_cors_reach_the_matched_route() -> None:
    per = lambda **f: {"@type": PER_ROUTE, **f}  # noqa: E731
    routes = table(typed_per_filter_config={"envoy.filters.http.cors": per(max_age="1")}, virtual_hosts=[{
        "name": "vh", "domains": ["*"], "typed_per_filter_config": {"envoy.filters.http.cors": per(max_age="2")},
        "cors": {"allow_methods": "GET"},
        "routes": [{**route("/r", "c"), "typed_per_filter_config": {"envoy.filters.http.cors": per(max_age="3")}},
                   {"match": {"prefix": "/legacy"}, "route": {"cluster": "c", "cors": {"allow_methods": "PUT"}}},
                   route("/", "c")]}])
    matched = routes.match("h", "/r", HeaderList([]))
    assert [level.max_age for level in matched.filter_configs_of("envoy.filters.http.cors")] == ["3", "2", "1"]
    assert matched.filter_config("envoy.filters.http.cors").max_age == "3"
    assert [p.allow_methods for p in routes.match("h", "/legacy", HeaderList([])).cors_policies] == ["PUT", "GET"]
    assert routes.match("h", "/", HeaderList([])).filter_configs_of("other") == []


def test_filter_counts_and_writes_the_response_headers_it_latched() -> None:
    stats = StatsStore()
    cors = CorsFilter("envoy.filters.http.cors", Cors(), "main", stats, None)
    routes = table(virtual_hosts=[{"name": "vh", "domains": ["*"], "routes": [route("/", "c")],
                                   "typed_per_filter_config": {"envoy.filters.http.cors": {
                                       "@type": PER_ROUTE, **ALLOW_A, "expose_headers": "x-e"}}}])
    matched = routes.match("h", "/", HeaderList([]))
    policy_ = cors._policy(matched)
    assert policy_ is cors._policy(matched)  # merged once per route
    response = HeaderList([(b"access-control-allow-origin", b"upstream's")])
    cors._latched["stream"] = (A, policy_)
    cors.encode_headers("stream", 200, response)
    assert response.items == [(b"access-control-allow-origin", A), (b"access-control-expose-headers", b"x-e")]
    untouched = HeaderList([])
    cors.encode_headers("another stream", 200, untouched)
    assert untouched.items == []
    assert stats.counter("http.main.cors.origin_valid").value == 0  # created at 0, as Envoy shows them


def load(http_filters: list[dict[str, Any]], routes: list[dict[str, Any]], **vhost: Any) -> Any:
    listener = http_listener("main", 10000, routes, http_filters=http_filters)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0].update(vhost)
    return parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("c", [1])]}}, "cors.yaml")


FILTERS = [{"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"typed_per_filter_config\[envoy.filters.http.cors\].*allow_method"):
        load(FILTERS, [route("/", "c")], typed_per_filter_config={
            "envoy.filters.http.cors": {"@type": PER_ROUTE, "allow_method": "GET"}})
    with pytest.raises(ConfigError, match=r"typed_per_filter_config\[envoy.filters.http.cors\].*@type"):
        load(FILTERS, [route("/", "c")], typed_per_filter_config={"envoy.filters.http.cors": {"@type": CORS}})
    with pytest.raises(ConfigError, match=r"http_filters\[0\].*@type"):
        load([{"name": "envoy.filters.http.cors", "typed_config": {"@type": PER_ROUTE}}, FILTERS[1]], [])
    with pytest.raises(ConfigError, match=r"http_filters\[0\].typed_config.allow_methods"):
        load([{"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS, "allow_methods": "GET"}},
              FILTERS[1]], [])
    with pytest.raises(ConfigError, match=r"cors.filter_enabled.default_value"):
        load(FILTERS, [route("/", "c")], cors={"filter_enabled": {"runtime_key": "k"}})
    with pytest.raises(ConfigError, match=r"cors.allow_headers"):
        load(FILTERS, [route("/", "c")], cors={"allow_headers": "a\r\nb"})
    bootstrap = load(FILTERS, [{"match": {"prefix": "/"}, "route": {"cluster": "c", "cors": ALLOW_A}}], cors=ALLOW_A)
    assert bootstrap is not None  # the deprecated fields load, as in Envoy 1.40 (with its warning)
    assert isinstance(convert(ALLOW_A, CorsPolicy), CorsPolicy)

"""VirtualService `corsPolicy` to the CORS filter's per-route config, as istiod writes it, and Istio's checks.

Facts from istiod (pilot/pkg/networking/core/route/route.go TranslateCORSPolicy, listener_builder.go, and
pkg/config/validation validateCORSPolicy): the route's typed_per_filter_config `envoy.filters.http.cors` is always
enabled at 100%, forwards preflights from other origins unless `unmatchedPreflights: IGNORE`, takes `allowOrigins`
(else the deprecated `allowOrigin` as exact matches), joins lists with "," and writes maxAge in seconds; every
HTTP connection manager has the cors filter right after fault, before the router.
"""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.gen.types import LISTENER
from tests.pilot.builders import doc, gateway, resources, service_entry, snapshot, virtual_service
from tests.pilot.gen.test_gateway import ENDPOINTS, HOST, generate, only_route
from tests.pilot.gen.test_sidecar import generate as generate_sidecar

CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
ALWAYS = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}


def gateway_routes(cors: dict[str, Any], **http: Any) -> list[dict[str, Any]]:
    route = {"route": [{"destination": {"host": HOST}}], "corsPolicy": cors, **http}
    return only_route(generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), virtual_service([route]))))


def test_translation_as_istiod() -> None:
    [route] = gateway_routes({
        "allowOrigins": [{"exact": "https://a.example"}, {"prefix": "https://b."}, {"regex": r"https://.*\.c"}],
        "allowOrigin": ["ignored.example"], "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a", "x-b"],
        "exposeHeaders": ["x-e"], "maxAge": "24h", "allowCredentials": False})
    assert route["typed_per_filter_config"] == {"envoy.filters.http.cors": {
        "@type": CORS_POLICY, "forward_not_matching_preflights": True, "filter_enabled": ALWAYS,
        "allow_origin_string_match": [{"exact": "https://a.example"}, {"prefix": "https://b."},
                                      {"safe_regex": {"regex": r"https://.*\.c"}}],
        "allow_methods": "GET,POST", "allow_headers": "x-a,x-b", "expose_headers": "x-e", "max_age": "86400",
        "allow_credentials": False}}


def test_deprecated_allow_origin_unmatched_preflights_and_defaults() -> None:
    [route] = gateway_routes({"allowOrigin": ["https://a.example", "*"], "unmatchedPreflights": "IGNORE"})
    assert route["typed_per_filter_config"]["envoy.filters.http.cors"] == {
        "@type": CORS_POLICY, "forward_not_matching_preflights": False, "filter_enabled": ALWAYS,
        "allow_origin_string_match": [{"exact": "https://a.example"}, {"exact": "*"}]}
    [route] = gateway_routes({}, fault={"abort": {"httpStatus": 503}})
    assert set(route["typed_per_filter_config"]) == {"envoy.filters.http.fault", "envoy.filters.http.cors"}
    assert route["typed_per_filter_config"]["envoy.filters.http.cors"] == {
        "@type": CORS_POLICY, "forward_not_matching_preflights": True, "filter_enabled": ALWAYS}


def test_redirects_and_direct_responses_carry_it_too() -> None:
    http = [{"match": [{"uri": {"prefix": "/d"}}], "directResponse": {"status": 204},
             "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}]}}]
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), virtual_service(http)))
    assert "envoy.filters.http.cors" in only_route(out)[0]["typed_per_filter_config"]


def http_filters(listener: dict[str, Any], chain: int = 0) -> list[str]:
    return [f["name"] for f in listener["filter_chains"][chain]["filters"][-1]["typed_config"]["http_filters"]]


def test_every_connection_manager_has_the_filter_after_fault() -> None:
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS)))
    assert http_filters(out[LISTENER]["0.0.0.0_8080"]) == [
        "envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.router"]
    side = generate_sidecar()
    managers = [http_filters({"filter_chains": [chain]}) for listener in side[LISTENER].values()
                for chain in listener.get("filter_chains", [])
                if chain["filters"][-1]["name"] == "envoy.filters.network.http_connection_manager"]
    assert managers and all(names[-3:] == ["envoy.filters.http.fault", "envoy.filters.http.cors",
                                           "envoy.filters.http.router"] for names in managers)


def error_of(cors: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resources(doc("VirtualService", "v", {"hosts": ["a"], "http": [
            {"route": [{"destination": {"host": "a"}}], "corsPolicy": cors}]}))
    return info.value


@pytest.mark.parametrize(("cors", "path", "message"), [
    ({"allowOrigins": [{"exact": ""}]}, "allowOrigins[0]", "'' is not a valid match type for CORS allow origins"),
    ({"allowOrigins": [{"exact": "a"}, {}]}, "allowOrigins[1]", "not a valid match type"),
    ({"allowOrigins": [{"regex": "a" * 1025}]}, "allowOrigins[0].regex", "max length allowed is 1024"),
    ({"allowOrigins": [{"regex": "(a"}]}, "allowOrigins[0]", "invalid regex"),
    ({"allowMethods": ["GET", "FETCH"]}, "allowMethods[1]", "'FETCH' is not a supported HTTP method"),
    ({"allowMethods": ["get"]}, "allowMethods[0]", "not a supported HTTP method"),
    ({"allowHeaders": [""]}, "allowHeaders[0]", "header name cannot be empty"),
    ({"exposeHeaders": ["x-a", "bad header"]}, "exposeHeaders[1]", "bad header is not a valid header name"),
    ({"maxAge": "0.5ms"}, "maxAge", "duration must be greater than 1ms"),
    ({"maxAge": "1500ms"}, "maxAge", "accurate only to seconds precision"),
    ({"maxAge": "1.0005s"}, "maxAge", "only durations to ms precision are supported"),
    ({"unmatchedPreflights": "DROP"}, "unmatchedPreflights", ""),
    ({"allowOrigins": [{"exact": "a"}], "allowCredential": True}, "allowCredential", "unknown field"),
])  # fmt: skip
def test_istio_validation_names_the_field(cors: dict[str, Any], path: str, message: str) -> None:
    error = error_of(cors)
    assert error.path == f"spec.http[0].corsPolicy.{path}" and message in error.message


def test_allowed_policies_decode() -> None:
    [vs] = resources(doc("VirtualService", "v", {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}],
        "corsPolicy": {"allowMethods": ["*", "OPTIONS"], "allowHeaders": ["*", "x-Custom_1"], "maxAge": "1s"}}]}))
    assert vs.spec.http[0].cors_policy.max_age == 1.0

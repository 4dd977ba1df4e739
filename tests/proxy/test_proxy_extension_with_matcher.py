"""ExtensionWithMatcher (an HTTP filter skipped or replaced per stream by a matcher) and the composite filter,
beside Envoy 1.40.

The scenarios of Envoy's docs (matching/_include/simple.yaml, complicated.yaml, request_response.yaml,
http_filters/_include/composite.yaml) with filters whose effect shows: a fault that aborts every request, a
header_mutation that adds a request and a response header. Skipped by a request header: neither side runs. By a
response header: the request side already ran (its input was not available yet), the response side is skipped.
The composite runs the filter its matched action names. No matcher at all skips the filter. Both proxies must
answer alike, the upstream must see the same request, and the composite counts its delegations alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import HCM_TYPE, ROUTER_TYPE, ProxyLauncher, RunningProxy, static_cluster
from tests.proxy.upstreams import Upstream

WITH_MATCHER = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
SKIP = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
COMPOSITE = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite"
EXECUTE = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"
REQUEST_HEADER = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
RESPONSE_HEADER = "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput"

ABORT = {"@type": FAULT, "abort": {"http_status": 418, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}
MUTATE = {"@type": MUTATION, "mutations": {
    "request_mutations": [{"append": {"header": {"key": "x-req", "value": "added"}}}],
    "response_mutations": [{"append": {"header": {"key": "x-resp", "value": "added"}}}]}}


def single(input_type: str, header: str, exact: str) -> dict[str, Any]:
    return {"single_predicate": {"input": {"name": "h", "typed_config": {"@type": input_type, "header_name": header}},
                                 "value_match": {"exact": exact}}}


SKIP_ACTION = {"action": {"name": "skip", "typed_config": {"@type": SKIP}}}

#: simple.yaml: an exact map on a request header skips the fault
SIMPLE = {"matcher_tree": {"input": {"name": "h", "typed_config": {"@type": REQUEST_HEADER, "header_name": "some-header"}},
                           "exact_match_map": {"map": {"some_value_to_match_on": SKIP_ACTION}}}}
#: complicated.yaml: the map's branch is a matcher_list with an or_matcher
COMPLICATED = {"matcher_tree": {
    "input": {"name": "h", "typed_config": {"@type": REQUEST_HEADER, "header_name": "some-header"}},
    "exact_match_map": {"map": {"some_value_to_match_on": {"matcher": {"matcher_list": {"matchers": [{
        "predicate": {"or_matcher": {"predicate": [single(REQUEST_HEADER, "second-header", "foo"),
                                                   single(REQUEST_HEADER, "second-header", "bar")]}},
        "on_match": SKIP_ACTION}]}}}}}}}
#: request_response.yaml: a request header or a response header skips
REQUEST_RESPONSE = {"matcher_list": {"matchers": [{
    "predicate": {"or_matcher": {"predicate": [single(REQUEST_HEADER, "request-header", "foo"),
                                               single(RESPONSE_HEADER, "response-header", "bar")]}},
    "on_match": SKIP_ACTION}]}}
#: composite.yaml: the matched action's filter runs in the composite's place
COMPOSITE_MATCHER = {"matcher_tree": {
    "input": {"name": "h", "typed_config": {"@type": REQUEST_HEADER, "header_name": "x-fault-category"}},
    "exact_match_map": {"map": {
        name: {"action": {"name": "composite-action", "typed_config": {
            "@type": EXECUTE, "typed_config": {"name": filter_name, "typed_config": config}}}}
        for name, filter_name, config in (("abort", "http-fault", ABORT), ("mutate", "mutation", MUTATE))}}}}


def wrapped(name: str, inner: dict[str, Any], matcher: dict[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": WITH_MATCHER, "extension_config": {"name": name, "typed_config": inner}}
    if matcher is not None:
        config["xds_matcher"] = matcher
    return {"name": name, "typed_config": config}


#: ext-authz-extension-with-matcher.yaml's shape: a Lua script sets the stream's dynamic metadata, the matcher
#: reads it (DynamicMetadataInput and the Metadata input matcher); nothing set matches nothing
GATE_SCRIPT = """
function envoy_on_request(h)
  local mode = h:headers():get("x-mode")
  if mode then h:streamInfo():dynamicMetadata():set("gate", "mode", mode) end
end
"""
METADATA_MATCHER = {"matcher_list": {"matchers": [{"predicate": {"single_predicate": {
    "input": {"name": "envoy.matching.inputs.dynamic_metadata", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DynamicMetadataInput",
        "filter": "gate", "path": [{"key": "mode"}]}},
    "custom_match": {"name": "envoy.matching.matchers.metadata_matcher", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.metadata.v3.Metadata",
        "value": {"string_match": {"exact": "skip"}}}}}},
    "on_match": SKIP_ACTION}]}}

LISTENERS: dict[str, Any] = {
    "metadata": [{"name": "gate", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": GATE_SCRIPT}}},
        wrapped("envoy.filters.http.header_mutation", MUTATE, METADATA_MATCHER)],
    "simple": wrapped("envoy.filters.http.fault", ABORT, SIMPLE),
    "complicated": wrapped("envoy.filters.http.fault", ABORT, COMPLICATED),
    "request_response": wrapped("envoy.filters.http.header_mutation", MUTATE, REQUEST_RESPONSE),
    "composite": wrapped("composite", {"@type": COMPOSITE}, COMPOSITE_MATCHER),
    "no_matcher": wrapped("envoy.filters.http.fault", ABORT, None),
}

#: (listener, path, request headers) -> (status, upstream saw x-req, response's x-resp)
CASES: list[tuple[str, str, dict[str, str], tuple[int, str | None, str | None]]] = [
    ("simple", "/", {}, (418, None, None)),
    ("simple", "/", {"some-header": "some_value_to_match_on"}, (200, None, None)),
    ("simple", "/", {"some-header": "other"}, (418, None, None)),
    ("complicated", "/", {"some-header": "some_value_to_match_on", "second-header": "bar"}, (200, None, None)),
    ("complicated", "/", {"some-header": "some_value_to_match_on", "second-header": "baz"}, (418, None, None)),
    ("complicated", "/", {"second-header": "foo"}, (418, None, None)),
    ("request_response", "/", {}, (200, "added", "added")),
    ("request_response", "/", {"request-header": "foo"}, (200, None, None)),
    # undecided at the request: the request side ran; the response header decides: its side is skipped
    ("request_response", "/respond?response-header=bar", {}, (200, "added", None)),
    ("request_response", "/respond?response-header=baz", {}, (200, "added", "added")),
    ("composite", "/", {}, (200, None, None)),
    ("composite", "/", {"x-fault-category": "abort"}, (418, None, None)),
    ("composite", "/", {"x-fault-category": "mutate"}, (200, "added", "added")),
    ("no_matcher", "/", {}, (200, None, None)),
    ("metadata", "/", {"x-mode": "skip"}, (200, None, None)),
    ("metadata", "/", {"x-mode": "run"}, (200, "added", "added")),
    ("metadata", "/", {}, (200, "added", "added")),
]


def listener(name: str, http_filters: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    filters = http_filters if isinstance(http_filters, list) else [http_filters]
    hcm = {"@type": HCM_TYPE, "stat_prefix": name,
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
           "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RunningProxy, Upstream]]:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(request.param))
    try:
        proxy = launcher.start([listener(name, f) for name, f in LISTENERS.items()],
                               [static_cluster("up", [upstream.port])], implementation=request.param)
        yield proxy, upstream
    finally:
        launcher.close()
        upstream.close()


@pytest.mark.parametrize(("name", "path", "headers", "expected"), CASES)
def test_extension_with_matcher(gateway: tuple[RunningProxy, Upstream], name: str, path: str,
                                headers: dict[str, str], expected: tuple[int, str | None, str | None]) -> None:
    proxy, upstream = gateway
    before = len(upstream.requests)
    response = httpx.get(proxy.url(name, path), headers=headers, timeout=10)
    status, request_header, response_header = expected
    assert response.status_code == status
    seen = upstream.requests[before:]
    assert len(seen) == (0 if status == 418 else 1)
    if seen:
        assert seen[0]["headers"].get("x-req") == request_header
    assert response.headers.get("x-resp") == response_header


def test_composite_counts_its_delegations(gateway: tuple[RunningProxy, Upstream]) -> None:
    proxy, _ = gateway
    counter = "http.composite.composite.filter_delegation_success"
    before = proxy.stats().get(counter, 0)
    for category in ("abort", "mutate", "none"):
        httpx.get(proxy.url("composite", "/"), headers={"x-fault-category": category}, timeout=10)
    assert proxy.stats().get(counter, 0) - before == 2

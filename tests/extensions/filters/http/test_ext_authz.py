"""ext_authz's config: what loads, what is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
HTTP = {"server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.25s"}}


def load(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> Any:
    first = route("/", "a")
    if per_route is not None:
        first["typed_per_filter_config"] = {"envoy.filters.http.ext_authz": {"@type": PER_ROUTE, **per_route}}
    listener = http_listener("main", 10000, [first])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.ext_authz", "typed_config": {"@type": TYPE, **config}})
    resources = {"listeners": [listener], "clusters": [static_cluster("a", [1])]}
    return parse_bootstrap({"static_resources": resources}, "authz.yaml")


def error(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(config, per_route)
    return str(raised.value)


def test_an_http_service_config_loads() -> None:
    load({"http_service": {**HTTP, "path_prefix": "/p", "authorization_request": {
        "allowed_headers": {"patterns": [{"prefix": "x-"}]}, "headers_to_add": [{"key": "a", "value": "b"}]}},
        "failure_mode_allow": True, "status_on_error": {"code": 503}, "with_request_body": {"max_request_bytes": 10},
        "filter_enabled": {"default_value": {"numerator": 50}}, "deny_at_disable": {"default_value": True}},
        {"check_settings": {"context_extensions": {"a": "b"}, "disable_request_body_buffering": True}})


def test_a_grpc_service_config_loads_and_its_unsupported_options_are_refused() -> None:
    grpc = {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.25s"}
    load({"grpc_service": grpc, "include_peer_certificate": True,
          "with_request_body": {"max_request_bytes": 10, "pack_as_bytes": True}},
         {"check_settings": {"context_extensions": {"a": "b"}}})
    assert "typed_config.http_service" in error({"grpc_service": grpc, "http_service": HTTP})
    assert "grpc_service.google_grpc" in error({"grpc_service": {"google_grpc": {}}})
    assert "check_settings.grpc_service" in error({"grpc_service": grpc}, {"check_settings": {"grpc_service": grpc}})


def test_a_grpc_service_on_a_tls_cluster_is_refused() -> None:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {"@type": TYPE, "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}}}})
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}
    resources = {"listeners": [listener],
                 "clusters": [static_cluster("a", [1]), static_cluster("authz", [2], transport_socket=tls)]}
    with pytest.raises(ConfigError) as raised:
        parse_bootstrap({"static_resources": resources}, "authz.yaml")
    assert "http_filters[0].typed_config.grpc_service.envoy_grpc.cluster_name" in str(raised.value)


@pytest.mark.parametrize("field, value", [
    ("metadata_context_namespaces", ["a"]), ("validate_mutations", True), ("allowed_headers", {"patterns": []}),
    ("filter_enabled_metadata", {}), ("include_tls_session", True), ("decoder_header_mutation_rules", {}),
])
def test_what_is_not_implemented_is_refused_by_name(field: str, value: Any) -> None:
    assert f"http_filters[0].typed_config.{field}" in error({"http_service": HTTP, field: value})


def test_service_and_status_rules() -> None:
    assert "http_service" in error({})
    assert "http_service.server_uri" in error({"http_service": {}})
    assert "http_service.retry_policy" in error({"http_service": {**HTTP, "retry_policy": {}}})
    assert "authorization_response.dynamic_metadata_from_headers" in error({"http_service": {
        **HTTP, "authorization_response": {"dynamic_metadata_from_headers": {"patterns": [{"exact": "a"}]}}}})
    assert "status_on_error.code" in error({"http_service": HTTP, "status_on_error": {"code": 299}})
    assert "status_on_error.code" in error({"http_service": HTTP, "status_on_error": {"code": "NoSuchStatus"}})
    assert "max_request_bytes" in error({"http_service": HTTP, "with_request_body": {"max_request_bytes": 0}})
    assert "disabled" in error({"http_service": HTTP}, {"disabled": False})
    assert "exactly one of disabled, check_settings" in error({"http_service": HTTP}, {})

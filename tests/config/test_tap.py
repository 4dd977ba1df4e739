"""The tap transport socket's config (extensions/transport_sockets/tap.py): what loads, the TLS it wraps, and what
is refused by field (its behaviour beside Envoy 1.40: tests/proxy/test_proxy_tap_socket.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap, to_envoy_dict
from pylon.config.secrets import tls_context
from pylon.extensions.transport_sockets.tap import Tap, UpstreamTap
from tests.config.builders import DOWNSTREAM_TLS_TYPE, UPSTREAM_TLS_TYPE, bootstrap, cluster, hcm, listener

TAP_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tap.v3.Tap"
RAW = {"name": "raw", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}


def tap(static: dict[str, Any] | None = None, inner: dict[str, Any] = RAW, **common: Any) -> dict[str, Any]:
    static = static if static is not None else {
        "match": {"any_match": True},
        "output_config": {"sinks": [{"format": "PROTO_TEXT", "file_per_tap": {"path_prefix": "/tmp/t"}}]}}
    return {"name": "envoy.transport_sockets.tap", "typed_config": {
        "@type": TAP_TYPE, "common_config": {"static_config": static, **common}, "transport_socket": inner}}


def with_taps(downstream: dict[str, Any] | None, upstream: dict[str, Any] | None) -> dict[str, Any]:
    lst = listener(hcm())
    if downstream is not None:
        lst["filter_chains"][0]["transport_socket"] = downstream
    svc = cluster("svc")
    if upstream is not None:
        svc["transport_socket"] = upstream
    return bootstrap([lst], [svc])


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "test.yaml")
    return str(info.value)


def test_a_tap_loads_on_both_sides_with_envoy_defaults_and_round_trips() -> None:
    tls = {"name": "tls", "typed_config": {"@type": UPSTREAM_TLS_TYPE, "sni": "svc"}}
    boot = parse_bootstrap(with_taps(tap(), tap(inner=tls)), "test.yaml")
    down = boot.static_resources.listeners[0].filter_chains[0].transport_socket.typed_config
    up = boot.static_resources.clusters[0].transport_socket
    assert type(down) is Tap and type(up.typed_config) is UpstreamTap
    output = down.static_config.output_config
    assert (output.rx_limit, output.tx_limit) == (1024, 1024)  # Envoy's DefaultMaxBufferedBytes
    assert tls_context(up).sni == "svc"  # the TLS it wraps is the cluster's TLS
    assert parse_bootstrap(to_envoy_dict(boot), "again") == boot


@pytest.mark.parametrize("static, field", [
    ({"match": {"any_match": True}, "output_config": {"streaming": True, "sinks": [
        {"file_per_tap": {"path_prefix": "/tmp/t"}}]}}, "output_config.streaming"),
    ({"match": {"http_request_headers_match": {}}, "output_config": {"sinks": [
        {"file_per_tap": {"path_prefix": "/tmp/t"}}]}}, "match.http_request_headers_match"),
    ({"match": {"any_match": False}, "output_config": {"sinks": [
        {"file_per_tap": {"path_prefix": "/tmp/t"}}]}}, "match.any_match"),
    ({"output_config": {"sinks": [{"file_per_tap": {"path_prefix": "/tmp/t"}}]}}, "static_config.match"),
    ({"match": {"any_match": True}, "output_config": {"sinks": [{"streaming_admin": {}}]}},
     "sinks[0].streaming_admin"),
    ({"match": {"any_match": True}, "output_config": {"sinks": []}}, "output_config.sinks"),
    ({"match": {"any_match": True}, "output_config": {"sinks": [{"file_per_tap": {"path_prefix": ""}}]}},
     "file_per_tap.path_prefix"),
])
def test_what_pylon_cannot_do_exactly_is_refused_by_field(static: dict[str, Any], field: str) -> None:
    assert field in error(with_taps(tap(static), None))
    assert field in error(with_taps(None, tap(static)))


def test_admin_config_is_refused_until_the_admin_tap_endpoint_exists() -> None:
    data = with_taps(None, tap(admin_config={"config_id": "x"}))
    del data["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_config"]["static_config"]
    assert "common_config.admin_config" in error(data)


def test_a_tap_in_transport_socket_matches_is_refused() -> None:
    data = with_taps(None, None)
    data["static_resources"]["clusters"][0]["transport_socket_matches"] = [
        {"name": "m", "match": {}, "transport_socket": tap()}]
    assert "transport_socket_matches[0].transport_socket.typed_config" in error(data)


def test_a_tls_error_below_a_tap_names_the_wrapped_socket() -> None:
    from pylon.proxy.validate import validate_clusters, validate_listeners

    garbage = {"inline_string": "not a PEM"}
    server = {"name": "tls", "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
        "tls_certificates": [{"certificate_chain": garbage, "private_key": garbage}]}}}
    client = {"name": "tls", "typed_config": {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": {
        "validation_context": {"trusted_ca": garbage}}}}
    boot = parse_bootstrap(with_taps(tap(inner=server), tap(inner=client)), "test.yaml")
    below = "transport_socket.typed_config.transport_socket.typed_config.common_tls_context"
    with pytest.raises(ConfigError) as info:
        validate_listeners(boot.static_resources.listeners, "test.yaml", "static_resources.listeners", {})
    assert f"static_resources.listeners[0].filter_chains[0].{below}.tls_certificates" in str(info.value)
    with pytest.raises(ConfigError) as info:
        validate_clusters(boot.static_resources.clusters, "test.yaml", "static_resources.clusters", {})
    assert f"static_resources.clusters[0].{below}.validation_context" in str(info.value)

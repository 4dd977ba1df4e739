"""The internal listener's config: the bootstrap extension, `internal_listener` listeners, `envoy_internal_address`
endpoints, and what pylon refuses of them by field (Envoy's own load errors are run through Envoy 1.40 in
tests/proxy/test_proxy_internal_listener.py)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from pylon.config.envoy import InternalListenerExtension
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap, to_envoy_dict
from tests.config.builders import (
    DOWNSTREAM_TLS_TYPE, TCP_PROXY_TYPE, TLS_INSPECTOR_TYPE, UPSTREAM_TLS_TYPE, bootstrap, cluster, hcm, listener,
    router_filter,
)

EXTENSION_TYPE = "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"


def config(change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """A TCP listener -> cluster `encap` (internal address) -> internal listener `encap` -> cluster `svc`."""
    tcp = {"@type": TCP_PROXY_TYPE, "stat_prefix": "s", "cluster": "encap"}
    internal = listener({**tcp, "cluster": "svc"}, name="encap", internal_listener={})
    del internal["address"]
    encap = cluster("encap")
    encap["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
        "envoy_internal_address": {"server_listener_name": "encap", "endpoint_id": "7"}}
    data = {**bootstrap([listener(tcp), internal], [encap, cluster("svc")]),
            "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener",
                                      "typed_config": {"@type": EXTENSION_TYPE}}]}
    if change is not None:
        change(data)
    return data


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "test.yaml")
    return str(info.value)


def internal(data: dict[str, Any]) -> dict[str, Any]:
    return data["static_resources"]["listeners"][1]  # type: ignore[no-any-return]


def encap(data: dict[str, Any]) -> dict[str, Any]:
    return data["static_resources"]["clusters"][0]  # type: ignore[no-any-return]


def test_the_shape_loads_and_round_trips() -> None:
    boot = parse_bootstrap(config(), "test.yaml")
    assert boot.internal_listener == InternalListenerExtension()
    assert boot.internal_listener.buffer_size == 1024 * 1024  # Envoy's default, 1024 KiB
    assert parse_bootstrap(to_envoy_dict(boot), "again") == boot
    endpoint = boot.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert endpoint.address.envoy_internal_address.endpoint_id == "7"


def test_the_extension_as_a_typed_struct() -> None:
    def typed_struct(data: dict[str, Any]) -> None:
        data["bootstrap_extensions"][0]["typed_config"] = {
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct", "type_url": EXTENSION_TYPE,
            "value": {"buffer_size_kb": 4}}
    boot = parse_bootstrap(config(typed_struct), "test.yaml")
    assert boot.internal_listener is not None and boot.internal_listener.buffer_size == 4096


def tls(kind: str) -> dict[str, Any]:
    files = {"certificate_chain": {"inline_string": "cert"}, "private_key": {"inline_string": "key"}}
    return {"name": "tls", "typed_config": {"@type": kind, "common_tls_context": {"tls_certificates": [files]}}}


@pytest.mark.parametrize(("change", "path", "message"), [
    (lambda d: internal(d).update(listener_filters=[{"name": "i", "typed_config": {"@type": TLS_INSPECTOR_TYPE}}]),
     "static_resources.listeners[1].listener_filters", "listener filters on an internal listener are not supported"),
    (lambda d: internal(d)["filter_chains"].append({**internal(d)["filter_chains"][0],
                                                    "filter_chain_match": {"server_names": ["a"]}}),
     "static_resources.listeners[1].filter_chains", "more than one filter chain"),
    (lambda d: internal(d)["filter_chains"][0].update(transport_socket=tls(DOWNSTREAM_TLS_TYPE)),
     "static_resources.listeners[1].filter_chains[0].transport_socket", "TLS on an internal listener"),
    (lambda d: internal(d).update(freebind=True), "static_resources.listeners[1].freebind",
     "has unsupported tcp listener feature"),
    (lambda d: internal(d).update(connection_balance_config={"exact_balance": {}}),
     "static_resources.listeners[1].connection_balance_config", "has unsupported tcp listener feature"),
    (lambda d: encap(d).update(transport_socket=tls(UPSTREAM_TLS_TYPE)), "static_resources.clusters[0].transport_socket",
     "TLS to an internal listener"),
    (lambda d: encap(d).update(health_checks=[{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                                               "healthy_threshold": 1, "tcp_health_check": {}}]),
     "static_resources.clusters[0].health_checks", "health checks of internal listener endpoints"),
    (lambda d: encap(d).update(transport_socket={"name": "t", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3."
                 "InternalUpstreamTransport"}}),
     "static_resources.clusters[0].transport_socket.typed_config.@type",
     "unknown upstream transport socket type type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream"),
])
def test_refused_by_field(change: Callable[[dict[str, Any]], None], path: str, message: str) -> None:
    text = error(config(change))
    assert f"test.yaml: {path}: " in text and message in text, text


def test_an_eds_endpoint_cannot_be_internal() -> None:
    from pylon.config.envoy import ClusterLoadAssignment, convert

    assignment = convert({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "envoy_internal_address": {"server_listener_name": "l"}}}}]}]}, ClusterLoadAssignment)
    with pytest.raises(Exception) as info:
        assignment.check_ip_addresses("resources[0]", "EDS endpoints need IPs")
    assert "resources[0].endpoints[0].lb_endpoints[0].endpoint.address.envoy_internal_address" in str(info.value)


def test_an_lds_internal_listener_is_refused_naming_it() -> None:
    """Internal listeners come from the bootstrap only, for now: an LDS update with one is refused (a NACK)."""
    from pylon.config.discovery import LISTENERS, Discovered, Update
    from pylon.config.envoy import Listener, convert
    from pylon.proxy.dynamic import DynamicConfig
    from pylon.stats.store import StatsStore

    data = config()
    lds_listener = convert(data["static_resources"]["listeners"].pop(1), Listener)
    data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"] = []
    dynamic = DynamicConfig(parse_bootstrap(data, "b.yaml"), StatsStore())
    with pytest.raises(ConfigError) as caught:
        dynamic.offer(LISTENERS, [], lambda: Update(LISTENERS, Discovered("1", {"encap": lds_listener}), frozenset(),
                                                    "ads"))
    assert caught.value.path == "resources[0].internal_listener"
    assert "internal listeners from LDS are not supported yet" in caught.value.message


def test_a_grpc_service_on_internal_endpoints_is_refused_naming_it() -> None:
    """pylon's gRPC client (grpcio) dials sockets: ext_authz's gRPC service on a cluster of internal endpoints is a
    load error naming the field, not a ValueError at the first request."""
    authz = {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3", "grpc_service": {"envoy_grpc": {"cluster_name": "encap"}}}}

    def add_http_listener(data: dict[str, Any]) -> None:
        http = listener(hcm(http_filters=[authz, router_filter()]), name="http")
        http["address"]["socket_address"]["port_value"] = 10001
        data["static_resources"]["listeners"].append(http)

    text = error(config(add_http_listener))
    assert ("static_resources.listeners[2].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config."
            "grpc_service.envoy_grpc.cluster_name") in text, text
    assert "cluster 'encap' has envoy_internal_address endpoints" in text, text

"""The gRPC channel an xDS stream opens to its management cluster: target, timeout, and the cluster's HTTP/2
keepalive carried over as grpcio's own keepalive options (Envoy pings an xDS connection as any HTTP/2 one)."""

from __future__ import annotations

from typing import Any

from pylon.config.loader import parse_bootstrap
from pylon.xds.client import grpc_target

OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def clusters(**http2: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "xds", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 18000}}}}]}]},
        "typed_extension_protocol_options": {OPTIONS_KEY: {"@type": "type.googleapis.com/" + OPTIONS_KEY,
                                                           "explicit_http_config": {"http2_protocol_options": http2}}},
    }
    boot = parse_bootstrap({"static_resources": {"clusters": [cluster]}}, "test.yaml")
    return {c.name: c for c in boot.static_resources.clusters}


def test_the_cluster_s_keepalive_becomes_grpcio_s() -> None:
    target, timeout, options = grpc_target(clusters(connection_keepalive={"interval": "30s", "timeout": "5s"}), "xds")
    assert (target, timeout) == ("127.0.0.1:18000", 2.0)
    assert dict(options) == {"grpc.enable_http_proxy": 0, "grpc.keepalive_time_ms": 30000,
                             "grpc.keepalive_timeout_ms": 5000, "grpc.keepalive_permit_without_calls": 1,
                             "grpc.http2.max_pings_without_data": 0}


def test_without_keepalive_no_pings_are_asked_for() -> None:
    _, _, options = grpc_target(clusters(), "xds")
    assert options == [("grpc.enable_http_proxy", 0)]

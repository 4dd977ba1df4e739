"""grpc_http1_bridge's config and its gRPC content-type test (sans-IO)."""

from __future__ import annotations

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.http.grpc_http1_bridge import is_grpc
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"


def load(**config: bool) -> None:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.grpc_http1_bridge", "typed_config": {"@type": TYPE, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")


def test_config() -> None:
    load()
    load(upgrade_protobuf_to_grpc=True, ignore_query_parameters=False)
    with pytest.raises(ConfigError) as raised:
        load(upgrade_protobuf_to_grpc=True, ignore_query_parameters=True)
    assert "typed_config.ignore_query_parameters" in str(raised.value)


def test_grpc_content_types() -> None:
    assert is_grpc(b"application/grpc") and is_grpc(b"application/grpc+proto")
    assert not is_grpc(b"application/grpc-web") and not is_grpc(b"application/json") and not is_grpc(None)

"""grpc_http1_bridge's config and its gRPC content-type test (sans-IO)."""

from __future__ import annotations

import pytest

from pylon.config.errors import ConfigError
from pylon.extensions.filters.http.grpc_http1_bridge import is_grpc
from tests.extensions.filters.http.loading import load_filter

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"


def load(**config: bool) -> None:
    load_filter("envoy.filters.http.grpc_http1_bridge", TYPE, config)


def test_config() -> None:
    load()
    load(upgrade_protobuf_to_grpc=True, ignore_query_parameters=False)
    with pytest.raises(ConfigError) as raised:
        load(upgrade_protobuf_to_grpc=True, ignore_query_parameters=True)
    assert "typed_config.ignore_query_parameters" in str(raised.value)


def test_grpc_content_types() -> None:
    assert is_grpc(b"application/grpc") and is_grpc(b"application/grpc+proto")
    assert not is_grpc(b"application/grpc-web") and not is_grpc(b"application/json") and not is_grpc(None)

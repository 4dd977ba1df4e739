"""grpc_web's config: an empty message; anything in it is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"


def load(**config: Any) -> None:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.grpc_web", "typed_config": {"@type": TYPE, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")


def test_config() -> None:
    load()
    with pytest.raises(ConfigError) as raised:
        load(text_mode=True)
    assert "text_mode" in str(raised.value)

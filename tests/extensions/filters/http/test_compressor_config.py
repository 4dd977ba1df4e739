"""The compressor and decompressor filters' configs: Envoy's published examples load; what pylon does not do is
refused by name, with the field path."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route

COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
GZIP = {"name": "g",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"}}


def load(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> None:
    routes = [route("/", "a")]
    if per_route is not None:
        routes[0]["typed_per_filter_config"] = {"envoy.filters.http.compressor": {"@type": PER_ROUTE, **per_route}}
    listener = http_listener("main", 10000, routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.compressor", "typed_config": {"@type": COMPRESSOR, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [
        {"name": "a", "load_assignment": {"cluster_name": "a", "endpoints": []}}]}}, "c.yaml")


def test_a_full_config_loads() -> None:
    load({"compressor_library": GZIP, "choose_first": True, "request_direction_config": {"common_config": {
        "enabled": {"default_value": True, "runtime_key": "k"}, "min_content_length": 10,
        "content_type": ["text/plain"]}}, "response_direction_config": {
        "disable_on_etag_header": True, "remove_accept_encoding_header": True}},
        {"overrides": {"response_direction_config": {"remove_accept_encoding_header": False}}})
    load({"compressor_library": GZIP, "content_length": 100, "content_type": ["text/html"],
          "runtime_enabled": {"default_value": False}}, {"disabled": True})


@pytest.mark.parametrize(("config", "per_route", "path"), [
    ({}, None, "http_filters[0].typed_config"),  # compressor_library is required
    ({"compressor_library": {"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                                    "compression.gzip.decompressor.v3.Gzip"}}},
     None, "compressor_library.typed_config.@type"),
    ({"compressor_library": GZIP, "response_direction_config": {"status_header_enabled": True}}, None,
     "response_direction_config.status_header_enabled"),
    ({"compressor_library": GZIP, "response_direction_config": {"uncompressible_response_codes": [206]}}, None,
     "response_direction_config.uncompressible_response_codes"),
    ({"compressor_library": GZIP, "response_direction_config": {"common_config": {"enabled": {}}}}, None,
     "common_config.enabled"),  # a RuntimeFeatureFlag needs its default_value
    ({"compressor_library": GZIP}, {"disabled": False}, "typed_per_filter_config[envoy.filters.http.compressor]"),
    ({"compressor_library": GZIP}, {}, "typed_per_filter_config[envoy.filters.http.compressor]"),
    ({"compressor_library": GZIP}, {"overrides": {"compressor_library": GZIP}},
     "typed_per_filter_config[envoy.filters.http.compressor].overrides.compressor_library"),
])  # fmt: skip
def test_refused_by_name(config: dict[str, Any], per_route: dict[str, Any] | None, path: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(config, per_route)
    assert path in str(error.value)

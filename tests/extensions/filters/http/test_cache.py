"""The cache filters' configs: what loads and what is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from tests.extensions.filters.http.loading import load_filter

V1 = ("envoy.filters.http.cache", "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
      "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig",
      "type.googleapis.com/envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig")
V2 = ("envoy.filters.http.cache_v2", "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config",
      "type.googleapis.com/envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config",
      "type.googleapis.com/envoy.extensions.http.cache_v2.file_system_http_cache.v3.FileSystemHttpCacheV2Config")


def error(version: tuple[str, ...], config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        load_filter(version[0], version[1], config)
    return str(raised.value)


@pytest.mark.parametrize("version", [V1, V2], ids=["v1", "v2"])
def test_the_in_memory_store_loads_and_the_others_are_refused(version: tuple[str, ...]) -> None:
    load_filter(version[0], version[1], {"typed_config": {"@type": version[2]},
                                         "allowed_vary_headers": [{"exact": "accept-language"}],
                                         "ignore_request_cache_control_header": True})
    load_filter(version[0], version[1], {"disabled": True})
    assert "typed_config.typed_config.@type" in error(version, {"typed_config": {
        "@type": version[3], "cache_path": "/var/cache/envoy"}})
    assert "typed_config.typed_config" in error(version, {})
    other = V2 if version is V1 else V1
    assert "typed_config.typed_config.@type" in error(version, {"typed_config": {"@type": other[2]}})


@pytest.mark.parametrize("field, value", [("key_creator_params", {"exclude_host": True}), ("max_body_bytes", 10)])
def test_fields_envoy_never_reads_are_refused(field: str, value: Any) -> None:
    assert f"typed_config.{field}" in error(V1, {"typed_config": {"@type": V1[2]}, field: value})


def test_v2_takes_an_upstream_cluster_override() -> None:
    load_filter(V2[0], V2[1], {"typed_config": {"@type": V2[2]}, "override_upstream_cluster": "a"})
    assert "override_upstream_cluster" in error(V1, {"typed_config": {"@type": V1[2]},
                                                     "override_upstream_cluster": "a"})

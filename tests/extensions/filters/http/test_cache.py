"""The cache filters' configs: what loads and what is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.extensions.filters.http.loading import load_filter
from tests.proxy.conftest import http_listener, route, static_cluster

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


#: the store of Envoy's docs' http-cache-configuration-fs.yaml (and its v2 counterpart)
DOCS_FS = {"manager_config": {"thread_pool": {"thread_count": 2}}, "cache_path": "/var/cache/envoy",
           "max_cache_size_bytes": 1073741824}


@pytest.mark.parametrize("version", [V1, V2], ids=["v1", "v2"])
def test_the_in_memory_and_file_system_stores_load_and_the_other_versions_are_refused(
        version: tuple[str, ...]) -> None:
    load_filter(version[0], version[1], {"typed_config": {"@type": version[2]},
                                         "allowed_vary_headers": [{"exact": "accept-language"}],
                                         "ignore_request_cache_control_header": True})
    load_filter(version[0], version[1], {"disabled": True})
    load_filter(version[0], version[1], {"typed_config": {"@type": version[3], **DOCS_FS,
                                                          "max_cache_entry_count": 10}})
    assert "typed_config.typed_config" in error(version, {})
    other = V2 if version is V1 else V1
    assert "typed_config.typed_config.@type" in error(version, {"typed_config": {"@type": other[2]}})
    assert "typed_config.typed_config.@type" in error(version, {"typed_config": {"@type": other[3], **DOCS_FS}})


@pytest.mark.parametrize("version", [V1, V2], ids=["v1", "v2"])
@pytest.mark.parametrize("field, value", [
    ("max_individual_cache_entry_size_bytes", 10), ("cache_subdivisions", 4), ("evict_fraction", 0.2),
    ("max_eviction_period", "60s"), ("min_eviction_period", "1s"), ("create_cache_path", True)])
def test_file_system_fields_envoy_never_reads_are_refused(version: tuple[str, ...], field: str, value: Any) -> None:
    assert f"typed_config.typed_config.{field}" in error(version, {"typed_config": {
        "@type": version[3], **DOCS_FS, field: value}})


@pytest.mark.parametrize("config, path", [
    ({"cache_path": "/c"}, "manager_config"),
    ({"manager_config": {"thread_pool": {}}}, "cache_path"),
    ({"manager_config": {"thread_pool": {}}, "cache_path": ""}, "cache_path"),
    ({"manager_config": {"id": "a"}, "cache_path": "/c"}, "manager_config.thread_pool"),
    ({"manager_config": {"thread_pool": {"thread_count": 1025}}, "cache_path": "/c"}, "thread_count"),
    ({"manager_config": {"thread_pool": {}}, "cache_path": "/c", "max_cache_size_bytes": -1},
     "max_cache_size_bytes"),
    ({"manager_config": {"thread_pool": {}}, "cache_path": "/c", "cache_dir": "/c"}, "cache_dir"),
])
def test_file_system_store_config_errors_name_the_field(config: dict[str, Any], path: str) -> None:
    assert path in error(V1, {"typed_config": {"@type": V1[3], **config}})


@pytest.mark.parametrize("field, value", [("key_creator_params", {"exclude_host": True}), ("max_body_bytes", 10)])
def test_fields_envoy_never_reads_are_refused(field: str, value: Any) -> None:
    assert f"typed_config.{field}" in error(V1, {"typed_config": {"@type": V1[2]}, field: value})


def test_v2_takes_an_upstream_cluster_override() -> None:
    load_filter(V2[0], V2[1], {"typed_config": {"@type": V2[2]}, "override_upstream_cluster": "a"})
    assert "override_upstream_cluster" in error(V1, {"typed_config": {"@type": V1[2]},
                                                     "override_upstream_cluster": "a"})


def load_two(first: dict[str, Any], second: dict[str, Any], second_version: tuple[str, ...] = V1) -> None:
    """Two cache filters in one HCM, each with a file-system store."""
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][:0] = [
        {"name": V1[0], "typed_config": {"@type": V1[1], "typed_config": {"@type": V1[3], **first}}},
        {"name": second_version[0], "typed_config": {"@type": second_version[1], "typed_config": {
            "@type": second_version[3], **second}}}]
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")


def test_one_path_one_config_and_one_manager_id_one_config() -> None:
    load_two(DOCS_FS, {**DOCS_FS, "cache_path": "/var/cache/envoy/"})  # the same cache: Envoy adds the slash
    load_two(DOCS_FS, {**DOCS_FS, "max_cache_size_bytes": 1}, V2)  # v2's caches are others
    with pytest.raises(ConfigError) as raised:
        load_two(DOCS_FS, {**DOCS_FS, "max_cache_size_bytes": 1})
    assert "http_filters[1].typed_config.typed_config" in str(raised.value)
    assert "mismatched FileSystemHttpCacheConfig with same path /var/cache/envoy/" in str(raised.value)
    load_two(DOCS_FS, {**DOCS_FS, "cache_path": "/other", "manager_config": {"id": "b", "thread_pool": {}}})
    with pytest.raises(ConfigError) as raised:
        load_two(DOCS_FS, {**DOCS_FS, "cache_path": "/other", "manager_config": {"thread_pool": {}}}, V2)
    assert "http_filters[1].typed_config.typed_config.manager_config" in str(raised.value)
    assert "AsyncFileManager mismatched config" in str(raised.value)

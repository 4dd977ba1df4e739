"""health_check's config: what loads, what Envoy 1.40 refuses (pass_through_mode is required; cache_time needs it)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
PATH = [{"name": ":path", "string_match": {"exact": "/healthz"}}]


def load(config: dict[str, Any]) -> Any:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.health_check", "typed_config": {"@type": TYPE, **config}})
    return parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}},
                           "hc.yaml")


def error(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        load(config)
    return str(raised.value)


def test_configs_that_load() -> None:
    load({"pass_through_mode": False, "headers": PATH, "cluster_min_healthy_percentages": {"a": {"value": 50}}})
    load({"pass_through_mode": True, "cache_time": "5s", "headers": [{"name": ":path", "exact_match": "/h"}]})


def test_what_envoy_refuses() -> None:
    assert "typed_config.pass_through_mode" in error({"headers": PATH})
    assert "typed_config.cache_time" in error({"pass_through_mode": False, "cache_time": "1s"})
    assert "typed_config.cluster_min_healthy_percentages" in error(
        {"pass_through_mode": False, "cluster_min_healthy_percentages": {"a": {"value": 101}}})
    assert "typed_config.nonsense" in error({"pass_through_mode": False, "nonsense": 1})

"""local_ratelimit's config: what loads and what is refused by name (descriptors: route rate_limits are not
implemented)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
BUCKET = {"max_tokens": 2, "tokens_per_fill": 2, "fill_interval": "5s"}


def load(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> Any:
    first = route("/", "a")
    if per_route is not None:
        first["typed_per_filter_config"] = {"envoy.filters.http.local_ratelimit": {"@type": TYPE, **per_route}}
    listener = http_listener("main", 10000, [first])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.local_ratelimit", "typed_config": {"@type": TYPE, **config}})
    resources = {"listeners": [listener], "clusters": [static_cluster("a", [1])]}
    return parse_bootstrap({"static_resources": resources}, "rl.yaml")


def error(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(config, per_route)
    return str(raised.value)


def test_envoys_example_config_loads() -> None:
    load({"stat_prefix": "http_local_rate_limiter", "token_bucket": BUCKET,
          "filter_enabled": {"runtime_key": "local_rate_limit_enabled", "default_value": {"numerator": 100}},
          "filter_enforced": {"runtime_key": "local_rate_limit_enforced", "default_value": {"numerator": 100}},
          "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                       "header": {"key": "x-local-rate-limit", "value": "true"}}],
          "local_rate_limit_per_downstream_connection": False, "enable_x_ratelimit_headers": "DRAFT_VERSION_03"},
         {"stat_prefix": "route", "token_bucket": BUCKET, "status": {"code": "ServiceUnavailable"}})


@pytest.mark.parametrize("field, value", [
    ("descriptors", [{"entries": [{"key": "a", "value": "b"}], "token_bucket": BUCKET}]), ("rate_limits", [{}]),
    ("local_cluster_rate_limit", {}), ("max_dynamic_descriptors", 5), ("stage", 1),
    ("rate_limited_as_resource_exhausted", True),
])
def test_what_is_not_implemented_is_refused_by_name(field: str, value: Any) -> None:
    message = error({"stat_prefix": "s", "token_bucket": BUCKET, field: value})
    assert f"http_filters[0].typed_config.{field}" in message


def test_required_fields_and_bounds() -> None:
    assert "stat_prefix" in error({"token_bucket": BUCKET})
    assert "token_bucket" in error({"stat_prefix": "s"})
    assert "token_bucket.fill_interval" in error({"stat_prefix": "s", "token_bucket": {"max_tokens": 1}})
    assert "token_bucket.max_tokens" in error({"stat_prefix": "s", "token_bucket": {**BUCKET, "max_tokens": 0}})
    assert "response_headers_to_add[0].header.value" in error({"stat_prefix": "s", "token_bucket": BUCKET,
        "response_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}]})

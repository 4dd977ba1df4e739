"""The bandwidth_limit filter's config as Envoy 1.40 validates it (the proto's rules), and Envoy's docs example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pylon.config.constraints import HttpText
from pylon.config.envoy import RuntimeFeatureFlag
from pylon.config.errors import ConfigError
from pylon.config.loader import load_bootstrap, parse_bootstrap
from pylon.extensions.filters.http.bandwidth_limit import REQUEST, RESPONSE, BandwidthLimit, FillInterval, _Config
from pylon.stats.store import StatsStore
from tests.proxy.conftest import http_listener, route

TYPE = "type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit"
NAME = "envoy.filters.http.bandwidth_limit"
DOCS = Path("/tmp/envoy-docs-configs/docs/root/configuration/http/http_filters/_include/bandwidth-limit-filter.yaml")


def load(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> None:
    routes = [route("/", "a")]
    if per_route is not None:
        routes[0]["typed_per_filter_config"] = {NAME: {"@type": TYPE, **per_route}}
    listener = http_listener("main", 10000, routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": NAME, "typed_config": {"@type": TYPE, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [
        {"name": "a", "load_assignment": {"cluster_name": "a", "endpoints": []}}]}}, "b.yaml")


def test_the_filter_needs_only_a_stat_prefix() -> None:
    load({"stat_prefix": "bw"})
    load({"stat_prefix": "bw", "enable_mode": "REQUEST_AND_RESPONSE", "limit_kbps": "500", "fill_interval": "0.02s",
          "runtime_enabled": {"default_value": False, "runtime_key": "bw.enabled"},
          "enable_response_trailers": True, "response_trailer_prefix": "x-bw"})


@pytest.mark.parametrize(("fields", "path"), [
    ({}, "stat_prefix"),
    ({"stat_prefix": ""}, "stat_prefix"),
    ({"stat_prefix": "bw", "limit_kbps": 0}, "limit_kbps"),
    ({"stat_prefix": "bw", "fill_interval": "0.019s"}, "fill_interval"),
    ({"stat_prefix": "bw", "fill_interval": "1.001s"}, "fill_interval"),
    ({"stat_prefix": "bw", "enable_mode": "BOTH"}, "enable_mode"),
    ({"stat_prefix": "bw", "response_trailer_prefix": "x\nbw"}, "response_trailer_prefix"),
    ({"stat_prefix": "bw", "runtime_enabled": {"runtime_key": "k"}}, "default_value"),
    ({"stat_prefix": "bw", "max_kbps": 1}, "max_kbps"),
])
def test_what_the_proto_refuses_is_refused_by_field(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        load(fields)


def test_a_route_config_must_set_its_limit() -> None:
    load({"stat_prefix": "bw"}, per_route={"stat_prefix": "r", "limit_kbps": 1, "fill_interval": "1s"})
    with pytest.raises(ConfigError, match=r"typed_per_filter_config.*limit_kbps.*limit must be set"):
        load({"stat_prefix": "bw"}, per_route={"stat_prefix": "r", "enable_mode": "RESPONSE"})


@pytest.mark.skipif(not DOCS.exists(), reason="Envoy's docs configs are not here")
def test_envoys_docs_example_loads() -> None:
    load_bootstrap(DOCS)


def compiled(**fields: Any) -> _Config:
    return _Config(BandwidthLimit(stat_prefix="bw", **fields), b"key", StatsStore(), lambda: 0.0, 0.0)


def test_the_fill_interval_is_whole_milliseconds_default_50() -> None:
    assert compiled().fill_interval == 0.05
    assert compiled(fill_interval=FillInterval(0.057)).fill_interval == 0.057  # not 0.056 from 56.99999...
    assert compiled(fill_interval=FillInterval(0.0209999)).fill_interval == 0.02  # cut, as Envoy's


def test_runtime_enabled_default_value_false_turns_the_filter_off() -> None:
    assert compiled(enable_mode="REQUEST_AND_RESPONSE").mode == REQUEST | RESPONSE
    off = RuntimeFeatureFlag(default_value=False, runtime_key="bw.on")
    assert compiled(enable_mode="REQUEST_AND_RESPONSE", runtime_enabled=off).mode == 0


def test_the_bucket_holds_a_fill_interval_of_kibibytes_at_load() -> None:
    bucket = compiled(limit_kbps=100, fill_interval=FillInterval(0.1)).bucket
    assert bucket.rule.max_tokens == bucket.rule.rate == 102400
    assert bucket.rule.consume(bucket.first, 0.0, 1 << 20)[1] == 10240


def test_trailer_names_take_the_prefix_lower_cased() -> None:
    assert compiled(response_trailer_prefix=HttpText("X-BW")).trailer_names == [
        b"x-bw-bandwidth-request-delay-ms", b"x-bw-bandwidth-response-delay-ms",
        b"x-bw-bandwidth-request-filter-delay-ms", b"x-bw-bandwidth-response-filter-delay-ms"]

"""Integration: envoy.filters.http.set_metadata through pylon and Envoy 1.40 alike - what the access log's
%DYNAMIC_METADATA(...)% prints (text and JSON), the overwrite_denied counter, and `envoy.lb` values choosing a
subset of the cluster's hosts.

Two filters set metadata (the second sees the first's), in the shape of Envoy's docs' set-metadata-*.yaml:
entries that insert, are refused without allow_overwrite, merge with it (structs recursively, lists appended),
a typed_value, and the deprecated namespace/value pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import FILE_LOG_TYPE, ProxyLauncher, http_listener, read_json_lines, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

SET_METADATA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

FIRST = {"@type": SET_METADATA_TYPE, "metadata": [
    {"metadata_namespace": "test.namespace", "value": {"counter": 1, "list": ["first"], "nested": {"a": "x"}}},
    {"metadata_namespace": "test.namespace", "value": {"counter": 2, "list": ["second"]}},
    {"metadata_namespace": "test.namespace", "allow_overwrite": True,
     "value": {"counter": 3, "list": ["third"], "nested": {"b": True}, "new_field": "added"}},
    {"metadata_namespace": "custom.typed", "typed_value": {
        "@type": SET_METADATA_TYPE, "metadata_namespace": "nested", "value": {"custom_field": "typed_value"}}},
]}
SECOND = {"@type": SET_METADATA_TYPE, "metadata_namespace": "test.namespace", "value": {"counter": "four", "more": [1, 2]},
          "metadata": [
              {"metadata_namespace": "envoy.lb", "value": {"version": "v2"}},
              {"metadata_namespace": "custom.typed", "typed_value": {"@type": SET_METADATA_TYPE}},
              {"metadata_namespace": "test.namespace", "value": {"ignored": True}},
          ]}

TEXT = ("%DYNAMIC_METADATA(test.namespace)% %DYNAMIC_METADATA(test.namespace:counter)% "
        "%DYNAMIC_METADATA(test.namespace:nested:a)% %DYNAMIC_METADATA(test.namespace:list):10% "
        "%DYNAMIC_METADATA(envoy.lb:version)% %DYNAMIC_METADATA(custom.typed)% %DYNAMIC_METADATA(test.namespace:nope)%\n")
JSON = {"all": "%DYNAMIC_METADATA(test.namespace)%", "counter": "%DYNAMIC_METADATA(test.namespace:counter)%",
        "list": "%DYNAMIC_METADATA(test.namespace:list):3%", "short": "%DYNAMIC_METADATA(envoy.lb:version):1%",
        "missing": "%DYNAMIC_METADATA(nothing:here)%", "mixed": "v=%DYNAMIC_METADATA(envoy.lb:version)%"}

MERGED = {"counter": "four", "list": ["first", "third"], "more": [1, 2], "nested": {"a": "x", "b": True},
          "new_field": "added"}


def _listener(port: int, log_dir: Path) -> dict[str, Any]:
    routes = [{"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "OK"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "versioned"}}]
    logs = [
        {"name": "text", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(log_dir / "text.log"),
                                          "log_format": {"text_format": TEXT}}},
        {"name": "json", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(log_dir / "json.log"),
                                          "log_format": {"json_format": JSON}}},
    ]
    return http_listener("main", port, routes, access_log=logs, http_filters=[
        {"name": "first", "typed_config": FIRST},
        {"name": "second", "typed_config": SECOND},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ])


def _versioned(v1: int, v2: int) -> dict[str, Any]:
    cluster = static_cluster("versioned", [], lb_subset_config={
        "fallback_policy": "NO_FALLBACK", "subset_selectors": [{"keys": ["version"]}]})
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}},
         "metadata": {"filter_metadata": {"envoy.lb": {"version": version}}}}
        for port, version in ((v1, "v1"), (v2, "v2"))]}]
    return cluster


@pytest.fixture
def gateway(implementation: str, tmp_path: Path) -> Any:
    v1, v2 = Upstream(), Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        proxy = launcher.start([_listener(port, tmp_path)], [_versioned(v1.port, v2.port)],
                               implementation=implementation)
        yield proxy, port, v1, v2, tmp_path
    finally:
        launcher.close()
        v1.close()
        v2.close()


def test_metadata_in_access_log_and_stats(gateway: Any) -> None:
    proxy, port, _, _, logs = gateway
    assert httpx.get(f"http://127.0.0.1:{port}/direct", timeout=10).text == "OK"
    [line] = read_json_lines(logs / "json.log", 1, timeout=10)
    assert line == {"all": MERGED, "counter": "four", "list": ["first", "third"], "short": "v",
                    "missing": None, "mixed": "v=v2"}
    text = wait_until(lambda: (logs / "text.log").exists() and (logs / "text.log").read_text(), timeout=10)
    assert text == ('{"counter":"four","list":["first","third"],"more":[1,2],"nested":{"a":"x","b":true},'
                    '"new_field":"added"} four x ["first",\" v2 - -\n')
    # Refused: the second entry of the first filter, the typed and the last entry of the second.
    assert wait_until(lambda: proxy.stats().get("http.main.set_metadata.overwrite_denied") == 3, timeout=10)


def test_envoy_lb_metadata_picks_the_subset(gateway: Any) -> None:
    _, port, v1, v2, _ = gateway
    for _ in range(4):
        assert httpx.get(f"http://127.0.0.1:{port}/app", timeout=10).status_code == 200
    assert (len(v1.requests), len(v2.requests)) == (0, 4)

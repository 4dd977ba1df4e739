"""benchmarks/conformance.py on three tiny configs: one both proxies accept, one only Envoy accepts (a filter
pylon refuses by name), one that is not an Envoy bootstrap."""

from __future__ import annotations

from pathlib import Path

import pytest

from pylon.bench.targets import TargetError, find_envoy
from tests.bench.benchmark_scripts import load_benchmark


BOTH = """
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                direct_response: {status: 200}
          http_filters:%s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

# A filter stock Envoy has and pylon does not (yet): the config Envoy alone accepts.
UNSUPPORTED = """
          - name: envoy.filters.http.alternate_protocols_cache
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.alternate_protocols_cache.v3.FilterConfig"""

COMPOSE = """
services:
  envoy:
    image: envoyproxy/envoy:v1.40-latest
    ports: ["10000:10000"]
"""

UNSUPPORTED_TYPE = "envoy.extensions.filters.http.alternate_protocols_cache.v3.FilterConfig"

# Envoy's docs (configuration/overview/_include/tagged.yaml) keep anchors under a key tagged `!ignore`.
TAGGED = "!ignore dynamic_sockets:\n- &port 10000\n" + (BOTH % "").replace("port_value: 10000", "port_value: *port")


@pytest.fixture(scope="module")
def envoy() -> str:
    try:
        return find_envoy()
    except TargetError as exc:
        pytest.skip(f"the survey compares with Envoy's own validate mode: {exc}")


def test_classifies_three_configs(tmp_path: Path, envoy: str) -> None:
    conformance = load_benchmark("conformance")
    (tmp_path / "both.yaml").write_text(BOTH % "")
    (tmp_path / "envoy-only.yaml").write_text(BOTH % UNSUPPORTED)
    (tmp_path / "docker-compose.yaml").write_text(COMPOSE)

    found = conformance.survey([tmp_path], envoy, timeout=60, jobs=2)

    assert found.skipped == {"docker-compose.yaml": "docker-compose file"}
    results = {result.path: result for result in found.results}
    assert set(results) == {"both.yaml", "envoy-only.yaml"}
    assert results["both.yaml"].category == "both" and results["both.yaml"].pylon.error == ""
    only = results["envoy-only.yaml"]
    assert only.category == "envoy-only" and only.envoy.accepted and not only.pylon.accepted
    assert only.pylon.error.startswith(
        "envoy-only.yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
        f".typed_config.@type: unknown HTTP filter type type.googleapis.com/{UNSUPPORTED_TYPE}")
    summary = conformance.totals(found)
    assert summary["envoy_acceptance"] == 1.0 and summary["pylon_acceptance_among_envoy_accepted"] == 0.5
    assert summary["refusals_ranked"] == {f"{UNSUPPORTED_TYPE} (unknown HTTP filter type)": 1}


def test_keys_tagged_ignore_are_left_out_as_envoy_does(tmp_path: Path, envoy: str) -> None:
    """A bootstrap with an `!ignore` key is found (plain PyYAML refuses the tag) and both proxies accept it."""
    conformance = load_benchmark("conformance")
    (tmp_path / "tagged.yaml").write_text(TAGGED)

    assert conformance.load_documents(tmp_path / "tagged.yaml")[0].keys() == {"static_resources"}
    found = conformance.survey([tmp_path], envoy, timeout=60, jobs=2)

    assert found.skipped == {}
    [result] = found.results
    assert result.category == "both", (result.envoy.error, result.pylon.error)


def test_field_reason_names_the_extension_not_the_indices() -> None:
    conformance = load_benchmark("conformance")
    config = {"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager", "route_config": {"virtual_hosts": [{"routes": [{
                     "typed_per_filter_config": {"envoy.filters.http.lua": {}}}]}]}}}]}]}]}}
    path = ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
            ".routes[0].typed_per_filter_config[envoy.filters.http.lua].disabled")
    assert conformance.field_reason(config, path) == (
        "HttpConnectionManager.route_config.virtual_hosts[].routes[].typed_per_filter_config[].disabled")

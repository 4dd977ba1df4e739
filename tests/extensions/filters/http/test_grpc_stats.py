"""grpc_stats's config, the gRPC path it reads and the protocol it names (sans-IO)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.common.grpc_call_stats import service_and_method
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


def load(**config: Any) -> None:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": TYPE, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")


def test_config() -> None:
    load()
    load(stats_for_all_methods=False, enable_upstream_stats=True, replace_dots_in_grpc_service_name=True)
    load(individual_method_stats_allowlist={"services": [{"name": "a.B", "method_names": ["C"]}]})


@pytest.mark.parametrize("config, field", [
    ({"emit_filter_state": True}, "emit_filter_state"),
    ({"stats_for_all_methods": True, "individual_method_stats_allowlist": {}}, "stats_for_all_methods"),
    ({"individual_method_stats_allowlist": {"services": [{"name": "a", "method_names": []}]}}, "method_names"),
    ({"individual_method_stats_allowlist": {"services": [{"name": "", "method_names": ["x"]}]}}, "name"),
    ({"per_method": True}, "per_method"),
])
def test_refusals_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(**config)
    assert field in str(raised.value)


@pytest.mark.parametrize("path, expected", [
    (b"/pkg.Svc/Method", ("pkg.Svc", "Method")), (b"/pkg.Svc/Method?x=1", ("pkg.Svc", "Method")),
    (b"//pkg.Svc//Method", ("pkg.Svc", "Method")), (b"/only", None), (b"/a/b/c", None), (b"/", None)])
def test_the_path_names_service_and_method(path: bytes, expected: tuple[str, str] | None) -> None:
    assert service_and_method(path) == expected

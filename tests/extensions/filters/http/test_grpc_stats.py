"""grpc_stats's config, the gRPC path it reads and the protocol it names (sans-IO)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.extensions.filters.common.grpc_call_stats import service_and_method
from tests.extensions.filters.http.loading import load_filter

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


def load(**config: Any) -> None:
    load_filter("envoy.filters.http.grpc_stats", TYPE, config)


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

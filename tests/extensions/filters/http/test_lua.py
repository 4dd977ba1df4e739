"""The Lua filter's config: what loads, what is refused by name, scripts checked when the config is taken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
CODE = {"inline_string": "function envoy_on_request(h) h:headers():add('a', 'b') end"}


def load(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> Any:
    first = route("/", "a")
    if per_route is not None:
        first["typed_per_filter_config"] = {"lua": {"@type": PER_ROUTE, **per_route}}
    listener = http_listener("main", 10000, [first])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "lua", "typed_config": {"@type": TYPE, **config}})
    resources = {"listeners": [listener], "clusters": [static_cluster("a", [1])]}
    return parse_bootstrap({"static_resources": resources}, "lua.yaml")


def error(config: dict[str, Any], per_route: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load(config, per_route)
    return str(raised.value)


def test_scripts_inline_in_files_by_name_and_per_route_load(tmp_path: Path) -> None:
    script = tmp_path / "s.lua"
    script.write_text(CODE["inline_string"])
    load({"default_source_code": {"filename": str(script)}, "source_codes": {"other": CODE}}, {"name": "other"})
    load({}, {"source_code": CODE})
    load({"default_source_code": CODE, "stat_prefix": "mine"}, {"disabled": True})


def test_a_script_that_does_not_load_names_its_field() -> None:
    message = error({"default_source_code": {"inline_string": "function ("}})
    assert "http_filters[0].typed_config.default_source_code" in message and "does not load" in message
    message = error({"source_codes": {"x": {"inline_string": "error('at load')"}}})
    assert "source_codes.x" in message and "at load" in message
    assert "typed_per_filter_config[lua].source_code" in error({}, {"source_code": {"inline_string": "x("}})


@pytest.mark.parametrize(("config", "per_route", "field"), [
    ({"inline_code": "x = 1"}, None, "inline_code"),
    ({"clear_route_cache": True}, None, "clear_route_cache"),
    ({}, {"name": "n", "filter_context": {}}, "filter_context"),
    ({}, {"disabled": False}, "disabled"),
])
def test_unsupported_options_are_refused_by_name(config: dict[str, Any], per_route: dict[str, Any] | None,
                                                 field: str) -> None:
    assert field in error(config, per_route)


def test_per_route_needs_exactly_one_override() -> None:
    assert "exactly one of disabled, name, source_code" in error({}, {"disabled": True, "name": "x"})
    assert "exactly one of disabled, name, source_code" in error({}, {})


def test_per_route_source_code_must_be_inline(tmp_path: Path) -> None:
    script = tmp_path / "s.lua"
    script.write_text("x = 1")
    assert "only inline_string" in error({}, {"source_code": {"filename": str(script)}})

"""The Lua cluster specifier: its config, named and inline plugins on routes, and the picker on a fake stream."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.proxy.router import RouteTable
from tests.proxy.conftest import http_listener, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"
PICK = """
function envoy_on_route(route_handle)
  local v = route_handle:headers():get("x-pick")
  if v == "boom" then error("boom") end
  if v == "nothing" then return nil end
  if v then return v end
  return "b"
end
"""


def plugin(code: str = PICK, **fields: Any) -> dict[str, Any]:
    return {"extension": {"name": "envoy.router.cluster_specifier_plugin.lua",
                          "typed_config": {"@type": TYPE, "source_code": {"inline_string": code}, **fields}}}


def load(action: dict[str, Any], **route_config: Any) -> Any:
    listener = http_listener("main", 10000, [{"match": {"prefix": "/"}, "route": action}])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"].update(route_config)
    resources = {"listeners": [listener], "clusters": [static_cluster("a", [1]), static_cluster("b", [1])]}
    return parse_bootstrap({"static_resources": resources}, "lua.yaml")


def route_config_of(bootstrap: Any) -> Any:
    return bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config


def stream(**headers: str) -> Any:
    return SimpleNamespace(authority=b"h", path=b"/p", method=b"GET", conn=SimpleNamespace(scheme=b"http"),
                           headers=[(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()])


@pytest.mark.parametrize("action", [
    {"inline_cluster_specifier_plugin": plugin(default_cluster="a")},
    {"cluster_specifier_plugin": "envoy.router.cluster_specifier_plugin.lua"},
])
def test_the_script_picks_the_cluster_else_the_default(action: dict[str, Any]) -> None:
    extra = {"cluster_specifier_plugins": [plugin(default_cluster="a")]} if "cluster_specifier_plugin" in action else {}
    table = RouteTable(route_config_of(load(action, **extra)))
    matched = table.match("h", "/", None)
    assert matched.pick_cluster(stream()) == "b"
    assert matched.pick_cluster(stream(x_pick="a")) == "a"
    assert matched.pick_cluster(stream(x_pick="elsewhere")) == "elsewhere"  # the router answers 503 NC
    assert matched.pick_cluster(stream(x_pick="boom")) == "a"  # a failing script: default_cluster
    assert matched.pick_cluster(stream(x_pick="nothing")) == "a"


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="inline_cluster_specifier_plugin.extension.typed_config.source_code"):
        load({"inline_cluster_specifier_plugin": plugin("function (")})
    with pytest.raises(ConfigError, match="no envoy_on_route"):
        load({"inline_cluster_specifier_plugin": plugin("x = 1")})
    with pytest.raises(ConfigError, match="unknown cluster specifier plugin name: nope"):
        load({"cluster_specifier_plugin": "nope"})
    with pytest.raises(ConfigError, match="exactly one of"):
        load({"cluster": "a", "inline_cluster_specifier_plugin": plugin()})

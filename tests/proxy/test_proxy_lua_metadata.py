"""Integration: the Lua filter's metadata(), route():metadata() and virtualHost():metadata(), through pylon and
Envoy alike (Envoy's docs' lua-filter.yaml sets both a route's and its virtual host's).

A script copies what it reads into request headers; the upstream must see the same ones from both proxies.
`metadata()` is the route's metadata under the filter's name, else under `envoy.filters.http.lua` (Envoy's older
key); `route():metadata()` and `virtualHost():metadata()` read the filter's name only. Values arrive as Envoy
converts a Struct: nested tables, lists as arrays, numbers as Lua numbers, booleans.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy.conftest import gateway_in_front_of_upstream, http_listener, json_access_log, read_json_lines

LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "lua-meta"

SCRIPT = """
local function show(md)
  local keys = {}
  for key, _ in pairs(md) do keys[#keys + 1] = key end
  table.sort(keys)
  local list, nested = md:get("list"), md:get("nested")
  local function get(key) return (md:get(key)) end
  return table.concat(keys, ",") .. "|" .. tostring(get("text")) .. "|" .. tostring(get("number")) .. "|"
    .. tostring(get("flag")) .. "|" .. (list and (list[1] .. "+" .. list[2]) or "-") .. "|"
    .. (nested and tostring(nested["inner"]) or "-") .. "|" .. select("#", md:get("missing"))
end
function envoy_on_request(handle)
  local headers = handle:headers()
  headers:add("x-handle", show(handle:metadata()))
  headers:add("x-route", show(handle:route():metadata()))
  headers:add("x-vhost", show(handle:virtualHost():metadata()))
end
"""

OWN = {"text": "bar", "number": 5, "flag": True, "list": ["a", "b"], "nested": {"inner": 1.5}}
LEGACY = {"text": "old", "number": -2, "list": ["c", "d"]}


def routes() -> list[dict[str, Any]]:
    direct = {"cluster": "up"}
    return [
        {"match": {"prefix": "/own"}, "route": direct,
         "metadata": {"filter_metadata": {NAME: OWN, "envoy.filters.http.lua": LEGACY}}},
        {"match": {"prefix": "/legacy"}, "route": direct, "metadata": {"filter_metadata": {"envoy.filters.http.lua": LEGACY}}},
        {"match": {"prefix": "/"}, "route": direct},
    ]


def listener(port: int) -> dict[str, Any]:
    config = http_listener("main", port, [])
    hcm = config["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"] = {"virtual_hosts": [{
        "name": "site", "domains": ["*"], "routes": routes(),
        "metadata": {"filter_metadata": {NAME: {"text": "vh", "list": ["p", "q"]}, "other": {"text": "no"}}}}]}
    hcm["http_filters"] = [
        {"name": NAME, "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": SCRIPT}}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return config


VHOST = "list,text|vh|nil|nil|p+q|-|0"
NOTHING = "|nil|nil|nil|-|-|0"
OWN_SHOWN = "flag,list,nested,number,text|bar|5|true|a+b|1.5|0"


@pytest.mark.parametrize(("path", "expected"), [
    ("/own", {"x-handle": OWN_SHOWN, "x-route": OWN_SHOWN, "x-vhost": VHOST}),
    ("/legacy", {"x-handle": "list,number,text|old|-2|nil|c+d|-|0", "x-route": NOTHING, "x-vhost": VHOST}),
    ("/plain", {"x-handle": NOTHING, "x-route": NOTHING, "x-vhost": VHOST}),
])
def test_metadata_reaches_the_script(implementation: str, tmp_path: Path, path: str, expected: dict[str, str]) -> None:
    with gateway_in_front_of_upstream(implementation, tmp_path, listener) as gateway:
        assert httpx.get(f"http://127.0.0.1:{gateway.port}{path}", timeout=10).status_code == 200
        [seen] = gateway.upstream.requests
    assert {name: seen["headers"].get(name) for name in expected} == expected


DYNAMIC_SCRIPT = """
function envoy_on_request(h)
  local meta = h:streamInfo():dynamicMetadata()
  meta:set("lua.dyn", "text", "hello")
  meta:set("lua.dyn", "number", 3)
  meta:set("lua.dyn", "list", {"a", "b"})
  meta:set("lua.dyn", "table", {k = true})
  meta:set("lua.dyn", "text", "again")
end
"""
READER_SCRIPT = """
function envoy_on_request(h)
  local ns = h:streamInfo():dynamicMetadata():get("lua.dyn")
  local names = {}
  for name, _ in pairs(h:streamInfo():dynamicMetadata()) do names[#names + 1] = name end
  h:headers():add("x-read", ns["text"] .. "|" .. ns["number"] .. "|" .. ns["list"][2] .. "|" ..
                  tostring(ns["table"]["k"]) .. "|" .. table.concat(names, ","))
end
"""


def dynamic_listener(log: Path) -> Callable[[int], dict[str, Any]]:
    def make(port: int) -> dict[str, Any]:
        config = http_listener("main", port, [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                               access_log=json_access_log(log, meta="%DYNAMIC_METADATA(lua.dyn)%",
                                                          text="%DYNAMIC_METADATA(lua.dyn:text)%"))
        config["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
            {"name": "writer", "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": DYNAMIC_SCRIPT}}},
            {"name": "reader", "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": READER_SCRIPT}}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
        return config
    return make


def test_a_script_s_dynamic_metadata_is_the_stream_s(implementation: str, tmp_path: Path) -> None:
    """What one script sets, another filter (a second script) and the access log see, as in Envoy."""
    log = tmp_path / "access.log"
    with gateway_in_front_of_upstream(implementation, tmp_path, dynamic_listener(log)) as gateway:
        assert httpx.get(f"http://127.0.0.1:{gateway.port}/", timeout=10).status_code == 200
        [seen] = gateway.upstream.requests
        [entry] = read_json_lines(log, 1)
    assert seen["headers"]["x-read"] == "again|3|b|true|lua.dyn"
    assert entry["text"] == "again"
    assert entry["meta"] == {"list": ["a", "b"], "number": 3, "table": {"k": True}, "text": "again"}

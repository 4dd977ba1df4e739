"""Integration: HttpConnectionManager.scoped_routes (inline scopes), through pylon and Envoy 1.40 alike.

The docs' route-scope.yaml shape: the scope key is the value of `x-foo-key` inside the `Addr` header's `;`-separated
`key=value` elements; a second scope keys on an element by index. Each scope's routes answer with a direct response
naming the scope, so what answers shows which scope took the request; no key or no scope for it is 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener


def scope(name: str, key: list[str]) -> dict[str, Any]:
    return {"name": name, "key": {"fragments": [{"string_key": k} for k in key]}, "route_configuration": {
        "name": f"{name}_routes", "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": name}}}]}]}}


def start(run_proxy: Callable[..., RunningProxy], implementation: str, extractor: dict[str, Any],
          scopes: list[dict[str, Any]]) -> RunningProxy:
    listener = http_listener("main", free_port(), [])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["scoped_routes"] = {"name": "scopes", "scope_key_builder": {"fragments": [
        {"header_value_extractor": extractor}]},
        "scoped_route_configurations_list": {"scoped_route_configurations": scopes}}
    return run_proxy([listener], [], implementation=implementation)


@pytest.mark.parametrize(("headers", "answer"), [
    ({"addr": "x-foo-key=bar"}, "bar_scope"),
    ({"addr": "a=1;x-foo-key=baz;b=2"}, "baz_scope"),
    ({"addr": "x-foo-key=other"}, None),  # a key no scope has
    ({"addr": "x-bar-key=bar"}, None),  # no such element
    ({}, None),  # no header
])  # fmt: skip
def test_a_header_element_picks_the_scope(implementation: str, run_proxy: Callable[..., RunningProxy],
                                          headers: dict[str, str], answer: str | None) -> None:
    proxy = start(run_proxy, implementation,
                  {"name": "Addr", "element_separator": ";", "element": {"key": "x-foo-key", "separator": "="}},
                  [scope("bar_scope", ["bar"]), scope("baz_scope", ["baz"])])
    reply = httpx.get(proxy.url("main", "/x"), headers=headers)
    assert (reply.status_code, reply.text) == ((200, answer) if answer else (404, ""))


@pytest.mark.parametrize(("value", "answer"), [("v1,east", "east"), ("v1,west,x", "west"), ("v1", None)])
def test_an_element_by_index(implementation: str, run_proxy: Callable[..., RunningProxy], value: str,
                             answer: str | None) -> None:
    proxy = start(run_proxy, implementation, {"name": "x-route", "element_separator": ",", "index": 1},
                  [scope("east", ["east"]), scope("west", ["west"])])
    reply = httpx.get(proxy.url("main", "/"), headers={"x-route": value})
    assert (reply.status_code, reply.text) == ((200, answer) if answer else (404, ""))

"""Integration: envoy.filters.http.header_mutation through pylon and Envoy 1.40 side by side.

Two listeners with the same filter and routes: `main` (default order: the filter's edits, then the route's,
the virtual host's, the route configuration's) and `wins` (most_specific_header_mutations_wins: the route's
last). Every expectation was first observed on Envoy 1.40: what the upstream saw and what the client got.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

FILTER = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.header_mutation"


def append(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD", **extra: Any) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": action, **extra}}


REQUEST = [
    append("x-added", "one"),
    append("x-added", "two"),
    {"remove": "x-drop"},
    {"remove_on_match": {"key_matcher": {"prefix": "x-secret-"}}},
    append("x-copy", "from %REQ(x-in)% via %REQ(x-missing?x-in)%"),
    append("x-absent", "new", "ADD_IF_ABSENT"),
    append("x-present", "new", "ADD_IF_ABSENT"),
    append("x-ow", "new", "OVERWRITE_IF_EXISTS"),
    append("x-ow-missing", "new", "OVERWRITE_IF_EXISTS"),
    append("x-set", "only", "OVERWRITE_IF_EXISTS_OR_ADD"),
    append("x-empty", "%REQ(x-nothing)%"),
    append("x-kept-empty", "%REQ(x-nothing)%", keep_empty_value=True),
    append("x-seen-added", "%REQ(x-added)%"),  # an earlier edit counts: the headers are live
]
RESPONSE = [
    {"remove": "x-served-by"},
    append("x-resp", "%REQ(x-in)%"),
    append("x-from-upstream", "filter", "OVERWRITE_IF_EXISTS"),
]


def per_route(level: str) -> dict[str, Any]:
    mutations = [append("x-level", level, "OVERWRITE_IF_EXISTS_OR_ADD"), append("x-order", level)]
    return {NAME: {"@type": PER_ROUTE, "mutations": {"request_mutations": mutations, "response_mutations": mutations}}}


def listener(name: str, port: int, wins: bool) -> dict[str, Any]:
    routes = [{**route("/levels", "up"), "typed_per_filter_config": per_route("route")}, route("/", "up")]
    result = http_listener(name, port, routes)
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["typed_per_filter_config"] = per_route("route_configuration")
    hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = per_route("virtual_host")
    config = {"@type": FILTER, "mutations": {"request_mutations": REQUEST, "response_mutations": RESPONSE}}
    if wins:
        config["most_specific_header_mutations_wins"] = True
    hcm["http_filters"] = [{"name": NAME, "typed_config": config},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return result


def param(key: str, value: str, action: str) -> dict[str, Any]:
    return {"append": {"record": {"key": key, "value": value}, "action": action}}


QUERY = [{"remove": "drop"}, param("a", "1", "APPEND_IF_EXISTS_OR_ADD"), param("b", "new", "OVERWRITE_IF_EXISTS_OR_ADD"),
         param("c", "x y&z=/?é~*", "ADD_IF_ABSENT"), param("d", "%REQ(x-in)%", "OVERWRITE_IF_EXISTS"),
         param("e", "v", "OVERWRITE_IF_EXISTS")]


def query_listener(name: str, port: int, mutations: list[dict[str, Any]]) -> dict[str, Any]:
    """The filter's query edits everywhere; on `/r` (prefix-rewritten) a level of its own after them."""
    level = {NAME: {"@type": PER_ROUTE, "mutations": {
        "query_parameter_mutations": [param("lvl", "r", "ADD_IF_ABSENT"), param("a", "2", "APPEND_IF_EXISTS_OR_ADD")],
        "request_mutations": [append("x-lvl", "r")]}}}
    routes = [{**route("/r", "up", prefix_rewrite="/rewritten"), "typed_per_filter_config": level}, route("/", "up")]
    result = http_listener(name, port, routes)
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": NAME, "typed_config": {"@type": FILTER, "mutations": {
                               "query_parameter_mutations": mutations}}},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return result


class Setup:
    def __init__(self, ports: dict[str, int], upstream: Upstream) -> None:
        self.ports, self.upstream = ports, upstream

    def get(self, listener: str, path: str, headers: list[tuple[str, str]]
            ) -> tuple[httpx.Response, list[tuple[str, str]]]:
        """The reply and the header list the upstream saw."""
        before = len(self.upstream.requests)
        reply = httpx.get(f"http://127.0.0.1:{self.ports[listener]}{path}", headers=headers, timeout=5)
        return reply, self.upstream.requests[before]["header_list"]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"header-mutation-{request.param}")
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {"main": free_port(), "wins": free_port(), "query": free_port(), "plain_query": free_port()}
        launcher.start([listener("main", ports["main"], False), listener("wins", ports["wins"], True),
                        query_listener("query", ports["query"], QUERY),
                        query_listener("plain_query", ports["plain_query"], [param("a", "1", "APPEND_IF_EXISTS_OR_ADD")])],
                       [static_cluster("up", [upstream.port])], implementation=request.param)
        yield Setup(ports, upstream)
    finally:
        launcher.close()
        upstream.close()


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


CLIENT = [("x-in", "IN"), ("x-drop", "gone"), ("x-secret-a", "1"), ("x-secret-b", "2"), ("x-present", "old"),
          ("x-ow", "old"), ("x-set", "a"), ("x-set", "b")]


def test_request_edits_run_in_order_on_the_live_headers(setup: Setup) -> None:
    _, seen = setup.get("main", "/plain", CLIENT)
    names = {key for key, _ in seen}
    assert not names & {"x-drop", "x-secret-a", "x-secret-b", "x-ow-missing", "x-empty"}
    assert {name: values(seen, name) for name in (
        "x-added", "x-copy", "x-absent", "x-present", "x-ow", "x-set", "x-kept-empty", "x-seen-added", "x-in")} == {
        "x-added": ["one", "two"], "x-copy": ["from IN via IN"], "x-absent": ["new"], "x-present": ["old"],
        "x-ow": ["new"], "x-set": ["only"], "x-kept-empty": [""], "x-seen-added": ["one"], "x-in": ["IN"]}


def test_response_edits(setup: Setup) -> None:
    reply, _ = setup.get("main", "/respond?x-from-upstream=up", [("x-in", "IN")])
    assert "x-served-by" not in reply.headers
    assert reply.headers["x-resp"] == "IN"
    assert reply.headers["x-from-upstream"] == "filter"
    reply, _ = setup.get("main", "/plain", [])
    assert "x-resp" not in reply.headers and "x-from-upstream" not in reply.headers


@pytest.mark.parametrize(("listener", "order"), [
    ("main", ["route", "virtual_host", "route_configuration"]),
    ("wins", ["route_configuration", "virtual_host", "route"]),
])  # fmt: skip
def test_per_route_levels_in_envoys_order(setup: Setup, listener: str, order: list[str]) -> None:
    reply, seen = setup.get(listener, "/levels", [])
    assert values(seen, "x-order") == order and values(seen, "x-level") == [order[-1]]
    assert reply.headers.get_list("x-order") == order and reply.headers["x-level"] == order[-1]
    _, seen = setup.get(listener, "/other", [])  # no route-level config: the virtual host's and the table's
    assert values(seen, "x-order") == [level for level in order if level != "route"]


ADDED = "a=1&b=new&c=x%20y%26z%3D%2F%3F%C3%A9%7E*"


@pytest.mark.parametrize(("listener", "path", "upstream_path"), [
    ("plain_query", "/r/x?y=1&a=0", "/rewritten/x?a=0&a=1&a=2&lvl=r&y=1"),  # the route's level after the filter's
    ("plain_query", "/p?b=%2F&a=%7e", "/p?a=~&a=1&b=/"),
    ("query", "/p?z=9&drop=1&b=old&b=old2&a=0", "/p?a=0&" + ADDED + "&z=9"),
    ("query", "/p", "/p?" + ADDED),
    ("query", "/p?c=keep&d=old", "/p?a=1&b=new&c=keep&d=IN%20v"),
    ("query", "/p?k&=v&&x=", "/p?=v&=&" + ADDED + "&k=&x="),
    ("query", "/p?z=a%2Fb%7e~*!'()$,;:@[]&q=%zz&%41=1", "/p?A=1&" + ADDED + "&q=%zz&z=a/b~~*!'()$,;:@[]"),
    ("query", "/p?B=1&_=3&0=4&~=5&-=6&e=7", "/p?-=6&0=4&B=1&_=3&" + ADDED + "&e=v&~=5"),
])  # fmt: skip
def test_query_parameter_mutations(setup: Setup, listener: str, path: str, upstream_path: str) -> None:
    before = len(setup.upstream.requests)
    reply = httpx.get(f"http://127.0.0.1:{setup.ports[listener]}{path}", headers={"x-in": "IN v"}, timeout=5)
    assert reply.status_code == 200
    assert setup.upstream.requests[before]["path"] == upstream_path

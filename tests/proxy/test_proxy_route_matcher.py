"""A virtual host's `matcher` (route selection by a matcher tree), beside Envoy 1.40.

The scenarios of Envoy's docs (route-match-tree.yaml, sublinear_routing_example1..4.yaml) on loopback
upstreams, one upstream per cluster: an exact map on `:path` whose Route actions keep their own match (the docs'
`/new_endpoint/foo` -> `prefix: /foo` never routes), RouteList actions, nested prefix maps on headers that resume
at a shorter prefix when a subtree misses, `on_no_match` trees, a matcher_list, and a Route to a cluster nobody
defined (Envoy does not check a matcher's clusters at load: 503 at request time). Both proxies
must answer each request alike and the same upstream must see the same request.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ENVOY_BIN, HCM_TYPE, ROUTER_TYPE, ProxyLauncher, RunningProxy, proxy_args, static_cluster, write_bootstrap,
)
from tests.proxy.upstreams import Upstream

HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
ROUTE = "type.googleapis.com/envoy.config.route.v3.Route"
ROUTE_LIST = "type.googleapis.com/envoy.config.route.v3.RouteList"
CLUSTERS = ("c0", "c1", "c2", "c3", "c4")


def header_input(name: str) -> dict[str, Any]:
    return {"name": "request-headers", "typed_config": {"@type": HEADER_INPUT, "header_name": name}}


def to(cluster: str, prefix: str = "", **route: Any) -> dict[str, Any]:
    """An on_match whose action is a Route to `cluster` matching `prefix`."""
    return {"action": {"name": f"to_{cluster}", "typed_config": {
        "@type": ROUTE, "match": {"prefix": prefix}, "route": {"cluster": cluster}, **route}}}


def direct(status: int, body: str, **on_match: Any) -> dict[str, Any]:
    return {"action": {"name": body, "typed_config": {
        "@type": ROUTE, "match": {"prefix": "/"},
        "direct_response": {"status": status, "body": {"inline_string": body}}}}, **on_match}


def when(name: str, **string_match: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": header_input(name), "value_match": string_match}}


#: route-match-tree.yaml: an exact map on :path; Routes with their own match, a RouteList
TREE = {"matcher_tree": {"input": header_input(":path"), "exact_match_map": {"map": {
    "/new_endpoint/foo": to("c0", "/foo"),
    "/new_endpoint/bar": to("c1", "/new_endpoint", request_headers_to_add=[
        {"header": {"key": "x-route-header", "value": "new-value"}}]),
    "/new_endpoint/baz": {"action": {"name": "route_list", "typed_config": {"@type": ROUTE_LIST, "routes": [
        {"match": {"prefix": "/new_endpoint", "headers": [{"name": "x-match-header", "string_match": {"exact": v}}]},
         "route": {"cluster": c}} for v, c in (("foo", "c2"), ("bar", "c3"))]}}},
    "/new_endpoint/nc": to("nosuch"),
}}}}

#: sublinear_routing_example2 + 4: exact map, on_no_match prefix map with nested prefix maps on headers
SUBLINEAR = {
    "matcher_tree": {"input": header_input(":path"), "exact_match_map": {"map": {"/e/0": to("c0")}}},
    "on_no_match": {"matcher": {"matcher_tree": {"input": header_input(":path"), "prefix_match_map": {"map": {
        "/p/1": to("c1"),
        "/p/2": {"matcher": {"matcher_tree": {"input": header_input("x-foo-header"), "prefix_match_map": {"map": {
            "foo-1": to("c2"),
            "foo-2": {"matcher": {"matcher_tree": {"input": header_input("x-bar-header"),
                                                   "prefix_match_map": {"map": {"bar-1": to("c3")}}}}},
        }}}}},
        "/p": to("c4"),
    }}}}},
}

#: a matcher_list: and/or/not; on_no_match a direct response
LISTED = {"matcher_list": {"matchers": [
    {"predicate": {"and_matcher": {"predicate": [when("x-a", exact="1"), {"not_matcher": when("x-b", prefix="no")}]}},
     "on_match": to("c1")},
    {"predicate": {"or_matcher": {"predicate": [when("x-b", suffix="yes"), when("x-c", contains="yes")]}},
     "on_match": direct(200, "either")},
]}, "on_no_match": direct(418, "none")}

#: (host, path, headers) -> (status, cluster whose upstream saw it or None, header x-route-header it saw, body)
CASES: list[tuple[str, str, dict[str, str], tuple[int, str | None, str | None, str | None]]] = [
    ("tree", "/new_endpoint/foo", {}, (404, None, None, None)),  # the Route's own `prefix: /foo` fails
    ("tree", "/new_endpoint/bar", {}, (200, "c1", "new-value", None)),
    ("tree", "/new_endpoint/bar?x=1", {}, (404, None, None, None)),  # :path has the query: no exact key
    ("tree", "/new_endpoint/baz", {"x-match-header": "bar"}, (200, "c3", None, None)),
    ("tree", "/new_endpoint/baz", {"x-match-header": "foo"}, (200, "c2", None, None)),
    ("tree", "/new_endpoint/baz", {"x-match-header": "qux"}, (404, None, None, None)),
    ("tree", "/new_endpoint/nc", {}, (503, None, None, None)),
    ("tree", "/elsewhere", {}, (404, None, None, None)),
    ("sub", "/e/0", {}, (200, "c0", None, None)),
    ("sub", "/e/0/deeper", {}, (404, None, None, None)),
    ("sub", "/p/1/x", {}, (200, "c1", None, None)),
    ("sub", "/p/2", {"x-foo-header": "foo-1-and-more"}, (200, "c2", None, None)),
    ("sub", "/p/2", {"x-foo-header": "foo-2", "x-bar-header": "bar-1"}, (200, "c3", None, None)),
    ("sub", "/p/2", {"x-foo-header": "foo-2"}, (200, "c4", None, None)),  # the subtree missed: "/p" next
    ("sub", "/p/2", {}, (200, "c4", None, None)),
    ("sub", "/q", {}, (404, None, None, None)),
    ("list", "/", {"x-a": "1"}, (200, "c1", None, None)),
    ("list", "/", {"x-a": "1", "x-b": "no"}, (418, None, None, "none")),
    ("list", "/", {"x-a": "1", "x-b": "no, yes"}, (200, None, None, "either")),
    ("list", "/", {"x-c": "oh yes"}, (200, None, None, "either")),
    ("list", "/", {}, (418, None, None, "none")),
]


def listener(port: int) -> dict[str, Any]:
    virtual_hosts = [{"name": name, "domains": [name], "matcher": matcher}
                     for name, matcher in (("tree", TREE), ("sub", SUBLINEAR), ("list", LISTED))]
    hcm = {"@type": HCM_TYPE, "stat_prefix": "main", "route_config": {"name": "r", "virtual_hosts": virtual_hosts},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RunningProxy, dict[str, Upstream]]]:
    upstreams = {name: Upstream() for name in CLUSTERS}
    launcher = ProxyLauncher(tmp_path_factory.mktemp(request.param))
    try:
        proxy = launcher.start([listener(free_port())],
                               [static_cluster(name, [up.port]) for name, up in upstreams.items()],
                               implementation=request.param)
        yield proxy, upstreams
    finally:
        launcher.close()
        for up in upstreams.values():
            up.close()


@pytest.mark.parametrize(("host", "path", "headers", "expected"), CASES)
def test_route_matcher(gateway: tuple[RunningProxy, dict[str, Upstream]], host: str, path: str,
                       headers: dict[str, str], expected: tuple[int, str | None, str | None, str | None]) -> None:
    proxy, upstreams = gateway
    before = {name: len(up.requests) for name, up in upstreams.items()}
    response = httpx.get(proxy.url("main", path), headers={"host": host, **headers}, timeout=10)
    served = [name for name, up in upstreams.items() if len(up.requests) > before[name]]
    seen = upstreams[served[0]].requests[-1] if served else None
    status, cluster, route_header, body = expected
    assert response.status_code == status
    assert served == ([cluster] if cluster else [])
    if seen is not None:
        assert seen["path"] == path
        assert seen["headers"].get("x-route-header") == route_header
    if body is not None:
        assert response.text == body


@pytest.mark.parametrize(("change", "error"), [
    (lambda vh: vh.update(routes=[{"match": {"prefix": "/"}, "route": {"cluster": "c0"}}]),
     "cannot set both matcher and routes on virtual host"),
    (lambda vh: vh["matcher"]["matcher_list"]["matchers"][0]["on_match"].update(keep_matching=True),
     "keep_matching is not supported in this context"),
    (lambda vh: vh["matcher"]["matcher_list"]["matchers"][0]["predicate"]["and_matcher"]["predicate"][0][
        "single_predicate"]["input"]["typed_config"].update({
            "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput"}),
     "HttpResponseHeaderMatchInput"),
    (lambda vh: vh["matcher"]["on_no_match"]["action"]["typed_config"].update(
        direct_response=None, route={"cluster_specifier_plugin": "nope"}),
     "cluster specifier plugin name: nope"),
])
def test_refused_as_envoy_refuses(launcher: ProxyLauncher, tmp_path: Path, change: Any, error: str) -> None:
    """Both matcher and routes, keep_matching, an input other than request headers, a Route naming a cluster
    specifier plugin the route configuration lacks: both proxies refuse."""
    config = listener(free_port())
    hosts = config["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
    hosts[2] = copy.deepcopy(hosts[2])
    change(hosts[2])
    path = write_bootstrap(tmp_path / "refused.yaml", [config], [static_cluster("c0", [1])], free_port())
    pylon = subprocess.run([*proxy_args(path)[:4], "--mode", "validate", "-c", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert pylon.returncode != 0 and error in pylon.stderr + pylon.stdout
    if ENVOY_BIN.exists():
        envoy = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(path)], capture_output=True,
                               text=True, timeout=60)
        assert envoy.returncode != 0 and error in envoy.stderr + envoy.stdout

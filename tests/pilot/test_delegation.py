"""VirtualService delegation without sockets: istiod's merge of a root route with its delegate's routes."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.delegation import merge_delegates
from tests.pilot.builders import doc, resources

V1 = [{"destination": {"host": "reviews", "subset": "v1"}}]


def root(*http: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return doc("VirtualService", "root", {"hosts": ["bookinfo.example.com"], "gateways": ["istio-system/gw"],
                                          "http": list(http)}, namespace=namespace)  # fmt: skip


def delegate(name: str, *http: dict[str, Any], namespace: str = "team", **spec: Any) -> dict[str, Any]:
    return doc("VirtualService", name, {"http": list(http), **spec}, namespace=namespace)


def merged_routes(*docs: dict[str, Any]) -> list[Any]:
    """The root's HTTP routes after the merge (none when nothing was left of it)."""
    out = merge_delegates(resources(*docs))
    return out[0].spec.http if out else []


def test_the_delegates_routes_replace_the_root_route_narrowed_by_its_match() -> None:
    routes = merged_routes(
        root({"name": "api", "match": [{"uri": {"prefix": "/api"}}], "delegate": {"name": "d", "namespace": "team"},
              "timeout": "3s"},
             {"route": V1}),
        delegate("d", {"name": "v2", "match": [{"uri": {"prefix": "/api/v2"}, "headers": {"x-a": {"exact": "1"}}}],
                       "route": V1},
                 {"route": V1, "timeout": "1s"}))  # fmt: skip
    first, catch_all, root_rest = routes
    assert first.name == "api-v2" and first.delegate is None
    assert first.match[0].uri.prefix == "/api/v2" and first.match[0].headers["x-a"].exact == "1"
    assert first.timeout == 3.0  # inherited from the root route
    assert catch_all.match[0].uri.prefix == "/api" and catch_all.timeout == 1.0  # its own timeout wins
    assert root_rest.delegate is None and not root_rest.match


def test_the_root_routes_cors_policy_is_inherited_as_istiod_merges_it() -> None:
    cors = {"allowOrigins": [{"exact": "https://a.example"}]}
    routes = merged_routes(root({"delegate": {"name": "d", "namespace": "team"}, "corsPolicy": cors}),
                           delegate("d", {"match": [{"uri": {"prefix": "/own"}}], "route": V1,
                                          "corsPolicy": {"allowOrigin": ["https://b.example"]}},
                                    {"route": V1}))  # fmt: skip
    own, inherited = routes
    assert own.cors_policy.allow_origin == ["https://b.example"] and not own.cors_policy.allow_origins
    assert inherited.cors_policy.allow_origins[0].exact == "https://a.example"


def test_destinations_are_names_in_the_delegates_namespace() -> None:
    routes = merged_routes(root({"delegate": {"name": "d", "namespace": "team"}}), delegate("d", {"route": V1}))
    assert routes[0].route[0].destination.host == "reviews.team.svc.cluster.local"


@pytest.mark.parametrize(("root_uri", "leaf_uri", "fits"), [
    ({"prefix": "/api"}, {"prefix": "/api/v1"}, True),
    ({"prefix": "/api"}, {"exact": "/api/x"}, True),
    ({"prefix": "/api/v1"}, {"prefix": "/api"}, False),  # wider than the root
    ({"prefix": "/api"}, {"prefix": "/web"}, False),
    ({"exact": "/a"}, {"exact": "/a"}, True),
    ({"exact": "/a"}, {"exact": "/b"}, False),
    ({"exact": "/a"}, {"prefix": "/a"}, False),
    ({"regex": "/a.*"}, {"prefix": "/a"}, False),
    ({"prefix": "/a"}, {"regex": "/a.*"}, False),
])
def test_a_delegate_match_must_fit_inside_the_roots(root_uri: dict[str, str], leaf_uri: dict[str, str],
                                                     fits: bool) -> None:
    routes = merged_routes(root({"match": [{"uri": root_uri}], "delegate": {"name": "d", "namespace": "team"}}),
                           delegate("d", {"match": [{"uri": leaf_uri}], "route": V1}))
    assert len(routes) == (1 if fits else 0)


def test_a_missing_or_unexported_delegate_drops_only_that_route() -> None:
    hidden = delegate("hidden", {"route": V1}, exportTo=["."])
    routes = merged_routes(root({"delegate": {"name": "missing"}}, {"delegate": {"name": "hidden", "namespace": "team"}},
                                {"route": V1}), hidden)  # fmt: skip
    assert len(routes) == 1 and routes[0].delegate is None
    same_namespace = merged_routes(root({"delegate": {"name": "hidden"}}, namespace="team"), hidden)
    assert len(same_namespace) == 1  # exported to its own namespace, where this root lives


def test_delegates_are_not_virtual_services_of_their_own_and_others_stay_the_same_objects() -> None:
    found = resources(root({"route": V1}), delegate("d", {"route": V1}))
    out = merge_delegates(found)
    assert out == [found[0]] and out[0] is found[0]


@pytest.mark.parametrize(("spec", "message"), [
    ({"gateways": ["gw"], "http": [{"route": V1}]}, "must have no gateways"),
    ({"http": [{"delegate": {"name": "x"}}]}, "cannot delegate again"),
    ({"tcp": [{"route": [{"destination": {"host": "a"}}]}]}, "must have no tcp"),
])
def test_istios_rules_for_delegates(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resources(doc("VirtualService", "d", spec))


def test_a_root_route_that_delegates_cannot_route_itself() -> None:
    with pytest.raises(ConfigError, match="must not specify route"):
        resources(root({"delegate": {"name": "d"}, "route": V1}))

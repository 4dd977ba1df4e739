"""The RBAC matcher engine (sans-IO): xds matcher trees with RBAC actions, decided as Envoy 1.40 decides them.

tests/proxy/test_proxy_rbac_matcher.py runs the same shapes through pylon and Envoy.
"""

from __future__ import annotations

from typing import Any

from pylon.extensions.filters.common.rbac import Decision, Facts, Request
from pylon.extensions.filters.common.rbac_matcher import MatcherEngine, decode
from pylon.proxy.connection_info import ConnectionInfo

HEADER = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."


def action(name: str, verdict: str = "ALLOW") -> dict[str, Any]:
    return {"action": {"name": "a", "typed_config": {"@type": "type.googleapis.com/envoy.config.rbac.v3.Action",
                                                     "name": name, "action": verdict}}}


def on(kind: str, value: str, **typed: Any) -> dict[str, Any]:
    url = HEADER if kind == "header" else NETWORK + kind
    return {"single_predicate": {"input": {"name": "i", "typed_config": {"@type": url, **typed}},
                                 "value_match": {"exact": value}}}


def engine(matchers: list[tuple[dict[str, Any], dict[str, Any]]], otherwise: dict[str, Any] | None = None
           ) -> MatcherEngine:
    config: dict[str, Any] = {"matcher_list": {"matchers": [{"predicate": p, "on_match": o} for p, o in matchers]}}
    if otherwise is not None:
        config["on_no_match"] = otherwise
    return MatcherEngine(decode(config))


def facts(headers: list[tuple[bytes, bytes]] = (), client: str | None = None, sni: str = "") -> Facts:
    info = ConnectionInfo(1, ("10.0.0.1", 8080), ("10.9.9.9", 5000))
    info.inspected_server_name = sni
    return Facts(info, Request(list(headers), b"GET", b"host", b"/p?q", b"http"), client)


def test_first_matching_field_decides_and_no_action_denies() -> None:
    e = engine([(on("header", "1", header_name="x-a"), action("allow-a")),
                (on("header", "1", header_name="x-b"), action("deny-b", "DENY"))])
    assert e.evaluate(facts([(b"x-a", b"1"), (b"x-b", b"1")])) == Decision(True, "allow-a")
    assert e.evaluate(facts([(b"x-b", b"1")])) == Decision(False, "deny-b")
    assert e.evaluate(facts()) == Decision(False, None)  # no on_no_match: Envoy's RBAC denies


def test_log_allows_and_on_no_match_applies() -> None:
    e = engine([(on("header", "1", header_name="x-a"), action("log", "LOG"))], action("rest", "DENY"))
    assert e.evaluate(facts([(b"x-a", b"1")])) == Decision(True, "log")
    assert e.evaluate(facts()) == Decision(False, "rest")


def test_a_nested_matcher_without_a_match_moves_on() -> None:
    nested = {"matcher": {"matcher_list": {"matchers": [
        {"predicate": on("header", "root", header_name="x-user"), "on_match": action("root")}]}}}
    e = engine([(on("header", "/p?q", header_name=":path"), nested),
                (on("header", "/p?q", header_name=":path"), action("next", "DENY"))])
    assert e.evaluate(facts([(b"x-user", b"root")])) == Decision(True, "root")
    assert e.evaluate(facts([(b"x-user", b"guest")])) == Decision(False, "next")


def test_header_values_are_joined_and_absent_matches_nothing() -> None:
    e = engine([({"not_matcher": on("header", "a,b", header_name="X-Tag")}, action("not-ab"))], action("ab", "DENY"))
    assert e.evaluate(facts([(b"x-tag", b"a"), (b"x-tag", b"b")])) == Decision(False, "ab")
    assert e.evaluate(facts([(b"x-tag", b"a")])) == Decision(True, "not-ab")
    assert e.evaluate(facts()) == Decision(True, "not-ab")  # absent: the single predicate is false, `not` true


def test_connection_inputs() -> None:
    both = {"and_matcher": {"predicate": [on("DestinationIPInput", "10.0.0.1"), on("DestinationPortInput", "8080"),
                                          on("DirectSourceIPInput", "10.9.9.9"), on("SourceIPInput", "192.0.2.7")]}}
    e = engine([(both, action("all")), (on("ServerNameInput", "a.example"), action("sni"))])
    assert e.evaluate(facts(client="192.0.2.7")) == Decision(True, "all")
    assert e.evaluate(facts()) == Decision(False, None)  # SourceIPInput is the peer without a trusted client
    assert e.evaluate(facts(sni="a.example")) == Decision(True, "sni")


def test_a_tree_decides_too() -> None:
    """Envoy's RBAC takes any matcher: an exact map on a header, its miss the tree's on_no_match."""
    tree = {"matcher_tree": {"input": {"name": "i", "typed_config": {"@type": HEADER, "header_name": "x-role"}},
                             "exact_match_map": {"map": {"admin": action("admin")}}},
            "on_no_match": action("others", "DENY")}
    e = MatcherEngine(decode(tree))
    assert e.evaluate(facts([(b"x-role", b"admin")])) == Decision(True, "admin")
    assert e.evaluate(facts([(b"x-role", b"user")])) == Decision(False, "others")

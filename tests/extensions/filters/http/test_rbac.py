"""The HTTP RBAC filter (sans-IO): local replies, stats, shadow rules, per-route configs, what requests look like.

Every expectation was first observed on Envoy 1.40; tests/proxy/test_proxy_rbac.py runs the scenarios through
both proxies.
"""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.envoy import Filter, HttpFilter, convert
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.http.rbac import RBAC, RBACPerRoute, RbacFilter
from pylon.pilot.gen.authz import http_rbac_filters, network_rbac_filters, policies_for
from pylon.proxy.connection_info import ConnectionInfo
from pylon.proxy.hcm import trusted_client
from pylon.stats.store import StatsStore
from tests.pilot.builders import doc, sidecar_proxy, snapshot
from tests.proxy.conftest import http_listener, route, static_cluster


TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ANY = [{"any": True}]


class FakeHcm:
    """The connection manager settings the filter reads (its client address rule is the real one)."""

    def __init__(self, use_remote_address: bool = False, xff_num_trusted_hops: int = 0) -> None:
        self.use_remote_address = use_remote_address
        self.xff_num_trusted_hops = xff_num_trusted_hops

    def trusted_client(self, stream: Any) -> Any:
        return trusted_client(self.use_remote_address, self.xff_num_trusted_hops, stream)


class FakeConn:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.scheme = b"http"
        self.info = ConnectionInfo(1, ("10.0.0.1", 8080), peer)

    def connection_info(self) -> ConnectionInfo:
        return self.info


class FakeStream:
    """What the filter reads of a stream, and how it answers."""

    def __init__(self, path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None, *,
                 route_config: Any = None, peer: tuple[str, int] = ("10.1.2.3", 5000), hcm: FakeHcm | None = None,
                 route_name: str = "r") -> None:
        self.route = type("Route", (), {"filter_config": lambda _self, name: route_config, "name": route_name})()
        self.headers = headers or []
        self.method, self.authority, self.path = b"GET", b"example.com", path
        self.xff = b",".join(v for n, v in self.headers if n == b"x-forwarded-for") or None
        self.conn = FakeConn(peer)
        self.hcm = hcm or FakeHcm()
        self.dynamic_metadata: dict[str, dict[str, Any]] | None = None  # what filters before set (none here)
        self.answered: Any = None

    def local(self, reply: Any) -> None:
        self.answered = reply


def rules(action: str, **policies: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, "policies": policies}


def path_policy(prefix: str) -> dict[str, Any]:
    return {"permissions": [{"url_path": {"path": {"prefix": prefix}}}], "principals": ANY}


def make(config: dict[str, Any], name: str = "envoy.filters.http.rbac") -> tuple[RbacFilter, StatsStore]:
    stats = StatsStore()
    return RbacFilter(name, convert(config, RBAC), "main", stats, None), stats


def rbac_stats(stats: StatsStore) -> dict[str, int]:
    return {name: counter.value for name, counter in stats.counters.items() if ".rbac." in name}


def test_a_denied_request_gets_envoys_403() -> None:
    rbac, stats = make({"rules": rules("DENY", admin=path_policy("/admin"))})
    stream = FakeStream(b"/admin/users")
    assert rbac.decode_headers(stream) is False
    reply = stream.answered
    assert (reply.status, reply.body, reply.flag, reply.details) == (
        403, b"RBAC: access denied", "-", "rbac_access_denied_matched_policy[admin]")
    assert rbac.decode_headers(FakeStream(b"/public")) is True
    assert rbac_stats(stats) == {"http.main.rbac.allowed": 1, "http.main.rbac.denied": 1,
                                 "http.main.rbac.shadow_allowed": 0, "http.main.rbac.shadow_denied": 0}


def test_allow_without_a_matching_policy_denies_with_none_and_whitespace_in_names_becomes_underscores() -> None:
    rbac, _ = make({"rules": rules("ALLOW", public=path_policy("/public"))})
    stream = FakeStream(b"/private")
    assert rbac.decode_headers(stream) is False
    assert stream.answered.details == "rbac_access_denied_matched_policy[none]"
    spaced, _ = make({"rules": rules("DENY", **{"a b\tc": path_policy("/")})})
    stream = FakeStream(b"/")
    spaced.decode_headers(stream)
    assert stream.answered.details == "rbac_access_denied_matched_policy[a_b_c]"


def test_log_never_denies_and_counts_allowed() -> None:
    rbac, stats = make({"rules": rules("LOG", audit=path_policy("/")), "track_per_rule_stats": True})
    assert rbac.decode_headers(FakeStream(b"/x")) is True
    assert rbac_stats(stats)["http.main.rbac.allowed"] == 1
    assert rbac_stats(stats)["http.main.rbac.policy.audit.allowed"] == 1


def test_stat_prefixes_per_rule_stats_and_shadow_rules_are_counted_only() -> None:
    rbac, stats = make({"rules": rules("ALLOW", all={"permissions": ANY, "principals": ANY}, admin=path_policy("/admin")),
                        "rules_stat_prefix": "r_", "shadow_rules": rules("DENY", block=path_policy("/admin")),
                        "shadow_rules_stat_prefix": "s.", "track_per_rule_stats": True})
    for path in (b"/admin", b"/x", b"/y"):
        assert rbac.decode_headers(FakeStream(path)) is True  # the shadow DENY denies nothing
    assert rbac_stats(stats) == {
        "http.main.rbac.r_.allowed": 3, "http.main.rbac.r_.denied": 0,
        "http.main.rbac.s.shadow_allowed": 2, "http.main.rbac.s.shadow_denied": 1,
        "http.main.rbac.r_.policy.admin.allowed": 1, "http.main.rbac.r_.policy.all.allowed": 2,
        "http.main.rbac.s.policy.block.shadow_denied": 1,
    }


def test_without_rules_the_filter_does_nothing_and_counts_nothing() -> None:
    rbac, stats = make({})
    assert rbac.decode_headers(FakeStream()) is True
    assert set(rbac_stats(stats).values()) == {0}
    shadow_only, stats = make({"shadow_rules": rules("ALLOW")})
    assert shadow_only.decode_headers(FakeStream()) is True
    assert rbac_stats(stats)["http.main.rbac.shadow_denied"] == 1 and rbac_stats(stats)["http.main.rbac.denied"] == 0


def per_route(config: dict[str, Any] | None) -> RBACPerRoute:
    return convert({} if config is None else {"rbac": config}, RBACPerRoute)


def test_a_route_config_replaces_the_rules_and_keeps_the_filters_stat_names() -> None:
    rbac, stats = make({"rules": rules("ALLOW"), "rules_stat_prefix": "r", "shadow_rules": rules("ALLOW")})
    assert rbac.decode_headers(FakeStream(route_config=per_route(None))) is True  # no rbac: off for the route
    assert rbac.decode_headers(FakeStream(route_config=per_route({}))) is True  # empty rbac: off as well
    assert set(rbac_stats(stats).values()) == {0}  # nothing evaluated, not even the shadow rules
    config = per_route({"rules": rules("DENY", all={"permissions": ANY, "principals": ANY}), "rules_stat_prefix": "ignored",
                        "track_per_rule_stats": True})  # fmt: skip
    stream = FakeStream(route_config=config)
    assert rbac.decode_headers(stream) is False and stream.answered.details == "rbac_access_denied_matched_policy[all]"
    assert rbac.decode_headers(FakeStream(route_config=config)) is False  # compiled once, used again
    assert rbac_stats(stats) == {"http.main.rbac.r.allowed": 0, "http.main.rbac.r.denied": 2,
                                 "http.main.rbac.r.policy.all.denied": 2,
                                 "http.main.rbac.shadow_allowed": 0, "http.main.rbac.shadow_denied": 0}
    assert rbac.decode_headers(FakeStream(route_config=None)) is False  # other routes: the filter's rules


def test_a_route_config_of_another_type_fails_closed() -> None:
    rbac, _ = make({})
    stream = FakeStream(route_config=convert({}, RBAC))
    assert rbac.decode_headers(stream) is False and stream.answered.status == 403


@pytest.mark.parametrize(("hcm", "xff", "client"), [
    (FakeHcm(use_remote_address=True), b"203.0.113.7", "10.1.2.3"),  # the edge trusts only its peer
    (FakeHcm(), b"203.0.113.7", "203.0.113.7"),  # behind a proxy: the last x-forwarded-for entry
    (FakeHcm(), b"198.51.100.1, 203.0.113.7", "203.0.113.7"),
    (FakeHcm(xff_num_trusted_hops=1), b"198.51.100.1, 203.0.113.7", "198.51.100.1"),
    (FakeHcm(xff_num_trusted_hops=1), b"203.0.113.7", "10.1.2.3"),  # not enough entries: the peer
    (FakeHcm(use_remote_address=True, xff_num_trusted_hops=1), b"198.51.100.1, 203.0.113.7", "203.0.113.7"),
    (FakeHcm(), b"203.0.113.7:8080", "10.1.2.3"),  # not an IP: the peer
    (FakeHcm(), None, "10.1.2.3"),
])  # fmt: skip
def test_remote_ip_is_the_client_the_connection_manager_trusts(hcm: FakeHcm, xff: bytes | None, client: str) -> None:
    principal = {"remote_ip": {"address_prefix": client, "prefix_len": 32}}
    rbac, _ = make({"rules": rules("ALLOW", p={"permissions": ANY, "principals": [principal]})})
    headers = [(b"x-forwarded-for", xff)] if xff is not None else []
    assert rbac.decode_headers(FakeStream(headers=headers, hcm=hcm)) is True
    direct = {"direct_remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}}
    rbac, _ = make({"rules": rules("ALLOW", p={"permissions": ANY, "principals": [direct]})})
    assert rbac.decode_headers(FakeStream(headers=headers, hcm=hcm)) is True  # always the socket peer


@pytest.mark.parametrize(("headers", "name", "present"), [
    ([(b"connection", b"keep-alive")], "connection", False),
    ([(b"keep-alive", b"timeout=5")], "keep-alive", False),
    ([(b"proxy-connection", b"keep-alive")], "proxy-connection", False),
    ([(b"transfer-encoding", b"chunked")], "transfer-encoding", False),
    ([(b"connection", b"keep-alive, X-Foo"), (b"x-foo", b"1")], "x-foo", False),  # nominated: gone
    ([(b"connection", b"keep-alive"), (b"x-foo", b"1")], "x-foo", True),
    ([(b"te", b"trailers")], "te", True),
    ([(b"content-length", b"2")], "content-length", True),
])  # fmt: skip
def test_headers_are_seen_as_envoys_filters_see_them(headers: list[tuple[bytes, bytes]], name: str, present: bool) -> None:
    rbac, _ = make({"rules": rules("ALLOW", p={"permissions": [{"header": {"name": name, "present_match": True}}],
                                               "principals": ANY})})
    assert rbac.decode_headers(FakeStream(headers=headers)) is present


def parse_with(config: dict[str, Any], per_route_config: dict[str, Any] | None = None) -> None:
    entry = route("/", "a")
    if per_route_config is not None:
        entry["typed_per_filter_config"] = {"envoy.filters.http.rbac": per_route_config}
    listener = http_listener("main", 10000, [entry])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.rbac", "typed_config": {"@type": TYPE_URL, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "rbac.yaml")


ALLOW_ACTION = {"name": "a", "typed_config": {"@type": "type.googleapis.com/envoy.config.rbac.v3.Action"}}


def header_input(name: str) -> dict[str, Any]:
    url = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
    return {"name": "h", "typed_config": {"@type": url, "header_name": name}}


def matcher_on(matcher_input: dict[str, Any], **single: Any) -> dict[str, Any]:
    """A matcher with one field matcher on `matcher_input` (an exact "x" unless `single` says otherwise)."""
    predicate = {k: v for k, v in {"input": matcher_input, "value_match": {"exact": "x"}, **single}.items()
                 if v is not None}
    return {"matcher_list": {"matchers": [{"predicate": {"single_predicate": predicate},
                                           "on_match": {"action": ALLOW_ACTION}}]}}


HTTP_FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"


@pytest.mark.parametrize(("config", "path", "message"), [
    ({"matcher": {"matcher_tree": {}}}, "matcher.matcher_tree.input", "missing required field"),
    ({"shadow_matcher": {"on_no_match": {"action": ALLOW_ACTION, "keep_matching": True}}},
     "shadow_matcher.on_no_match.keep_matching", "keep_matching is not supported in this context"),
    ({"matcher": matcher_on(header_input("X-Forwarded-For"))},
     "matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config.header_name",
     "x-forwarded-for: Envoy's connection manager sets or strips"),
    ({"matcher": matcher_on({"name": "i", "typed_config": {"@type": "type.googleapis.com/x.Unknown"}})},
     "matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config.@type",
     "unknown RBAC matching input type type.googleapis.com/x.Unknown"),
    ({"matcher": matcher_on(header_input("x-a"), value_match={"safe_regex": {"regex": "a"}})},
     "matcher.matcher_list.matchers[0].predicate.single_predicate.value_match.safe_regex.google_re2",
     "missing required field"),
    ({"matcher": matcher_on(header_input("x-a"), value_match=None, custom_match={})},
     "matcher.matcher_list.matchers[0].predicate.single_predicate.custom_match.typed_config",
     "missing required field"),
    ({"matcher": {"on_no_match": {"action": {"name": "a", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "action": "AUDIT"}}}}},
     "matcher.on_no_match.action.typed_config.action", "Invalid enum value 'AUDIT'"),
    ({"rules": rules("ALLOW", p={"permissions": [{"header": {"name": "X-Forwarded-For", "present_match": True}}],
                                 "principals": ANY})},
     "rules.policies[p].permissions[0].header.name", "x-forwarded-for: Envoy's connection manager sets or strips"),
    ({"shadow_rules": rules("ALLOW", p={"permissions": ANY, "principals": [{"not_id": {"or_ids": {"ids": [
        {"any": True}, {"header": {"name": "x-envoy-original-path", "present_match": True}}]}}}]})},
     "shadow_rules.policies[p].principals[0].not_id.or_ids.ids[1].header.name", "x-envoy-original-path"),
    ({"rules": rules("ALLOW", p={"permissions": [{"and_rules": {"rules": [
        {"header": {"name": "x-request-id", "present_match": True}}]}}], "principals": ANY})},
     "rules.policies[p].permissions[0].and_rules.rules[0].header.name", "x-request-id"),
    ({"rules": {"action": "ALLOW", "policies": {"p": {"permissions": [{"any": False}], "principals": ANY}}}},
     "rules.policies[...].permissions[0].any", "must be true"),
])  # fmt: skip
def test_config_errors_name_the_field(config: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_with(config)
    assert caught.value.path == f"{HTTP_FILTER}.{path}" and message in caught.value.message, caught.value


def test_per_route_configs_parse_where_routes_are() -> None:
    parse_with({}, {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                    "rbac": {"rules": rules("DENY")}})
    with pytest.raises(ConfigError) as caught:
        parse_with({}, {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                        "rbac": {"matcher": {"matcher_tree": {}}}})
    assert caught.value.path.endswith("typed_per_filter_config[envoy.filters.http.rbac].rbac.matcher.matcher_tree.input")


def test_every_shape_pilot_generates_for_authorization_policies_loads() -> None:
    """Each source, operation and condition field pylon's pilot translates, in each action, both filters."""

    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return doc("AuthorizationPolicy", name, spec, namespace="default", api_version="security.istio.io/v1")

    source = {"principals": ["cluster.local/ns/default/sa/a", "*"], "notPrincipals": ["x*"], "namespaces": ["default", "x*"],
              "notNamespaces": ["*y"], "ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.1.0.0/16"],
              "remoteIpBlocks": ["1.2.3.4"], "notRemoteIpBlocks": ["1.2.3.5"], "requestPrincipals": ["iss/sub"],
              "notRequestPrincipals": ["*"]}
    operation = {"hosts": ["*.example.com"], "notHosts": ["a"], "methods": ["GET"], "notMethods": ["PUT"],
                 "paths": ["/a*", "*.png", "/x"], "notPaths": ["/a/admin"], "ports": ["8080"], "notPorts": ["9090"]}
    when = [{"key": key, "values": values} for key, values in (
        ("request.auth.principal", ["*"]), ("request.auth.audiences", ["x"]), ("request.auth.presenter", ["x*"]),
        ("destination.ip", ["10.0.0.1"]), ("destination.port", ["80"]), ("connection.sni", ["a*"]),
        ("request.headers[x-a]", ["*"]), ("source.namespace", ["*"]), ("source.principal", ["*"]),
        ("remote.ip", ["1.2.3.0/24"]), ("source.ip", ["1.2.3.0/24"]))] + [{"key": "request.headers[x-b]", "notValues": ["b"]}]
    rule = {"from": [{"source": source}], "to": [{"operation": operation}], "when": when}
    docs = [policy(name, {"action": action, "rules": [rule, {}]})
            for name, action in (("allow", "ALLOW"), ("deny", "DENY"), ("audit", "AUDIT"))]
    selected = policies_for(sidecar_proxy(), snapshot(*docs))
    http_filters = [convert(f, HttpFilter) for f in http_rbac_filters(selected)]
    network_filters = [convert(f, Filter) for f in network_rbac_filters(selected)]
    assert [f.typed_config.rules.action for f in http_filters] == ["LOG", "DENY", "ALLOW"]
    assert [f.typed_config.rules.action for f in network_filters] == ["LOG", "DENY", "ALLOW"]

"""AuthorizationPolicy translation: Istio's scoping, action order, rule shapes and names, TCP handling, errors.

What real Envoy then does with these filters (allowed/denied requests) is the
table test in tests/pilot/test_pilot_envoy.py; principals and namespaces need a
peer certificate, so they are checked here on the generated config.
"""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.gen.authz import http_rbac_filters, network_rbac_filters, policies_for
from pylon.pilot.gen.gateway import GatewayGenerator
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import LISTENER
from pylon.pilot.xds.encode import to_message
from tests.pilot.builders import doc, gateway, gateway_proxy, resources, sidecar_proxy, snapshot

SECURITY = "security.istio.io/v1"


def policy(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return doc("AuthorizationPolicy", name, spec, namespace=namespace, api_version=SECURITY)


def rules_of(*docs: dict[str, Any], tcp: bool = False, **labels: str) -> list[dict[str, Any]]:
    proxy = sidecar_proxy(labels or None)
    selected = policies_for(proxy, snapshot(*docs))
    filters = network_rbac_filters(selected) if tcp else http_rbac_filters(selected)
    return [f["typed_config"]["rules"] for f in filters]


def test_principals_namespaces_and_policy_names_as_istio_writes_them() -> None:
    [rules] = rules_of(policy("p", {"rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/shop/sa/frontend", "cluster.local/ns/ops/*"],
        "notNamespaces": ["untrusted"]}}]}]}))  # fmt: skip
    assert rules["action"] == "ALLOW" and list(rules["policies"]) == ["ns[default]-policy[p]-rule[0]"]
    rule = rules["policies"]["ns[default]-policy[p]-rule[0]"]
    assert rule["permissions"] == [{"any": True}]
    assert rule["principals"] == [{"and_ids": {"ids": [
        {"or_ids": {"ids": [
            {"authenticated": {"principal_name": {"exact": "spiffe://cluster.local/ns/shop/sa/frontend"}}},
            {"authenticated": {"principal_name": {"prefix": "spiffe://cluster.local/ns/ops/"}}}]}},
        {"not_id": {"authenticated": {"principal_name": {"safe_regex": {"regex": ".*/ns/untrusted/.*"}}}}},
    ]}}]  # fmt: skip


def test_operations_and_conditions_and_or_structure() -> None:
    [rules] = rules_of(policy("p", {"rules": [{
        "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*", "*.png", "/exact"], "ports": ["8080"]}},
               {"operation": {"notHosts": ["evil.example.com"]}}],
        "when": [{"key": "request.headers[x-team]", "values": ["*"]}, {"key": "destination.port", "notValues": ["9090"]},
                 {"key": "source.ip", "values": ["10.1.2.3/16"]}]}]}))  # fmt: skip
    rule = rules["policies"]["ns[default]-policy[p]-rule[0]"]
    not_9090 = {"not_rule": {"destination_port": 9090}}
    assert rule["permissions"] == [
        {"and_rules": {"rules": [
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
            {"or_rules": {"rules": [{"url_path": {"path": {"prefix": "/api/"}}}, {"url_path": {"path": {"suffix": ".png"}}},
                                    {"url_path": {"path": {"exact": "/exact"}}}]}},
            {"destination_port": 8080}, not_9090]}},
        {"and_rules": {"rules": [
            {"not_rule": {"header": {"name": ":authority", "string_match": {"exact": "evil.example.com", "ignore_case": True}}}},
            not_9090]}},
    ]  # fmt: skip
    assert rule["principals"] == [{"and_ids": {"ids": [
        {"header": {"name": "x-team", "present_match": True}},
        {"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}]}}]  # fmt: skip


def test_action_order_empty_rules_and_default_deny() -> None:
    allow_nothing = policy("allow-nothing", {})
    deny = policy("deny", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
    audit = policy("audit", {"action": "AUDIT", "rules": [{}]})
    assert [(r["action"], list(r["policies"])) for r in rules_of(allow_nothing, deny, audit)] == [
        ("LOG", ["ns[default]-policy[audit]-rule[0]"]),
        ("DENY", ["ns[default]-policy[deny]-rule[0]"]),
        ("ALLOW", []),  # an ALLOW policy without rules: the filter exists and allows nothing
    ]
    [deny_only] = rules_of(deny)
    assert deny_only["action"] == "DENY"  # no ALLOW policy: no default deny
    [match_all] = rules_of(policy("allow-all", {"rules": [{}]}))
    assert match_all["policies"]["ns[default]-policy[allow-all]-rule[0]"] == {"permissions": [{"any": True}],
                                                                            "principals": [{"any": True}]}  # fmt: skip


def test_selector_namespace_and_root_namespace_scoping() -> None:
    docs = [
        policy("mesh-wide", {"action": "DENY", "rules": [{}]}, namespace="istio-system"),
        policy("root-selected", {"selector": {"matchLabels": {"app": "client"}}}, namespace="istio-system"),
        policy("ns-wide", {}),
        policy("other-app", {"selector": {"matchLabels": {"app": "db"}}}),
        policy("other-namespace", {}, namespace="shop"),
    ]
    chosen = policies_for(sidecar_proxy({"app": "client"}), snapshot(*docs))
    assert [p.name for p in chosen] == ["mesh-wide", "root-selected", "ns-wide"]
    assert [p.name for p in policies_for(sidecar_proxy({"app": "web"}), snapshot(*docs))] == ["mesh-wide", "ns-wide"]


def test_tcp_chains_drop_http_only_rules_safely() -> None:
    http_only = {"to": [{"operation": {"methods": ["GET"], "ports": ["5432"]}}]}
    [allow] = rules_of(policy("a", {"rules": [http_only, {"to": [{"operation": {"ports": ["5432"]}}]}]}), tcp=True)
    assert list(allow["policies"]) == ["ns[default]-policy[a]-rule[1]"]  # the GET rule allows nothing on TCP
    [deny] = rules_of(policy("d", {"action": "DENY", "rules": [http_only]}), tcp=True)
    assert deny["policies"]["ns[default]-policy[d]-rule[0]"]["permissions"] == [{"destination_port": 5432}]


def test_filters_sit_first_in_gateway_and_sidecar_inbound_chains_and_are_valid_envoy() -> None:
    own = doc("ServiceEntry", "client", {
        "hosts": ["client.default.svc.cluster.local"], "resolution": "STATIC", "workloadSelector": {"labels": {"app": "client"}},
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080},
                  {"number": 5432, "name": "db", "protocol": "TCP"}]})  # fmt: skip
    deny = policy("deny", {"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]},
                  namespace="istio-system")  # fmt: skip
    snap = snapshot(own, deny, gateway(8080))
    side = SidecarGenerator().generate(sidecar_proxy(), snap)
    chains = {c["name"]: [f["name"] for f in (c["filters"])] for c in side[LISTENER]["virtualInbound"]["filter_chains"]}
    assert chains["0.0.0.0_5432"] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    assert chains["virtualInbound-catchall-tcp"][0] == "envoy.filters.network.rbac"
    http_chain = next(c for c in side[LISTENER]["virtualInbound"]["filter_chains"] if c["name"] == "0.0.0.0_8080")
    http_filters = [f["name"] for f in http_chain["filters"][0]["typed_config"]["http_filters"]]
    assert http_filters == ["envoy.filters.http.rbac", "envoy.filters.http.fault", "envoy.filters.http.cors",
                            "envoy.filters.http.router"]
    assert side[LISTENER]["0.0.0.0_80"]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["name"] != (
        "envoy.filters.http.rbac")  # outbound traffic is not authorized by the client's own policies
    gw = GatewayGenerator().generate(gateway_proxy(), snap)
    hcm = gw[LISTENER]["0.0.0.0_8080"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["typed_config"]["rules"]["action"] == "DENY"
    for out in (side, gw):
        for name, listener in out[LISTENER].items():
            to_message(LISTENER, listener)


@pytest.mark.parametrize(("spec", "path", "message"), [
    ({"action": "CUSTOM", "provider": {"name": "ext"}}, "spec.action", "CUSTOM"),
    ({"rules": [{"when": [{"key": "request.bogus", "values": ["x"]}]}]}, "spec.rules[0].when[0].key", "unknown"),
    ({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]}, "spec.rules[0].from[0].source.ipBlocks[0]", "CIDR"),
    ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "spec.rules[0].to[0].operation.ports[0]", "port"),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/{*}"]}}]}]}, "spec.rules[0].to[0].operation.paths[0]", "template"),
    ({"targetRefs": [{"kind": "Gateway", "name": "gw"}]}, "spec.targetRefs", "not supported"),
])  # fmt: skip
def test_errors_name_the_field(spec: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resources(policy("bad", spec))
    assert caught.value.path == path and message in caught.value.message

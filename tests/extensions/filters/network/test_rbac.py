"""The network RBAC filter (sans-IO): on_connection's verdicts and stats, and the config it refuses.

Observed with Envoy 1.40 (tcp_proxy behind the filter): a denied connection is closed; stats are
`<stat_prefix>rbac.{allowed,denied}` and `<stat_prefix>rbac.<shadow_rules_stat_prefix>shadow_*`, with one "."
after each prefix; header rules are refused at load, url_path loads and never matches.
"""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.envoy import convert
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.network.rbac import RBAC, RbacNetworkFilter
from pylon.proxy.connection_info import ConnectionInfo
from pylon.stats.store import StatsStore
from tests.extensions.filters.common.test_rbac import SPIFFE, FakeSsl, client_der
from tests.proxy.conftest import static_cluster, tcp_listener


TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
ANY = [{"any": True}]


def make(config: dict[str, Any]) -> tuple[RbacNetworkFilter, StatsStore]:
    stats = StatsStore()
    return RbacNetworkFilter("envoy.filters.network.rbac", convert(config, RBAC), stats), stats


def connection(peer: str = "10.1.2.3", port: int = 5432, der: bytes | None = None, tls: bool = False,
               sni: str = "") -> ConnectionInfo:
    return ConnectionInfo(7, ("10.0.0.1", port), (peer, 40000), FakeSsl(der) if der or tls else None, sni)


def counts(stats: StatsStore) -> dict[str, int]:
    return {name: counter.value for name, counter in stats.counters.items()}


def test_allow_by_peer_certificate_and_port_as_istio_generates_it() -> None:
    rules = {"action": "ALLOW", "policies": {"ns[default]-policy[db]-rule[0]": {
        "permissions": [{"and_rules": {"rules": [{"destination_port": 5432}]}}],
        "principals": [{"and_ids": {"ids": [{"authenticated": {"principal_name": {"exact": SPIFFE}}}]}}]}}}
    rbac, stats = make({"stat_prefix": "tcp.", "rules": rules})
    assert rbac.on_connection(connection(der=client_der())) is True
    assert rbac.on_connection(connection(der=client_der(), port=5433)) is False
    assert rbac.on_connection(connection()) is False  # plaintext: no principal
    assert counts(stats) == {"tcp.rbac.allowed": 1, "tcp.rbac.denied": 2,
                             "tcp.rbac.shadow_allowed": 0, "tcp.rbac.shadow_denied": 0}


@pytest.mark.parametrize(("prefix", "names"), [
    ("tcp.", ("tcp.rbac.allowed", "tcp.rbac.sh.shadow_denied")),
    ("tcp", ("tcp.rbac.allowed", "tcp.rbac.sh.shadow_denied")),
    ("x..", ("x..rbac.allowed", "x..rbac.sh.shadow_denied")),
])  # fmt: skip
def test_stat_names(prefix: str, names: tuple[str, str]) -> None:
    deny_all = {"action": "DENY", "policies": {"all": {"permissions": ANY, "principals": ANY}}}
    rbac, stats = make({"stat_prefix": prefix, "rules": {"action": "LOG"}, "shadow_rules": deny_all,
                        "shadow_rules_stat_prefix": "sh"})
    assert rbac.on_connection(connection()) is True  # LOG allows; the shadow DENY only counts
    assert {name: counts(stats)[name] for name in names} == {names[0]: 1, names[1]: 1}


def test_without_rules_nothing_is_enforced_or_counted_and_empty_rules_refuse_everything() -> None:
    rbac, stats = make({"stat_prefix": "a"})
    assert rbac.on_connection(connection()) is True
    assert set(counts(stats).values()) == {0}
    rbac, stats = make({"stat_prefix": "a", "rules": {}})
    assert rbac.on_connection(connection()) is False and counts(stats)["a.rbac.denied"] == 1


def test_deny_by_source_address_sni_and_not_url_path() -> None:
    rules = {"action": "DENY", "policies": {
        "outside": {"permissions": ANY, "principals": [{"not_id": {"direct_remote_ip": {"address_prefix": "10.0.0.0",
                                                                                         "prefix_len": 8}}}]},
        "sni": {"permissions": [{"requested_server_name": {"suffix": ".internal"}}], "principals": ANY}}}
    rbac, _ = make({"stat_prefix": "tcp.", "rules": rules})
    assert rbac.on_connection(connection()) is True
    assert rbac.on_connection(connection(peer="192.0.2.1")) is False
    assert rbac.on_connection(connection(tls=True, sni="db.internal")) is False
    path = {"action": "DENY", "policies": {"p": {"permissions": [{"not_rule": {"url_path": {"path": {"prefix": "/"}}}}],
                                                 "principals": ANY}}}
    rbac, _ = make({"stat_prefix": "tcp.", "rules": path})
    assert rbac.on_connection(connection()) is False  # no request: url_path never matches, its negation always


def test_remote_ip_is_the_peer() -> None:
    rules = {"action": "ALLOW", "policies": {"p": {"permissions": ANY, "principals": [
        {"remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 32}}]}}}
    rbac, _ = make({"stat_prefix": "tcp.", "rules": rules})
    assert rbac.on_connection(connection()) is True and rbac.on_connection(connection(peer="10.1.2.4")) is False


@pytest.mark.parametrize("enforcement", ["ONE_TIME_ON_FIRST_BYTE", "CONTINUOUS", "continuous"])
def test_both_enforcement_types_are_accepted(enforcement: str) -> None:
    rbac, _ = make({"stat_prefix": "tcp.", "enforcement_type": enforcement, "rules": {"action": "DENY"}})
    assert rbac.on_connection(connection()) is True


def parse_with(config: dict[str, Any]) -> None:
    listener = tcp_listener("main", 10000, "a")
    listener["filter_chains"][0]["filters"].insert(0, {"name": "envoy.filters.network.rbac",
                                                       "typed_config": {"@type": TYPE_URL, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "rbac.yaml")


FILTER = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


@pytest.mark.parametrize(("config", "path", "message"), [
    ({}, "stat_prefix", "missing required field"),
    ({"stat_prefix": ""}, "stat_prefix", "length"),
    ({"stat_prefix": "t", "matcher": {}}, "matcher", "not supported yet"),
    ({"stat_prefix": "t", "shadow_matcher": {}}, "shadow_matcher", "not supported yet"),
    ({"stat_prefix": "t", "delay_deny": "1s"}, "delay_deny", "not supported yet"),
    ({"stat_prefix": "t", "enforcement_type": "SOMETIMES"}, "enforcement_type", "Invalid enum value"),
    ({"stat_prefix": "t", "rules": {"policies": {"p": {"permissions": [{"not_rule": {"header": {"name": "x"}}}],
                                                       "principals": ANY}}}},
     "rules.policies[p].permissions[0].not_rule.header", "header rules are not supported by the RBAC network filter"),
    ({"stat_prefix": "t", "shadow_rules": {"policies": {"p": {"permissions": ANY, "principals": [{"header": {"name": "x"}}]}}}},
     "shadow_rules.policies[p].principals[0].header", "header rules"),
])  # fmt: skip
def test_config_errors_name_the_field(config: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_with(config)
    assert caught.value.path == f"{FILTER}.{path}" and message in caught.value.message, caught.value


def test_url_path_loads_as_in_envoy() -> None:
    parse_with({"stat_prefix": "t", "rules": {"policies": {"p": {"permissions": [{"url_path": {"path": {"prefix": "/"}}}],
                                                                 "principals": ANY}}}})

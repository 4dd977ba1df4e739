"""Integration: the HTTP RBAC filter's `matcher` (unified matcher API, Envoy's rbac example) through pylon and Envoy.

One listener whose RBAC filter has a matcher tree: a DENY on a missing or foreign referer (Envoy's example),
a nested matcher under /admin (an ALLOW for one user, else no action: the next field matcher decides), an
or/and of inputs (header values joined with ",", the destination port, the client IPs), and an on_no_match
ALLOW. For each request the status, the response details and the filter's stats must be what Envoy 1.40 gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster,
)
from tests.proxy.upstreams import Upstream

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ACTION_TYPE = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."


def action(name: str, verdict: str) -> dict[str, Any]:
    return {"action": {"name": "action", "typed_config": {"@type": ACTION_TYPE, "name": name, "action": verdict}}}


def header(name: str, **value_match: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": {"name": "h", "typed_config": {"@type": HEADER_INPUT, "header_name": name}},
                                 "value_match": value_match}}


def network(kind: str, **value_match: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": {"name": "net", "typed_config": {"@type": NETWORK + kind}},
                                 "value_match": value_match}}


def matcher(port: int) -> dict[str, Any]:
    return {
        "matcher_list": {"matchers": [
            {"predicate": {"and_matcher": {"predicate": [header(":path", prefix="/docs"), {"not_matcher": header(
                "referer", safe_regex={"google_re2": {}, "regex": "https?://(www.)?envoyproxy.io/docs/envoy.*"})}]}},
             "on_match": action("illegal-referer", "DENY")},
            {"predicate": header(":path", prefix="/admin"),
             "on_match": {"matcher": {"matcher_list": {"matchers": [
                 {"predicate": header("x-user", exact="root"), "on_match": action("admin-root", "ALLOW")}]}}}},
            {"predicate": header(":path", prefix="/admin"), "on_match": action("admin-others", "DENY")},
            {"predicate": header("x-tag", exact="a,b"), "on_match": action("joined tags", "DENY")},
            {"predicate": {"or_matcher": {"predicate": [
                {"and_matcher": {"predicate": [header(":path", prefix="/port"),
                                               network("DestinationPortInput", exact=str(port))]}},
                {"and_matcher": {"predicate": [header(":path", prefix="/ip"),
                                               network("SourceIPInput", exact="127.0.0.1"),
                                               network("DirectSourceIPInput", exact="127.0.0.1"),
                                               network("DestinationIPInput", prefix="127.")]}}]}},
             "on_match": action("local", "DENY")},
            {"predicate": header(":path", prefix="/sni"), "on_match": {"matcher": {"matcher_list": {"matchers": [
                {"predicate": network("ServerNameInput", safe_regex={"google_re2": {}, "regex": ".*"}),
                 "on_match": action("sni", "DENY")}]}}}},
            {"predicate": header(":path", prefix="/log"), "on_match": action("logged", "LOG")},
            {"predicate": header(":path", prefix="/nothing"), "on_match": {"matcher": {"matcher_list": {"matchers": [
                {"predicate": header("x-never", exact="1"), "on_match": action("never", "ALLOW")}]}}}},
        ]},
        "on_no_match": action("all-pass", "ALLOW"),
    }


class Setup:
    def __init__(self, proxy: RunningProxy, log: Path, port: int) -> None:
        self.proxy, self.log, self.port, self.count = proxy, log, port, 0

    def ask(self, path: str, **headers: str) -> tuple[int, str]:
        reply = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)
        self.count += 1
        return reply.status_code, read_json_lines(self.log, self.count)[-1]["details"]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"rbac-matcher-{request.param}")
    upstream, launcher = Upstream(), ProxyLauncher(directory)
    try:
        port, log = free_port(), directory / "access.log"
        listener = http_listener("main", port, [route("/", "up")], access_log=json_access_log(log))
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(0, {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": RBAC_TYPE, "matcher": matcher(port), "track_per_rule_stats": True,
            "shadow_matcher": {"on_no_match": action("shadow-deny", "DENY")}, "shadow_rules_stat_prefix": "s"}})
        proxy = launcher.start([listener], [static_cluster("up", [upstream.port])], implementation=request.param)
        yield Setup(proxy, log, port)
    finally:
        launcher.close()
        upstream.close()


CASES = [
    ("/docs/x", {"referer": "https://www.envoyproxy.io/docs/envoy/latest"}, 200, "via_upstream"),
    ("/docs/x", {"referer": "https://evil.example/"}, 403, "rbac_access_denied_matched_policy[illegal-referer]"),
    ("/docs/x", {}, 403, "rbac_access_denied_matched_policy[illegal-referer]"),
    ("/admin", {"x-user": "root"}, 200, "via_upstream"),
    ("/admin", {"x-user": "guest"}, 403, "rbac_access_denied_matched_policy[admin-others]"),
    ("/tags", {"x-tag": "a,b"}, 403, "rbac_access_denied_matched_policy[joined_tags]"),
    ("/port", {}, 403, "rbac_access_denied_matched_policy[local]"),
    ("/ip", {}, 403, "rbac_access_denied_matched_policy[local]"),
    ("/sni", {}, 200, "via_upstream"),  # plaintext: no server name, the nested matcher has no match
    ("/log", {}, 200, "via_upstream"),
    ("/nothing", {}, 200, "via_upstream"),  # nested no-match: on to the next matchers, then on_no_match
    ("/other", {}, 200, "via_upstream"),
]


@pytest.mark.parametrize(("path", "headers", "status", "details"), CASES)
def test_rbac_matcher_decides_as_envoy(setup: Setup, path: str, headers: dict[str, str], status: int,
                                       details: str) -> None:
    assert setup.ask(path, **headers) == (status, details)


def test_repeated_header_values_are_joined(setup: Setup) -> None:
    with httpx.Client() as client:
        request = client.build_request("GET", f"http://127.0.0.1:{setup.port}/tags",
                                       headers=[("x-tag", "a"), ("x-tag", "b")])
        assert client.send(request).status_code == 403
    setup.count += 1


def test_matcher_stats(setup: Setup) -> None:
    for path, headers, _, _ in CASES:
        setup.ask(path, **headers)
    stats = {k: v for k, v in setup.proxy.stats().items() if ".rbac." in k}
    assert stats["http.main.rbac.policy.admin-others.denied"] >= 1
    assert stats["http.main.rbac.policy.all-pass.allowed"] >= 1
    assert stats["http.main.rbac.policy.logged.allowed"] >= 1
    assert stats["http.main.rbac.s.shadow_denied"] == stats["http.main.rbac.allowed"] + stats["http.main.rbac.denied"]

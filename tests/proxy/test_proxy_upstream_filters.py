"""Integration: upstream HTTP filters (the router's `upstream_http_filters`, a cluster's own `http_filters`),
through pylon and Envoy 1.40 alike, with header_mutation, RBAC, Lua and buffer as the filters.

They run on the request as the router made it (so they can remove what the router added, and see the rewritten
Host) and on the upstream's response before the router relays it; a cluster's own chain replaces the router's.
Each attempt runs the chain again (on its own `x-envoy-attempt-count`), on the request as the last attempt's
filters left it (Envoy's filters edit the router's one request); a filter that answers ends the request with its
reply, unretried, through the connection manager's local_reply_config.

Which of the HTTP filters pylon has stock Envoy 1.40 accepts as upstream filters (`--mode validate`, in a
cluster's HttpProtocolOptions `http_filters` and in the router's `upstream_http_filters` alike;
`test_envoy_accepts_these_http_filters_upstream` checks it again): buffer, compressor, header_mutation, lua,
rbac (and ext_proc, which pylon does not have). It refuses cors, csrf, decompressor, dynamic_forward_proxy,
ext_authz, fault, grpc_http1_bridge, grpc_json_transcoder, grpc_stats, grpc_web, health_check, jwt_authn and
local_ratelimit there. pylon runs buffer, header_mutation, lua (headers only) and rbac upstream; compressor it
refuses there by name, with the reason (`test_pylon_runs_or_refuses_each_of_them_by_name`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylon.config.errors import ConfigError
from tests.config.builders import load
from tests.conftest import free_port
from tests.proxy.conftest import (ENVOY_BIN, ProxyLauncher, RunningProxy, http_listener, json_access_log,
                                  raw_exchange, read_json_lines, route, static_cluster, wait_until)
from tests.proxy.upstreams import Upstream

MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
CODEC = {"name": "envoy.filters.http.upstream_codec",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def mutation(name: str, request: list[dict[str, Any]], response: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": MUTATION, "mutations": {
        "request_mutations": request, "response_mutations": response}}}


def add(key: str, value: str) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[RunningProxy, Upstream]]:
    up = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"upstream-filters-{request.param}"))
    try:
        catch_all = route("/", "up")
        catch_all["typed_per_filter_config"] = {"upmut": {  # a per-route level for the upstream filter's name
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
            "mutations": {"request_mutations": [add("x-route", "yes")], "query_parameter_mutations": [
                {"append": {"record": {"key": "added", "value": "1"}}}]}}}
        listener = http_listener("main", free_port(), [route("/own", "own"), catch_all])
        router = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][-1]["typed_config"]
        router["upstream_http_filters"] = [
            mutation("upmut", [add("x-up", "router-%REQ(x-who)%"), {"remove": "x-secret"},
                               {"remove": "x-forwarded-proto"}],
                     [add("x-up-resp", "router"), {"remove": "x-served-by"}]),
            CODEC]
        own = static_cluster("own", [up.port])
        own["typed_extension_protocol_options"] = {OPTIONS: {
            "@type": f"type.googleapis.com/{OPTIONS}", "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [mutation("clustermut", [add("x-up", "cluster")], []), CODEC]}}
        yield launcher.start([listener], [static_cluster("up", [up.port]), own], implementation=request.param), up
    finally:
        launcher.close()
        up.close()


def test_the_routers_upstream_filters_edit_the_request_as_made_and_the_response_first(
        setup: tuple[RunningProxy, Upstream]) -> None:
    proxy, up = setup
    reply = httpx.get(proxy.url("main", "/a"), headers={"x-who": "me", "x-secret": "s"}, timeout=5)
    assert reply.status_code == 200
    assert reply.headers.get("x-up-resp") == "router" and "x-served-by" not in reply.headers
    seen = up.requests[-1]["headers"]
    assert seen.get("x-up") == "router-me" and "x-secret" not in seen
    assert "x-forwarded-proto" not in seen  # the router added it; the upstream filter removed it
    assert "x-request-id" in seen and seen.get("x-route") == "yes"
    assert up.requests[-1]["path"] == "/a?added=1"  # the per-route level's query edit


def test_a_clusters_own_chain_replaces_the_routers(setup: tuple[RunningProxy, Upstream]) -> None:
    proxy, up = setup
    reply = httpx.get(proxy.url("main", "/own"), headers={"x-secret": "s"}, timeout=5)
    assert reply.status_code == 200 and "x-up-resp" not in reply.headers and "x-served-by" in reply.headers
    seen = up.requests[-1]["headers"]
    assert seen.get("x-up") == "cluster" and seen.get("x-secret") == "s" and "x-forwarded-proto" in seen


# ---------------------------------------------------------------- which filters run upstream

FILTERS = "type.googleapis.com/envoy.extensions.filters.http."
#: A minimal config of each HTTP filter pylon has (ext_proc: Envoy's other upstream one), by short name.
MINIMAL = {
    "buffer": {"@type": FILTERS + "buffer.v3.Buffer", "max_request_bytes": 1024},
    "compressor": {"@type": FILTERS + "compressor.v3.Compressor", "compressor_library": {"name": "gzip", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"}}},
    "cors": {"@type": FILTERS + "cors.v3.Cors"},
    "csrf": {"@type": FILTERS + "csrf.v3.CsrfPolicy", "filter_enabled": {"default_value": {"numerator": 100}}},
    "decompressor": {"@type": FILTERS + "decompressor.v3.Decompressor", "decompressor_library": {
        "name": "gzip", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"}}},
    "dynamic_forward_proxy": {"@type": FILTERS + "dynamic_forward_proxy.v3.FilterConfig",
                              "dns_cache_config": {"name": "c"}},
    "ext_authz": {"@type": FILTERS + "ext_authz.v3.ExtAuthz", "http_service": {
        "server_uri": {"uri": "http://127.0.0.1:1", "cluster": "up", "timeout": "1s"}}},
    "ext_proc": {"@type": FILTERS + "ext_proc.v3.ExternalProcessor",
                 "grpc_service": {"envoy_grpc": {"cluster_name": "up"}}},
    "fault": {"@type": FILTERS + "fault.v3.HTTPFault", "abort": {"http_status": 503, "percentage": {"numerator": 100}}},
    "grpc_http1_bridge": {"@type": FILTERS + "grpc_http1_bridge.v3.Config"},
    "grpc_json_transcoder": {"@type": FILTERS + "grpc_json_transcoder.v3.GrpcJsonTranscoder",
                             "proto_descriptor": "/dev/null", "services": ["a.B"]},
    "grpc_stats": {"@type": FILTERS + "grpc_stats.v3.FilterConfig"},
    "grpc_web": {"@type": FILTERS + "grpc_web.v3.GrpcWeb"},
    "header_mutation": {"@type": MUTATION},
    "health_check": {"@type": FILTERS + "health_check.v3.HealthCheck", "pass_through_mode": False},
    "jwt_authn": {"@type": FILTERS + "jwt_authn.v3.JwtAuthentication"},
    "local_ratelimit": {"@type": FILTERS + "local_ratelimit.v3.LocalRateLimit", "stat_prefix": "x"},
    "lua": {"@type": FILTERS + "lua.v3.Lua",
            "default_source_code": {"inline_string": "function envoy_on_request(h) end"}},
    "rbac": {"@type": FILTERS + "rbac.v3.RBAC"},
}
ENVOY_UPSTREAM = {"buffer", "compressor", "ext_proc", "header_mutation", "lua", "rbac"}
PYLON_UPSTREAM = {"buffer", "header_mutation", "lua", "rbac"}
#: what pylon's refusal of each says (besides the field path)
REFUSED = {"compressor": "pylon does not yet (pylon's compressor transforms bodies ahead of the router",
           "ext_proc": "unknown upstream HTTP filter type"}


def one_upstream_filter(config: dict[str, Any], where: str) -> dict[str, Any]:
    """A bootstrap with the filter in the router's chain or in its cluster's."""
    upstream_filter = {"name": "f", "typed_config": config}
    listener = http_listener("main", 10000, [route("/", "up")])
    cluster = static_cluster("up", [1])
    if where == "router":
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][-1]["typed_config"][
            "upstream_http_filters"] = [upstream_filter, CODEC]
    else:
        cluster["typed_extension_protocol_options"] = {OPTIONS: {
            "@type": f"type.googleapis.com/{OPTIONS}", "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [upstream_filter, CODEC]}}
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def envoy_accepts(config: dict[str, Any], directory: Path) -> bool:
    path = directory / "upstream-filter.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(path), "-l", "critical"],
                          capture_output=True, timeout=60)
    return done.returncode == 0


@pytest.mark.skipif(not ENVOY_BIN.exists(), reason="envoy is not installed")
@pytest.mark.parametrize("where", ["router", "cluster"])
def test_envoy_accepts_these_http_filters_upstream(where: str, tmp_path: Path) -> None:
    accepted = {name for name, config in MINIMAL.items() if envoy_accepts(one_upstream_filter(config, where), tmp_path)}
    assert accepted == ENVOY_UPSTREAM


@pytest.mark.parametrize("where", ["router", "cluster"])
def test_pylon_runs_or_refuses_each_of_them_by_name(where: str) -> None:
    for name in sorted(ENVOY_UPSTREAM):
        config = one_upstream_filter(MINIMAL[name], where)
        if name in PYLON_UPSTREAM:
            load(config)
        else:
            with pytest.raises(ConfigError) as refused:
                load(config)
            assert REFUSED[name] in str(refused.value) and ".typed_config" in str(refused.value)


# ---------------------------------------------------------------- RBAC upstream, per attempt

RBAC = FILTERS + "rbac.v3.RBAC"
RETRIED = {"retry_on": "5xx,retriable-status-codes", "retriable_status_codes": [403], "num_retries": 2}


def rbac(name: str, action: str, permissions: list[dict[str, Any]]) -> dict[str, Any]:
    policies = {"p": {"permissions": permissions, "principals": [{"any": True}]}} if permissions else {}
    return {"name": name, "typed_config": {"@type": RBAC, "rules": {"action": action, "policies": policies}}}


def own_chain(name: str, port: int, *filters: dict[str, Any]) -> dict[str, Any]:
    cluster = static_cluster(name, [port])
    cluster["typed_extension_protocol_options"] = {OPTIONS: {
        "@type": f"type.googleapis.com/{OPTIONS}", "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [*filters, CODEC]}}
    return cluster


@dataclass
class Setup:
    implementation: str
    proxy: RunningProxy
    up: Upstream
    log: Path

    def logged(self, path: str) -> dict[str, Any]:
        """The access log line of the request to `path` (waiting for the logger's flush). Its query may differ:
        Envoy's log reads the request as its upstream filters left it (a departure, docs/architecture.md)."""
        found = wait_until(lambda: [line for line in read_json_lines(self.log, 1)
                                    if line["path"].partition("?")[0] == path], 10)
        assert found, f"no access log line for {path}"
        return found[-1]


Build = Callable[[Upstream, Path], tuple[dict[str, Any], list[dict[str, Any]]]]


def serve(implementation: str, directory: Path, build: Build) -> Iterator[Setup]:
    """One proxy (the listener and clusters `build` makes for an upstream and an access log path) for a module."""
    up = Upstream()
    launcher = ProxyLauncher(directory)
    log = directory / "access.json"
    try:
        listener, clusters = build(up, log)
        yield Setup(implementation, launcher.start([listener], clusters, implementation=implementation), up, log)
    finally:
        launcher.close()
        up.close()


def rbac_config(up: Upstream, log: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    routes = [
        route("/deny/", "deny", prefix_rewrite="/", retry_policy=RETRIED),
        route("/rewritten/", "rewritten", prefix_rewrite="/", host_rewrite_literal="rewritten"),
        route("/port/", "port", prefix_rewrite="/"),
        route("/", "up", retry_policy={"retry_on": "5xx", "num_retries": 2}),
    ]
    routes[-1]["typed_per_filter_config"] = {"perTry": {  # the router chain's filter has a query edit here
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
        "mutations": {"query_parameter_mutations": [{"append": {"record": {"key": "added", "value": "1"}}}]}}}
    # Its own 403s only (the upstream filter's reply is the connection manager's to map, as in Envoy).
    mapper = {"filter": {"status_code_filter": {"comparison": {
        "op": "EQ", "value": {"default_value": 403, "runtime_key": "k"}}}},
        "headers_to_add": [{"header": {"key": "x-mapped", "value": "yes"}}]}
    listener = http_listener("main", free_port(), routes, access_log=json_access_log(log),
                             local_reply_config={"mappers": [mapper]})
    virtual_host = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    virtual_host["include_request_attempt_count"] = True
    router = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][-1]["typed_config"]
    router["upstream_http_filters"] = [
        mutation("perTry", [add("x-up", "a")], []),
        rbac("thirdDenied", "DENY", [{"header": {"name": "x-envoy-attempt-count", "string_match": {"exact": "3"}}}]),
        CODEC]
    return listener, [
        static_cluster("up", [up.port]),
        own_chain("deny", up.port, rbac("none", "ALLOW", [])),
        own_chain("rewritten", up.port, rbac("host", "ALLOW", [
            {"header": {"name": ":authority", "string_match": {"exact": "rewritten"}}}])),
        # the connection RBAC sees upstream is still the client's: the upstream's port is no destination_port
        own_chain("port", up.port, rbac("port", "ALLOW", [{"destination_port": up.port}])),
    ]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def rbac_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from serve(request.param, tmp_path_factory.mktemp(f"upstream-rbac-{request.param}"), rbac_config)


def test_an_upstream_rbac_denial_is_the_reply_unretried_and_mapped(rbac_setup: Setup) -> None:
    before = len(rbac_setup.up.requests)
    reply = httpx.get(rbac_setup.proxy.url("main", "/deny/a"), timeout=10)
    assert reply.status_code == 403 and reply.text == "RBAC: access denied"
    assert reply.headers.get("x-mapped") == "yes"  # the connection manager's local_reply_config saw it
    assert len(rbac_setup.up.requests) == before  # never asked, and not retried though 403 is retriable here
    line = rbac_setup.logged("/deny/a")
    assert line["details"] == "rbac_access_denied_matched_policy[none]" and line["flags"] == "-"
    assert line["upstream"] == f"127.0.0.1:{rbac_setup.up.port}"  # the attempt's host was chosen
    stats = rbac_setup.proxy.stats()
    assert stats.get("cluster.deny.rbac.denied") == 1 and not stats.get("cluster.deny.upstream_rq_retry")


def test_upstream_rbac_sees_the_request_as_routed_on_the_clients_connection(rbac_setup: Setup) -> None:
    reply = httpx.get(rbac_setup.proxy.url("main", "/rewritten/b"), timeout=10)
    assert reply.status_code == 200  # the Host it matched is the route's rewrite
    seen = rbac_setup.up.requests[-1]
    assert seen["path"] == "/b" and seen["headers"]["host"] == "rewritten"
    assert rbac_setup.proxy.stats().get("cluster.rewritten.rbac.allowed") == 1
    reply = httpx.get(rbac_setup.proxy.url("main", "/port/c"), timeout=10)
    assert reply.status_code == 403 and rbac_setup.proxy.stats().get("cluster.port.rbac.denied") == 1


def test_each_attempt_runs_the_upstream_chain_again(rbac_setup: Setup) -> None:
    up = rbac_setup.up
    before = len(up.requests)
    reply = httpx.get(rbac_setup.proxy.url("main", "/flaky/per-try/1/503"), timeout=10)
    assert reply.status_code == 200
    tries = up.requests[before:]
    assert [t["headers"]["x-envoy-attempt-count"] for t in tries] == ["1", "2"]
    # the filters edit the one request the router holds: the second attempt's chain appends to the first's edit
    assert [[pair for pair in t["header_list"] if pair[0] == "x-up"] for t in tries] == [
        [("x-up", "a")], [("x-up", "a"), ("x-up", "a")]]
    assert [t["path"] for t in tries] == ["/flaky/per-try/1/503?added=1", "/flaky/per-try/1/503?added=1&added=1"]
    before = len(up.requests)
    reply = httpx.get(rbac_setup.proxy.url("main", "/flaky/third/2/503"), timeout=10)
    assert reply.status_code == 403 and reply.text == "RBAC: access denied"  # the third attempt's chain said no
    assert [t["headers"]["x-envoy-attempt-count"] for t in up.requests[before:]] == ["1", "2"]
    assert rbac_setup.logged("/flaky/third/2/503")["details"] == "rbac_access_denied_matched_policy[p]"
    stats = rbac_setup.proxy.stats()
    assert stats.get("http.main.rbac.denied") == 1 and stats.get("http.main.rbac.allowed") == 4


def test_a_mirrored_copy_passes_its_clusters_own_chain_not_the_routers(
        implementation: str, launcher: ProxyLauncher) -> None:
    up, shadow = Upstream(), Upstream()
    try:
        listener = http_listener("main", free_port(), [route("/", "up", request_mirror_policies=[{"cluster": "shadow"}])])
        router = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][-1]["typed_config"]
        router["upstream_http_filters"] = [mutation("routerChain", [add("x-router", "1")], []), CODEC]
        clusters = [static_cluster("up", [up.port]),
                    own_chain("shadow", shadow.port, mutation("clusterChain", [add("x-cluster", "1")], []))]
        proxy = launcher.start([listener], clusters, implementation=implementation)
        assert httpx.get(proxy.url("main", "/m"), timeout=10).status_code == 200
        assert wait_until(lambda: shadow.requests, 10)
        main, copy = up.requests[-1]["headers"], shadow.requests[-1]["headers"]
        assert main.get("x-router") == "1" and "x-cluster" not in main
        assert copy.get("x-cluster") == "1" and "x-router" not in copy
    finally:
        up.close()
        shadow.close()


# ---------------------------------------------------------------- Lua upstream

LUA = FILTERS + "lua.v3.Lua"
SCRIPT = """
tries = 0
function envoy_on_request(handle)
  tries = tries + 1
  local headers = handle:headers()
  headers:add("x-lua-try", tostring(tries))
  headers:add("x-lua-authority", headers:get(":authority"))
  headers:add("x-lua-attempt", headers:get("x-envoy-attempt-count") or "none")
  if headers:get("x-path") then headers:replace(":path", headers:get("x-path")) end
  if headers:get("x-deny") then handle:respond({[":status"] = "418", ["x-from"] = "lua"}, "nope") end
  if headers:get("x-inject") then headers:add("x-evil", "a\\r\\nx-injected: 1") end
  if headers:get("x-space") then headers:replace(":path", "/p q") end
end
function envoy_on_response(handle)
  handle:headers():add("x-lua-resp", handle:headers():get(":status"))
end
"""
#: what pylon's upstream Lua cannot do (headers only): wait for the body
BODY_SCRIPT = """
function envoy_on_request(handle)
  handle:headers():add("x-before", "1")
  local body = handle:body()
  handle:headers():add("x-after", "1")
end
"""


def lua(name: str, script: str) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": LUA, "default_source_code": {"inline_string": script}}}


def lua_config(up: Upstream, log: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    retried = {"retry_on": "5xx,retriable-status-codes", "retriable_status_codes": [418], "num_retries": 2}
    routes = [route("/lua/", "lua", prefix_rewrite="/", host_rewrite_literal="lua-host", retry_policy=retried),
              route("/body/", "body", prefix_rewrite="/")]
    listener = http_listener("main", free_port(), routes, access_log=json_access_log(log))
    virtual_host = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    virtual_host["include_request_attempt_count"] = True
    return listener, [own_chain("lua", up.port, lua("script", SCRIPT)), own_chain("body", up.port, lua("b", BODY_SCRIPT))]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def lua_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from serve(request.param, tmp_path_factory.mktemp(f"upstream-lua-{request.param}"), lua_config)


def values(seen: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in seen["header_list"] if key == name]


def test_upstream_lua_edits_the_request_as_routed_and_the_response(lua_setup: Setup) -> None:
    reply = httpx.get(lua_setup.proxy.url("main", "/lua/a"), headers={"x-path": "/replaced?q=1"}, timeout=10)
    assert reply.status_code == 200 and reply.headers.get("x-lua-resp") == "200"
    seen = lua_setup.up.requests[-1]
    assert seen["path"] == "/replaced?q=1" and seen["headers"]["host"] == "lua-host"
    assert values(seen, "x-lua-authority") == ["lua-host"] and values(seen, "x-lua-attempt") == ["1"]


def test_upstream_lua_runs_again_for_each_attempt(lua_setup: Setup) -> None:
    up = lua_setup.up
    before = len(up.requests)
    reply = httpx.get(lua_setup.proxy.url("main", "/lua/flaky/lua/1/503"), timeout=10)
    assert reply.status_code == 200 and reply.headers.get_list("x-lua-resp") == ["200"]
    first, second = up.requests[before:]
    assert values(first, "x-lua-attempt") == ["1"]
    assert values(second, "x-lua-attempt") == ["1", "2"]  # on the request the first attempt's run left
    (count,) = values(first, "x-lua-try")
    assert values(second, "x-lua-try") == [count, str(int(count) + 1)]  # one Lua state: its globals go on


def test_an_upstream_lua_respond_is_the_response_unretried(lua_setup: Setup) -> None:
    before = len(lua_setup.up.requests)
    reply = httpx.get(lua_setup.proxy.url("main", "/lua/denied"), headers={"x-deny": "1"}, timeout=10)
    assert reply.status_code == 418 and reply.text == "nope"  # though 418 is retriable on this route
    assert reply.headers.get("x-from") == "lua" and reply.headers.get("content-type") == "text/plain"
    assert "x-lua-resp" not in reply.headers and len(lua_setup.up.requests) == before
    line = lua_setup.logged("/lua/denied")
    assert line["details"] == "lua_response" and line["flags"] == "-"
    assert lua_setup.proxy.stats().get("cluster.lua.lua.executions", 0) >= 3


def test_upstream_lua_cannot_write_headers_or_a_request_line_of_its_making(lua_setup: Setup) -> None:
    """CR/LF in a value: Envoy's codec refuses the request (503), pylon's Lua refuses the edit (the script fails,
    the request goes on): the upstream never sees an injected header. A :path with a space: Envoy sends it as it is
    (its upstream answers 400 to the broken request line); pylon refuses that edit too (a departure)."""
    up = lua_setup.up
    before = len(up.requests)
    reply = httpx.get(lua_setup.proxy.url("main", "/lua/inject"), headers={"x-inject": "1"}, timeout=10)
    assert all("x-injected" not in seen["headers"] for seen in up.requests[before:])
    assert reply.status_code == (503 if lua_setup.implementation == "envoy" else 200)
    reply = httpx.get(lua_setup.proxy.url("main", "/lua/spaced"), headers={"x-space": "1"}, timeout=10)
    if lua_setup.implementation == "envoy":
        assert reply.status_code == 400
    else:
        assert reply.status_code == 200 and up.requests[-1]["path"] == "/spaced"
        assert lua_setup.proxy.stats().get("cluster.lua.lua.errors") == 2


def test_upstream_lua_that_waits_for_the_body(lua_setup: Setup) -> None:
    """Envoy's script gets the body; pylon's upstream Lua is headers only: the script fails there (counted) and
    the request goes on with what it did before (a departure, docs/architecture.md)."""
    reply = httpx.post(lua_setup.proxy.url("main", "/body/x"), content=b"payload", timeout=10)
    assert reply.status_code == 200
    seen = lua_setup.up.requests[-1]
    assert seen["headers"].get("x-before") == "1"
    if lua_setup.implementation == "envoy":
        assert seen["headers"].get("x-after") == "1"
    else:
        assert "x-after" not in seen["headers"] and lua_setup.proxy.stats().get("cluster.body.lua.errors") == 1


# ---------------------------------------------------------------- buffer upstream

BUFFER = FILTERS + "buffer.v3.Buffer"


def buffer_config(up: Upstream, log: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    late = route("/late/", "buf", prefix_rewrite="/")  # a fault delay holds it: the body is in before routing
    late["typed_per_filter_config"] = {"delay": {"@type": FILTERS + "fault.v3.HTTPFault", "delay": {
        "fixed_delay": "0.2s", "percentage": {"numerator": 100}}}}
    routes = [late, route("/buf/", "buf", prefix_rewrite="/", retry_policy={"retry_on": "5xx", "num_retries": 1})]
    listener = http_listener("main", free_port(), routes, access_log=json_access_log(log))
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "delay", "typed_config": {"@type": FILTERS + "fault.v3.HTTPFault"}})
    held = {"name": "held", "typed_config": {"@type": BUFFER, "max_request_bytes": 16}}
    return listener, [own_chain("buf", up.port, held)]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def buffer_setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from serve(request.param, tmp_path_factory.mktemp(f"upstream-buffer-{request.param}"), buffer_config)


def pieces(*parts: bytes) -> Iterator[bytes]:
    yield from parts  # httpx sends a generator's body chunked


def test_an_upstream_buffer_sends_each_attempt_the_whole_body_with_its_length(buffer_setup: Setup) -> None:
    up = buffer_setup.up
    reply = httpx.post(buffer_setup.proxy.url("main", "/buf/echo"), content=pieces(b"abc", b"de"), timeout=10)
    assert reply.status_code == 200 and reply.content == b"abcde"
    seen = up.requests[-1]["headers"]
    assert seen.get("content-length") == "5" and "transfer-encoding" not in seen
    before = len(up.requests)
    reply = httpx.post(buffer_setup.proxy.url("main", "/buf/flaky/buffered/1/503"), content=pieces(b"abc", b"de"),
                       timeout=10)
    assert reply.status_code == 200
    assert [t["headers"].get("content-length") for t in up.requests[before:]] == ["5", "5"]


def test_an_upstream_buffer_answers_413_beyond_its_limit(buffer_setup: Setup) -> None:
    before = len(buffer_setup.up.requests)
    for path, body in (("/buf/whole", b"x" * 100), ("/buf/pieces", pieces(b"x" * 10, b"y" * 10, b"z" * 10))):
        reply = httpx.post(buffer_setup.proxy.url("main", path), content=body, timeout=10)
        assert reply.status_code == 413 and reply.text == "Payload Too Large"
        assert reply.headers.get("connection") == "close"
        line = buffer_setup.logged(path)
        assert line["details"] == "request_payload_too_large" and line["flags"] == "-"
    assert len(buffer_setup.up.requests) == before
    # the whole body in before the request is routed (a fault delay held it): nothing left to hold, no 413, and it
    # goes with its length
    late = raw_exchange(buffer_setup.proxy.ports["main"], b"POST /late/echo HTTP/1.1\r\nhost: x\r\n"
                        b"transfer-encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n")
    assert late.status == 200 and late.data.endswith(b"x" * 100)
    seen = buffer_setup.up.requests[-1]["headers"]
    assert seen.get("content-length") == "100" and "transfer-encoding" not in seen
    assert not buffer_setup.proxy.stats().get("http.main.downstream_rq_too_large")  # the HCM's, not this filter's

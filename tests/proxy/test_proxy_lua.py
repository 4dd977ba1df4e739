"""Integration: envoy.filters.http.lua and the Lua cluster specifier, through pylon and Envoy 1.40.

One proxy with several listeners in front of the same upstream (`up`, and a second one, `other`): Lua scripts that
edit headers both ways, answer locally, read and replace bodies, ask another cluster (httpCall), fail, and a route
whose cluster a Lua script picks. Every test runs through both proxies and asserts what Envoy 1.40 does: the
client's status, body and headers, and what the upstream saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SPECIFIER_TYPE = "type.googleapis.com/envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"

MAIN = """
function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local path = headers:get(":path")
  if path == "/deny" then
    request_handle:respond({[":status"] = "403", ["x-why"] = "lua"}, "nope")
  end
  headers:add("x-lua-req", "yes")
  headers:replace("x-replace", "new")
  headers:remove("x-drop")
  headers:add("x-method", headers:get(":method"))
  if headers:get("x-multi") then
    headers:add("x-multi-get", headers:get("x-multi"))
    headers:add("x-multi-n", headers:getNumValues("x-multi"))
    headers:add("x-multi-1", headers:getAtIndex("x-multi", 1))
  end
  local count = 0
  for name, value in pairs(headers) do count = count + 1 end
  headers:add("x-counted", tostring(count > 3))
  if path == "/echo" then
    local body = request_handle:body()
    body:setBytes(string.upper(body:getBytes(0, body:length())))
  end
  if path == "/call" then
    local answer, answer_body = request_handle:httpCall("other", {
      [":method"] = "GET", [":path"] = "/respond?x-side=called", [":authority"] = "side"}, "", 1000)
    headers = request_handle:headers()  -- Envoy: objects from before a wait are out of scope after it
    headers:add("x-call-status", answer[":status"])
    headers:add("x-call-side", answer["x-side"])
    headers:add("x-call-body", (answer_body:gsub("%s+$", "")))
  end
  if path == "/scope" then
    request_handle:body()
    headers:add("x-after-wait", "1")
  end
  if path == "/call-async" then
    request_handle:httpCall("other", {[":method"] = "POST", [":path"] = "/async", [":authority"] = "side",
                                      ["x-note"] = "fire"}, "payload", 1000, true)
    headers:add("x-async-sent", "1")
  end
  if path == "/call-down" then
    local answer, answer_body = request_handle:httpCall("down", {
      [":method"] = "GET", [":path"] = "/", [":authority"] = "down"}, "", 1000)
    request_handle:headers():add("x-call-status", answer[":status"])
    request_handle:headers():add("x-call-body", tostring(answer_body))
  end
  if path == "/call-unknown" then
    request_handle:httpCall("nowhere", {[":method"] = "GET", [":path"] = "/", [":authority"] = "x"}, "", 1000)
  end
  if path == "/info" then
    local info = request_handle:streamInfo()
    headers:add("x-protocol", info:protocol())
    headers:add("x-local", info:downstreamLocalAddress())
    headers:add("x-remote", info:downstreamDirectRemoteAddress())
    headers:add("x-ssl", tostring(request_handle:connection():ssl()))
    headers:add("x-sni", tostring(info:requestedServerName()))
  end
  if path == "/no-body" then
    headers:add("x-body-nil", tostring(request_handle:body() == nil))
  end
  if path == "/inject" then
    headers:add("x-evil", "a\\r\\nx-injected: 1")
  end
end

function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  headers:add("x-lua-resp", headers:get(":status"))
  headers:remove("x-served-by")
  if headers:get("x-split") then
    headers:add("x-evil", "a\\r\\nx-injected: 1")
  end
  if headers:get("x-rewrite") then
    local body = response_handle:body()
    body:setBytes("rewritten:" .. body:getBytes(0, body:length()))
  end
end
"""

# Envoy's lua example (its library inlined: the example's require() reads a file next to Envoy's cwd)
EXAMPLE = """
local mylibrary = {foobar = function() return "bar" end}
function envoy_on_request(request_handle)
  request_handle:headers():add("foo", mylibrary.foobar())
end
"""
EXAMPLE_PER_ROUTE = """
function envoy_on_response(response_handle)
  response_handle:headers():add("header_key_1", "header_value_1")
end
"""
FAILING = """
function envoy_on_request(request_handle)
  request_handle:headers():add("x-before", "1")
  error("boom")
end
"""
PICKER = """
function envoy_on_route(route_handle)
  local header_value = route_handle:headers():get("x-pick")
  if header_value == "fake" then
    return "fake_cluster"
  end
  if header_value == "other" then
    return "other"
  end
  return "up"
end
"""


def lua(code: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": LUA_TYPE}
    if code is not None:
        config["default_source_code"] = {"inline_string": code}
    return config


def listener(name: str, port: int, routes: list[dict[str, Any]], filters: list[tuple[str, dict[str, Any]]]
             ) -> dict[str, Any]:
    result = http_listener(name, port, routes)
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [*({"name": n, "typed_config": c} for n, c in filters),
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return result


def listeners(ports: dict[str, int]) -> list[dict[str, Any]]:
    example_routes = [
        {**route("/multiple/lua/scripts", "up"), "typed_per_filter_config": {"lua_filter_with_custom_name_1": {
            "@type": PER_ROUTE_TYPE, "source_code": {"inline_string": EXAMPLE_PER_ROUTE}}}},
        {**route("/off", "up"), "typed_per_filter_config": {"lua_filter_with_custom_name_0": {
            "@type": PER_ROUTE_TYPE, "disabled": True}}},
        route("/", "up")]
    picker_route = {"match": {"prefix": "/"}, "route": {"inline_cluster_specifier_plugin": {"extension": {
        "name": "envoy.router.cluster_specifier_plugin.lua",
        "typed_config": {"@type": SPECIFIER_TYPE, "source_code": {"inline_string": PICKER},
                         "default_cluster": "up"}}}}}
    return [
        listener("main", ports["main"], [route("/", "up")], [("lua", lua(MAIN))]),
        listener("example", ports["example"], example_routes,
                 [("lua_filter_with_custom_name_0", lua(EXAMPLE)), ("lua_filter_with_custom_name_1", lua(None))]),
        listener("failing", ports["failing"], [route("/", "up")], [("lua", lua(FAILING))]),
        listener("picker", ports["picker"], [picker_route], []),
    ]


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], up: Upstream, other: Upstream) -> None:
        self.proxy, self.ports, self.up, self.other = proxy, ports, up, other

    def ask(self, listener: str, path: str, method: str = "GET", body: bytes = b"",
            repeated: list[tuple[str, str]] | None = None, **headers: str) -> tuple[httpx.Response, dict[str, Any] | None]:
        """(the client's response, what `up` saw or None)."""
        before = len(self.up.requests)
        sent = [(k.replace("_", "-"), v) for k, v in headers.items()] + (repeated or [])
        reply = httpx.request(method, f"http://127.0.0.1:{self.ports[listener]}{path}", headers=sent, content=body,
                              timeout=5)
        requests = self.up.requests
        return reply, requests[-1] if len(requests) > before else None


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation = request.param
    directory = tmp_path_factory.mktemp(f"lua-{implementation}")
    up, other = Upstream(), Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in ("main", "example", "failing", "picker")}
        clusters = [static_cluster("up", [up.port]), static_cluster("other", [other.port]),
                    static_cluster("down", [free_port()])]
        proxy = launcher.start(listeners(ports), clusters, implementation=implementation)
        yield Setup(proxy, ports, up, other)
    finally:
        launcher.close()
        up.close()
        other.close()


def test_headers_edited_both_ways(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/get", x_replace="old", x_drop="gone")
    assert (reply.status_code, reply.text) == (200, "ok\n")
    assert seen is not None
    assert seen["headers"]["x-lua-req"] == "yes"
    assert seen["headers"]["x-replace"] == "new"
    assert seen["headers"]["x-method"] == "GET"
    assert seen["headers"]["x-counted"] == "true"
    assert "x-drop" not in seen["headers"]
    assert reply.headers["x-lua-resp"] == "200"
    assert "x-served-by" not in reply.headers


def test_repeated_headers(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/", repeated=[("x-multi", "a"), ("x-multi", "b")])
    assert reply.status_code == 200 and seen is not None
    assert (seen["headers"]["x-multi-get"], seen["headers"]["x-multi-n"], seen["headers"]["x-multi-1"]) == \
        ("a,b", "2", "b")


def test_respond_answers_without_the_upstream(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/deny")
    assert seen is None
    assert (reply.status_code, reply.text) == (403, "nope")
    assert reply.headers["x-why"] == "lua"
    assert reply.headers["content-length"] == "4"
    assert reply.headers["content-type"] == "text/plain"
    assert reply.headers["x-lua-resp"] == "403"  # the local answer passes envoy_on_response too


def test_request_body_read_and_replaced(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/echo", method="POST", body=b"hello lua")
    assert seen is not None
    assert (reply.status_code, reply.content) == (200, b"HELLO LUA")


def test_objects_from_before_a_wait_are_out_of_scope(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/scope", method="POST", body=b"abc")
    assert reply.status_code == 200 and seen is not None
    assert seen["headers"]["x-lua-req"] == "yes" and "x-after-wait" not in seen["headers"]  # the script failed


def test_request_body_over_the_buffer_limit_is_413(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/echo", method="POST", body=b"x" * (1024 * 1024 + 1))
    assert seen is None
    assert (reply.status_code, reply.text) == (413, "Payload Too Large")


def test_stream_info(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/info")
    assert reply.status_code == 200 and seen is not None
    assert seen["headers"]["x-protocol"] == "HTTP/1.1"
    assert seen["headers"]["x-local"] == f"127.0.0.1:{setup.ports['main']}"
    assert seen["headers"]["x-remote"].startswith("127.0.0.1:")
    assert (seen["headers"]["x-ssl"], seen["headers"]["x-sni"]) == ("nil", "")


def test_request_without_body_reads_nil(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/no-body")
    assert reply.status_code == 200 and seen is not None
    assert seen["headers"]["x-body-nil"] == "true"


def test_response_body_replaced(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/respond?x-rewrite=1")
    assert seen is not None
    assert (reply.status_code, reply.content) == (200, b"rewritten:respond\n")
    assert reply.headers["content-length"] == str(len(b"rewritten:respond\n"))


def test_http_call_to_another_cluster(setup: Setup) -> None:
    before = len(setup.other.requests)
    reply, seen = setup.ask("main", "/call")
    assert reply.status_code == 200 and seen is not None
    assert seen["headers"]["x-call-status"] == "200"
    assert seen["headers"]["x-call-side"] == "called"
    assert seen["headers"]["x-call-body"] == "respond"
    asked = setup.other.requests[before]
    assert (asked["path"], asked["headers"]["host"]) == ("/respond?x-side=called", "side")


def test_asynchronous_http_call_does_not_hold_the_request(setup: Setup) -> None:
    before = len(setup.other.requests)
    reply, seen = setup.ask("main", "/call-async")
    assert reply.status_code == 200 and seen is not None and seen["headers"]["x-async-sent"] == "1"
    wait_until(lambda: len(setup.other.requests) > before)
    asked = setup.other.requests[before]
    assert (asked["method"], asked["path"], asked["headers"]["x-note"]) == ("POST", "/async", "fire")
    assert asked["headers"]["content-length"] == "7"


def test_http_call_that_fails(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/call-down")
    assert reply.status_code == 200 and seen is not None
    assert (seen["headers"]["x-call-status"], seen["headers"]["x-call-body"]) == (
        "503", "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")


def test_http_call_to_an_unknown_cluster_fails_the_script(setup: Setup) -> None:
    reply, seen = setup.ask("main", "/call-unknown")
    assert reply.status_code == 200 and seen is not None


def test_envoy_example_scripts(setup: Setup) -> None:
    reply, seen = setup.ask("example", "/")
    assert reply.status_code == 200 and seen is not None
    assert seen["headers"]["foo"] == "bar"
    assert "header_key_1" not in reply.headers
    reply, seen = setup.ask("example", "/multiple/lua/scripts")
    assert seen is not None and seen["headers"]["foo"] == "bar"
    assert reply.headers["header_key_1"] == "header_value_1"
    reply, seen = setup.ask("example", "/off")
    assert seen is not None and "foo" not in seen["headers"]


def test_failing_script_lets_the_request_go_on(setup: Setup) -> None:
    before = setup.proxy.stats()
    reply, seen = setup.ask("failing", "/")
    assert reply.status_code == 200 and seen is not None
    assert seen["headers"]["x-before"] == "1"
    after = setup.proxy.stats()
    assert after["http.failing.lua.errors"] - before["http.failing.lua.errors"] == 1
    assert after["http.failing.lua.executions"] - before["http.failing.lua.executions"] == 1


def test_cluster_specifier_picks_the_cluster(setup: Setup) -> None:
    reply, seen = setup.ask("picker", "/")
    assert reply.status_code == 200 and seen is not None
    before = len(setup.other.requests)
    reply, seen = setup.ask("picker", "/", x_pick="other")
    assert reply.status_code == 200 and seen is None
    assert len(setup.other.requests) == before + 1
    reply, seen = setup.ask("picker", "/", x_pick="fake")
    assert reply.status_code == 503 and seen is None


def test_a_header_value_with_cr_lf_never_becomes_a_header(setup: Setup) -> None:
    """A script's value with CR/LF would write a header of its (or the client's) making. On the request Envoy's
    codec refuses it (a 503 "invalid header value for: x-evil"); in pylon the edit is a Lua error (the script
    fails, counted, the request goes on without it): the upstream never sees the injected header. On the response
    Envoy 1.40 writes it to the client (response splitting); pylon refuses it the same way (a departure)."""
    reply, seen = setup.ask("main", "/inject")
    assert seen is None or "x-injected" not in seen["headers"]
    assert "x-injected" not in reply.headers
    reply, _ = setup.ask("main", "/respond?x-split=1")
    envoy = Path(setup.proxy.proc.args[0]).name == "envoy"
    assert ("x-injected" in reply.headers) is envoy

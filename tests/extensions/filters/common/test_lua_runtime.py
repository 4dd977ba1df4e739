"""The Lua state behind the Lua filter and cluster specifier: Envoy's API over a fake stream, and the sandbox."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pylon.extensions.filters.common.lua_runtime import DONE, FAILED, LuaState, ScriptError
from pylon.proxy.headers import HeaderList


class FakeStream:
    """A StreamContext: request headers, a body that may not be in yet, what the script answered or asked."""

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes | None = b"", ready: bool = True) -> None:
        self.headers = HeaderList(headers)
        self.body_value = body
        self.ready = ready
        self.answered: tuple[list[tuple[bytes, bytes]], bytes] | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.dynamic: dict[str, dict[str, Any]] = {}

    def header_view(self, which: str) -> Any:
        return self.headers

    def header_edit(self, which: str, op: str, name: bytes, value: bytes) -> None:
        if op == "remove":
            self.headers.remove(name)
        elif op == "replace":
            self.headers.set(name, value)
        else:
            self.headers.add(name, value)

    def body_state(self) -> str:
        if self.body_value is None:
            return "none"
        return "ready" if self.ready else "wait"

    def body(self) -> bytes:
        return self.body_value or b""

    def set_body(self, body: bytes) -> None:
        self.body_value = body

    def has_trailers(self) -> bool:
        return False

    def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.answered = (headers, body)

    def http_call(self, *args: Any) -> None:
        self.calls.append(args)

    def info(self, key: str) -> Any:
        return {"protocol": "HTTP/1.1", "tls": False, "sni": "", "local": "127.0.0.1:80"}.get(key, "")

    def metadata(self, which: str) -> dict[str, Any]:
        return {"handle": {"x": "route", "n": 2, "list": ["a", None, {"k": True}]}, "virtual_host": {"x": "vh"}}.get(
            which, {})

    def dynamic_metadata(self) -> dict[str, dict[str, Any]]:
        return self.dynamic

    def set_dynamic_metadata(self, namespace: str, values: dict[str, Any]) -> None:
        self.dynamic.setdefault(namespace, {}).update(values)


def run(code: str, stream: FakeStream, hook: str = "envoy_on_request") -> tuple[LuaState, Any, str]:
    state = LuaState(logging.getLogger("test"))
    env = state.load(code.encode(), "test")
    script = state.start(env[hook.encode()], stream, "request")
    return state, script, script.what


def test_headers_get_add_replace_remove_and_pairs() -> None:
    stream = FakeStream([(b"a", b"1"), (b"b", b"2"), (b"b", b"3"), (b"gone", b"x")])
    _, script, what = run("""
    function envoy_on_request(h)
      local headers = h:headers()
      headers:add("x-a", headers:get("a"))
      headers:add("x-count", headers:getNumValues("b"))
      headers:add("x-second", headers:getAtIndex("b", 1))
      headers:replace("a", "one")
      headers:remove("gone")
      local names = {}
      for name, value in pairs(headers) do names[#names + 1] = name .. "=" .. value end
      headers:add("x-all", table.concat(names, ","))
    end""", stream)
    assert what == DONE, script.error
    assert stream.headers.get(b"x-a") == b"1" and stream.headers.get(b"x-count") == b"2"
    assert stream.headers.get(b"x-second") == b"3" and stream.headers.get(b"a") == b"one"
    assert b"gone" not in stream.headers
    assert stream.headers.get(b"x-all") == b"a=one,b=2,b=3,x-a=1,x-count=2,x-second=3"  # replace keeps the place


def test_body_waits_until_it_is_in_and_can_be_replaced() -> None:
    stream = FakeStream([], b"hello", ready=False)
    _, script, what = run("""
    function envoy_on_request(h)
      local body = h:body()
      body:setBytes(body:getBytes(1, 3) .. body:length())
    end""", stream)
    assert what == "body"
    stream.ready = True
    assert script.step(b"ready") == DONE
    assert stream.body_value == b"ell5"


def test_body_is_nil_without_one_unless_always_wrapped() -> None:
    stream = FakeStream([], None)
    _, script, what = run("""
    function envoy_on_request(h)
      h:headers():add("nil", tostring(h:body() == nil))
      h:headers():add("wrapped", h:body(true):length())
    end""", stream)
    assert what == DONE, script.error
    assert stream.headers.get(b"nil") == b"true" and stream.headers.get(b"wrapped") == b"0"


def test_respond_stops_the_script() -> None:
    stream = FakeStream([])
    _, script, what = run("""
    function envoy_on_request(h)
      h:respond({[":status"] = "403", ["x-why"] = "no"}, "denied")
      h:headers():add("after", "yes")
    end""", stream)
    assert what == "respond"
    assert stream.answered is not None
    assert sorted(stream.answered[0]) == [(b":status", b"403"), (b"x-why", b"no")]
    assert stream.answered[1] == b"denied"
    assert b"after" not in stream.headers


def test_http_call_waits_for_the_answer() -> None:
    stream = FakeStream([])
    state, script, what = run("""
    function envoy_on_request(h)
      local headers, body = h:httpCall("auth", {[":method"] = "POST", [":path"] = "/check",
                                                 [":authority"] = "auth"}, "q", 500)
      h:headers():add("got", headers[":status"] .. " " .. headers["x-v"][2] .. " " .. body)
    end""", stream)
    assert what == "http"
    cluster, headers, body, timeout, asynchronous = stream.calls[0]
    assert (cluster, body, timeout, asynchronous) == (b"auth", b"q", 500.0, False)
    assert sorted(headers) == [(b":authority", b"auth"), (b":method", b"POST"), (b":path", b"/check")]
    assert script.step(state.table([b":status", b"200", b"x-v", b"1", b"x-v", b"2"]), b"fine") == DONE
    assert stream.headers.get(b"got") == b"200 2 fine"


def test_asynchronous_http_call_does_not_wait() -> None:
    stream = FakeStream([])
    _, script, what = run("""
    function envoy_on_request(h)
      h:httpCall("log", {[":method"] = "GET", [":path"] = "/", [":authority"] = "log"}, nil, 0, true)
      h:httpCall("log", {[":method"] = "GET", [":path"] = "/", [":authority"] = "log"}, "", {asynchronous = true})
    end""", stream)
    assert what == DONE, script.error
    assert [call[-1] for call in stream.calls] == [True, True]


def test_stream_info_logs_timestamp_and_metadata() -> None:
    stream = FakeStream([])
    _, script, what = run("""
    function envoy_on_request(h)
      local info = h:streamInfo()
      info:dynamicMetadata():set("f", "k", "v")
      h:headers():add("p", info:protocol() .. " " .. info:downstreamLocalAddress() .. " " ..
                      info:dynamicMetadata():get("f")["k"] .. " " .. tostring(h:connection():ssl()) .. " " ..
                      h:metadata():get("x") .. " " .. h:base64Escape("hi"))
      h:logInfo("hello")
      assert(h:timestamp() > 1600000000000)
    end""", stream)
    assert what == DONE, script.error
    assert stream.headers.get(b"p") == b"HTTP/1.1 127.0.0.1:80 v nil route aGk="
    assert stream.dynamic == {"f": {"k": "v"}}  # the stream's own metadata, which other filters read


def test_metadata_as_envoy_converts_a_struct() -> None:
    """tests/proxy/test_proxy_lua_metadata.py runs such a script through Envoy too."""
    stream = FakeStream([])
    _, script, what = run("""
    function envoy_on_request(h)
      local md, list = h:metadata(), h:metadata():get("list")
      h:headers():add("p", md:get("n") .. " " .. list[1] .. " " .. tostring(list[2]) .. " " .. tostring(list[3].k) ..
                      " " .. select("#", md:get("absent")) .. " " .. h:virtualHost():metadata():get("x") .. " " ..
                      select("#", h:route():metadata():get("x")))
    end""", stream)
    assert what == DONE, script.error
    assert stream.headers.get(b"p") == b"2 a nil true 0 vh 0"


@pytest.mark.parametrize("call", ["h:clearRouteCache()", "h:streamInfo():requestedServerName2()",
                                  "h:headers():setHttp1ReasonPhrase('x')", "h:body(true):getBytes2()"])
def test_unimplemented_api_functions_raise_errors_naming_them(call: str) -> None:
    _, script, what = run(f"function envoy_on_request(h) {call} end", FakeStream([]))
    assert what == FAILED
    name = call.split(":")[-1].split("(")[0]
    assert f"{name}() is not supported by pylon's Lua filter" in script.error


def test_scripts_have_their_own_globals() -> None:
    state = LuaState(logging.getLogger("test"))
    first = state.load(b"function envoy_on_request(h) end; shared = 1", "first")
    second = state.load(b"shared = 2", "second")
    assert first[b"shared"] == 1 and second[b"shared"] == 2
    assert second[b"envoy_on_request"] is None


def test_a_script_that_does_not_compile_is_a_script_error() -> None:
    with pytest.raises(ScriptError, match="test:1"):
        LuaState(logging.getLogger("test")).load(b"function (", "test")


@pytest.mark.parametrize("expression", ["io", "os.execute", "os.remove", "os.exit", "dofile", "loadfile", "debug",
                                        "python", "package.loadlib"])
def test_sandbox_has_no_file_process_or_python_access(expression: str) -> None:
    """The security boundary: scripts reach no files, processes, C modules or Python objects."""
    state = LuaState(logging.getLogger("test"))
    env = state.load(f"value = {expression}".encode(), "test")
    assert env[b"value"] is None


def test_python_objects_are_opaque_to_lua() -> None:
    state = LuaState(logging.getLogger("test"))
    env = state.load(b"function probe(f) return f.__class__ end", "test")
    with pytest.raises(Exception, match="opaque"):
        env[b"probe"](len)


def test_require_cannot_load_c_modules() -> None:
    state = LuaState(logging.getLogger("test"))
    with pytest.raises(ScriptError, match="not found"):
        state.load(b'require("socket.core")', "test")
    assert state.lua.eval(b"package.cpath") == b""


def test_objects_die_when_the_script_waits() -> None:
    """As in Envoy: a body that is all in already still counts as a wait."""
    stream = FakeStream([], b"in")
    _, script, what = run("""
    function envoy_on_request(h)
      local headers = h:headers()
      h:body()
      h:headers():add("fresh", "ok")
      headers:add("stale", "no")
    end""", stream)
    assert what == FAILED and "object used outside of proper scope" in script.error
    assert stream.headers.get(b"fresh") == b"ok" and b"stale" not in stream.headers


def test_a_finished_script_leaves_nothing_behind() -> None:
    stream = FakeStream([], b"x", ready=False)
    state, script, what = run("function envoy_on_request(h) h:body() end", stream)
    assert what == "body" and list(state.streams) == [script.sid]
    assert script.step(b"ready") == DONE
    assert state.streams == {} and script.thread is None


def test_trailers_are_nil_without_any() -> None:
    stream = FakeStream([], b"x")
    _, script, what = run("""
    function envoy_on_request(h)
      local t = tostring(h:trailers())
      h:headers():add('t', t)
    end""", stream)
    assert what == DONE, script.error
    assert stream.headers.get(b"t") == b"nil"

"""Integration: route header and query matchers on a header sent several times, through pylon and Envoy 1.40.

Envoy 1.40 (`envoy.reloadable_features.match_headers_individually`, on by
default) matches a repeated header value by value: a matcher matches when one
value does, and `invert_match` negates that. Its inline request headers
(accept, user-agent, x-forwarded-for, ...) are the exception: the codec folds
their lines into one ","-joined value first. `host` is `:authority`. A
repeated query parameter is matched on its first value.

Requests go over raw sockets (an HTTP client would merge the lines). Every route
is a direct_response whose body names it, so each case asserts which route
answered: its own (`/m/<id>`), or the catch-all `none`.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ENVOY_BIN, ProxyLauncher, RunningProxy, http_listener


def sm(**string_match: Any) -> dict[str, Any]:
    return {"string_match": string_match}


#: Route id -> the route's header matchers (all on `x-a` unless named) or, for `q-*`, query parameter matchers.
MATCHERS: dict[str, list[dict[str, Any]]] = {
    "exact-a": [{"name": "x-a", **sm(exact="a")}],
    "exact-b": [{"name": "x-a", **sm(exact="b")}],
    "exact-c": [{"name": "x-a", **sm(exact="c")}],
    "exact-a,b": [{"name": "x-a", **sm(exact="a,b")}],
    "exact-a,b,c": [{"name": "x-a", **sm(exact="a,b,c")}],
    "exact-empty": [{"name": "x-a", **sm(exact="")}],
    "exact-B-ignore-case": [{"name": "x-a", **sm(exact="B", ignore_case=True)}],
    "prefix-b": [{"name": "x-a", **sm(prefix="b")}],
    "prefix-a,": [{"name": "x-a", **sm(prefix="a,")}],
    "suffix-a": [{"name": "x-a", **sm(suffix="a")}],
    "suffix-,b": [{"name": "x-a", **sm(suffix=",b")}],
    "contains-comma": [{"name": "x-a", **sm(contains=",")}],
    "regex-b": [{"name": "x-a", **sm(safe_regex={"regex": "b"})}],
    "regex-comma": [{"name": "x-a", **sm(safe_regex={"regex": ".*,.*"})}],
    "present": [{"name": "x-a", "present_match": True}],
    "absent": [{"name": "x-a", "present_match": False}],
    "no-kind": [{"name": "x-a"}],
    "not-a": [{"name": "x-a", **sm(exact="a"), "invert_match": True}],
    "not-b": [{"name": "x-a", **sm(exact="b"), "invert_match": True}],
    "not-z": [{"name": "x-a", **sm(exact="z"), "invert_match": True}],
    "not-a,b": [{"name": "x-a", **sm(exact="a,b"), "invert_match": True}],
    "not-present": [{"name": "x-a", "present_match": True, "invert_match": True}],
    "not-absent": [{"name": "x-a", "present_match": False, "invert_match": True}],
    "missing-empty": [{"name": "x-a", **sm(exact=""), "treat_missing_header_as_empty": True}],
    "missing-empty-not-a": [{"name": "x-a", **sm(exact="a"), "treat_missing_header_as_empty": True,
                             "invert_match": True}],
    "dep-exact-a": [{"name": "x-a", "exact_match": "a"}],
    "dep-exact-a,b": [{"name": "x-a", "exact_match": "a,b"}],
    "dep-exact-empty": [{"name": "x-a", "exact_match": ""}],
    "dep-prefix-b": [{"name": "x-a", "prefix_match": "b"}],
    "dep-suffix-a": [{"name": "x-a", "suffix_match": "a"}],
    "dep-contains-comma": [{"name": "x-a", "contains_match": ","}],
    "dep-regex-b": [{"name": "x-a", "safe_regex_match": {"regex": "b"}}],
    "dep-regex-a,b": [{"name": "x-a", "safe_regex_match": {"regex": "a,b"}}],
    "a-and-b": [{"name": "x-a", **sm(exact="a")}, {"name": "x-a", **sm(exact="b")}],
    "a-and-not-b": [{"name": "x-a", **sm(exact="a")}, {"name": "x-a", **sm(exact="b"), "invert_match": True}],
    "accept-a,b": [{"name": "accept", **sm(exact="a,b")}],
    "accept-a": [{"name": "accept", **sm(exact="a")}],
    "accept-b": [{"name": "accept", **sm(exact="b")}],
    "accept-not-a": [{"name": "accept", **sm(exact="a"), "invert_match": True}],
    "user-agent-a,b": [{"name": "user-agent", **sm(exact="a,b")}],
    "xff-a,b": [{"name": "x-forwarded-for", **sm(exact="a,b")}],
    "cookie-b": [{"name": "cookie", **sm(exact="b")}],
    "cookie-a;b": [{"name": "cookie", **sm(exact="a; b")}],
    "cookie-a,b": [{"name": "cookie", **sm(exact="a,b")}],
    "set-cookie-b": [{"name": "set-cookie", **sm(exact="b")}],
    "accept-language-b": [{"name": "accept-language", **sm(exact="b")}],
    "host-x": [{"name": "host", **sm(exact="x")}],
    "host-other": [{"name": "host", **sm(exact="other")}],
    "authority-x": [{"name": ":authority", **sm(exact="x")}],
    "method-get": [{"name": ":method", **sm(exact="GET")}],
    "method-post": [{"name": ":method", **sm(exact="POST")}],
    "scheme-http": [{"name": ":scheme", **sm(exact="http")}],
}
QUERY_MATCHERS: dict[str, list[dict[str, Any]]] = {
    "q-1": [{"name": "a", **sm(exact="1")}],
    "q-2": [{"name": "a", **sm(exact="2")}],
    "q-1,2": [{"name": "a", **sm(exact="1,2")}],
    "q-empty": [{"name": "a", **sm(exact="")}],
    "q-present": [{"name": "a", "present_match": True}],
    "q-absent": [{"name": "a", "present_match": False}],
}


def answer(body: str) -> dict[str, Any]:
    return {"direct_response": {"status": 200, "body": {"inline_string": body}}}


def routes() -> list[dict[str, Any]]:
    table = [{"match": {"path": f"/m/{rid}", "headers": hs}, **answer(rid)} for rid, hs in MATCHERS.items()]
    table += [{"match": {"path": f"/m/{rid}", "query_parameters": qs}, **answer(rid)}
              for rid, qs in QUERY_MATCHERS.items()]
    # Two routes for one path: the first whose matcher passes answers.
    table.append({"match": {"path": "/order", "headers": [{"name": "x-a", **sm(exact="a,b")}]}, **answer("joined")})
    table.append({"match": {"path": "/order", "headers": [{"name": "x-a", **sm(exact="b")}]}, **answer("value-b")})
    table.append({"match": {"prefix": "/"}, **answer("none")})
    return table


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def implementation(request: pytest.FixtureRequest) -> str:
    """pylon, then Envoy: conftest's fixture at module scope, so each proxy starts once for all the cases."""
    return request.param


@pytest.fixture(scope="module")
def proxy(implementation: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    launcher = ProxyLauncher(tmp_path_factory.mktemp(implementation))
    try:
        yield launcher.start([http_listener("main", free_port(), routes())], [], implementation=implementation)
    finally:
        launcher.close()


def ask(proxy: RunningProxy, target: str, lines: list[str], host: str = "h") -> str:
    """Send one GET with these header lines, as written; the body of a 200 (the route's id), else the status."""
    request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
    with socket.create_connection(("127.0.0.1", proxy.ports["main"]), timeout=5) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        while length is not None and len(body) < int(length[1]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    status = head.split(b" ", 2)[1]
    return body.decode() if status == b"200" else f"status {status.decode()}"


def x_a(*values: str) -> list[str]:
    return [f"x-a: {v}" for v in values]


TWICE, THRICE, ONE_LINE = x_a("a", "b"), x_a("a", "b", "c"), x_a("a,b")


@pytest.mark.parametrize(("route_id", "lines", "hit"), [
    # x-a sent twice: each value on its own, never "a,b"
    ("exact-a", TWICE, True), ("exact-b", TWICE, True), ("exact-a,b", TWICE, False),
    ("exact-B-ignore-case", TWICE, True), ("prefix-b", TWICE, True), ("prefix-a,", TWICE, False),
    ("suffix-a", TWICE, True), ("suffix-,b", TWICE, False), ("contains-comma", TWICE, False),
    ("regex-b", TWICE, True), ("regex-comma", TWICE, False),
    ("present", TWICE, True), ("absent", TWICE, False), ("no-kind", TWICE, True),
    ("not-a", TWICE, False), ("not-b", TWICE, False), ("not-z", TWICE, True), ("not-a,b", TWICE, True),
    ("not-present", TWICE, False), ("not-absent", TWICE, True), ("missing-empty-not-a", TWICE, False),
    ("dep-exact-a", TWICE, True), ("dep-exact-a,b", TWICE, False), ("dep-exact-empty", TWICE, True),
    ("dep-prefix-b", TWICE, True), ("dep-suffix-a", TWICE, True), ("dep-contains-comma", TWICE, False),
    ("dep-regex-b", TWICE, True), ("dep-regex-a,b", TWICE, False),
    ("a-and-b", TWICE, True), ("a-and-not-b", TWICE, False), ("a-and-not-b", x_a("a", "c"), True),
    ("not-a", x_a("a", "a"), False),
    # three times
    ("exact-c", THRICE, True), ("exact-a,b,c", THRICE, False), ("not-b", THRICE, False),
    # one line holding a comma is one value
    ("exact-a,b", ONE_LINE, True), ("exact-a", ONE_LINE, False), ("contains-comma", ONE_LINE, True),
    ("not-a", ONE_LINE, True), ("not-a,b", ONE_LINE, False), ("dep-regex-a,b", ONE_LINE, True),
    ("exact-a,b", x_a("a,b", "c"), True),
    # empty values count as values
    ("exact-empty", x_a("", "b"), True),
    # missing
    ("absent", [], True), ("missing-empty", [], True), ("not-a", [], False), ("not-present", [], True),
    # Envoy's inline headers: the lines are folded into one value ("a,b"), empty values left out
    ("accept-a,b", ["accept: a", "accept: b"], True), ("accept-a", ["accept: a", "accept: b"], False),
    ("accept-not-a", ["accept: a", "accept: b"], True),
    ("accept-b", ["accept: ", "accept: b"], True), ("accept-a", ["accept: a", "accept: "], True),
    ("user-agent-a,b", ["user-agent: a", "user-agent: b"], True),
    ("xff-a,b", ["x-forwarded-for: a", "x-forwarded-for: b"], True),
    # other well-known headers are matched value by value too
    ("cookie-b", ["cookie: a", "cookie: b"], True), ("cookie-a;b", ["cookie: a", "cookie: b"], False),
    ("cookie-a,b", ["cookie: a", "cookie: b"], False), ("set-cookie-b", ["set-cookie: a", "set-cookie: b"], True),
    ("accept-language-b", ["accept-language: a", "accept-language: b"], True),
])  # fmt: skip
def test_repeated_header(proxy: RunningProxy, route_id: str, lines: list[str], hit: bool) -> None:
    assert ask(proxy, f"/m/{route_id}", lines) == (route_id if hit else "none")


def test_first_route_whose_matcher_passes_answers(proxy: RunningProxy) -> None:
    assert ask(proxy, "/order", TWICE) == "value-b"
    assert ask(proxy, "/order", ONE_LINE) == "joined"
    assert ask(proxy, "/order", x_a("c")) == "none"


def test_host_matcher_reads_the_authority(proxy: RunningProxy) -> None:
    """In absolute form the authority is the URI's: a `host` matcher sees it, not the Host line."""
    assert ask(proxy, "http://x/m/host-x", [], host="other") == "host-x"
    assert ask(proxy, "http://x/m/host-other", [], host="other") == "none"
    assert ask(proxy, "http://x/m/authority-x", [], host="other") == "authority-x"
    assert ask(proxy, "/m/host-x", [], host="x") == "host-x"


def test_method_and_scheme_matchers_read_the_request(proxy: RunningProxy) -> None:
    assert ask(proxy, "/m/method-get", []) == "method-get"
    assert ask(proxy, "/m/method-post", []) == "none"
    assert ask(proxy, "/m/scheme-http", []) == "scheme-http"


@pytest.mark.parametrize(("route_id", "query", "hit"), [
    ("q-1", "a=1&a=2", True), ("q-2", "a=1&a=2", False), ("q-2", "a=2&a=1", True),
    ("q-1,2", "a=1&a=2", False), ("q-1,2", "a=1,2", True), ("q-empty", "a=&a=2", True),
    ("q-present", "a=1&a=2", True), ("q-absent", "a=1&a=2", False), ("q-absent", "b=1", True),
])  # fmt: skip
def test_repeated_query_parameter_is_matched_on_its_first_value(proxy: RunningProxy, route_id: str, query: str,
                                                                 hit: bool) -> None:
    assert ask(proxy, f"/m/{route_id}?{query}", []) == (route_id if hit else "none")


def test_inline_header_list_is_envoys() -> None:
    """pylon's list of headers Envoy folds is the request header map Envoy 1.40 logs at start-up."""
    from pylon.proxy.router import ENVOY_INLINE_REQUEST_HEADERS

    if not ENVOY_BIN.exists():
        pytest.skip(f"Envoy, the reference, is not installed at {ENVOY_BIN}")
    bootstrap = '{"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}}'
    run = subprocess.run([str(ENVOY_BIN), "--config-yaml", bootstrap, "--mode", "init_only", "--use-dynamic-base-id",
                          "-l", "info"], capture_output=True, text=True, timeout=60)
    found = re.search(r"request header map: \d+ bytes: (\S+)", run.stderr + run.stdout)
    assert found is not None, (run.stderr + run.stdout)[-2000:]
    envoy = {name for name in found[1].split(",") if not name.startswith(":")}
    assert {name.decode() for name in ENVOY_INLINE_REQUEST_HEADERS} == envoy

"""Integration: envoy.filters.http.ext_authz with an HTTP authorization service, through pylon and Envoy 1.40.

One proxy with several listeners, each an ext_authz configuration in front of the same upstream, and an
authorization server in the test that allows (200 with headers), denies (401 with a body and headers), fails
(503), answers too late (after the 250 ms timeout), or is not there at all (a cluster on a closed port). Every
test runs through both proxies and asserts what Envoy 1.40 does (each expectation was first observed there):
the client's status, body and headers, whether and how the upstream saw the request, what the authorization
server was asked, the stats and the access log. The access-control part: a denied request, and an erroring
check without failure_mode_allow, never reach the upstream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster,
)
from tests.proxy.upstreams import Upstream

AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.ext_authz"


class _Authz(BaseHTTPRequestHandler):
    """The authorization server: what it answers depends on the (prefixed) path it is asked about."""

    protocol_version = "HTTP/1.1"
    server: "AuthzServer"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append({"method": self.command, "path": self.path, "body": body,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})
        path = self.path
        headers: list[tuple[str, str]] = []
        if "deny" in path:
            status, out = 401, b"denied by policy"
            headers = [("x-reason", "bad token"), ("www-authenticate", "Bearer"), ("content-type", "text/html")]
        elif "error" in path:
            status, out = 503, b"authz is sick"
        elif "slow" in path:
            time.sleep(1.0)
            status, out = 200, b""
        else:
            status, out = 200, b"allowed"
            headers = [("x-current-user", "alice"), ("x-append", "appended"), ("x-other", "on-success"),
                       ("x-not-listed", "no"), ("x-envoy-auth-headers-to-remove", "x-drop-me")]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET


class AuthzServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Authz)
        self.lock = threading.Lock()
        self.seen: list[dict[str, Any]] = []
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def authz(cluster: str = "authz", **fields: Any) -> dict[str, Any]:
    service = {"server_uri": {"uri": "http://authz", "cluster": cluster, "timeout": "0.25s"},
               **fields.pop("service", {})}
    return {"@type": AUTHZ_TYPE, "http_service": service, **fields}


MAIN = authz(service={"authorization_response": {
    "allowed_upstream_headers": {"patterns": [{"exact": "x-current-user"}]},
    "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-append"}]},
    "allowed_client_headers_on_success": {"patterns": [{"exact": "x-other"}]}}})
LISTENERS: dict[str, dict[str, Any]] = {
    "main": MAIN,
    "body": authz(with_request_body={"max_request_bytes": 3, "allow_partial_message": True}, service={
        "path_prefix": "/pre",
        "authorization_request": {"allowed_headers": {"patterns": [{"exact": "x-foo"}]},
                                  "headers_to_add": [{"key": "x-added", "value": "v"}]},
        "authorization_response": {"allowed_client_headers": {"patterns": [{"exact": "x-reason"}]}}}),
    "strict": authz(with_request_body={"max_request_bytes": 3}),
    "down": authz("down"),
    "open": authz("down", failure_mode_allow=True, failure_mode_allow_header_add=True),
    "on_error": authz("down", status_on_error={"code": "ServiceUnavailable"}),
    "off": authz(filter_enabled={"default_value": {"numerator": 0}}),
    "off_deny": authz(filter_enabled={"default_value": {"numerator": 0}}, deny_at_disable={"default_value": True}),
    "reroute": {**MAIN, "clear_route_cache": True},
}


def listener(name: str, port: int, log: Path, config: dict[str, Any]) -> dict[str, Any]:
    disabled = {NAME: {"@type": PER_ROUTE_TYPE, "disabled": True}}
    routes = [{**route("/public", "up"), "typed_per_filter_config": disabled},
              {**route("/nobody", "up"), "typed_per_filter_config": {NAME: {
                  "@type": PER_ROUTE_TYPE, "check_settings": {"disable_request_body_buffering": True,
                                                              "context_extensions": {"k": "v"}}}}},
              {"match": {"prefix": "/", "headers": [{"name": "x-current-user", "string_match": {"exact": "alice"}}]},
               "direct_response": {"status": 200, "body": {"inline_string": "alice's"}}},
              route("/", "up")]
    result = http_listener(name, port, routes, access_log=json_access_log(log))
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": NAME, "typed_config": config},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream, authz: AuthzServer,
                 logs: dict[str, Path]) -> None:
        self.proxy, self.ports, self.upstream, self.authz, self.logs = proxy, ports, upstream, authz, logs

    def ask(self, listener: str, path: str, method: str = "GET", body: bytes = b"", **headers: str
            ) -> tuple[httpx.Response, dict[str, Any] | None, dict[str, Any] | None]:
        """(the client's response, what the upstream saw or None, what the authz server saw or None)."""
        with self.authz.lock:
            self.authz.seen.clear()
        before = len(self.upstream.requests)
        sent = {"authorization": "Bearer t", "x-foo": "foo", **{k.replace("_", "-"): v for k, v in headers.items()}}
        reply = httpx.request(method, f"http://127.0.0.1:{self.ports[listener]}{path}", headers=sent, content=body,
                              timeout=5)
        requests = self.upstream.requests
        with self.authz.lock:
            seen = self.authz.seen[-1] if self.authz.seen else None
        return reply, requests[-1] if len(requests) > before else None, seen

    def stats(self, listener: str) -> dict[str, int]:
        prefix = f"http.{listener}.ext_authz."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation = request.param
    directory = tmp_path_factory.mktemp(f"ext-authz-{implementation}")
    upstream = Upstream()
    server = AuthzServer()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in LISTENERS}
        logs = {name: directory / f"{name}.log" for name in LISTENERS}
        proxy = launcher.start([listener(name, ports[name], logs[name], config) for name, config in LISTENERS.items()],
                               [static_cluster("up", [upstream.port]), static_cluster("authz", [server.port]),
                                static_cluster("down", [free_port()])], implementation=implementation)
        yield Setup(proxy, ports, upstream, server, logs)
    finally:
        launcher.close()
        upstream.close()
        server.close()


def test_allowed_request_goes_upstream_with_the_answers_headers(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/allow?q=1", x_drop_me="gone", x_current_user="forged")
    assert (reply.status_code, reply.text) == (200, "ok\n")
    assert reply.headers.get("x-other") == "on-success" and "x-current-user" not in reply.headers
    assert upstream is not None
    assert upstream["path"] == "/allow?q=1"
    assert upstream["headers"]["x-current-user"] == "alice"  # replaces the client's
    assert upstream["headers"]["x-append"] == "appended"
    assert "x-drop-me" not in upstream["headers"] and "x-not-listed" not in upstream["headers"]
    assert asked is not None
    assert (asked["method"], asked["path"], asked["body"]) == ("GET", "/allow?q=1", b"")
    assert asked["headers"]["authorization"] == "Bearer t"
    assert asked["headers"]["content-length"] == "0"
    assert asked["headers"]["x-envoy-expected-rq-timeout-ms"] == "250"
    assert "x-foo" not in asked["headers"]  # not an allowed header


def test_denied_request_never_reaches_the_upstream(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/deny", method="POST", body=b"payload")
    assert upstream is None
    assert asked is not None and asked["method"] == "POST"
    assert (reply.status_code, reply.content) == (401, b"denied by policy")
    assert reply.headers["x-reason"] == "bad token" and reply.headers["www-authenticate"] == "Bearer"
    assert reply.headers["content-type"] == "text/html"
    # with allowed_client_headers: only those, plus www-authenticate; the body is the server's
    reply, upstream, _ = setup.ask("body", "/deny")
    assert upstream is None
    assert (reply.status_code, reply.content) == (401, b"denied by policy")
    assert reply.headers["x-reason"] == "bad token" and reply.headers["www-authenticate"] == "Bearer"
    assert reply.headers["content-type"] == "text/plain"


def test_errors_and_timeouts_fail_closed_by_default(setup: Setup) -> None:
    for listener, path in (("main", "/error"), ("main", "/slow"), ("down", "/")):
        reply, upstream, _ = setup.ask(listener, path)
        assert (listener, path, reply.status_code, reply.content, upstream) == (listener, path, 403, b"", None)
    reply, upstream, _ = setup.ask("on_error", "/")
    assert (reply.status_code, reply.content, upstream) == (503, b"", None)


def test_failure_mode_allow_lets_the_request_go_and_says_so(setup: Setup) -> None:
    reply, upstream, _ = setup.ask("open", "/")
    assert reply.status_code == 200 and upstream is not None
    assert upstream["headers"]["x-envoy-auth-failure-mode-allowed"] == "true"


def test_request_body_is_sent_to_the_server(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("body", "/allow", method="POST", body=b"hello")
    assert reply.status_code == 200 and upstream is not None
    assert asked is not None
    assert (asked["path"], asked["body"]) == ("/pre/allow", b"hel")
    assert asked["headers"]["x-envoy-auth-partial-body"] == "true"
    assert asked["headers"]["content-length"] == "3"
    assert (asked["headers"]["x-foo"], asked["headers"]["x-added"]) == ("foo", "v")
    _, _, whole = setup.ask("body", "/allow", method="POST", body=b"hi")
    assert whole is not None and whole["body"] == b"hi" and whole["headers"]["x-envoy-auth-partial-body"] == "false"
    _, _, none = setup.ask("body", "/allow")
    assert none is not None and "x-envoy-auth-partial-body" not in none["headers"]
    # a route that turns buffering off: checked at once, without the body
    _, upstream, unbuffered = setup.ask("body", "/nobody", method="POST", body=b"hello")
    assert upstream is not None and unbuffered is not None and unbuffered["body"] == b""


def test_a_body_over_the_limit_without_partial_messages_is_413(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("strict", "/allow", method="POST", body=b"hello")
    assert (reply.status_code, upstream, asked) == (413, None, None)
    reply, upstream, asked = setup.ask("strict", "/allow", method="POST", body=b"hey")
    assert reply.status_code == 200 and asked is not None and asked["body"] == b"hey"


def test_disabled_by_route_or_by_filter_enabled(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/public/deny")
    assert (reply.status_code, asked) == (200, None) and upstream is not None
    reply, upstream, asked = setup.ask("off", "/deny")
    assert (reply.status_code, asked) == (200, None) and upstream is not None
    reply, upstream, asked = setup.ask("off_deny", "/")
    assert (reply.status_code, reply.content, upstream, asked) == (403, b"", None, None)


def test_stats_and_access_log(setup: Setup) -> None:
    names = {"ok", "denied", "error", "disabled", "failure_mode_allowed"}
    before = {name: setup.stats(name) for name in ("main", "open", "off")}
    setup.ask("main", "/allow")
    setup.ask("main", "/deny")
    setup.ask("main", "/error")
    setup.ask("main", "/public/deny")  # disabled by its route: not counted
    setup.ask("open", "/")
    setup.ask("off", "/")
    after = {name: setup.stats(name) for name in ("main", "open", "off")}
    assert names <= set(after["main"])

    def delta(listener: str) -> dict[str, int]:
        return {name: after[listener][name] - before[listener][name] for name in names
                if after[listener][name] != before[listener][name]}

    assert delta("main") == {"ok": 1, "denied": 1, "error": 1}
    assert delta("open") == {"error": 1, "failure_mode_allowed": 1}
    assert delta("off") == {"disabled": 1}
    cluster = {k: v for k, v in setup.proxy.stats().items() if k.startswith("cluster.up.ext_authz.")}
    assert {"cluster.up.ext_authz.ok", "cluster.up.ext_authz.denied", "cluster.up.ext_authz.error"} <= set(cluster)
    lines = read_json_lines(setup.logs["main"], 3)
    by_details = {(line["code"], line["flags"], line["details"]) for line in lines}
    assert (401, "UAEX", "ext_authz_denied") in by_details
    assert (403, "UAEX", "ext_authz_error") in by_details


def test_clear_route_cache_routes_again_with_the_answers_headers(setup: Setup) -> None:
    reply, upstream, _ = setup.ask("reroute", "/allow")
    assert (reply.status_code, reply.text, upstream) == (200, "alice's", None)
    reply, upstream, _ = setup.ask("main", "/allow")  # the route chosen before the check stands
    assert reply.text == "ok\n" and upstream is not None


def test_head_requests_are_checked_as_head(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/allow", method="HEAD")
    assert reply.status_code == 200 and upstream is not None and asked is not None and asked["method"] == "HEAD"
    reply, upstream, _ = setup.ask("main", "/deny", method="HEAD")
    assert (reply.status_code, reply.content, upstream) == (401, b"", None)

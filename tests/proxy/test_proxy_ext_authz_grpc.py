"""Integration: envoy.filters.http.ext_authz with a gRPC authorization service, through pylon and Envoy 1.40.

The authorization server is grpcio's, in the test (tests/proxy/grpc_authz_server.py): it allows with header
edits, denies with or without a DeniedHttpResponse, fails the call, or answers after the 250 ms timeout; a
cluster on a closed port stands for a service that is down. Each expectation was first observed with Envoy 1.40
and both proxies must meet it: the client's response, what the upstream saw, the CheckRequest the server got,
the stats. The access-control part: denied and erroring checks never reach the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.grpc_authz_server import GrpcAuthzServer
from tests.proxy.upstreams import Upstream

AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
NAME = "envoy.filters.http.ext_authz"
HTTP2 = {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}}


def authz(cluster: str = "authz", **fields: Any) -> dict[str, Any]:
    return {"@type": AUTHZ_TYPE, "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "0.25s"},
            **fields}


LISTENERS: dict[str, dict[str, Any]] = {
    "main": authz(with_request_body={"max_request_bytes": 3, "allow_partial_message": True}),
    "bytes": authz(with_request_body={"max_request_bytes": 10, "pack_as_bytes": True}),
    "down": authz("down"),
    "open": authz("down", failure_mode_allow=True, failure_mode_allow_header_add=True),
    "on_error": authz("down", status_on_error={"code": "ServiceUnavailable"}),
}


def listener(name: str, port: int, config: dict[str, Any]) -> dict[str, Any]:
    routes = [{**route("/public", "up"), "typed_per_filter_config": {NAME: {"@type": PER_ROUTE_TYPE,
                                                                           "disabled": True}}},
              {**route("/ctx", "up"), "typed_per_filter_config": {NAME: {
                  "@type": PER_ROUTE_TYPE, "check_settings": {"context_extensions": {"k": "v"}}}}},
              route("/", "up")]
    result = http_listener(name, port, routes)
    filters = result["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    filters.insert(0, {"name": NAME, "typed_config": config})
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream, authz: GrpcAuthzServer
                 ) -> None:
        self.proxy, self.ports, self.upstream, self.authz = proxy, ports, upstream, authz

    def ask(self, listener: str, path: str, method: str = "GET", body: bytes = b"", **headers: str
            ) -> tuple[httpx.Response, dict[str, Any] | None, Any]:
        """(the client's response, what the upstream saw or None, the CheckRequest or None)."""
        self.authz.clear()
        before = len(self.upstream.requests)
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        reply = httpx.request(method, f"http://127.0.0.1:{self.ports[listener]}{path}", headers=sent, content=body,
                              timeout=5)
        requests = self.upstream.requests
        return reply, requests[-1] if len(requests) > before else None, self.authz.last()

    def stats(self, listener: str) -> dict[str, int]:
        prefix = f"http.{listener}.ext_authz."
        return {k[len(prefix):]: v for k, v in self.proxy.stats().items() if k.startswith(prefix)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation = request.param
    directory: Path = tmp_path_factory.mktemp(f"ext-authz-grpc-{implementation}")
    upstream = Upstream()
    server = GrpcAuthzServer()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in LISTENERS}
        proxy = launcher.start([listener(name, ports[name], config) for name, config in LISTENERS.items()],
                               [static_cluster("up", [upstream.port]),
                                static_cluster("authz", [server.port], **HTTP2),
                                static_cluster("down", [free_port()], **HTTP2)], implementation=implementation)
        yield Setup(proxy, ports, upstream, server)
    finally:
        launcher.close()
        upstream.close()
        server.close()


def test_the_check_request_carries_the_request_as_envoy_builds_it(setup: Setup) -> None:
    _, _, asked = setup.ask("main", "/allow?q=1", x_a="1", x_twice="a")
    assert asked is not None
    attributes = asked.attributes
    assert attributes.source.address.socket_address.address == "127.0.0.1"
    assert attributes.destination.address.socket_address.port_value == setup.ports["main"]
    http = attributes.request.http
    host = f"127.0.0.1:{setup.ports['main']}"
    assert (http.method, http.path, http.host, http.scheme, http.protocol, http.size) == (
        "GET", "/allow?q=1", host, "http", "HTTP/1.1", 0)
    assert http.id.isdigit() and attributes.request.time.seconds > 0
    headers = dict(http.headers)
    assert {k: headers.get(k) for k in (":authority", ":path", ":method", ":scheme", "x-a", "x-forwarded-proto")} \
        == {":authority": host, ":path": "/allow?q=1", ":method": "GET", ":scheme": "http", "x-a": "1",
            "x-forwarded-proto": "http"}
    assert "host" not in headers and "connection" not in headers and "x-envoy-auth-partial-body" not in headers
    assert not attributes.context_extensions and not http.body
    assert attributes.HasField("metadata_context") and attributes.HasField("route_metadata_context")


def test_body_and_context_extensions(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/ctx", method="POST", body=b"hello")
    assert reply.status_code == 200 and upstream is not None and asked is not None
    http = asked.attributes.request.http
    assert (http.body, http.size, http.headers["x-envoy-auth-partial-body"]) == ("hel", 5, "true")
    assert dict(asked.attributes.context_extensions) == {"k": "v"}
    _, _, raw = setup.ask("bytes", "/", method="POST", body=b"\xff\x00hi")
    assert raw is not None
    assert (raw.attributes.request.http.raw_body, raw.attributes.request.http.body) == (b"\xff\x00hi", "")
    assert raw.attributes.request.http.headers["x-envoy-auth-partial-body"] == "false"


def test_an_ok_answer_edits_the_upstream_request_and_the_response(setup: Setup) -> None:
    reply, upstream, _ = setup.ask("main", "/allow", x_drop_me="gone", x_current_user="forged", x_append="client",
                                   x_only_if_absent="old", x_action_append="client")
    assert (reply.status_code, reply.text) == (200, "ok\n")
    assert (reply.headers["x-other"], reply.headers["x-resp"]) == ("on-success", "added")
    assert upstream is not None
    seen = dict(upstream["header_list"])
    assert "x-drop-me" not in seen
    # `append: true` joins to the client's value; otherwise the answer's value replaces it (append_action aside)
    assert {k: seen[k] for k in ("x-current-user", "x-append", "x-only-if-absent", "x-action-append")} == {
        "x-current-user": "alice", "x-append": "client,appended", "x-only-if-absent": "new",
        "x-action-append": "appended"}


def test_denied_requests_never_reach_the_upstream(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/deny", method="POST", body=b"payload")
    assert asked is not None and upstream is None
    assert (reply.status_code, reply.content) == (401, b"denied by policy")
    assert (reply.headers["x-reason"], reply.headers["content-type"]) == ("bad token", "text/html")
    for path in ("/deny-plain", "/unauthenticated"):
        reply, upstream, _ = setup.ask("main", path)
        assert (path, reply.status_code, reply.content, upstream) == (path, 403, b"", None)


def test_errors_and_timeouts_fail_closed_by_default(setup: Setup) -> None:
    for listener, path in (("main", "/error"), ("main", "/slow"), ("down", "/")):
        reply, upstream, _ = setup.ask(listener, path)
        assert (listener, path, reply.status_code, reply.content, upstream) == (listener, path, 403, b"", None)
    reply, upstream, _ = setup.ask("on_error", "/")
    assert (reply.status_code, upstream) == (503, None)
    reply, upstream, _ = setup.ask("open", "/")
    assert reply.status_code == 200 and upstream is not None
    assert upstream["headers"]["x-envoy-auth-failure-mode-allowed"] == "true"


def test_route_disabled_and_stats(setup: Setup) -> None:
    reply, upstream, asked = setup.ask("main", "/public/deny")
    assert (reply.status_code, asked) == (200, None) and upstream is not None
    names = ("ok", "denied", "error")
    before = setup.stats("main")
    setup.ask("main", "/allow")
    setup.ask("main", "/deny")
    setup.ask("main", "/error")
    after = setup.stats("main")
    assert {name: after[name] - before[name] for name in names} == {"ok": 1, "denied": 1, "error": 1}
    assert {"cluster.up.ext_authz.ok", "cluster.up.ext_authz.denied"} <= set(setup.proxy.stats())

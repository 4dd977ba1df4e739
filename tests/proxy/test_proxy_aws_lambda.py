"""Integration: envoy.filters.http.aws_lambda through pylon and Envoy 1.40 side by side.

A local server stands in for the Lambda endpoint: it records each Invoke call (method, path, headers, body) and
answers per function (the ARN's name): `hello` a JSON-wrapped response, `echo` the body back, `bad` text that is
not JSON, `boom` a function error. Both proxies get the same credentials in the environment; botocore checks each
signature the stand-in received (service lambda, the ARN's region). `/weighted` is a weighted route whose first
cluster has its own per-filter config: requests to it invoke that function, those to the second the route's,
as Envoy resolves the most specific config (weighted cluster > route > virtual host).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.aws_verify import environment, verify
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.recording_server import recording_server, stop

LAMBDA = "type.googleapis.com/envoy.extensions.filters.http.aws_lambda.v3.Config"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.aws_lambda.v3.PerRouteConfig"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.aws_lambda"
KEY, SECRET = "AKIDLAMBDATEST", "lambda/secret+key"
ARN = "arn:aws:lambda:us-west-2:987654321:function:"
GATEWAY = {"filter_metadata": {"com.amazonaws.lambda": {"egress_gateway": True}}}


def lambda_answer(call: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """The stand-in Lambda: per function (the ARN's name) a wrapped response, an echo, text, or a function error."""
    parts = call["path"].split("/")
    function = parts[3].rsplit(":", 1)[-1] if len(parts) > 3 else ""
    headers = [("content-type", "application/json")]
    if function == "hello":
        return 200, headers, json.dumps({
            "status_code": 201, "headers": {"x-from": "lambda", "content-type": "text/plain"},
            "cookies": ["a=1; HttpOnly", "b=2"], "body": base64.b64encode(b"hi there").decode(),
            "is_base64_encoded": True}).encode()
    if function == "echo":
        return 200, headers, call["body"]
    if function == "boom":
        return 200, [*headers, ("x-amz-function-error", "Unhandled")], b'{"errorMessage": "boom"}'
    return 200, headers, b"this is not JSON"


def _per_route(function: str, **settings: Any) -> dict[str, Any]:
    return {NAME: {"@type": PER_ROUTE, "invoke_config": {"arn": ARN + function, **settings}}}


def _listener(port: int) -> dict[str, Any]:
    weighted = {"match": {"prefix": "/weighted"}, "typed_per_filter_config": _per_route("route_level"),
                "route": {"weighted_clusters": {"clusters": [
                    {"name": "lambda", "weight": 1, "typed_per_filter_config": _per_route("cluster_level")},
                    {"name": "lambda2", "weight": 1}]}}}
    routes = [{**route("/pass", "lambda"), "typed_per_filter_config": _per_route(
                  "echo", payload_passthrough=True, host_rewrite="lambda.example")},
              {**route("/bad", "lambda"), "typed_per_filter_config": _per_route("bad")},
              {**route("/boom", "lambda"), "typed_per_filter_config": _per_route("boom")},
              {**route("/async", "lambda"), "typed_per_filter_config": _per_route("hello",
                                                                                 invocation_mode="ASYNCHRONOUS")},
              weighted, route("/plain", "plain"), route("/", "lambda")]
    listener = http_listener("main", port, routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": NAME, "typed_config": {"@type": LAMBDA, "arn": ARN + "hello"}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return listener


class Setup:
    def __init__(self, implementation: str, proxy: RunningProxy, port: int, servers: list[Any]) -> None:
        self.implementation, self.proxy, self.port, self.servers = implementation, proxy, port, servers

    def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[httpx.Response, dict]:
        server = self.servers[0]
        before = len(server.calls)
        reply = httpx.request(method, f"http://127.0.0.1:{self.port}{path}", content=body or None,
                              headers={"x-custom": "one", **headers}, timeout=10)
        wait_until(lambda: len(server.calls) > before)
        return reply, server.calls[-1]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    servers = [recording_server(lambda_answer) for _ in range(3)]
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"aws-lambda-{request.param}"))
    try:
        port = free_port()
        clusters = [static_cluster("lambda", [servers[0].server_address[1]], metadata=GATEWAY),
                    static_cluster("lambda2", [servers[1].server_address[1]], metadata=GATEWAY),
                    static_cluster("plain", [servers[2].server_address[1]])]
        with environment(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=None):
            proxy = launcher.start([_listener(port)], clusters, implementation=request.param)
        yield Setup(request.param, proxy, port, servers)
    finally:
        launcher.close()
        for server in servers:
            stop(server)


def _signed(call: dict) -> list[str]:
    names = verify(call["method"], call["path"], call["header_list"], call["body"], key=KEY, secret=SECRET)
    assert "/us-west-2/lambda/aws4_request," in dict(call["header_list"])["authorization"]
    return names


def test_a_request_is_wrapped_in_json_and_the_answer_unwrapped(setup: Setup) -> None:
    reply, call = setup.send("PUT", "/items/7?a=1&b=2&a=3", b'{"k": "v"}', **{"content-type": "application/json"})
    assert (call["method"], call["path"]) == ("POST", f"/2015-03-31/functions/{ARN}hello/invocations")
    headers = dict(call["header_list"])
    assert headers["x-amz-invocation-type"] == "RequestResponse"
    assert headers["content-type"] == "application/json"
    sent = json.loads(call["body"])
    assert sent["raw_path"] == "/items/7?a=1&b=2&a=3" and sent["method"] == "PUT"
    assert sent["query_string_parameters"] == {"a": "1", "b": "2"}
    assert (sent["body"], sent["is_base64_encoded"]) == ('{"k": "v"}', False)
    assert sent["headers"]["x-custom"] == "one" and sent["headers"]["content-type"] == "application/json"
    assert "content-length" in _signed(call)
    assert reply.status_code == 201 and reply.content == b"hi there"
    assert reply.headers["x-from"] == "lambda" and reply.headers["content-type"] == "text/plain"
    assert reply.headers.get_list("set-cookie") == ["a=1; HttpOnly", "b=2"]


def test_a_binary_body_goes_base64_and_a_bodiless_request_as_empty_text(setup: Setup) -> None:
    _, call = setup.send("POST", "/bin", b"\x00\x01\xff", **{"content-type": "application/octet-stream"})
    sent = json.loads(call["body"])
    assert (base64.b64decode(sent["body"]), sent["is_base64_encoded"]) == (b"\x00\x01\xff", True)
    _signed(call)
    _, call = setup.send("GET", "/nobody")
    sent = json.loads(call["body"])
    assert (sent["method"], sent["body"], sent["is_base64_encoded"]) == ("GET", "", False)
    _signed(call)


def test_passthrough_sends_the_body_as_it_came_and_relays_the_answer(setup: Setup) -> None:
    reply, call = setup.send("POST", "/pass", b"raw bytes")
    assert call["body"] == b"raw bytes" and dict(call["header_list"])["host"] == "lambda.example"
    _signed(call)
    assert reply.status_code == 200 and reply.content == b"raw bytes"


def test_an_answer_that_is_not_json_is_a_500_and_a_function_error_goes_back_as_it_is(setup: Setup) -> None:
    reply, _ = setup.send("GET", "/bad")
    assert (reply.status_code, reply.content) == (500, b"")
    assert setup.proxy.stats().get("http.main.aws_lambda.server_error", 0) >= 1
    reply, _ = setup.send("GET", "/boom")
    assert reply.status_code == 200 and reply.headers["x-amz-function-error"] == "Unhandled"
    assert json.loads(reply.content) == {"errorMessage": "boom"}


def test_an_asynchronous_invocation_relays_the_answer_unwrapped(setup: Setup) -> None:
    reply, call = setup.send("GET", "/async")
    assert dict(call["header_list"])["x-amz-invocation-type"] == "Event"
    assert json.loads(reply.content)["status_code"] == 201


def test_a_cluster_without_the_lambda_metadata_is_left_alone(setup: Setup) -> None:
    plain = setup.servers[2]
    before = len(plain.calls)
    reply = httpx.get(f"http://127.0.0.1:{setup.port}/plain/x", timeout=10)
    wait_until(lambda: len(plain.calls) > before)
    call = plain.calls[-1]
    assert (call["method"], call["path"]) == ("GET", "/plain/x")
    assert "authorization" not in dict(call["header_list"])
    assert (reply.status_code, reply.content) == (200, b"this is not JSON")  # relayed as it came


def test_a_weighted_clusters_config_is_the_most_specific(setup: Setup) -> None:
    first, second = setup.servers[0], setup.servers[1]
    before = (len(first.calls), len(second.calls))
    for _ in range(16):
        httpx.get(f"http://127.0.0.1:{setup.port}/weighted", timeout=10)
    wait_until(lambda: len(first.calls) - before[0] + len(second.calls) - before[1] >= 16)
    to_first = [c["path"] for c in first.calls[before[0]:]]
    to_second = [c["path"] for c in second.calls[before[1]:]]
    assert to_first and to_second  # both picked (each request: one chance in two)
    assert set(to_first) == {f"/2015-03-31/functions/{ARN}cluster_level/invocations"}
    assert set(to_second) == {f"/2015-03-31/functions/{ARN}route_level/invocations"}

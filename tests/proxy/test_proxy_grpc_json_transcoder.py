"""Integration: envoy.filters.http.grpc_json_transcoder in front of a grpcio service, through pylon and Envoy 1.40.

The bookstore service (tests/extensions/filters/common/bookstore.py) runs on grpcio over h2c; the proxy's
routes send `/bookstore.Bookstore/` to it and everything else to an HTTP/1.1 upstream, so a transcoded request
reaches the service only because the route is chosen again for its new path (Envoy's clearRouteCache).
Each JSON request and answer is compared with what Envoy gives for the same request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.extensions.filters.common.bookstore import descriptor_set, serve_bookstore
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp(f"transcoder-{request.param}")
    descriptors = directory / "bookstore.pb"
    descriptors.write_bytes(descriptor_set())
    grpc_port = free_port()
    server = serve_bookstore(grpc_port)
    web = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        listener = http_listener("main", free_port(), [route("/bookstore.Bookstore/", "grpc"), route("/", "web")])
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
            "name": "envoy.filters.http.grpc_json_transcoder", "typed_config": {
                "@type": TYPE, "proto_descriptor": str(descriptors), "services": ["bookstore.Bookstore"],
                "auto_mapping": True, "print_options": {"preserve_proto_field_names": True}}})
        grpc_cluster = static_cluster("grpc", [grpc_port])
        grpc_cluster["typed_extension_protocol_options"] = {OPTIONS: {
            "@type": f"type.googleapis.com/{OPTIONS}", "explicit_http_config": {"http2_protocol_options": {}}}}
        yield launcher.start([listener], [grpc_cluster, static_cluster("web", [web.port])],
                             implementation=request.param)
    finally:
        launcher.close()
        server.stop(0)
        web.close()


def call(proxy: RunningProxy, method: str, path: str, body: Any = None) -> httpx.Response:
    content = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"content-type": "application/json"} if content is not None else {}
    return httpx.request(method, proxy.url("main", path), content=content, headers=headers, timeout=10)


def test_rules_with_path_variables_query_and_body(proxy: RunningProxy) -> None:
    reply = call(proxy, "GET", "/v1/shelves/12")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {"id": "12", "theme": "theme-12"}
    reply = call(proxy, "POST", "/v1/shelves", {"theme": "x", "tags": ["a", "b"]})
    assert (reply.status_code, reply.json()) == (200, {"id": "99", "theme": "x", "tags": ["a", "b"]})
    reply = call(proxy, "GET", "/v1/shelves/7/books?author=bob&page_size=3")
    assert reply.status_code == 200
    assert reply.json() == {"books": [{"id": str(i), "author": "bob", "title": f"book {i} of 7"} for i in (1, 2, 3)]}
    reply = call(proxy, "PUT", "/v1/echo/5", {"theme": "t"})  # an additional binding: {id} from the path
    assert (reply.status_code, reply.json()) == (200, {"id": "5", "theme": "t"})


def test_a_server_stream_becomes_a_json_array(proxy: RunningProxy) -> None:
    reply = call(proxy, "GET", "/v1/shelves/4/books:stream?page_size=2")
    assert reply.status_code == 200
    assert reply.json() == [{"id": "1", "author": "anon", "title": "book 1 of 4"},
                            {"id": "2", "author": "anon", "title": "book 2 of 4"}]


def test_auto_mapping_reaches_a_method_without_a_rule(proxy: RunningProxy) -> None:
    reply = call(proxy, "POST", "/bookstore.Bookstore/Hidden", {"id": "4", "theme": "h"})
    assert (reply.status_code, reply.json()) == (200, {"id": "4", "theme": "h"})


def test_a_grpc_error_becomes_its_http_status(proxy: RunningProxy) -> None:
    reply = call(proxy, "GET", "/v1/fail/5")  # a trailers-only answer: its head, with the HTTP status
    assert reply.status_code == 404 and reply.headers["content-type"] == "application/grpc" and reply.content == b""
    assert reply.headers["grpc-status"] == "5" and reply.headers["grpc-message"] == "failed with 5"
    reply = call(proxy, "GET", "/v1/fail/14")
    assert reply.status_code == 503 and reply.headers["grpc-status"] == "14"


def test_values_that_cannot_become_the_message_are_400(proxy: RunningProxy) -> None:
    reply = call(proxy, "GET", "/v1/shelves/twelve")
    assert (reply.status_code, reply.text) == (400, 'shelf: invalid value "twelve" for type TYPE_INT64')
    reply = call(proxy, "GET", "/v1/shelves/7/books?page_size=abc")
    assert (reply.status_code, reply.text) == (400, 'page_size: invalid value "abc" for type TYPE_INT32')
    assert call(proxy, "POST", "/v1/shelves", b"{not json").status_code == 400  # (the parsers' words differ)


def test_json_fields_unknown_are_ignored_and_the_query_wins_over_the_path(proxy: RunningProxy) -> None:
    reply = call(proxy, "POST", "/v1/shelves", {"nope": 1})
    assert (reply.status_code, reply.json()) == (200, {"id": "99"})
    assert call(proxy, "GET", "/v1/shelves/12?shelf=13").json() == {"id": "13", "theme": "theme-13"}


@pytest.mark.parametrize("path", ["/v2/other", "/v1/shelves/12?nope=1", "/v1/shelves/7/books?author.x=1"])
def test_what_fits_no_rule_passes_unchanged(proxy: RunningProxy, path: str) -> None:
    """No rule, or a query parameter no field of the rule's message takes: the request is not transcoded."""
    reply = call(proxy, "GET", path)
    assert (reply.status_code, reply.text) == (200, "ok\n")  # the HTTP/1.1 upstream's answer

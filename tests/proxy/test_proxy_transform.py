"""Integration: envoy.filters.http.transform through pylon and Envoy 1.40 alike.

The filter's config is that of Envoy's docs' transform_filter.yaml (a request header from the body's `model`, the
body's `model` merged over, response headers from the answer's `usage`), plus headers of every kind of body value,
a per-route override, REPLACE with text and JSON formats, and a small buffer limit. The upstream echoes the body
it got with the request's content-type, so the response rules read what the request rules made. What the upstream
saw and what the client got are compared with fixed expectations that both proxies must meet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, static_cluster, wait_until, write_bootstrap
from tests.proxy.metadata_gateway import validate
from tests.proxy.upstreams import Upstream

TRANSFORM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.transform.v3.TransformConfig"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _set(key: str, value: str) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}


OWN = {"@type": TRANSFORM_TYPE,
       "request_transformation": {
           "headers_mutations": [_set("model-header", "%REQUEST_BODY(model)%"), _set("x-n", "%REQUEST_BODY(n)%"),
                                 _set("x-obj", "%REQUEST_BODY(obj)%"), _set("x-flag", "%REQUEST_BODY(flag)%"),
                                 _set("x-missing", "%REQUEST_BODY(nope)%"), _set("x-null", "%REQUEST_BODY(null)%"),
                                 _set("x-deep", "at %REQUEST_BODY(obj:a)% from %REQ(x-client)%")],
           "body_transformation": {"body_format": {"json_format": {"model": "new-model",
                                                                   "was": "%REQUEST_BODY(model)%"}},
                                   "action": "MERGE"}},
       "response_transformation": {
           "headers_mutations": [_set("prompt-tokens", "%RESPONSE_BODY(usage:prompt_tokens)%"),
                                 _set("completion-tokens", "%RESPONSE_BODY(usage:completion_tokens)%"),
                                 _set("request-model", "%REQUEST_BODY(model)%")]}}
OVERRIDE = {"@type": TRANSFORM_TYPE, "request_transformation": {
    "headers_mutations": [_set("override", "%REQUEST_BODY(model)%")]}}
REPLACE_TEXT = {"@type": TRANSFORM_TYPE, "request_transformation": {"body_transformation": {
    "body_format": {"text_format": "model=%REQUEST_BODY(model)% n=%REQUEST_BODY(n)% none=%REQUEST_BODY(nope)%",
                    "content_type": "text/plain"}, "action": "REPLACE"}}}
REPLACE_JSON = {"@type": TRANSFORM_TYPE, "response_transformation": {"body_transformation": {
    "body_format": {"json_format": {"z": "%RESPONSE_BODY(usage)%", "a": "%RESPONSE_BODY(model)%",
                                    "m": "%RESPONSE_BODY(nope)%"}},
    "action": "REPLACE"}}}


REROUTE = {"@type": TRANSFORM_TYPE, "clear_route_cache": True, "request_transformation": {
    "headers_mutations": [_set("x-go", "%REQUEST_BODY(go)%")]}}


def _listener(port: int, buffer_limit: int | None = None) -> dict[str, Any]:
    routes = [
        {"match": {"prefix": "/", "headers": [{"name": "x-go", "string_match": {"exact": "there"}}]},
         "route": {"cluster": "up", "prefix_rewrite": "/rerouted/"}},
        {"match": {"prefix": "/reroute"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"transform": REROUTE}},
        {"match": {"prefix": "/override"}, "route": {"cluster": "up", "prefix_rewrite": "/echo"},
         "typed_per_filter_config": {"transform": OVERRIDE}},
        {"match": {"prefix": "/text"}, "route": {"cluster": "up", "prefix_rewrite": "/echo"},
         "typed_per_filter_config": {"transform": REPLACE_TEXT}},
        {"match": {"prefix": "/json"}, "route": {"cluster": "up", "prefix_rewrite": "/echo"},
         "typed_per_filter_config": {"transform": REPLACE_JSON}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
    ]
    listener = http_listener("main", port, routes, http_filters=[
        {"name": "transform", "typed_config": OWN},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ])
    if buffer_limit is not None:
        listener["per_connection_buffer_limit_bytes"] = buffer_limit
    return listener


@pytest.fixture
def gateway(implementation: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, int, Upstream]]:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        proxy = launcher.start([_listener(port, getattr(request, "param", None))],
                               [static_cluster("up", [upstream.port])], implementation=implementation)
        yield proxy, port, upstream
    finally:
        launcher.close()
        upstream.close()


BODY = {"model": "gpt-4", "usage": {"prompt_tokens": 10, "completion_tokens": 20}, "n": 1.5, "flag": True,
        "obj": {"b": [1, "x"], "a": 7}, "null": None, "big": 12345678901}
SENT = json.dumps(BODY).encode()
MERGED = (b'{"big":12345678901,"flag":true,"model":"new-model","n":1.5,"null":null,"obj":{"a":7,"b":[1,"x"]},'
          b'"usage":{"completion_tokens":20,"prompt_tokens":10},"was":"gpt-4"}')


def _counters(proxy: Any) -> dict[str, int]:
    return {k: v for k, v in proxy.stats().items() if "http_transform" in k and v}


def test_the_docs_transformation(gateway: tuple[Any, int, Upstream]) -> None:
    proxy, port, upstream = gateway
    response = httpx.post(f"http://127.0.0.1:{port}/echo", content=SENT,
                          headers={"content-type": "application/json", "x-client": "c1"}, timeout=10)
    assert response.status_code == 200
    [seen] = upstream.requests
    assert upstream.echoed == [MERGED]
    # Envoy sends a new body chunked, pylon with its length (a departure): either way it is the new one's.
    assert seen["headers"].get("content-length", str(len(MERGED))) == str(len(MERGED))
    assert {name: seen["headers"].get(name) for name in ("model-header", "x-n", "x-obj", "x-flag", "x-missing",
                                                         "x-null", "x-deep")} == {
        "model-header": "gpt-4", "x-n": "1.5", "x-obj": '{"a":7,"b":[1,"x"]}', "x-flag": "true", "x-missing": None,
        "x-null": None, "x-deep": "at 7 from c1"}
    # The response: the echoed (merged) body, headers from it, and the request's model as merged.
    assert response.content == MERGED
    assert (response.headers["prompt-tokens"], response.headers["completion-tokens"]) == ("10", "20")
    assert response.headers["request-model"] == "new-model"
    expected = {"http.main..http_transform.rq_transformed": 1, "http.main..http_transform.rs_transformed": 1}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)


def test_what_is_left_alone(gateway: tuple[Any, int, Upstream]) -> None:
    proxy, port, upstream = gateway
    sends = [({"content-type": "text/plain"}, SENT), ({"content-type": "application/json"}, b'{"model": bad'),
             ({"content-type": "application/json"}, b'["model"]'), ({"content-type": "application/json"}, b"")]
    for headers, body in sends:
        response = httpx.post(f"http://127.0.0.1:{port}/echo", content=body, headers=headers, timeout=10)
        assert (response.status_code, response.content) == (200, body)
        assert "prompt-tokens" not in response.headers
    assert upstream.echoed == [body for _, body in sends]
    assert all("model-header" not in seen["headers"] for seen in upstream.requests)
    assert _counters(proxy) == {}


def test_a_route_replaces_the_config(gateway: tuple[Any, int, Upstream]) -> None:
    proxy, port, upstream = gateway
    response = httpx.post(f"http://127.0.0.1:{port}/override", content=SENT,
                          headers={"content-type": "application/json; charset=utf-8"}, timeout=10)
    assert response.content == SENT
    assert "prompt-tokens" not in response.headers
    [seen] = upstream.requests
    assert (seen["headers"].get("override"), seen["headers"].get("model-header")) == ("gpt-4", None)
    assert seen["headers"]["content-length"] == str(len(SENT))
    text = httpx.post(f"http://127.0.0.1:{port}/text", content=SENT, headers={"content-type": "application/json"},
                      timeout=10)
    assert text.content == b"model=gpt-4 n=1.5 none=-"
    assert upstream.requests[1]["headers"]["content-type"] == "text/plain"
    replaced = httpx.post(f"http://127.0.0.1:{port}/json", content=SENT, headers={"content-type": "application/json"},
                          timeout=10)
    # A JSON format's keys come out sorted, as Envoy writes the Struct it makes.
    assert replaced.content == b'{"a":"gpt-4","m":null,"z":{"completion_tokens":20,"prompt_tokens":10}}\n'
    assert replaced.headers.get("content-length", str(len(replaced.content))) == str(len(replaced.content))
    assert replaced.headers["content-type"] == "application/json"
    expected = {"http.main..http_transform.rq_transformed": 2, "http.main..http_transform.rs_transformed": 1}
    assert wait_until(lambda: _counters(proxy) == expected, timeout=10), _counters(proxy)


def test_clear_route_cache_routes_again(gateway: tuple[Any, int, Upstream]) -> None:
    proxy, port, upstream = gateway
    for go in ("there", "elsewhere"):
        response = httpx.post(f"http://127.0.0.1:{port}/reroute", content=json.dumps({"go": go}).encode(),
                              headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 200
    assert upstream.paths() == ["/rerouted/reroute", "/reroute"]
    assert [seen["headers"]["x-go"] for seen in upstream.requests] == ["there", "elsewhere"]


@pytest.mark.parametrize("gateway", [1024], indirect=True)
def test_a_body_over_the_buffer_limit(gateway: tuple[Any, int, Upstream]) -> None:
    proxy, port, upstream = gateway
    big = json.dumps({"model": "m", "pad": "x" * 4096}).encode()
    response = httpx.post(f"http://127.0.0.1:{port}/echo", content=big, headers={"content-type": "application/json"},
                          timeout=10)
    assert response.status_code == 413
    assert upstream.echoed == []
    plain = httpx.post(f"http://127.0.0.1:{port}/echo", content=big, headers={"content-type": "text/plain"},
                       timeout=10)
    assert (plain.status_code, plain.content) == (200, big)  # not buffered: it streams through


def test_refusals(tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        for config, implementations, message in [
            ({**OWN, "clear_route_cache": True, "clear_cluster_cache": True}, ("pylon", "envoy"),
             "Only one of clear_cluster_cache and clear_route_cache can be set to true"),
            ({**OWN, "clear_cluster_cache": True}, ("pylon",), "clear_cluster_cache"),
            ({"@type": TRANSFORM_TYPE, "request_transformation": {"headers_mutations": [
                _set("x", "%NO_SUCH_COMMAND%")]}}, ("pylon", "envoy"), "NO_SUCH_COMMAND"),
            ({"@type": TRANSFORM_TYPE, "request_transformation": {"body_transformation": {"action": "MERGE"}}},
             ("pylon", "envoy"), "ody"),  # Envoy: BodyFormat, pylon: body_format
        ]:
            listener = http_listener("main", free_port(), [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                                     http_filters=[{"name": "transform", "typed_config": config},
                                                   {"name": "envoy.filters.http.router",
                                                    "typed_config": {"@type": ROUTER_TYPE}}])
            path = write_bootstrap(tmp_path / "refused.yaml", [listener], [static_cluster("up", [free_port()])],
                                   free_port())
            for implementation in implementations:
                code, out = validate(implementation, launcher, path)
                assert code != 0 and message in out, (implementation, out)
    finally:
        launcher.close()

"""Integration: routing, rewrites, header rules and HTTP/1.1 semantics through a real `pylon proxy`.

One proxy (and three upstreams) serve the whole module; every test uses its
own paths or counts deltas, so the tests stay independent of their order.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from pylon.proxy.local_address import envoy_local_address

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, raw_exchange, route, static_cluster


def _routes() -> list[dict[str, Any]]:
    return [
        {"match": {"path": "/exact"}, "route": {"cluster": "b"}},
        {"match": {"safe_regex": {"regex": "^/re/[0-9]+$"}}, "route": {"cluster": "c"}},
        {"match": {"prefix": "/hdr", "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}]},
         "route": {"cluster": "b"}},
        route("/hdr", "a"),
        {"match": {"prefix": "/inv", "headers": [{"name": "x-flag", "present_match": True, "invert_match": True}]},
         "route": {"cluster": "c"}},
        route("/inv", "a"),
        {"match": {"prefix": "/q", "query_parameters": [{"name": "v", "string_match": {"exact": "2"}}]},
         "route": {"cluster": "c"}},
        route("/q", "a"),
        {"match": {"prefix": "/caseless", "case_sensitive": False}, "route": {"cluster": "c"}},
        route("/api/", "a", prefix_rewrite="/v2/"),
        route("/rx/", "a", regex_rewrite={"pattern": {"regex": "^/rx/([a-z]+)/([a-z0-9-]+)$"}, "substitution": "/\\2/\\1"}),
        route("/hostrw", "a", host_rewrite_literal="rewritten.internal"),
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 202, "body": {"inline_string": "direct hello"}}},
        {"match": {"prefix": "/redirect"}, "redirect": {"host_redirect": "example.org", "path_redirect": "/new"}},
        {"match": {"prefix": "/headers"}, "route": {"cluster": "a", "prefix_rewrite": "/respond"},
         "request_headers_to_add": [{"header": {"key": "x-added", "value": "yes"}},
                                    {"header": {"key": "x-peer", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}],
         "request_headers_to_remove": ["x-secret"],
         "response_headers_to_add": [{"header": {"key": "x-resp-added", "value": "r"}}],
         "response_headers_to_remove": ["x-drop-me"]},
        {"match": {"prefix": "/split"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}},
        route("/ka", "d"),
        route("/", "a"),
    ]


@pytest.fixture(scope="module")
def env(run_proxy_module, upstreams_module) -> dict[str, Any]:
    a, b, c, d = upstreams_module(4)
    main = http_listener("main", free_port(), _routes(),
                         http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "api.example.com"})
    vhosts = main["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
    vhosts[:0] = [
        {"name": "api", "domains": ["api.example.com"], "routes": [route("/", "a")],
         "response_headers_to_add": [{"header": {"key": "x-vhost", "value": "api"}}]},
        {"name": "deep", "domains": ["*.api.example.com"], "routes": [route("/", "c")]},
        {"name": "wild", "domains": ["*.example.com"], "routes": [route("/", "b")]},
        {"name": "prefixwild", "domains": ["internal.*"], "routes": [route("/", "c")]},
        {"name": "strict", "domains": ["strict.example"], "routes": [{"match": {"path": "/only"}, "route": {"cluster": "a"}}]},
    ]
    remote = http_listener("remote", free_port(), [route("/", "a")], use_remote_address=True)
    proxy = run_proxy_module([main, remote], [static_cluster("a", [a.port]), static_cluster("b", [b.port]),
                                              static_cluster("c", [c.port]), static_cluster("d", [d.port])])
    return {"proxy": proxy, "a": a, "b": b, "c": c, "d": d}


def _get(env: dict[str, Any], path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(env["proxy"].url("main", path), timeout=5, **kwargs)


def _served_by(env: dict[str, Any], response: httpx.Response) -> str:
    port = int(response.headers["x-served-by"])
    return next(name for name in "abcd" if env[name].port == port)


def _request_at(upstream: Any, marker: str) -> dict[str, Any]:
    found = [r for r in upstream.requests if marker in r["path"]]
    assert len(found) == 1, (marker, upstream.paths()[-10:])
    return found[0]


@pytest.mark.parametrize("host, expected, api_vhost", [
    ("api.example.com", "a", True),           # exact domain
    ("API.Example.COM", "a", True),           # domains are case-insensitive
    ("x.api.example.com", "c", False),        # the longer suffix wildcard wins over *.example.com
    ("www.example.com", "b", False),          # suffix wildcard
    ("internal.corp", "c", False),            # prefix wildcard
    ("other.test", "a", False),               # the catch-all virtual host
])
def test_virtual_host_selection(env, host, expected, api_vhost):
    response = _get(env, "/vhost", headers={"host": host})
    assert response.status_code == 200
    assert _served_by(env, response) == expected
    assert ("x-vhost" in response.headers) == api_vhost


@pytest.mark.parametrize("path, headers, expected", [
    ("/exact", {}, "b"),
    ("/exact/more", {}, "a"),            # path match is exact, so this falls through to "/"
    ("/re/123", {}, "c"),
    ("/re/12x", {}, "a"),
    ("/hdr", {"x-canary": "1"}, "b"),
    ("/hdr", {"x-canary": "2"}, "a"),
    ("/hdr", {}, "a"),
    ("/inv", {}, "c"),                   # inverted present_match: matches when the header is absent
    ("/inv", {"x-flag": "on"}, "a"),
    ("/q?v=2", {}, "c"),
    ("/q?v=3", {}, "a"),
    ("/q?w=2", {}, "a"),
    ("/CASELESS/x", {}, "c"),
    ("/caseless/x", {}, "c"),
])
def test_route_matching(env, path, headers, expected):
    response = _get(env, path, headers=headers)
    assert response.status_code == 200
    assert _served_by(env, response) == expected


def test_prefix_rewrite_keeps_query_and_sets_original_path(env):
    marker = uuid.uuid4().hex
    response = _get(env, f"/api/items/{marker}?x=1")
    assert response.status_code == 200
    seen = _request_at(env["a"], marker)
    assert seen["path"] == f"/v2/items/{marker}?x=1"
    assert seen["headers"]["x-envoy-original-path"] == f"/api/items/{marker}?x=1"


def test_regex_rewrite(env):
    marker = uuid.uuid4().hex
    assert _get(env, f"/rx/users/{marker}").status_code == 200
    assert _request_at(env["a"], marker)["path"] == f"/{marker}/users"


def test_host_rewrite_literal(env):
    marker = uuid.uuid4().hex
    assert _get(env, f"/hostrw/{marker}").status_code == 200
    headers = _request_at(env["a"], marker)["headers"]
    assert headers["host"] == "rewritten.internal"


def test_direct_response(env):
    before = len(env["a"].requests) + len(env["b"].requests) + len(env["c"].requests)
    response = _get(env, "/direct")
    assert response.status_code == 202
    assert response.text == "direct hello"
    assert len(env["a"].requests) + len(env["b"].requests) + len(env["c"].requests) == before


def test_redirect(env):
    response = _get(env, "/redirect/x")
    assert response.status_code == 301
    assert response.headers["location"] == "http://example.org/new"


def test_request_and_response_header_rules(env):
    marker = uuid.uuid4().hex
    response = _get(env, f"/headers/{marker}?x-drop-me=1&x-keep=2",
                    headers={"x-secret": "hidden", "x-other": "kept"})
    assert response.status_code == 200
    seen = _request_at(env["a"], marker)["headers"]
    assert seen["x-added"] == "yes"
    assert seen["x-peer"] == "127.0.0.1"
    assert "x-secret" not in seen
    assert seen["x-other"] == "kept"
    assert response.headers["x-resp-added"] == "r"
    assert "x-drop-me" not in response.headers
    assert response.headers["x-keep"] == "2"


def test_weighted_split_distribution(env):
    counts: Counter[str] = Counter()
    with httpx.Client(timeout=5) as client:
        for _ in range(1000):
            response = client.get(env["proxy"].url("main", "/split"))
            assert response.status_code == 200
            counts[_served_by(env, response)] += 1
    assert counts["a"] + counts["b"] == 1000
    # 80/20 split: a binomial with sd ~12.6, so +-50 is a 4-sigma band.
    assert 750 <= counts["a"] <= 850, counts


def test_no_route_is_404_nr(env):
    proxy: RunningProxy = env["proxy"]
    before = proxy.stats()["http.main.no_route"]
    response = _get(env, "/other", headers={"host": "strict.example"})
    assert response.status_code == 404
    assert response.content == b""
    assert _get(env, "/only", headers={"host": "strict.example"}).status_code == 200
    assert proxy.stats()["http.main.no_route"] == before + 1


def test_forwarding_headers_by_default(env):
    marker = uuid.uuid4().hex
    response = _get(env, f"/fwd/{marker}", headers={"x-forwarded-for": "203.0.113.7"})
    seen = _request_at(env["a"], marker)["headers"]
    # use_remote_address is false: XFF passes through untouched, the proxy is not a trusted edge.
    assert seen["x-forwarded-for"] == "203.0.113.7"
    assert seen["x-forwarded-proto"] == "http"
    request_id = seen["x-request-id"]
    assert len(request_id) == 36 and request_id.count("-") == 4
    assert seen["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert int(response.headers["x-envoy-upstream-service-time"]) >= 0
    assert response.headers["server"] == "envoy"


def test_request_id_is_kept_and_unique(env):
    marker1, marker2 = uuid.uuid4().hex, uuid.uuid4().hex
    _get(env, f"/rid/{marker1}", headers={"x-request-id": "my-own-id"})
    assert _request_at(env["a"], marker1)["headers"]["x-request-id"] == "my-own-id"
    _get(env, f"/rid/{marker2}")
    generated = _request_at(env["a"], marker2)["headers"]["x-request-id"]
    marker3 = uuid.uuid4().hex
    _get(env, f"/rid/{marker3}")
    assert _request_at(env["a"], marker3)["headers"]["x-request-id"] != generated


def test_use_remote_address_appends_client_ip(env):
    marker = uuid.uuid4().hex
    url = env["proxy"].url("remote", f"/remote/{marker}")
    assert httpx.get(url, headers={"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}).status_code == 200
    seen = _request_at(env["a"], marker)["headers"]
    # A loopback client is named by this host's own address, as Envoy 1.40 names it.
    assert [p.strip() for p in seen["x-forwarded-for"].split(",")] == ["203.0.113.7", envoy_local_address()]
    # At the edge the client's claimed scheme is not trusted: this listener is plain HTTP.
    assert seen["x-forwarded-proto"] == "http"


def test_hop_by_hop_request_headers_removed(env):
    marker = uuid.uuid4().hex
    port = env["proxy"].ports["main"]
    request = (f"GET /hop/{marker} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-nominated\r\n"
               "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Nominated: 1\r\nX-Normal: 2\r\n"
               "\r\n").encode()
    request += b"GET /hop-done HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = raw_exchange(port, request, timeout=1.0)
    assert result.status == 200
    seen = _request_at(env["a"], marker)["headers"]
    for name in ("keep-alive", "proxy-connection", "x-nominated"):
        assert name not in seen, name
    assert seen.get("connection", "").lower() in ("", "keep-alive")
    assert seen["x-normal"] == "2"


def test_hop_by_hop_response_headers_removed(env):
    response = _get(env, "/respond?keep-alive=timeout%3D9&proxy-connection=close&x-end-to-end=1")
    assert response.status_code == 200
    assert "keep-alive" not in response.headers
    assert "proxy-connection" not in response.headers
    assert response.headers["x-end-to-end"] == "1"


def test_connection_nominated_response_headers_removed(env):
    # RFC 9110 7.6.1: a proxy removes the fields the Connection header names, in both directions.
    response = _get(env, "/respond?connection=x-resp-hop&x-resp-hop=1")
    assert response.status_code == 200
    assert "x-resp-hop" not in response.headers


def test_head_has_length_but_no_body_and_keeps_connection(env):
    port = env["proxy"].ports["main"]
    result = raw_exchange(port, b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET /after-head HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert result.statuses() == [200, 200]
    head, rest = result.data.split(b"\r\n\r\n", 1)
    assert b"content-length: 3" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")  # no body bytes between the two responses
    assert rest.endswith(b"ok\n")


def test_expect_100_continue(env):
    port = env["proxy"].ports["main"]
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(b"hello")
        data = b""
        while not data.endswith(b"hello"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")


def test_keep_alive_reuse_on_both_sides(env):
    proxy: RunningProxy = env["proxy"]
    stats_before = proxy.stats()
    with httpx.Client(timeout=5) as client:
        for i in range(20):
            assert client.get(proxy.url("main", f"/ka/{i}")).status_code == 200
    stats = proxy.stats()
    assert stats["http.main.downstream_cx_total"] - stats_before["http.main.downstream_cx_total"] == 1
    assert stats["cluster.d.upstream_cx_total"] - stats_before["cluster.d.upstream_cx_total"] == 1
    assert len({r["client_port"] for r in env["d"].requests}) == 1
    assert len(env["d"].requests) == 20


def test_upgrade_refused_with_403(env):
    marker = uuid.uuid4().hex
    port = env["proxy"].ports["main"]
    result = raw_exchange(port, (f"GET /ws/{marker} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                 "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode(), timeout=0.5)
    assert result.status == 403
    assert not any(marker in p for p in env["a"].paths())


def test_pipelined_requests_answered_in_order(env):
    port = env["proxy"].ports["main"]
    payload = b"".join(b"GET /status/%d HTTP/1.1\r\nHost: x\r\n\r\n" % code for code in (201, 202, 203))
    payload += b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    result = raw_exchange(port, payload)
    assert result.statuses() == [201, 202, 203, 200]
    assert result.closed


def test_chunked_response_relayed(env):
    response = _get(env, "/chunked/5")
    assert response.status_code == 200
    assert response.text == "".join(f"chunk-{i}\n" for i in range(5))


def test_post_body_relayed_with_content_length_and_chunked(env):
    body = b"x" * 200_000
    assert httpx.post(env["proxy"].url("main", "/echo"), content=body, timeout=5).content == body

    def gen():
        for _ in range(10):
            yield b"y" * 10_000

    assert httpx.post(env["proxy"].url("main", "/echo"), content=gen(), timeout=5).content == b"y" * 100_000


def test_absolute_form_target_routes_by_its_authority(env):
    marker = uuid.uuid4().hex
    port = env["proxy"].ports["main"]
    result = raw_exchange(port, f"GET http://api.example.com/abs/{marker} HTTP/1.1\r\nHost: other.test\r\n"
                                "Connection: close\r\n\r\n".encode())
    assert result.status == 200
    assert b"x-vhost: api" in result.data.lower()
    seen = _request_at(env["a"], marker)
    assert seen["path"] == f"/abs/{marker}"
    assert seen["headers"]["host"] == "api.example.com"


def test_http10_request_without_host_gets_the_default_host(env):
    port = env["proxy"].ports["main"]
    result = raw_exchange(port, b"GET /chunked/2 HTTP/1.0\r\n\r\n")
    assert result.status == 200
    assert b"x-vhost: api" in result.data.lower()  # routed as default_host_for_http_10 says
    assert result.closed  # HTTP/1.0 without keep-alive: the proxy closes after the response
    assert b"transfer-encoding" not in result.data.lower()  # a 1.0 client cannot read chunked framing
    assert result.data.endswith(b"chunk-0\nchunk-1\n")


def test_http10_refused_unless_accepted(env):
    """Envoy's default: HTTP/1.0 gets 426 unless the listener sets http_protocol_options.accept_http_10."""
    result = raw_exchange(env["proxy"].ports["remote"], b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    assert (result.status, result.closed) == (426, True)

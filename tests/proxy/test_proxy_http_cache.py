"""Integration: the cache filters (v1 CacheConfig and v2 CacheV2Config, in-memory store), pylon beside Envoy 1.40.

The same request sequences through each proxy, asserting the same responses and the same upstream requests
(how many, and what the ones the filter sent itself carried). The upstream (below) answers from its query
string: `max_age`, `cc` (a whole cache-control), `etag`, `vary`; it answers a matching if-none-match with a 304
saying `x-validated: yes`, and numbers its answers per path (`body <path> <n>`), so a body tells which upstream
answer it was. Its `date` is a few seconds ahead, so a stored response's age is only its time in the cache
(RFC 9111's apparent age is then 0), whole seconds that a test reads right after storing: "0".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster

ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILTERS = {
    "v1": ("envoy.filters.http.cache", "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
           "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"),
    "v2": ("envoy.filters.http.cache_v2",
           "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config",
           "type.googleapis.com/envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config"),
}
LABEL = "envoy_extensions_http_cache_v2_simple"


class CacheUpstream:
    """The scriptable origin (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                upstream.requests.append({"method": self.command, "path": self.path, "headers": headers})
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                path = urlsplit(self.path).path
                etag = query.get("etag")
                cache_control = query.get("cc") or (f"max-age={query['max_age']}" if "max_age" in query else None)
                common = [("date", formatdate(time.time() + 5, usegmt=True))]
                if cache_control:
                    common.append(("cache-control", cache_control))
                if etag:
                    common.append(("etag", etag))
                if "vary" in query:
                    common.append(("vary", query["vary"]))
                if etag and headers.get("if-none-match") == etag:
                    self.send_response_only(304)  # no server or date of http.server's own: ours only
                    for name, value in [*common, ("x-validated", "yes")]:
                        self.send_header(name, value)
                    self.end_headers()
                    return
                upstream.counts[path] = count = upstream.counts.get(path, 0) + 1
                body = f"body {path} {count}".encode()
                self.send_response_only(200)
                for name, value in [*common, ("content-type", "text/plain"), ("content-length", str(len(body)))]:
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Setup:
    def __init__(self, proxy: RunningProxy, port: int, upstream: CacheUpstream, implementation: str,
                 version: str) -> None:
        self.proxy, self.port, self.upstream = proxy, port, upstream
        self.implementation, self.version = implementation, version

    def get(self, path: str, method: str = "GET", **headers: str) -> httpx.Response:
        return httpx.request(method, f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)

    def seen(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.upstream.requests if urlsplit(r["path"]).path == path]

    def events(self) -> dict[str, int]:
        start = f"cache.event.cache_label.{LABEL}.event_type."
        return {k[len(start):]: v for k, v in self.proxy.stats().items() if k.startswith(start)}


@pytest.fixture(scope="module", params=[("pylon", "v1"), ("envoy", "v1"), ("pylon", "v2"), ("envoy", "v2")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation, version = request.param
    upstream = CacheUpstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"cache-{implementation}-{version}"))
    try:
        port = free_port()
        listener = http_listener("main", port, [route("/rw", "up", prefix_rewrite="/rewritten"),
                                                 {"match": {"prefix": "/direct"}, "direct_response": {"status": 200}},
                                                 route("/", "up")])
        name, filter_type, storage = FILTERS[version]
        config = {"@type": filter_type, "typed_config": {"@type": storage},
                  "allowed_vary_headers": [{"exact": "accept-language"}]}
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [{"name": name, "typed_config": config},
                               {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
        proxy = launcher.start([listener], [static_cluster("up", [upstream.port])], implementation=implementation)
        yield Setup(proxy, port, upstream, implementation, version)
    finally:
        launcher.close()
        upstream.close()


def test_a_miss_is_stored_and_served_again_with_its_age(setup: Setup) -> None:
    first = setup.get("/hit?max_age=100")
    second = setup.get("/hit?max_age=100")
    assert (first.status_code, first.content, "age" in first.headers) == (200, b"body /hit 1", False)
    assert (second.status_code, second.content, second.headers["age"]) == (200, b"body /hit 1", "0")
    assert {k: v for k, v in second.headers.items() if k not in ("age", "x-envoy-upstream-service-time",
                                                                  "connection")} == \
        {k: v for k, v in first.headers.items() if k not in ("x-envoy-upstream-service-time", "connection")}
    (sent,) = setup.seen("/hit")
    # the filter's own upstream request: Envoy's internal client's marks, no route rewrite
    assert (sent["headers"]["x-envoy-internal"], sent["headers"]["x-forwarded-for"]) == ("true", "192.0.2.2")
    assert sent["headers"]["x-forwarded-proto"] == "http" and "x-request-id" in sent["headers"]
    assert "content-length" not in sent["headers"]


def test_a_route_rewrite_does_not_apply_to_the_filters_request(setup: Setup) -> None:
    assert setup.get("/rw/x?max_age=100").content == b"body /rw/x 1"
    assert [urlsplit(r["path"]).path for r in setup.seen("/rw/x")] == ["/rw/x"]


def test_validation_with_a_304_serves_the_stored_body_under_the_new_headers(setup: Setup) -> None:
    path = '/validate?cc=no-cache&etag="e1"'
    first = setup.get(path)
    assert first.content == b"body /validate 1"
    again = setup.get(path)  # stored, but no-cache: validated every time
    assert (again.status_code, again.content, again.headers.get("x-validated"), "age" in again.headers) == (
        200, b"body /validate 1", "yes", False)
    sent = setup.seen("/validate")
    assert len(sent) == 2 and sent[1]["headers"]["if-none-match"] == '"e1"'
    assert sent[1]["headers"]["if-modified-since"] == first.headers["date"]  # the stored date
    # the 304's headers were stored: a request that must validate sees them on the stored response



def test_max_age_0_is_fresh_at_age_0(setup: Setup) -> None:
    replies = [setup.get("/zero?max_age=0") for _ in range(2)]  # an age of 0 is not more than 0, as Envoy counts
    assert [(r.content, r.headers.get("age")) for r in replies] == [(b"body /zero 1", None), (b"body /zero 1", "0")]


def test_a_request_saying_no_cache_validates_a_fresh_response(setup: Setup) -> None:
    path = '/nocache?max_age=100&etag="e2"'
    setup.get(path)
    reply = setup.get(path, **{"cache-control": "no-cache"})
    assert (reply.content, reply.headers.get("x-validated")) == (b"body /nocache 1", "yes")
    assert len(setup.seen("/nocache")) == 2


@pytest.mark.parametrize("cache_control", ["no-store", "private, max-age=100", "public"])
def test_responses_that_are_not_stored(setup: Setup, cache_control: str) -> None:
    path = f"/nostore-{cache_control.split(',')[0]}"
    bodies = [setup.get(f"{path}?cc={cache_control}").content for _ in range(2)]
    assert bodies == [f"body {path} 1".encode(), f"body {path} 2".encode()]


def test_a_request_saying_no_store_is_not_stored(setup: Setup) -> None:
    first = setup.get("/reqnostore?max_age=100", **{"cache-control": "no-store"})
    second = setup.get("/reqnostore?max_age=100")
    assert (first.content, second.content) == (b"body /reqnostore 1", b"body /reqnostore 2")


def test_vary_on_an_allowed_header(setup: Setup) -> None:
    if (setup.implementation, setup.version) == ("envoy", "v1"):
        pytest.skip("Envoy 1.40's v1 cache filter crashes (SIGSEGV) on a response that varies (observed)")
    path = "/vary?max_age=100&vary=accept-language"
    bodies = [setup.get(path, **{"accept-language": language}).content for language in ("en", "fr", "en")]
    if setup.version == "v1":  # each variant stored
        assert bodies == [b"body /vary 1", b"body /vary 2", b"body /vary 1"]
    else:  # v2 stores no response that varies
        assert bodies == [b"body /vary 1", b"body /vary 2", b"body /vary 3"]
    other = [setup.get("/vary-other?max_age=100&vary=x-other").content for _ in range(2)]
    assert other == [b"body /vary-other 1", b"body /vary-other 2"]  # x-other is not allowed: never stored


def test_head_and_ranges_are_served_from_the_stored_response(setup: Setup) -> None:
    path = "/ranges?max_age=100"
    setup.get(path)
    head = setup.get(path, method="HEAD")
    part = setup.get(path, range="bytes=5-10")
    suffix = setup.get(path, range="bytes=-3")
    several = setup.get(path, range="bytes=0-1,3-4")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "14")
    assert (part.status_code, part.content, part.headers["content-range"]) == (206, b"/range", "bytes 5-10/14")
    assert (suffix.status_code, suffix.content, suffix.headers["content-range"]) == (206, b"s 1", "bytes 11-13/14")
    assert (several.status_code, several.content) == (200, b"body /ranges 1")
    assert len(setup.seen("/ranges")) == 1


def test_a_range_outside_the_stored_body_is_416(setup: Setup) -> None:
    # on a path of its own: after 206s from the same entry, Envoy 1.40's 416 lost the stored headers (observed)
    setup.get("/range416?max_age=100")
    outside = setup.get("/range416?max_age=100", range="bytes=100-")
    expected = ("bytes */16", "max-age=100") if setup.version == "v1" else (None, None)  # v2: no stored headers
    assert (outside.status_code, outside.content, outside.headers.get("content-range"),
            outside.headers.get("cache-control")) == (416, b"", *expected)


def test_a_range_on_a_miss(setup: Setup) -> None:
    reply = setup.get("/rangemiss?max_age=100", range="bytes=0-3")
    sent = setup.seen("/rangemiss")
    assert len(sent) == 1
    if setup.version == "v1":  # asked with the range (the origin here ignores ranges) and relayed as it came
        assert sent[0]["headers"]["range"] == "bytes=0-3"
        assert (reply.status_code, reply.content) == (200, b"body /rangemiss 1")
    else:  # v2 asks for the whole response, stores it, then serves the range from it
        assert "range" not in sent[0]["headers"]
        assert (reply.status_code, reply.content, reply.headers["content-range"]) == (206, b"body", "bytes 0-3/17")


def test_requests_the_cache_cannot_serve_pass_through_the_router(setup: Setup) -> None:
    for headers in ({"authorization": "Bearer x"}, {"if-none-match": '"zz"'}):
        reply = setup.get("/bypass?max_age=100", **headers)
        assert reply.content.startswith(b"body /bypass")
    assert all("x-envoy-internal" not in r["headers"] for r in setup.seen("/bypass"))
    assert len(setup.seen("/bypass")) == 2
    assert setup.get("/bypass?max_age=100").content == b"body /bypass 3"  # nothing was stored meanwhile


def test_v2_counts_its_events(setup: Setup) -> None:
    if setup.version != "v2":
        pytest.skip("v1 has no stats")
    before = setup.events()
    setup.get("/events?cc=no-cache&etag=\"e3\"")  # miss
    setup.get("/events?cc=no-cache&etag=\"e3\"")  # validate (304)
    setup.get("/events2?max_age=100")  # miss
    setup.get("/events2?max_age=100")  # hit
    setup.get("/events2?max_age=100", authorization="x")  # uncacheable
    after = setup.events()
    assert {k: after[k] - before.get(k, 0) for k in after} == {
        "hit": 1, "miss": 2, "validate": 1, "failed_validation": 0, "uncacheable": 1, "upstream_reset": 0,
        "lookup_error": 0}


DOCS_INTERNAL = {
    "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}]}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_v2_misses_go_to_the_override_cluster(implementation: str, tmp_path: Any) -> None:
    """Envoy's docs' http-cache-v2-configuration-internal-listener.yaml: misses go to a cluster whose endpoint is an
    internal listener (its own HCM and router in front of the origin)."""
    upstream = CacheUpstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        outer = http_listener("main", port, [route("/", "nowhere")])
        name, filter_type, storage = FILTERS["v2"]
        hcm = outer["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [{"name": name, "typed_config": {"@type": filter_type, "typed_config": {"@type": storage},
                                                               "override_upstream_cluster": "cache_internal"}},
                               {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
        inner = http_listener("inner", 0, [route("/", "up")],
                              route_config={"name": "inner", "virtual_hosts": [{
                                  "name": "all", "domains": ["*"], "routes": [route("/", "up")],
                                  "response_headers_to_add": [{"header": {"key": "x-inner", "value": "yes"}}]}]})
        del inner["address"]
        inner["internal_listener"] = {}
        internal_cluster = {"name": "cache_internal", "load_assignment": {"cluster_name": "cache_internal", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "inner"}}}}]}]}}
        proxy = launcher.start([outer, inner], [internal_cluster, static_cluster("up", [upstream.port]),
                                                static_cluster("nowhere", [free_port()])],
                               implementation=implementation, bootstrap_extra=DOCS_INTERNAL)
        replies = [httpx.get(f"http://127.0.0.1:{port}/docs?max_age=100", timeout=5) for _ in range(2)]
        assert [(r.status_code, r.content, r.headers.get("x-inner"), r.headers.get("age")) for r in replies] == [
            (200, b"body /docs 1", "yes", None), (200, b"body /docs 1", "yes", "0")]
        assert replies[0].headers["x-envoy-upstream-service-time"].isdigit()  # set once, not added
        (sent,) = upstream.requests
        assert {k: v for k, v in sent["headers"].items() if k not in ("host", "x-request-id")} == {
            "accept": "*/*", "accept-encoding": "gzip, deflate, br, zstd", "user-agent": sent["headers"]["user-agent"],
            "x-envoy-expected-rq-timeout-ms": "15000", "x-forwarded-for": "192.0.2.2", "x-forwarded-proto": "http"}
        assert proxy.stats()[f"cache.cache_sessions_entries.cache_label.{LABEL}"] == 1
    finally:
        launcher.close()
        upstream.close()

"""Integration: local_ratelimit descriptors and route/virtual host `rate_limits`, pylon beside Envoy 1.40.

One listener whose filter config has no bucket and is off (Envoy's docs' shape); routes enable it with per-route
configs that have descriptor buckets, each refilled one token a minute so the sequence is deterministic:
- /foo: the docs' example (request header and :path actions, two descriptors, a large default bucket);
- /vh: no rate_limits of its own, so the virtual host's apply (vh_rate_limits OVERRIDE);
- /ignore: the same with vh_rate_limits IGNORE: no descriptor, the default bucket only;
- /own: the filter's own rate_limits (remote_address) instead of the route's;
- /noconsume: always_consume_default_token_bucket false (a matched descriptor spares the default bucket);
- /grpc: rate_limited_as_resource_exhausted (a limited gRPC call says RESOURCE_EXHAUSTED).
Each expectation is asserted of both proxies alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

RL_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.local_ratelimit"
ALL = {"default_value": {"numerator": 100}}


def bucket(tokens: int) -> dict[str, Any]:
    return {"max_tokens": tokens, "tokens_per_fill": 1, "fill_interval": "60s"}


def descriptor(tokens: int, **entries: str) -> dict[str, Any]:
    return {"entries": [{"key": k, "value": v} for k, v in entries.items()], "token_bucket": bucket(tokens)}


def per_route(stat_prefix: str, default_tokens: int, descriptors: list[dict[str, Any]], **fields: Any
              ) -> dict[str, Any]:
    return {NAME: {"@type": RL_TYPE, "stat_prefix": stat_prefix, "token_bucket": bucket(default_tokens),
                   "filter_enabled": ALL, "filter_enforced": ALL, "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                   "response_headers_to_add": [{"append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                                "header": {"key": "x-test-rate-limit", "value": "true"}}],
                   "descriptors": descriptors, **fields}}


def generic(value: str) -> dict[str, Any]:
    return {"actions": [{"generic_key": {"descriptor_value": value}}]}


def routes() -> list[dict[str, Any]]:
    foo = route("/foo", "up", rate_limits=[{"actions": [
        {"request_headers": {"header_name": "x-client", "descriptor_key": "client_cluster"}},
        {"request_headers": {"header_name": ":path", "descriptor_key": "path"}}]}])
    foo["typed_per_filter_config"] = per_route("foo_rl", 1000, [
        descriptor(2, client_cluster="foo", path="/foo/bar"), descriptor(3, client_cluster="foo", path="/foo/bar2")])
    vh = route("/vh", "up")
    vh["typed_per_filter_config"] = per_route("vh_rl", 1000, [descriptor(1, generic_key="vh")])
    ignore = route("/ignore", "up")
    ignore["typed_per_filter_config"] = per_route("ignore_rl", 1000, [descriptor(1, generic_key="vh")],
                                                  vh_rate_limits="IGNORE")
    own = route("/own", "up", rate_limits=[generic("route")])
    own["typed_per_filter_config"] = per_route("own_rl", 1000, [
        descriptor(2, remote_address="127.0.0.1"), descriptor(1, generic_key="route")],
        rate_limits=[{"actions": [{"remote_address": {}}]}])
    noconsume = route("/noconsume", "up", rate_limits=[generic("nc")])
    noconsume["typed_per_filter_config"] = per_route("nc_rl", 1, [descriptor(3, generic_key="nc")],
                                                     always_consume_default_token_bucket=False)
    grpc = route("/grpc", "up")
    grpc["typed_per_filter_config"] = per_route("grpc_rl", 1, [], rate_limited_as_resource_exhausted=True)
    return [foo, vh, ignore, own, noconsume, grpc, route("/", "up")]


class Setup:
    def __init__(self, proxy: RunningProxy, port: int, upstream: Upstream) -> None:
        self.proxy, self.port, self.upstream = proxy, port, upstream

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=5)

    def statuses(self, path: str, count: int, **headers: str) -> list[int]:
        return [self.get(path, **headers).status_code for _ in range(count)]

    def stats(self, prefix: str) -> dict[str, int]:
        start = f"{prefix}.http_local_rate_limit."
        return {k[len(start):]: v for k, v in self.proxy.stats().items() if k.startswith(start)}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    implementation = request.param
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"rl-descriptors-{implementation}"))
    try:
        port = free_port()
        listener = http_listener("main", port, routes())
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["route_config"]["virtual_hosts"][0]["rate_limits"] = [generic("vh")]
        hcm["http_filters"] = [{"name": NAME, "typed_config": {"@type": RL_TYPE, "stat_prefix": "top"}},
                               {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
        proxy = launcher.start([listener], [static_cluster("up", [upstream.port])], implementation=implementation)
        yield Setup(proxy, port, upstream)
    finally:
        launcher.close()
        upstream.close()


def test_the_docs_example_descriptors(setup: Setup) -> None:
    replies = [setup.get("/foo/bar", **{"x-client": "foo"}) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert [(r.headers.get("x-ratelimit-limit"), r.headers.get("x-ratelimit-remaining")) for r in replies] == [
        ("2", "1"), ("2", "0"), ("2", "0")]
    assert replies[2].content == b"local_rate_limited" and replies[2].headers["x-test-rate-limit"] == "true"
    assert setup.statuses("/foo/bar2", 4, **{"x-client": "foo"}) == [200, 200, 200, 429]
    other = setup.get("/foo/bar", **{"x-client": "bar"})  # no descriptor matches: the default bucket
    assert (other.status_code, other.headers.get("x-ratelimit-limit")) == (200, "1000")
    assert setup.statuses("/foo/bar", 2) == [200, 200]  # no x-client: no descriptor at all
    assert setup.stats("foo_rl") == {"enabled": 10, "ok": 8, "rate_limited": 2, "enforced": 2, "shadow_mode": 0}


def test_virtual_host_rate_limits_override_and_ignore(setup: Setup) -> None:
    assert setup.statuses("/vh", 2) == [200, 429]
    assert setup.statuses("/ignore", 3) == [200, 200, 200]


def test_the_filters_own_rate_limits_replace_the_routes(setup: Setup) -> None:
    # remote_address 127.0.0.1 has two tokens; the route's generic_key descriptor (one token) is not made at all
    assert setup.statuses("/own", 3) == [200, 200, 429]


def test_a_matched_descriptor_spares_the_default_bucket(setup: Setup) -> None:
    assert setup.statuses("/noconsume", 4) == [200, 200, 200, 429]
    assert setup.stats("nc_rl")["rate_limited"] == 1


def test_a_limited_grpc_call_is_resource_exhausted(setup: Setup) -> None:
    def call() -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{setup.port}/grpc/svc/Method", content=b"\0\0\0\0\0",
                          headers={"content-type": "application/grpc"}, timeout=5)
    call()
    limited = call()
    assert (limited.status_code, limited.headers.get("grpc-status"), limited.headers.get("grpc-message")) == (
        200, "8", "local_rate_limited")

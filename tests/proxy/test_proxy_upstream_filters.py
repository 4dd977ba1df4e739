"""Integration: upstream HTTP filters (the router's `upstream_http_filters`, a cluster's own `http_filters`),
through pylon and Envoy 1.40 alike, with header_mutation as the filter.

They run on the request as the router made it (so they can remove what the router added) and on the upstream's
response before the router relays it; a cluster's own chain replaces the router's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
CODEC = {"name": "envoy.filters.http.upstream_codec",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def mutation(name: str, request: list[dict[str, Any]], response: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": MUTATION, "mutations": {
        "request_mutations": request, "response_mutations": response}}}


def add(key: str, value: str) -> dict[str, Any]:
    return {"append": {"header": {"key": key, "value": value}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}}


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[RunningProxy, Upstream]]:
    up = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"upstream-filters-{request.param}"))
    try:
        catch_all = route("/", "up")
        catch_all["typed_per_filter_config"] = {"upmut": {  # a per-route level for the upstream filter's name
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
            "mutations": {"request_mutations": [add("x-route", "yes")], "query_parameter_mutations": [
                {"append": {"record": {"key": "added", "value": "1"}}}]}}}
        listener = http_listener("main", free_port(), [route("/own", "own"), catch_all])
        router = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][-1]["typed_config"]
        router["upstream_http_filters"] = [
            mutation("upmut", [add("x-up", "router-%REQ(x-who)%"), {"remove": "x-secret"},
                               {"remove": "x-forwarded-proto"}],
                     [add("x-up-resp", "router"), {"remove": "x-served-by"}]),
            CODEC]
        own = static_cluster("own", [up.port])
        own["typed_extension_protocol_options"] = {OPTIONS: {
            "@type": f"type.googleapis.com/{OPTIONS}", "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [mutation("clustermut", [add("x-up", "cluster")], []), CODEC]}}
        yield launcher.start([listener], [static_cluster("up", [up.port]), own], implementation=request.param), up
    finally:
        launcher.close()
        up.close()


def test_the_routers_upstream_filters_edit_the_request_as_made_and_the_response_first(
        setup: tuple[RunningProxy, Upstream]) -> None:
    proxy, up = setup
    reply = httpx.get(proxy.url("main", "/a"), headers={"x-who": "me", "x-secret": "s"}, timeout=5)
    assert reply.status_code == 200
    assert reply.headers.get("x-up-resp") == "router" and "x-served-by" not in reply.headers
    seen = up.requests[-1]["headers"]
    assert seen.get("x-up") == "router-me" and "x-secret" not in seen
    assert "x-forwarded-proto" not in seen  # the router added it; the upstream filter removed it
    assert "x-request-id" in seen and seen.get("x-route") == "yes"
    assert up.requests[-1]["path"] == "/a?added=1"  # the per-route level's query edit


def test_a_clusters_own_chain_replaces_the_routers(setup: tuple[RunningProxy, Upstream]) -> None:
    proxy, up = setup
    reply = httpx.get(proxy.url("main", "/own"), headers={"x-secret": "s"}, timeout=5)
    assert reply.status_code == 200 and "x-up-resp" not in reply.headers and "x-served-by" in reply.headers
    seen = up.requests[-1]["headers"]
    assert seen.get("x-up") == "cluster" and seen.get("x-secret") == "s" and "x-forwarded-proto" in seen

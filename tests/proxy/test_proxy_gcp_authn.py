"""Integration: envoy.filters.http.gcp_authn through pylon and Envoy 1.40 side by side.

A stand-in for the GCE metadata server records each identity request and answers a JWT for the audience (its
payload's `exp` an hour ahead), or 500 for the audience `fail`. Listener `main` fetches on every request;
`cached` keeps tokens per audience (cache_config) and puts them in x-goog-token after `Token `. Clusters `aud`
and `fail` carry an Audience in their typed_filter_metadata, `plain` none. Compared: what the metadata server
was asked, what the upstream got, and the counters.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.recording_server import recording_server, stop
from tests.proxy.upstreams import Upstream

GCP = "type.googleapis.com/envoy.extensions.filters.http.gcp_authn.v3.GcpAuthnFilterConfig"
AUDIENCE = "type.googleapis.com/envoy.extensions.filters.http.gcp_authn.v3.Audience"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
URI = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity?audience=[AUDIENCE]"


def jwt_for(audience: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part({'aud': audience, 'exp': int(time.time()) + 3600})}.c2ln"


def metadata_answer(call: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """The metadata server: a JWT for the audience asked for, 500 for `fail`."""
    audience = parse_qs(urlsplit(call["path"]).query)["audience"][0]
    return (500, [], b"broken") if audience == "fail" else (200, [], jwt_for(audience).encode())


def _listener(name: str, port: int, **config: Any) -> dict[str, Any]:
    listener = http_listener(name, port, [route("/aud", "aud"), route("/fail", "fail"), route("/", "plain")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.gcp_authn", "typed_config": {
            "@type": GCP, "http_uri": {"uri": URI, "cluster": "metadata", "timeout": "5s"}, **config}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return listener


def _audience(url: str) -> dict[str, Any]:
    return {"typed_filter_metadata": {"envoy.filters.http.gcp_authn": {"@type": AUDIENCE, "url": url}}}


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream, metadata: Any) -> None:
        self.proxy, self.ports, self.upstream, self.metadata = proxy, ports, upstream, metadata

    def get(self, listener: str, path: str) -> tuple[int, dict[str, str]]:
        before = len(self.upstream.requests)
        reply = httpx.get(f"http://127.0.0.1:{self.ports[listener]}{path}", headers={"authorization": "client"},
                          timeout=10)
        assert reply.status_code == 200 and len(self.upstream.requests) == before + 1
        return reply.status_code, self.upstream.requests[-1]["headers"]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = Upstream()
    metadata = recording_server(metadata_answer)
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"gcp-authn-{request.param}"))
    try:
        ports = {"main": free_port(), "cached": free_port()}
        listeners = [_listener("main", ports["main"]),
                     _listener("cached", ports["cached"], cache_config={"cache_size": 10},
                               token_header={"name": "x-goog-token", "value_prefix": "Token "})]
        clusters = [static_cluster("aud", [upstream.port], metadata=_audience("http://svc.test/x?y=1")),
                    static_cluster("fail", [upstream.port], metadata=_audience("fail")),
                    static_cluster("plain", [upstream.port]),
                    static_cluster("metadata", [metadata.server_address[1]])]
        proxy = launcher.start(listeners, clusters, implementation=request.param)
        yield Setup(proxy, ports, upstream, metadata)
    finally:
        launcher.close()
        upstream.close()
        stop(metadata)


def test_a_token_for_the_clusters_audience_replaces_the_clients_authorization(setup: Setup) -> None:
    before = len(setup.metadata.calls)
    for _ in range(2):
        _, seen = setup.get("main", "/aud")
        assert seen["authorization"].startswith("Bearer ey")
        payload = json.loads(base64.urlsafe_b64decode(seen["authorization"].split(".")[1] + "=="))
        assert payload["aud"] == "http://svc.test/x?y=1"
    calls = setup.metadata.calls[before:]
    assert len(calls) == 2  # no cache_config: each request asks
    assert calls[0]["path"] == ("/computeMetadata/v1/instance/service-accounts/default/identity"
                                "?audience=http://svc.test/x?y=1")
    assert calls[0]["headers"]["host"] == "metadata.google.internal"
    assert calls[0]["headers"]["metadata-flavor"] == "Google"


def test_a_cluster_without_an_audience_is_left_alone(setup: Setup) -> None:
    before = len(setup.metadata.calls)
    _, seen = setup.get("main", "/other")
    assert seen["authorization"] == "client" and len(setup.metadata.calls) == before


def test_a_failed_fetch_lets_the_request_go_without_a_token(setup: Setup) -> None:
    _, seen = setup.get("main", "/fail")
    assert seen["authorization"] == "client"


def test_the_cache_keeps_a_token_per_audience(setup: Setup) -> None:
    before = len(setup.metadata.calls)
    tokens = {setup.get("cached", "/aud")[1]["x-goog-token"] for _ in range(3)}
    assert len(tokens) == 1 and next(iter(tokens)).startswith("Token ")
    assert len(setup.metadata.calls) == before + 1


def test_the_counters(setup: Setup) -> None:
    before = setup.proxy.stats()
    for listener, path in (("main", "/aud"), ("main", "/aud"), ("main", "/fail"), ("main", "/other"),
                           ("cached", "/aud"), ("cached", "/aud"), ("cached", "/aud")):
        setup.get(listener, path)
    after = setup.proxy.stats()

    def delta(name: str) -> int:
        return after[f"http.{name}"] - before.get(f"http.{name}", 0)
    assert delta("main.gcp_authn.token_fetch_success") == 2
    assert delta("main.gcp_authn.token_fetch_failed") == 1
    assert delta("main.gcp_authn.retrieve_audience_failed") == 1
    assert delta("main.gcp_authn.token_cache_hit") == delta("main.gcp_authn.token_cache_miss") == 0
    hits, misses = delta("cached.gcp_authn.token_cache_hit"), delta("cached.gcp_authn.token_cache_miss")
    assert hits + misses == 3 and hits >= 2

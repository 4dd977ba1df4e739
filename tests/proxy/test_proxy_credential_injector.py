"""Integration: envoy.filters.http.credential_injector through pylon and Envoy 1.40 side by side.

Generic credentials come from static generic secrets; OAuth2 tokens from a local token endpoint that records
each token request (what both proxies send there is compared) and answers `tok-<n>` for an hour, or a 503 from
the broken one. Each listener has one filter config: `generic` (Authorization, not overwritten), `prefixed`
(x-api-token with `Bearer ` before a raw secret whose trailing newline is dropped, overwritten), `oauth`
(Basic client auth, scopes and an endpoint parameter), `oauth_body` (URL_ENCODED_BODY), `broken` (no token: 401)
and `broken_allowed` (no token, the request goes on without).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.recording_server import recording_server, stop
from tests.proxy.upstreams import Upstream

INJECTOR = "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector"
GENERIC = "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic"
OAUTH2 = "type.googleapis.com/envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
SECRETS = [{"name": "basic", "generic_secret": {"secret": {"inline_string": "Basic dXNlcjpwYXNz"}}},
           {"name": "raw", "generic_secret": {"secret": {"inline_string": "raw-token\n"}}},
           {"name": "client-secret", "generic_secret": {"secret": {"inline_string": "s3cr3t:/=&?"}}}]


def token_endpoint(broken: bool) -> Any:
    """A token endpoint answering `tok-<n>` for an hour to its n-th call, or (broken) 503."""
    def answer(call: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        if broken:
            return 503, [], b"unavailable"
        return 200, [("content-type", "application/json")], json.dumps(
            {"access_token": f"tok-{len(server.calls)}", "token_type": "Bearer", "expires_in": 3600}).encode()
    server = recording_server(answer)
    return server  # the answer reads its call count


def _listener(name: str, port: int, credential_type: str, credential: dict[str, Any], **filter_fields: Any
              ) -> dict[str, Any]:
    listener = http_listener(name, port, [route("/", "up")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.credential_injector", "typed_config": {
            "@type": INJECTOR, **filter_fields,
            "credential": {"name": credential_type, "typed_config": credential}}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return listener


def _oauth(cluster: str, **client: Any) -> dict[str, Any]:
    return {"@type": OAUTH2, "token_endpoint": {"cluster": cluster, "timeout": "3s",
                                                "uri": "https://auth.example.com/oauth2/v1/token"},
            "client_credentials": {"client_id": "my client", "client_secret": {"name": "client-secret"}, **client},
            "scopes": ["read", "write"], "endpoint_params": [{"name": "audience", "value": "api://x"}]}


class Setup:
    def __init__(self, implementation: str, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream,
                 tokens: Any, broken: Any) -> None:
        self.implementation, self.proxy, self.ports, self.upstream = implementation, proxy, ports, upstream
        self.tokens, self.broken = tokens, broken

    def get(self, listener: str, **headers: str) -> tuple[httpx.Response, dict[str, str] | None]:
        before = len(self.upstream.requests)
        reply = httpx.get(f"http://127.0.0.1:{self.ports[listener]}/x", headers=headers, timeout=10)
        requests = self.upstream.requests
        return reply, (requests[-1]["headers"] if len(requests) > before else None)


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream, tokens, broken = Upstream(), token_endpoint(False), token_endpoint(True)
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"credential-injector-{request.param}"))
    try:
        ports = {name: free_port() for name in ("generic", "prefixed", "oauth", "oauth_body", "broken",
                                                  "broken_allowed")}
        generic = "envoy.http.injected_credentials.generic"
        oauth2 = "envoy.http.injected_credentials.oauth2"
        listeners = [
            _listener("generic", ports["generic"], generic, {"@type": GENERIC, "credential": {"name": "basic"}}),
            _listener("prefixed", ports["prefixed"], generic,
                      {"@type": GENERIC, "credential": {"name": "raw"}, "header": "X-Api-Token",
                       "header_value_prefix": "Bearer "}, overwrite=True),
            _listener("oauth", ports["oauth"], oauth2, _oauth("tokens")),
            _listener("oauth_body", ports["oauth_body"], oauth2, _oauth("tokens", auth_type="URL_ENCODED_BODY")),
            _listener("broken", ports["broken"], oauth2, _oauth("broken")),
            _listener("broken_allowed", ports["broken_allowed"], oauth2, _oauth("broken"),
                      allow_request_without_credential=True),
        ]
        clusters = [static_cluster("up", [upstream.port]), static_cluster("tokens", [tokens.server_address[1]]),
                    static_cluster("broken", [broken.server_address[1]])]
        proxy = launcher.start(listeners, clusters, implementation=request.param,
                               bootstrap_extra={"static_resources": {"secrets": SECRETS}})
        yield Setup(request.param, proxy, ports, upstream, tokens, broken)
    finally:
        launcher.close()
        upstream.close()
        for server in (tokens, broken):
            stop(server)


def test_a_generic_secret_is_injected_and_a_clients_own_is_kept(setup: Setup) -> None:
    reply, seen = setup.get("generic")
    assert reply.status_code == 200 and seen is not None and seen["authorization"] == "Basic dXNlcjpwYXNz"
    reply, seen = setup.get("generic", authorization="Bearer mine")
    assert reply.status_code == 200 and seen is not None and seen["authorization"] == "Bearer mine"


def test_a_prefixed_secret_overwrites_and_loses_its_newline(setup: Setup) -> None:
    reply, seen = setup.get("prefixed", **{"x-api-token": "client's"})
    assert reply.status_code == 200 and seen is not None and seen["x-api-token"] == "Bearer raw-token"


def test_an_oauth2_token_is_fetched_with_the_client_credentials_and_injected(setup: Setup) -> None:
    for listener in ("oauth", "oauth_body"):
        reply, seen = setup.get(listener)
        assert reply.status_code == 200 and seen is not None and seen["authorization"].startswith("Bearer tok-")
    # Envoy 1.40 sends the client's credentials in the body whatever auth_type says (observed)
    assert len(setup.tokens.calls) == 2
    for call in setup.tokens.calls:
        headers = call["headers"]
        assert (call["method"], call["path"], headers["host"]) == ("POST", "/oauth2/v1/token", "auth.example.com")
        assert (headers["content-type"], headers["user-agent"], headers["accept"]) == (
            "application/x-www-form-urlencoded", "Go-browser", "application/json")
        assert "authorization" not in headers
        assert call["body"] == (b"grant_type=client_credentials&client_id=my%20client&"
                                b"client_secret=s3cr3t%3A%2F%3D%26%3F&scope=read%20write&audience=api%3A%2F%2Fx")


def test_the_token_is_kept_until_it_is_half_spent(setup: Setup) -> None:
    before = len(setup.tokens.calls)
    tokens = {setup.get("oauth")[1]["authorization"] for _ in range(5)}  # type: ignore[index]
    assert len(tokens) == 1 and len(setup.tokens.calls) == before


def test_without_a_token_the_request_is_refused_unless_allowed(setup: Setup) -> None:
    reply, seen = setup.get("broken")
    assert (reply.status_code, reply.content, seen) == (401, b"Failed to inject credential.", None)
    reply, seen = setup.get("broken_allowed")
    assert reply.status_code == 200 and seen is not None and "authorization" not in seen
    assert wait_until(lambda: len(setup.broken.calls) >= 2)  # tried, and tried again


def test_the_counters(setup: Setup) -> None:
    before = setup.proxy.stats()
    setup.get("generic")
    setup.get("generic", authorization="Bearer mine")
    setup.get("broken")
    after = setup.proxy.stats()
    for name in ("http.generic.credential_injector.injected", "http.generic.credential_injector.already_exists",
                 "http.broken.credential_injector.failed"):
        assert after[name] - before.get(name, 0) >= 1, name

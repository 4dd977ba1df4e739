"""Integration: how jwt_authn fetches a remote JWKS - `async_fetch` before any request, `retry_policy` on a failing
JWKS server - through pylon and Envoy 1.40 alike. The JWKS server counts what it was asked and fails its first
requests when told to."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.jwt_tokens import Keys
from tests.proxy.upstreams import Upstream

JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
KEYS = Keys("-fetch")
STATS = "http.main.jwt_authn."


class FlakyJwks:
    """Serves KEYS' JWKS, answering 503 to its first `failures` requests; `asked` counts every request."""

    def __init__(self, failures: int = 0) -> None:
        owner = self
        self.failures, self.asked = failures, 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.asked += 1
                failing = owner.asked <= owner.failures
                body = b"down" if failing else json.dumps(KEYS.jwks()).encode()
                self.send_response(503 if failing else 200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def start(launcher: ProxyLauncher, implementation: str, upstream: Upstream, jwks: FlakyJwks,
          **remote: Any) -> RunningProxy:
    provider = {"issuer": "fetch", "remote_jwks": {
        "http_uri": {"uri": "http://jwks.local/jwks", "cluster": "jwks", "timeout": "5s"}, **remote}}
    listener = http_listener("main", free_port(), [route("/", "up")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": JWT, "providers": {"p": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return launcher.start([listener], [static_cluster("up", [upstream.port]), static_cluster("jwks", [jwks.port])],
                          implementation=implementation)


def get(proxy: RunningProxy) -> httpx.Response:
    token = KEYS.token({"iss": "fetch", "sub": "s"}, "ES256")
    return httpx.get(proxy.url("main", "/x"), headers={"authorization": f"Bearer {token}"}, timeout=10)


@pytest.mark.parametrize("fast_listener", [False, True])
def test_async_fetch_has_the_keys_before_the_first_request(
        implementation: str, launcher: ProxyLauncher, upstream: Upstream, fast_listener: bool) -> None:
    jwks = FlakyJwks()
    try:
        proxy = start(launcher, implementation, upstream, jwks, async_fetch={"fast_listener": fast_listener})
        wait_until(lambda: proxy.stats().get(STATS + "jwks_fetch_success") == 1, timeout=10)
        assert jwks.asked == 1  # before any request
        assert get(proxy).status_code == 200 and get(proxy).status_code == 200
        assert jwks.asked == 1  # no fetch on demand
    finally:
        jwks.close()


def test_async_fetch_refetches_after_a_failure(implementation: str, launcher: ProxyLauncher,
                                              upstream: Upstream) -> None:
    jwks = FlakyJwks(failures=1)
    try:
        proxy = start(launcher, implementation, upstream, jwks,
                      async_fetch={"fast_listener": True, "failed_refetch_duration": "0.2s"})
        wait_until(lambda: proxy.stats().get(STATS + "jwks_fetch_success") == 1, timeout=10)
        assert proxy.stats()[STATS + "jwks_fetch_failed"] == 1 and jwks.asked == 2
        assert get(proxy).status_code == 200
    finally:
        jwks.close()


@pytest.mark.parametrize(("failures", "retries", "status", "asked"), [
    (2, 3, 200, 3),  # retried past two 503s
    (2, 1, 401, 2),  # one retry is not enough: "Jwks remote fetch is failed"
])  # fmt: skip
def test_retry_policy_retries_a_failing_jwks_server(implementation: str, launcher: ProxyLauncher,
                                                   upstream: Upstream, failures: int, retries: int, status: int,
                                                   asked: int) -> None:
    jwks = FlakyJwks(failures=failures)
    try:
        proxy = start(launcher, implementation, upstream, jwks, retry_policy={
            "num_retries": retries, "retry_back_off": {"base_interval": "0.05s", "max_interval": "1s"}})
        reply = get(proxy)
        assert reply.status_code == status and jwks.asked == asked
        if status == 401:
            assert reply.text == "Jwks remote fetch is failed"
        stats = proxy.stats()
        assert (stats[STATS + "jwks_fetch_success"], stats[STATS + "jwks_fetch_failed"]) == (
            (1, 0) if status == 200 else (0, 1))
    finally:
        jwks.close()



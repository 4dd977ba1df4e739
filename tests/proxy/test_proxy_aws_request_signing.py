"""Integration: envoy.filters.http.aws_request_signing through pylon and Envoy 1.40 side by side.

Both proxies get the same credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN) and sign requests to a local upstream; the test checks each signature the upstream received
with botocore (tests/proxy/aws_verify.py), never with pylon's signer. Timestamps differ, so the comparison is
validity, the algorithm and scope, and the signed-header set (pylon's minus x-request-id, which Envoy's
connection manager adds before its filters run and pylon's after).

Listener `main`: the filter (s3, us-west-2, signed payload, x-envoy* excluded); `/echo/unsigned` has a per-route
config (us-west-1, UNSIGNED-PAYLOAD, host_rewrite new-host); `/echo/sigv4a` a SigV4A one with query-string
signing (region set `*`, 3 s). Listener `up`: no downstream filter; its cluster signs as an upstream HTTP filter
after the route's prefix rewrite, with the payload signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.aws_verify import BadSignature, environment, verify
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

SIGNING = "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigning"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.aws_request_signing.v3.AwsRequestSigningPerRoute"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CODEC = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
NAME = "envoy.filters.http.aws_request_signing"
KEY, SECRET, TOKEN = "AKIDPYLONTEST", "pylon/secret+key=example", "session/token+value="
EXCLUDED = [{"prefix": "x-envoy"}]


def _main(port: int) -> dict[str, Any]:
    unsigned = {"@type": PER_ROUTE, "stat_prefix": "per_route.", "aws_request_signing": {
        "service_name": "s3", "region": "us-west-1", "use_unsigned_payload": True, "host_rewrite": "new-host",
        "match_excluded_headers": EXCLUDED}}
    sigv4a = {"@type": PER_ROUTE, "stat_prefix": "sigv4a.", "aws_request_signing": {
        "service_name": "vpc-lattice-svcs", "region": "*", "signing_algorithm": "AWS_SIGV4A",
        "use_unsigned_payload": True, "query_string": {"expiration_time": "3s"}, "match_excluded_headers": EXCLUDED}}
    routes = [{**route("/echo/unsigned", "up"), "typed_per_filter_config": {NAME: unsigned}},
              {**route("/echo/sigv4a", "up"), "typed_per_filter_config": {NAME: sigv4a}},
              route("/", "up")]
    listener = http_listener("main", port, routes)
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = [
        {"name": NAME, "typed_config": {"@type": SIGNING, "service_name": "s3", "region": "us-west-2",
                                        "match_excluded_headers": EXCLUDED}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return listener


def _signing_cluster(port: int) -> dict[str, Any]:
    return static_cluster("signing", [port], typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3."
                                                                               "HttpProtocolOptions": {
        "@type": OPTIONS, "explicit_http_config": {"http_protocol_options": {}},
        "http_filters": [
            {"name": NAME, "typed_config": {"@type": SIGNING, "service_name": "vpc-lattice-svcs",
                                            "region": "us-east-1", "match_excluded_headers": EXCLUDED}},
            {"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": CODEC}}]}})


class Setup:
    def __init__(self, implementation: str, proxy: RunningProxy, main: int, up: int, upstream: Upstream) -> None:
        self.implementation, self.proxy, self.main, self.up, self.upstream = implementation, proxy, main, up, upstream

    def send(self, port: int, method: str, path: str, body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send a request; (what the upstream recorded, the body it got)."""
        before = len(self.upstream.requests)
        reply = httpx.request(method, f"http://127.0.0.1:{port}{path}", content=body or None,
                              headers={"x-custom": "a   b", "x-amzn-trace-id": "Root=1"}, timeout=10)
        assert reply.status_code == 200, reply.text
        wait_until(lambda: len(self.upstream.requests) > before)
        seen = self.upstream.requests[-1]
        return seen, body

    def check(self, seen: dict[str, Any], body: bytes) -> list[str]:
        names = verify(seen["method"], seen["path"], seen["header_list"], body, key=KEY, secret=SECRET, token=TOKEN)
        return [name for name in names if not (name == "x-request-id" and self.implementation == "envoy")]


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream = Upstream()
    launcher = ProxyLauncher(tmp_path_factory.mktemp(f"aws-signing-{request.param}"))
    try:
        main, up = free_port(), free_port()
        listeners = [_main(main), http_listener("up", up, [route("/up/", "signing", prefix_rewrite="/echo/rewritten/")])]
        with environment(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN):
            proxy = launcher.start(listeners, [static_cluster("up", [upstream.port]), _signing_cluster(upstream.port)],
                                   implementation=request.param)
        yield Setup(request.param, proxy, main, up, upstream)
    finally:
        launcher.close()
        upstream.close()


BASE = ["accept", "accept-encoding", "host", "user-agent", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token",
        "x-custom"]


def test_a_request_with_a_body_is_signed_over_the_body(setup: Setup) -> None:
    body = b'{"object": "bytes"}'
    seen, _ = setup.send(setup.main, "PUT", "/echo/bucket/key.txt?versionId=3&acl", body)
    assert sorted(setup.check(seen, body)) == sorted([*BASE, "content-length"])
    headers = seen["headers"]
    assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    assert "/us-west-2/s3/aws4_request," in headers["authorization"]
    assert setup.upstream.echoed[-1] == body


def test_a_bodiless_request_signs_the_empty_payload(setup: Setup) -> None:
    seen, _ = setup.send(setup.main, "GET", "/echo/bucket/")
    assert sorted(setup.check(seen, b"")) == sorted(BASE)
    assert seen["headers"]["x-amz-content-sha256"] == hashlib.sha256(b"").hexdigest()


def test_a_tampered_request_fails_the_check(setup: Setup) -> None:
    seen, _ = setup.send(setup.main, "GET", "/echo/bucket/")
    seen["header_list"] = [(n, "z" if n == "x-custom" else v) for n, v in seen["header_list"]]
    with pytest.raises(BadSignature):
        setup.check(seen, b"")


def test_a_route_config_replaces_the_filters(setup: Setup) -> None:
    seen, _ = setup.send(setup.main, "POST", "/echo/unsigned/x", b"not hashed")
    assert seen["headers"]["host"] == "new-host"
    assert seen["headers"]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert "/us-west-1/s3/aws4_request," in seen["headers"]["authorization"]
    assert sorted(setup.check(seen, b"not hashed")) == sorted([*BASE, "content-length"])
    stats = setup.proxy.stats()
    assert stats.get("per_route.aws_request_signing.signing_added", 0) >= 1


def test_sigv4a_query_signing_puts_the_signature_in_the_url(setup: Setup) -> None:
    seen, _ = setup.send(setup.main, "GET", "/echo/sigv4a/item?b=2&a=1")
    assert "authorization" not in seen["headers"] and "x-amz-date" not in seen["headers"]
    assert "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256" in seen["path"] and "X-Amz-Expires=3&" in seen["path"]
    assert "X-Amz-Region-Set=%2A" in seen["path"]
    names = setup.check(seen, b"")
    assert sorted(names) == ["accept", "accept-encoding", "host", "user-agent", "x-amz-content-sha256", "x-custom"]
    assert seen["headers"]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"


def test_as_an_upstream_filter_it_signs_the_rewritten_request(setup: Setup) -> None:
    body = b"payload through the upstream filter"
    seen, _ = setup.send(setup.up, "POST", "/up/thing", body)
    assert seen["path"] == "/echo/rewritten/thing"
    assert seen["headers"]["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert "/us-east-1/vpc-lattice-svcs/aws4_request," in seen["headers"]["authorization"]
    names = verify(seen["method"], seen["path"], seen["header_list"], body, key=KEY, secret=SECRET, token=TOKEN)
    assert "x-request-id" in names and "x-envoy-expected-rq-timeout-ms" not in names
    assert setup.upstream.echoed[-1] == body

"""Integration: envoy.filters.http.jwt_authn through pylon and Envoy 1.40 side by side.

Tokens are minted here (tests/proxy/jwt_tokens.py, with `cryptography` alone): RSA, RSA-PSS, ECDSA and EdDSA
signatures, and the bad ones - another key's signature, an unknown kid, expired, not yet valid, the wrong issuer
or audience, alg none. Providers: `local` (inline JWKS, payload and claims forwarded), `fwd` (its own header,
parameter and cookie, tokens forwarded) and `remote` (JWKS served by a local HTTP server, fetched once and kept).
Each expectation was first observed on Envoy 1.40: status, body, www-authenticate, details, and what the
upstream saw (nothing, for a refused request).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ProxyLauncher, RunningProxy, http_listener, json_access_log, read_json_lines, route, static_cluster, wait_until,
)
from tests.proxy.jwt_tokens import Keys
from tests.proxy.upstreams import Upstream

JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.jwt_authn"
ISSUER = "https://issuer.example"
KEYS, OTHER, REMOTE = Keys(), Keys(), Keys("-remote")


class JwksServer:
    """Serves REMOTE's JWKS at /jwks (404 elsewhere) and counts the fetches."""

    def __init__(self) -> None:
        owner = self
        self.fetches = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = json.dumps(REMOTE.jwks()).encode() if self.path == "/jwks" else b"no"
                if self.path == "/jwks":
                    owner.fetches += 1
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def folded_jwks() -> str:
    """KEYS' JWKS as Envoy's own docs write one under a YAML folded scalar (`>-`): the more-indented lines keep their
    line breaks, so the RSA modulus holds newlines and spaces inside the JSON string."""
    text = json.dumps(KEYS.jwks())
    modulus = KEYS.jwks()["keys"][0]["n"]
    return text.replace(modulus, "\n        ".join(modulus[i:i + 64] for i in range(0, len(modulus), 64)))


def config() -> dict[str, Any]:
    claims = [{"header_name": "x-sub", "claim_name": "sub"}, {"header_name": "x-num", "claim_name": "num"},
              {"header_name": "x-obj", "claim_name": "obj"}, {"header_name": "x-flag", "claim_name": "flag"}]
    providers = {
        "local": {"issuer": ISSUER, "audiences": ["api"], "local_jwks": {"inline_string": json.dumps(KEYS.jwks())},
                  "forward_payload_header": "x-jwt-payload", "claim_to_headers": claims, "require_expiration": True},
        "fwd": {"issuer": "fwd", "local_jwks": {"inline_string": json.dumps(KEYS.jwks())}, "forward": True,
                "from_headers": [{"name": "x-token", "value_prefix": "Tok "}], "from_params": ["tok"],
                "from_cookies": ["jc"]},
        "sub": {"issuer": "sub", "subjects": {"prefix": "spiffe://"},
                "local_jwks": {"inline_string": json.dumps(KEYS.jwks())}, "jwt_cache_config": {"jwt_cache_size": 2}},
        "life": {"issuer": "life", "max_lifetime": "100s", "local_jwks": {"inline_string": json.dumps(KEYS.jwks())}},
        "folded": {"issuer": "folded", "local_jwks": {"inline_string": folded_jwks()}},
        "broken": {"issuer": "broken", "remote_jwks": {"http_uri": {"uri": "http://jwks.local/missing",
                                                                    "cluster": "jwks", "timeout": "5s"}}},
        "remote": {"issuer": "remote", "remote_jwks": {"http_uri": {"uri": "http://jwks.local/jwks",
                                                                    "cluster": "jwks", "timeout": "5s"},
                                                       "cache_duration": "300s"},
                   "forward_payload_header": "x-remote-payload", "pad_forward_payload_header": True},
    }
    rules = [
        {"match": {"prefix": "/public"}},
        {"match": {"prefix": "/optional"},
         "requires": {"requires_any": {"requirements": [{"provider_name": "local"}, {"allow_missing": {}}]}}},
        {"match": {"prefix": "/failed"}, "requires": {"allow_missing_or_failed": {}}},
        {"match": {"prefix": "/fwd"}, "requires": {"provider_name": "fwd"}},
        {"match": {"prefix": "/remote"}, "requires": {"provider_name": "remote"}},
        {"match": {"prefix": "/broken"}, "requires": {"provider_name": "broken"}},
        {"match": {"prefix": "/folded"}, "requires": {"provider_name": "folded"}},
        {"match": {"prefix": "/sub"}, "requires": {"provider_name": "sub"}},
        {"match": {"prefix": "/life"}, "requires": {"provider_name": "life"}},
        {"match": {"prefix": "/any"},
         "requires": {"requires_any": {"requirements": [{"provider_name": "sub"}, {"provider_name": "life"}]}}},
        {"match": {"prefix": "/aud"},
         "requires": {"provider_and_audiences": {"provider_name": "local", "audiences": ["other"]}}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": "local"}},
    ]
    return {"@type": JWT, "providers": providers, "rules": rules, "bypass_cors_preflight": True, "stat_prefix": "sp",
            "requirement_map": {"both": {"requires_all": {"requirements": [{"provider_name": "local"},
                                                                           {"provider_name": "fwd"}]}}}}


def listener(port: int, log: Path) -> dict[str, Any]:
    routes = [{**route("/off", "up"), "typed_per_filter_config": {NAME: {"@type": PER_ROUTE, "disabled": True}}},
              {**route("/unknown", "up"),
               "typed_per_filter_config": {NAME: {"@type": PER_ROUTE, "requirement_name": "nope"}}},
              {**route("/named", "up"),
               "typed_per_filter_config": {NAME: {"@type": PER_ROUTE, "requirement_name": "both"}}},
              route("/", "up")]
    result = http_listener("main", port, routes, access_log=json_access_log(log))
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": NAME, "typed_config": config()},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    return result


class Setup:
    def __init__(self, proxy: RunningProxy, port: int, upstream: Upstream, jwks: JwksServer, log: Path) -> None:
        self.proxy, self.port, self.upstream, self.jwks, self.log = proxy, port, upstream, jwks, log

    def get(self, path: str, token: str | None = None, **request: Any
            ) -> tuple[int, bytes, str | None, dict[str, Any] | None]:
        """(status, body, www-authenticate, the request the upstream saw or None)."""
        before = len(self.upstream.requests)
        headers = request.pop("headers", {})
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        reply = httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=10, **request)
        requests = self.upstream.requests
        seen = requests[before] if len(requests) > before else None
        return reply.status_code, reply.content, reply.headers.get("www-authenticate"), seen


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp(f"jwt-{request.param}")
    upstream, jwks = Upstream(), JwksServer()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        proxy = launcher.start([listener(port, directory / "log")],
                               [static_cluster("up", [upstream.port]), static_cluster("jwks", [jwks.port])],
                               implementation=request.param)
        yield Setup(proxy, port, upstream, jwks, directory / "log")
    finally:
        launcher.close()
        upstream.close()
        jwks.close()


def claims(**changes: Any) -> dict[str, Any]:
    good = {"iss": ISSUER, "aud": "api", "sub": "alice", "exp": int(time.time()) + 600, "num": 7, "obj": {"a": 1},
            "flag": True}
    good.update(changes)
    return {k: v for k, v in good.items() if v is not None}


def realm(setup: Setup, path: str, error: bool = True) -> str:
    return f'Bearer realm="http://127.0.0.1:{setup.port}{path}"' + (', error="invalid_token"' if error else "")


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "ES256", "EdDSA"])
def test_a_valid_token_goes_upstream_with_its_payload_and_claims(setup: Setup, alg: str) -> None:
    token = KEYS.token(claims(), alg)
    status, _, challenge, seen = setup.get("/x", token)
    assert (status, challenge) == (200, None) and seen is not None
    headers = seen["headers"]
    assert "authorization" not in headers  # forward: false drops it
    assert headers["x-jwt-payload"] == token.split(".")[1]
    assert (headers["x-sub"], headers["x-num"], headers["x-obj"], headers["x-flag"]) == \
        ("alice", "7", "eyJhIjoxfQ==", "true")


def test_a_token_without_kid_is_tried_with_every_key(setup: Setup) -> None:
    assert setup.get("/x", KEYS.token(claims(), kid=None))[0] == 200


@pytest.mark.parametrize(("case", "status", "body"), [
    ("signed by another key", 401, b"Jwt verification fails"),
    ("unknown kid", 401, b"Jwks doesn't have key to match kid or alg from Jwt"),
    ("expired", 401, b"Jwt is expired"),
    ("not yet valid", 401, b"Jwt not yet valid"),
    ("no exp, required", 401, b"Jwt verification fails"),
    ("wrong issuer", 401, b"Jwt issuer is not configured"),
    ("wrong audience", 403, b"Audiences in Jwt are not allowed"),
    ("alg none", 401, b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    ("alg none, signed", 401, b"Jwt header [alg] is not supported"),
    ("garbage", 401, b"Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    ("tampered payload", 401, b"Jwt verification fails"),
])  # fmt: skip
def test_a_bad_token_is_refused_before_the_upstream(setup: Setup, case: str, status: int, body: bytes) -> None:
    now = int(time.time())
    good = KEYS.token(claims())
    token = {
        "signed by another key": OTHER.token(claims()),
        "unknown kid": KEYS.token(claims(), kid="nope"),
        "expired": KEYS.token(claims(exp=now - 120)),  # beyond the default 60 s of clock skew
        "not yet valid": KEYS.token(claims(nbf=now + 600)),
        "no exp, required": KEYS.token(claims(exp=None)),
        "wrong issuer": KEYS.token(claims(iss="https://elsewhere")),
        "wrong audience": KEYS.token(claims(aud="other")),
        "alg none": KEYS.token(claims(), "none"),
        "alg none, signed": KEYS.token(claims(), "none").rstrip(".") + "." + good.split(".")[2],
        "garbage": "abc",
        "tampered payload": ".".join([good.split(".")[0], KEYS.token(claims(sub="mallory")).split(".")[1],
                                      good.split(".")[2]]),
    }[case]
    assert setup.get("/x?q=1", token) == (status, body, realm(setup, "/x?q=1"), None)


def test_within_the_clock_skew_a_token_still_passes(setup: Setup) -> None:
    assert setup.get("/x", KEYS.token(claims(exp=int(time.time()) - 20)))[0] == 200


def test_a_missing_token_is_401_with_the_realm_alone(setup: Setup) -> None:
    assert setup.get("/x?q=1") == (401, b"Jwt is missing", realm(setup, "/x?q=1", error=False), None)
    wanted = ("401", "jwt_authn_access_denied{Jwt_is_missing}")
    assert wait_until(lambda: wanted in {(str(line["code"]), line["details"])
                                         for line in read_json_lines(setup.log, 0)}, timeout=10)


def test_requirements(setup: Setup) -> None:
    good, bad = KEYS.token(claims()), OTHER.token(claims())
    assert setup.get("/optional")[0] == 200  # requires_any with allow_missing
    assert setup.get("/optional", good)[3]["headers"]["x-sub"] == "alice"
    assert setup.get("/optional", bad)[:2] == (401, b"Jwt verification fails")
    assert setup.get("/failed", bad)[3]["headers"]["authorization"] == f"Bearer {bad}"  # passes untouched
    seen = setup.get("/public", good)[3]
    assert seen["headers"]["authorization"] == f"Bearer {good}" and "x-jwt-payload" not in seen["headers"]
    assert setup.get("/aud", good)[:2] == (403, b"Audiences in Jwt are not allowed")
    assert setup.get("/aud", KEYS.token(claims(aud=["x", "other"])))[0] == 200


def test_per_route_disabled_and_requirement_name(setup: Setup) -> None:
    assert setup.get("/off")[0] == 200
    fwd = KEYS.token({"iss": "fwd"})
    assert setup.get("/named", KEYS.token(claims()))[:2] == (401, b"Jwt is missing")
    assert setup.get("/named", KEYS.token(claims()), headers={"x-token": f"Tok {fwd}"})[0] == 200


def test_token_locations_and_forward(setup: Setup) -> None:
    token = KEYS.token({"iss": "fwd"})
    seen = setup.get("/fwd", headers={"x-token": f"Tok {token}"})[3]
    assert seen is not None and seen["headers"]["x-token"] == f"Tok {token}"
    seen = setup.get("/fwd", params={"tok": token})[3]
    assert seen is not None and seen["path"] == f"/fwd?tok={token}"
    seen = setup.get("/fwd", headers={"cookie": f"a=b; jc={token}"})[3]
    assert seen is not None and seen["headers"]["cookie"] == f"a=b; jc={token}"
    assert setup.get("/fwd", token)[:2] == (401, b"Jwt is missing")  # its own locations only
    assert setup.get("/x", params={"access_token": KEYS.token(claims())})[0] == 200  # the default parameter


def test_cors_preflight_bypasses(setup: Setup) -> None:
    reply = httpx.options(f"http://127.0.0.1:{setup.port}/x", timeout=5,
                          headers={"origin": "http://a", "access-control-request-method": "GET"})
    assert reply.status_code == 200
    assert setup.proxy.stats()["http.main.jwt_authn.sp.cors_preflight_bypassed"] >= 1


def test_remote_jwks_is_fetched_once_and_kept(setup: Setup) -> None:
    before = setup.jwks.fetches
    token = REMOTE.token({"iss": "remote", "sub": "r"}, "ES256")
    for _ in range(3):
        status, _, _, seen = setup.get("/remote", token)
        assert status == 200 and seen is not None
    payload = token.split(".")[1]
    assert seen["headers"]["x-remote-payload"] == payload + "=" * (-len(payload) % 4)
    assert setup.jwks.fetches - before <= 1
    assert setup.get("/remote", KEYS.token({"iss": "remote"}, kid="rsa-remote"))[:2] == (401, b"Jwt verification fails")
    assert setup.proxy.stats()["http.main.jwt_authn.sp.jwks_fetch_success"] == 1


def test_a_route_naming_no_requirement_is_403(setup: Setup) -> None:
    body = b"Failed JWT authentication: Wrong requirement_name: nope. It should be one of [both]"
    assert setup.get("/unknown", KEYS.token(claims())) == (403, body, None, None)
    wanted = ("403", "jwt_authn_access_denied{Wrong_requirement_name:_nope._It_should_be_one_of_[both]}")
    assert wait_until(lambda: wanted in {(str(line["code"]), line["details"])
                                         for line in read_json_lines(setup.log, 0)}, timeout=10)


@pytest.mark.parametrize("path", ["/x", "/off", "/public"])
def test_a_clients_own_payload_and_claim_headers_never_reach_the_upstream(setup: Setup, path: str) -> None:
    forged = {"x-jwt-payload": "forged", "x-sub": "root", "x-remote-payload": "forged", "x-other": "kept"}
    token = KEYS.token(claims(sub=None)) if path == "/x" else None
    status, _, _, seen = setup.get(path, token, headers=dict(forged))
    assert status == 200 and seen is not None
    headers = seen["headers"]
    assert "x-sub" not in headers and "x-remote-payload" not in headers and headers["x-other"] == "kept"
    assert headers.get("x-jwt-payload") == (token.split(".")[1] if token else None)


def test_subjects_and_max_lifetime(setup: Setup) -> None:
    now = int(time.time())
    assert setup.get("/sub", KEYS.token({"iss": "sub", "sub": "spiffe://a"}))[0] == 200
    assert setup.get("/sub", KEYS.token({"iss": "sub", "sub": "bob"}))[:2] == (401, b"Jwt verification fails")
    assert setup.get("/sub", KEYS.token({"iss": "sub"}))[:2] == (401, b"Jwt verification fails")
    assert setup.get("/life", KEYS.token({"iss": "life", "exp": now + 50}))[0] == 200
    assert setup.get("/life", KEYS.token({"iss": "life", "iat": now - 1000, "exp": now + 50}))[0] == 200
    assert setup.get("/life", KEYS.token({"iss": "life", "exp": now + 500}))[:2] == (401, b"Jwt verification fails")
    assert setup.get("/life", KEYS.token({"iss": "life"}))[:2] == (401, b"Jwt verification fails")


@pytest.mark.parametrize(("token_claims", "body"), [
    ({"iss": "life", "exp": 10**10}, b"Jwt verification fails"),  # life's own failure over sub's unknown issuer
    ({"iss": "elsewhere"}, b"Jwt issuer is not configured"),
    (None, b"Jwt is missing"),
])  # fmt: skip
def test_requires_any_answers_envoys_pick_of_the_failures(setup: Setup, token_claims: dict | None,
                                                            body: bytes) -> None:
    token = KEYS.token(token_claims) if token_claims is not None else None
    assert setup.get("/any", token)[:2] == (401, body)


def test_with_jwt_cache_config_a_verified_token_is_cached(setup: Setup) -> None:
    def hits() -> tuple[int, int]:
        stats = setup.proxy.stats()
        return stats["http.main.jwt_authn.sp.jwt_cache_hit"], stats["http.main.jwt_authn.sp.jwt_cache_miss"]

    before = hits()
    token = KEYS.token({"iss": "sub", "sub": f"spiffe://{time.monotonic_ns()}"})
    assert [setup.get("/sub", token)[0] for _ in range(3)] == [200, 200, 200]
    after = hits()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
    before = after
    assert [setup.get("/x", KEYS.token(claims()))[0] for _ in range(2)] == [200, 200]  # no cache: misses only
    after = hits()
    assert (after[0] - before[0], after[1] - before[1]) == (0, 2)


def test_a_jwks_that_cannot_be_fetched_refuses_the_token(setup: Setup) -> None:
    before = setup.proxy.stats()["http.main.jwt_authn.sp.jwks_fetch_failed"]
    token = KEYS.token({"iss": "broken"})
    assert setup.get("/broken", token) == (401, b"Jwks remote fetch is failed", realm(setup, "/broken"), None)
    assert setup.proxy.stats()["http.main.jwt_authn.sp.jwks_fetch_failed"] == before + 1
    assert setup.get("/broken", KEYS.token({"iss": "broken", "exp": 1}))[1] == b"Jwt is expired"  # checked first


def test_a_jwks_as_a_folded_yaml_scalar_writes_it_verifies_tokens(setup: Setup) -> None:
    # Envoy's JSON reading takes raw line breaks inside strings and its base64url decoding skips whitespace:
    # the JWKS of its docs' examples (jwt-authn-*-filter.yaml) load and verify
    assert "\n" in folded_jwks()
    status, _, _, seen = setup.get("/folded", KEYS.token({"iss": "folded"}))
    assert (status, seen is not None) == (200, True)
    assert setup.get("/folded", OTHER.token({"iss": "folded"}))[:2] == (401, b"Jwt verification fails")

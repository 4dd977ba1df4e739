"""jwt_authn's config (what loads, what is refused by name) and the token checks of jwt_verify.py (sans-IO)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import msgspec
import pytest

from pylon.config.envoy import convert
from pylon.extensions.filters.common import jwt_verify as jv
from pylon.extensions.filters.http.jwt_authn import JwtAuthentication, PerRouteConfig
from tests.proxy.jwt_tokens import Keys, b64

KEYS, OTHER = Keys(), Keys()
JWKS = jv.parse_jwks(json.dumps(KEYS.jwks()))


def fails(token: str, keys: list[jv.Jwk] = JWKS) -> str:
    with pytest.raises(jv.JwtError) as caught:
        jv.verify_signature(jv.parse(token), keys)
    return str(caught.value)


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS512", "ES256", "EdDSA"])
def test_signatures_verify(alg: str) -> None:
    jv.verify_signature(jv.parse(KEYS.token({"a": 1}, alg)), JWKS)


def test_a_signature_by_another_key_or_over_other_claims_fails() -> None:
    assert fails(OTHER.token({"a": 1})) == jv.VERIFICATION_FAILS
    good, forged = KEYS.token({"a": 1}), KEYS.token({"a": 2})
    assert fails(".".join([*forged.split(".")[:2], good.split(".")[2]])) == jv.VERIFICATION_FAILS


def test_keys_are_chosen_by_kid_and_type() -> None:
    assert fails(KEYS.token({"a": 1}, kid="nope")) == jv.KID_ALG_MISMATCH
    assert fails(KEYS.token({"a": 1}, "ES256", kid="rsa")) == jv.KID_ALG_MISMATCH  # an RSA key never checks ES256
    jv.verify_signature(jv.parse(KEYS.token({"a": 1}, "ES256", kid=None)), JWKS)


def test_hs256_signed_with_the_rsa_public_key_is_no_key_confusion() -> None:
    """The classic attack: HMAC over the token with the server's public key as secret. RSA keys never do HMAC."""
    head = b64(json.dumps({"alg": "HS256", "kid": "rsa"}).encode())
    body = b64(json.dumps({"a": 1}).encode())
    secret = json.dumps(KEYS.jwks()["keys"][0]).encode()
    signature = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    assert fails(f"{head}.{body}.{signature}") == jv.KID_ALG_MISMATCH


def test_hmac_keys_work_when_the_jwks_has_them() -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    keys = jv.parse_jwks(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": b64(secret)}]}))
    head, body = b64(json.dumps({"alg": "HS256", "kid": "h"}).encode()), b64(b"{}")
    signature = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    jv.verify_signature(jv.parse(f"{head}.{body}.{signature}"), keys)
    assert fails(f"{head}.{body}.{b64(b'x' * 32)}", keys) == jv.VERIFICATION_FAILS


@pytest.mark.parametrize(("token", "status"), [
    ("abc", jv.BAD_FORMAT),
    ("a.b", jv.BAD_FORMAT),
    (KEYS.token({"a": 1}, "none"), jv.BAD_FORMAT),  # no signature part at all
    (KEYS.token({"a": 1}, "none").rstrip(".") + ".c2ln", jv.ALG_NOT_IMPLEMENTED),  # alg none is never accepted
    (b64(b'{"alg":"HS1"}') + "." + b64(b"{}") + ".c2ln", jv.ALG_NOT_IMPLEMENTED),
    (b64(b"{x") + "." + b64(b"{}") + ".c2ln", jv.HEADER_BAD_JSON),
    ("!!!." + b64(b"{}") + ".c2ln", jv.HEADER_BAD_BASE64),
    (b64(b'{"typ":"JWT"}') + "." + b64(b"{}") + ".c2ln", jv.HEADER_BAD_ALG),
    (b64(b'{"alg":"RS256"}') + "." + b64(b"[1") + ".c2ln", jv.PAYLOAD_BAD_JSON),
    (b64(b'{"alg":"RS256"}') + "." + b64(b"{}") + ".!!", jv.SIGNATURE_BAD_BASE64),
])  # fmt: skip
def test_malformed_tokens(token: str, status: str) -> None:
    with pytest.raises(jv.JwtError, match=status.replace("[", r"\[").replace("]", r"\]")):
        jv.parse(token)


def test_time_window_with_clock_skew() -> None:
    now = int(time.time())
    jv.check_time(jv.parse(KEYS.token({"exp": now - 59})), now, 60)
    jv.check_time(jv.parse(KEYS.token({"nbf": now + 59})), now, 60)
    with pytest.raises(jv.JwtError, match=jv.EXPIRED):
        jv.check_time(jv.parse(KEYS.token({"exp": now - 61})), now, 60)
    with pytest.raises(jv.JwtError, match=jv.NOT_YET_VALID):
        jv.check_time(jv.parse(KEYS.token({"nbf": now + 61})), now, 60)
    with pytest.raises(jv.JwtError, match=jv.EXPIRED):
        jv.check_time(jv.parse(KEYS.token({"exp": now - 1})), now, 0)


def test_audiences_and_issuer_as_claims() -> None:
    assert jv.parse(KEYS.token({"aud": ["a", 3, "b"], "iss": "i"})).audiences == ["a", "b"]
    assert jv.parse(KEYS.token({"aud": "a", "iss": 5})).issuer == ""


LOCAL = {"local_jwks": {"inline_string": json.dumps(KEYS.jwks())}}


@pytest.mark.parametrize(("config", "field"), [
    ({"providers": {"p": {**LOCAL, "clear_route_cache": True}}}, "clear_route_cache"),
    ({"providers": {"p": {**LOCAL, "header_in_metadata": "x"}}}, "header_in_metadata"),
    ({"providers": {"p": {**LOCAL, "payload_in_metadata": "x"}}}, "payload_in_metadata"),
    ({"providers": {"p": {"remote_jwks": {"http_uri": {"uri": "http://a/b", "cluster": "c", "timeout": "1s"},
                                          "retry_policy": {"retry_priority": {"name": "x"}}}}}}, "retry_priority"),
    ({"providers": {"p": {"remote_jwks": {"http_uri": {"uri": "http://a/b", "cluster": "c", "timeout": "1s"},
                                          "retry_policy": {"retry_back_off": {"base_interval": "2s",
                                                                             "max_interval": "1s"}}}}}},
     "max_interval"),
    ({"providers": {"p": {}}}, "exactly one of remote_jwks, local_jwks"),
    ({"providers": {"p": {"local_jwks": {"inline_string": "{}"}}}}, "local_jwks"),
    ({"providers": {"p": LOCAL}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "q"}}]},
     "provider 'q'"),
    ({"providers": {"p": LOCAL}, "filter_state_rules": {"name": "x"}}, "filter_state_rules"),
    ({"providers": {"p": LOCAL}, "strip_failure_response": True}, "strip_failure_response"),
    ({"providers": {"p": LOCAL}, "rules": [{"match": {"prefix": "/"}, "requirement_name": "r"}]}, "requirement_name"),
    ({"providers": {"p": {**LOCAL, "unknown": 1}}}, "unknown"),
])  # fmt: skip
def test_refused_by_name(config: dict, field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=field):
        convert(config, JwtAuthentication)


def test_per_route_is_one_of_disabled_and_requirement_name() -> None:
    assert convert({"requirement_name": "a"}, PerRouteConfig).requirement_name == "a"
    for fields in ({}, {"disabled": True, "requirement_name": "a"}, {"disabled": False}):
        with pytest.raises(msgspec.ValidationError):
            convert(fields, PerRouteConfig)


def test_jwks_keys_must_be_keys() -> None:
    with pytest.raises(ValueError, match="kty"):
        jv.parse_jwks(json.dumps({"keys": [{"kty": "XYZ"}]}))
    with pytest.raises(ValueError, match=r"keys\[0\]"):
        jv.parse_jwks(json.dumps({"keys": [{"kty": "RSA", "n": "AQAB"}]}))


def test_a_cached_token_still_has_its_time_window_checked() -> None:
    from pylon.extensions.filters.http.jwt_authn import JwtProvider, Outcome, Provider, Token, _verify_one

    config = convert({**LOCAL, "issuer": "i", "jwt_cache_config": {}}, JwtProvider)
    provider = Provider("p", config)
    token = KEYS.token({"iss": "i", "exp": int(time.time()) - 3600})
    provider.cache.put(jv.parse(token))  # as if verified while it was still valid
    outcome = Outcome(set())
    assert _verify_one(Token(token, None, frozenset({"i"})), provider, [provider], None, outcome) == jv.EXPIRED
    assert (outcome.cache_hits, outcome.passed) == (1, [])

"""Every check `TokenAuthority.verify` makes has a token here that only that check refuses."""

import time
from collections.abc import Callable

import jwt
import pytest

from pylon.identity.certs import KeyType, generate_key
from pylon.identity.tokens import AUDIENCE, ISSUER, ServiceAccount, TokenAuthority, TokenError, parse_duration

KEY = generate_key(KeyType.ECDSA_P256)
AUTHORITY = TokenAuthority(KEY)


def claims(**overrides: object) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": [AUDIENCE], "sub": "system:serviceaccount:default:web", "iat": now, "exp": now + 60}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_issued_token_verifies_to_its_service_account() -> None:
    token = AUTHORITY.issue("default", "web", ttl=60)
    assert AUTHORITY.verify(token) == ServiceAccount("default", "web")
    assert AUTHORITY.verify(jwt.encode(claims(), KEY, algorithm="ES256")) == ServiceAccount("default", "web")


# Tokens are made when each test runs, not at collection: a valid `exp` a minute ahead would have
# passed by the time a long suite reaches them, and every case would read "expired".
@pytest.mark.parametrize("make, reason", [
    (lambda: AUTHORITY.issue("default", "web", ttl=60, now=time.time() - 120), "expired"),
    (lambda: jwt.encode(claims(aud=["other"]), KEY, algorithm="ES256"), "audience"),
    (lambda: jwt.encode(claims(iss="someone-else"), KEY, algorithm="ES256"), "issuer"),
    (lambda: jwt.encode(claims(), generate_key(KeyType.ECDSA_P256), algorithm="ES256"), "signature"),
    (lambda: jwt.encode(claims(exp=None), KEY, algorithm="ES256"), "exp"),
    (lambda: jwt.encode(claims(), None, algorithm="none"), "alg value"),
    (lambda: jwt.encode(claims(sub="someone"), KEY, algorithm="ES256"), "not a service account"),
    (lambda: jwt.encode(claims(sub="system:serviceaccount:default:"), KEY, algorithm="ES256"), "not a service account"),
    (lambda: "not-a-jwt", "invalid"),
])  # fmt: skip
def test_refused(make: Callable[[], str], reason: str) -> None:
    token = make()
    with pytest.raises(TokenError, match="(?i)" + reason.split()[0]):
        AUTHORITY.verify(token)


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "24h", "7d")] == [90, 90, 900, 86400, 604800]
    for bad in ("", "0", "-5", "1w", "h"):
        with pytest.raises(ValueError):
            parse_duration(bad)

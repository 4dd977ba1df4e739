"""Service-account tokens: the stand-in for Kubernetes' projected token (audience `istio-ca`).

Istio's agent authenticates to the CA with a Kubernetes service-account JWT that istiod checks
through a TokenReview. pylon has no API server, so pilot signs such JWTs itself (ES256, key kept
in the CA directory) with the claims Kubernetes puts in them, and verifies them on every
request: signature, algorithm, expiry, audience and issuer, each one refused when wrong.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

#: The audience Istio's CA accepts (TOKEN_AUDIENCES default) and its agent's token carries.
AUDIENCE = "istio-ca"
ISSUER = "pylon-pilot"
ALGORITHM = "ES256"
DEFAULT_TTL = 24 * 3600
_SUBJECT_PREFIX = "system:serviceaccount:"


class TokenError(Exception):
    """A token that does not authenticate anyone; the message says why."""


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str


class TokenAuthority:
    """Signs and verifies tokens with one EC P-256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._public = key.public_key()

    def issue(self, namespace: str, service_account: str, *, ttl: int = DEFAULT_TTL, now: float | None = None) -> str:
        """A token for the service account that expires `ttl` seconds from `now`."""
        if ttl <= 0:
            raise ValueError("token TTL must be positive")
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "sub": f"{_SUBJECT_PREFIX}{namespace}:{service_account}",
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> ServiceAccount:
        """The service account the token was issued to; TokenError if it must not be trusted."""
        try:
            # `algorithms` pins ES256 (no `none`, no HMAC with the public key as secret);
            # `require` refuses tokens that leave out the claims these checks rely on.
            claims = jwt.decode(
                token, self._public, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        subject = claims["sub"]
        parts = subject.split(":")
        if not subject.startswith(_SUBJECT_PREFIX) or len(parts) != 4 or not all(parts[2:]):
            raise TokenError(f"invalid token: subject {subject!r} is not a service account")
        return ServiceAccount(namespace=parts[2], name=parts[3])



_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `90`, `90s`, `15m`, `24h` or `7d`; ValueError naming the text otherwise."""
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _UNITS else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise ValueError(f"invalid duration {text!r}: expected a positive number with an optional s, m, h or d")
    return int(number) * _UNITS[unit]

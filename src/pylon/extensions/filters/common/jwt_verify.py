"""JWTs parsed and verified as Envoy's jwt_verify_lib does it, with its status words (sans-IO).

Why its own module: the jwt_authn filter decides what to check and when; this says whether one token passes
against one provider's keys, and if not, which of Envoy's statuses it is (the client reads the status text in
the 401 body, and the access log in the response details). Keys are imported and signatures checked by joserfc
(its JWS algorithms: RSA PKCS#1 and PSS, ECDSA, EdDSA and HMAC), handed the signing input and signature parsed
here once rather than the token (which it would parse again);
everything around them - the compact form, `alg`, the
key choice by `kid` and `alg`, the time window with clock skew - follows jwt_verify_lib's order:

1. the compact form (three non-empty base64url parts, JSON objects), `alg` one of Envoy's (`none` never is);
2. the time window: `nbf` after now + skew is "not yet valid", `exp` before now - skew "expired";
3. the keys: those whose `kid` agrees (when both have one) and whose `alg` agrees (when the key states one)
   and whose type fits `alg`; a token no key fits is "Jwks doesn't have key to match kid or alg from Jwt", one
   no fitting key verifies is "Jwt verification fails".

The filter checks issuer and audiences between 2 and 3, as Envoy's authenticator does.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
from joserfc.errors import JoseError
from joserfc.jwk import Key, import_key
from joserfc.jws import JWSRegistry

MISSING = "Jwt is missing"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
HEADER_BAD_JSON = "Jwt header is an invalid JSON"
HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
ALG_NOT_IMPLEMENTED = "Jwt header [alg] is not supported"
HEADER_BAD_KID = "Jwt header [kid] field is not a string"
PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
NOT_YET_VALID = "Jwt not yet valid"
EXPIRED = "Jwt is expired"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
VERIFICATION_FAILS = "Jwt verification fails"
KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
JWKS_FETCH_FAILED = "Jwks remote fetch is failed"

#: the algorithms jwt_verify_lib implements, by the key type each needs
_KEY_TYPES = {
    **{f"RS{bits}": "RSA" for bits in (256, 384, 512)},
    **{f"PS{bits}": "RSA" for bits in (256, 384, 512)},
    **{f"ES{bits}": "EC" for bits in (256, 384, 512)},
    **{f"HS{bits}": "oct" for bits in (256, 384, 512)},
    "EdDSA": "OKP",
}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
#: joserfc's implementation of each: the token is parsed once, here, and only its signature handed over
_ALGORITHMS = {name: JWSRegistry.algorithms[name] for name in _KEY_TYPES}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class JwtError(Exception):
    """A token that does not pass; `str()` is Envoy's status text."""


class Jwk(NamedTuple):
    """One JWKS key: what the choice looks at, and the key itself."""

    kid: str
    alg: str
    kty: str
    crv: str
    key: Key


class Jwt(NamedTuple):
    """A token in compact form, parsed; its claims as the payload's JSON gives them."""

    token: str
    header: dict[str, Any]
    payload_segment: str
    claims: dict[str, Any]
    alg: str
    kid: str
    signing_input: bytes
    signature: bytes

    @property
    def issuer(self) -> str:
        iss = self.claims.get("iss", "")
        return iss if isinstance(iss, str) else ""

    @property
    def audiences(self) -> list[str]:
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return [aud]
        return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []

    def number(self, claim: str) -> int:
        """A numeric date claim; 0 when absent (as jwt_verify_lib has it)."""
        value = self.claims.get(claim, 0)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _b64decode(segment: str) -> bytes:
    if _BASE64URL.fullmatch(segment) is None:
        raise binascii.Error("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _json_object(segment: str, bad_base64: str, bad_json: str) -> dict[str, Any]:
    """A header or payload segment as the JSON object it must be, or JwtError with the part's own status."""
    try:
        raw = _b64decode(segment)
    except binascii.Error:
        raise JwtError(bad_base64) from None
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise JwtError(bad_json) from None
    if not isinstance(value, dict):
        raise JwtError(bad_json)
    return value


def parse(token: str) -> Jwt:
    """The token's parts, or JwtError with the status jwt_verify_lib gives a malformed one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise JwtError(BAD_FORMAT)
    header = _json_object(parts[0], HEADER_BAD_BASE64, HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtError(HEADER_BAD_ALG)
    if alg not in _KEY_TYPES:
        raise JwtError(ALG_NOT_IMPLEMENTED)  # `none` among them: an unsigned token is never accepted
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise JwtError(HEADER_BAD_KID)
    claims = _json_object(parts[1], PAYLOAD_BAD_BASE64, PAYLOAD_BAD_JSON)
    try:
        signature = _b64decode(parts[2])
    except binascii.Error:
        raise JwtError(SIGNATURE_BAD_BASE64) from None
    return Jwt(token, header, parts[1], claims, alg, kid, f"{parts[0]}.{parts[1]}".encode(), signature)


def check_time(jwt: Jwt, now: int, clock_skew: int) -> None:
    """nbf and exp against now, with the provider's clock skew either way."""
    nbf = jwt.number("nbf")
    if nbf and nbf > now + clock_skew:
        raise JwtError(NOT_YET_VALID)
    exp = jwt.number("exp")
    if exp and exp < now - clock_skew:
        raise JwtError(EXPIRED)


#: The JWK members that hold base64url numbers or bytes (RFC 7518 6): whitespace inside them is dropped, as Envoy's
#: decoding (absl's) skips it — Envoy's own docs fold long moduli over several lines.
_BASE64_MEMBERS = frozenset({"n", "e", "d", "p", "q", "dp", "dq", "qi", "x", "y", "k"})
_WHITESPACE = re.compile(r"\s+")


def _without_whitespace(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: _WHITESPACE.sub("", value) if name in _BASE64_MEMBERS and isinstance(value, str) else value
            for name, value in entry.items()}


def parse_jwks(text: str) -> list[Jwk]:
    """A JWKS document's usable keys; ValueError when it is not one (no keys, bad JSON, a bad key).

    As Envoy reads one: line breaks inside JSON strings are taken (strict=False) and whitespace inside base64url
    members dropped, so a JWKS written under a YAML folded scalar loads as it does in Envoy."""
    try:
        document = json.loads(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"not a JWKS (invalid JSON: {exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("not a JWKS (no `keys` list, or an empty one)")
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"keys[{i}] is not an object")
        kty = entry.get("kty")
        if kty not in ("RSA", "EC", "oct", "OKP"):
            raise ValueError(f"keys[{i}]: kty {kty!r} is not RSA, EC, oct or OKP")
        try:
            key = import_key(_without_whitespace(entry))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"keys[{i}]: {exc}") from None
        keys.append(Jwk(str(entry.get("kid", "")), str(entry.get("alg", "")), kty, str(entry.get("crv", "")), key))
    return keys


def verify_signature(jwt: Jwt, keys: Sequence[Jwk]) -> None:
    """Passes when a key that fits the token's kid and alg verifies its signature."""
    kty = _KEY_TYPES[jwt.alg]
    algorithm = _ALGORITHMS[jwt.alg]
    fitted = False
    for jwk in keys:
        if jwt.kid and jwk.kid and jwk.kid != jwt.kid:
            continue
        if jwk.alg and jwk.alg != jwt.alg:
            continue
        if jwk.kty != kty or (kty == "EC" and jwk.crv != _CURVES[jwt.alg]) or (kty == "OKP" and jwk.crv != "Ed25519"):
            continue
        fitted = True
        try:
            if algorithm.verify(jwt.signing_input, jwt.signature, jwk.key):
                return
        except (JoseError, ValueError, TypeError):
            continue
    raise JwtError(VERIFICATION_FAILS if fitted else KID_ALG_MISMATCH)

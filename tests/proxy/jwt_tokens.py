"""JWTs and JWKS for the jwt_authn tests, made with `cryptography` alone (not the library the filter verifies
with), so a token can be anything a client could send: any alg (`none` included), any key, any claims."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(number: int) -> str:
    return b64(number.to_bytes((number.bit_length() + 7) // 8, "big"))


class Keys:
    """An RSA, an EC P-256 and an Ed25519 key, with their JWKS entries (kid `rsa`, `ec`, `ed` unless renamed)."""

    def __init__(self, suffix: str = "") -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.suffix = suffix

    def jwks(self) -> dict[str, Any]:
        numbers = self.rsa.public_key().public_numbers()
        point = self.ec.public_key().public_numbers()
        raw = self.ed.public_key().public_bytes_raw()
        return {"keys": [
            {"kty": "RSA", "kid": "rsa" + self.suffix, "n": _uint(numbers.n), "e": _uint(numbers.e)},
            {"kty": "EC", "kid": "ec" + self.suffix, "crv": "P-256", "x": b64(point.x.to_bytes(32, "big")),
             "y": b64(point.y.to_bytes(32, "big"))},
            {"kty": "OKP", "kid": "ed" + self.suffix, "crv": "Ed25519", "x": b64(raw)},
        ]}

    def sign(self, alg: str, signing_input: bytes) -> bytes:
        if alg == "none":
            return b""
        if alg == "EdDSA":
            return self.ed.sign(signing_input)
        bits = int(alg[2:])
        digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 512: hashes.SHA512()}[bits]
        if alg.startswith("RS"):
            return self.rsa.sign(signing_input, padding.PKCS1v15(), digest)
        if alg.startswith("PS"):
            return self.rsa.sign(signing_input, padding.PSS(padding.MGF1(digest), digest.digest_size), digest)
        r, s = utils.decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(digest)))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def token(self, claims: dict[str, Any], alg: str = "RS256", kid: str | None = "", **header: Any) -> str:
        """A compact JWS; kid "" means the kid of the key `alg` uses, None no kid at all."""
        head: dict[str, Any] = {"alg": alg, "typ": "JWT", **header}
        if kid == "":
            kid = ("ed" if alg == "EdDSA" else "ec" if alg.startswith("ES") else "rsa") + self.suffix
        if kid is not None:
            head["kid"] = kid
        signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}".encode()
        return f"{signing_input.decode()}.{b64(self.sign(alg, signing_input))}"

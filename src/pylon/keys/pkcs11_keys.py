"""A token key as a `cryptography` private key, so X.509 builders sign with it unchanged.

cryptography's CSR and certificate builders call `key.sign(data, padding, algorithm)` on whatever key
they are given; a subclass of its private-key interfaces whose `sign` goes to the token is therefore
all it takes for `build_csr` (the agent's CSR) and the CA's certificate builder to sign through a
PKCS#11 token, with the DER assembly left to cryptography. Everything that would reveal the key
(`private_numbers`, `private_bytes`) raises, as the token would refuse it anyway; `decrypt` and
`exchange` raise because pylon's token keys are made for signing only.
"""

from __future__ import annotations

from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pylon.keys.pkcs11 import TokenKey, hash_name


class NonExtractableKeyError(TypeError):
    """The key lives in a PKCS#11 token as non-extractable: its private parts cannot be had."""


def _refuse(key: TokenKey) -> NoReturn:
    raise NonExtractableKeyError(f"key {key.label!r} stays in PKCS#11 token {key.token.label!r}; it cannot be "
                                 "exported")  # fmt: skip


class TokenRsaKey(rsa.RSAPrivateKey):
    """An RSA key in a token: PKCS#1 v1.5 and PSS (salt = digest length) signatures with SHA-256/384/512."""

    def __init__(self, key: TokenKey) -> None:
        self.token_key = key

    def sign(self, data: bytes, padding_: padding.AsymmetricPadding,
             algorithm: Prehashed | hashes.HashAlgorithm) -> bytes:  # fmt: skip
        if isinstance(algorithm, Prehashed):
            raise ValueError("token keys hash the data themselves; Prehashed is not supported")
        name = hash_name(algorithm)
        if isinstance(padding_, padding.PKCS1v15):
            return self.token_key.sign(data, name)
        if isinstance(padding_, padding.PSS):
            salt = padding_._salt_length  # noqa: SLF001 - cryptography keeps it private
            if salt is not padding.PSS.DIGEST_LENGTH and salt != algorithm.digest_size:
                raise ValueError("token keys sign PSS with a salt as long as the digest (TLS 1.3's rule)")
            return self.token_key.sign(data, name, pss=True)
        raise ValueError(f"unsupported padding {padding_.name}")

    def decrypt(self, ciphertext: bytes, padding_: padding.AsymmetricPadding) -> bytes:
        raise NonExtractableKeyError(f"key {self.token_key.label!r} is made for signing only")

    @property
    def key_size(self) -> int:
        return self.public_key().key_size

    def public_key(self) -> rsa.RSAPublicKey:
        key = self.token_key.public_key
        assert isinstance(key, rsa.RSAPublicKey)
        return key

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _refuse(self.token_key)

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:  # noqa: A002
        _refuse(self.token_key)

    def __copy__(self) -> TokenRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenRsaKey:
        return self


class TokenEcKey(ec.EllipticCurvePrivateKey):
    """A P-256 key in a token: DER ECDSA signatures over SHA-256/384/512 digests computed here."""

    def __init__(self, key: TokenKey) -> None:
        self.token_key = key

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise ValueError("token EC keys sign ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            raise ValueError("token keys hash the data themselves; Prehashed is not supported")
        return self.token_key.sign(data, hash_name(algorithm))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise NonExtractableKeyError(f"key {self.token_key.label!r} is made for signing only")

    @property
    def curve(self) -> ec.EllipticCurve:
        return self.public_key().curve

    @property
    def key_size(self) -> int:
        return self.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.token_key.public_key
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _refuse(self.token_key)

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:  # noqa: A002
        _refuse(self.token_key)

    def __copy__(self) -> TokenEcKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenEcKey:
        return self


def as_private_key(key: TokenKey) -> TokenRsaKey | TokenEcKey:
    """`key` as the cryptography private key its type calls for."""
    return TokenRsaKey(key) if key.key_type == "rsa" else TokenEcKey(key)

"""A key imported into a PKCS#11 token (SoftHSM2 in a temp dir) through the short-lived import process: it signs,
it cannot be read back, and every refusal names what is wrong."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from pylon.identity.certs import KeyType, generate_key
from pylon.keys import pkcs11
from pylon.keys.pkcs11_import import import_in_child
from tests.softhsm import LIBRARY, PIN, Tokens

TOKEN = "pylon-cred"


def _pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


@pytest.mark.parametrize("key_type", [KeyType.RSA_2048, KeyType.ECDSA_P256], ids=lambda t: t.value)
def test_an_imported_key_signs_and_stays_in_the_token(softhsm: Tokens, key_type: KeyType) -> None:
    import pkcs11 as p

    key = generate_key(key_type)
    label = f"imported-{key_type.value}"
    kind = import_in_child(LIBRARY, TOKEN, PIN, label, _pem(key), env=softhsm.env)
    assert kind == ("rsa" if key_type is not KeyType.ECDSA_P256 else "ecdsa")
    token = pkcs11.open_token(LIBRARY, TOKEN, PIN)
    in_token = pkcs11.find_key(token, label)
    try:
        assert in_token.public_key == key.public_key()
        signature = in_token.sign(b"data")
        if isinstance(key, rsa.RSAPrivateKey):
            key.public_key().verify(signature, b"data", padding.PKCS1v15(), hashes.SHA256())
        else:
            key.public_key().verify(signature, b"data", ec.ECDSA(hashes.SHA256()))
        private = token.session().get_key(object_class=p.ObjectClass.PRIVATE_KEY, label=label)
        assert private[p.Attribute.SENSITIVE] and not private[p.Attribute.EXTRACTABLE]
        assert not private[p.Attribute.NEVER_EXTRACTABLE]  # true: it was outside once
        secret_part = p.Attribute.PRIME_1 if isinstance(key, rsa.RSAPrivateKey) else p.Attribute.VALUE
        with pytest.raises(p.AttributeSensitive):
            private[secret_part]
    finally:
        in_token.delete()


@pytest.mark.parametrize(("token", "pin", "what", "text"), [
    ("no-such-token", PIN, "token", "no token labelled 'no-such-token'"),
    (TOKEN, "wrong-pin", "pin", "refused the user PIN"),
])  # fmt: skip
def test_refusals_name_what_is_wrong(softhsm: Tokens, token: str, pin: str, what: str, text: str) -> None:
    with pytest.raises(pkcs11.Pkcs11Error, match=text) as caught:
        import_in_child(LIBRARY, token, pin, "refused", _pem(generate_key(KeyType.ECDSA_P256)), env=softhsm.env)
    assert caught.value.what == what


def test_a_missing_library_and_a_bad_key_are_named(softhsm: Tokens) -> None:
    with pytest.raises(pkcs11.Pkcs11Error, match="no PKCS#11 library at /nonexistent.so") as caught:
        import_in_child("/nonexistent.so", TOKEN, PIN, "x", _pem(generate_key(KeyType.ECDSA_P256)), env=softhsm.env)
    assert caught.value.what == "library"
    with pytest.raises(pkcs11.Pkcs11Error, match="not an unencrypted PEM private key"):
        import_in_child(LIBRARY, TOKEN, PIN, "x", b"not a key", env=softhsm.env)

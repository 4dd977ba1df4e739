"""Keys made and used inside a PKCS#11 token (SoftHSM2 in a temp dir): signatures verify, the key cannot be
exported, CSRs signed through the token carry the SPIFFE id, and every refusal names what is wrong."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pylon.identity.certs import KeyType, build_csr
from pylon.identity.spiffe import SpiffeId
from pylon.keys import pkcs11
from pylon.keys.pkcs11_keys import NonExtractableKeyError, as_private_key
from tests.softhsm import LIBRARY, PIN

KEY_TYPES = [KeyType.RSA_2048, KeyType.RSA_3072, KeyType.ECDSA_P256]


@pytest.fixture(scope="module")
def token(softhsm) -> pkcs11.Token:  # type: ignore[no-untyped-def]
    return pkcs11.open_token(LIBRARY, "pylon-unit", PIN)


@pytest.fixture(scope="module", params=KEY_TYPES, ids=lambda t: t.value)
def key(request: pytest.FixtureRequest, token: pkcs11.Token) -> pkcs11.TokenKey:
    made = pkcs11.generate_key(token, f"unit-{request.param.value}", request.param)
    yield made
    made.delete()


def _pkcs1_block(key: pkcs11.TokenKey, digest: bytes) -> bytes:
    """EMSA-PKCS1-v1_5 for SHA-256, as the key hook hands raw RSA its input."""
    info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    size = key.public_key.key_size // 8  # type: ignore[union-attr]
    return b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info


def test_token_signatures_verify_with_the_public_key(key: pkcs11.TokenKey) -> None:
    message = b"pylon signs through the token"
    public = key.public_key
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(key.sign(message, "sha256"), message, padding.PKCS1v15(), hashes.SHA256())
        for name, algorithm in (("sha256", hashes.SHA256()), ("sha384", hashes.SHA384())):
            pss = padding.PSS(padding.MGF1(algorithm), algorithm.digest_size)  # TLS 1.3's salt length
            public.verify(key.sign(message, name, pss=True), message, pss, algorithm)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(message)
        raw = key.sign_raw_rsa(_pkcs1_block(key, digest.finalize()))
        public.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        signature = key.sign(message, "sha256")
        decode_dss_signature(signature)  # DER, as TLS and X.509 want it
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        digest = hashes.Hash(hashes.SHA384())
        digest.update(message)
        public.verify(key.sign_ecdsa_digest(digest.finalize()), message, ec.ECDSA(hashes.SHA384()))


def test_the_key_is_sensitive_and_never_extractable(key: pkcs11.TokenKey, token: pkcs11.Token) -> None:
    import pkcs11 as p11

    session = token.session()
    private = session.get_key(object_class=p11.ObjectClass.PRIVATE_KEY, label=key.label)
    for flag in (p11.Attribute.SENSITIVE, p11.Attribute.ALWAYS_SENSITIVE, p11.Attribute.NEVER_EXTRACTABLE,
                 p11.Attribute.LOCAL):  # fmt: skip
        assert private[flag] is True, flag
    assert private[p11.Attribute.EXTRACTABLE] is False
    secret = p11.Attribute.PRIVATE_EXPONENT if key.key_type == "rsa" else p11.Attribute.VALUE
    with pytest.raises(p11.AttributeSensitive):  # the token refuses to read the private part
        private[secret]
    with pytest.raises(p11.AttributeReadOnly):  # and to relax the flags
        private[p11.Attribute.EXTRACTABLE] = True
    wrapping = session.generate_key(p11.KeyType.AES, 256, template={p11.Attribute.WRAP: True,
                                                                     p11.Attribute.TOKEN: False})  # fmt: skip
    with pytest.raises(p11.KeyUnextractable):  # and to wrap it out under another key
        wrapping.wrap_key(private, mechanism=p11.Mechanism.AES_KEY_WRAP_PAD)
    with pytest.raises(NonExtractableKeyError):
        as_private_key(key).private_bytes(None, None, None)


def test_a_csr_signed_through_the_token_verifies_and_carries_the_spiffe_id(key: pkcs11.TokenKey) -> None:
    identity = SpiffeId("cluster.local", "default", "web")
    csr = x509.load_pem_x509_csr(build_csr(as_private_key(key), identity).encode())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [identity.uri]
    verify = subprocess.run(["openssl", "req", "-verify", "-noout"], input=csr.public_bytes(Encoding.PEM),
                            capture_output=True)  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_threads_sign_at_once_each_on_its_own_session(key: pkcs11.TokenKey) -> None:
    """The trap of pkcs11-facts.md §2: without OS locking SoftHSM2 crashes here; results must also verify."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                key.sign(b"threads", "sha256")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_raw_rsa_refuses_a_block_that_does_not_fit_before_the_token_sees_it(token: pkcs11.Token) -> None:
    key = pkcs11.generate_key(token, "unit-raw", KeyType.RSA_2048)
    try:
        for block in (b"\x00" * 257, b"\xff" * 256):  # longer than the modulus (SoftHSM2 exits), or above it
            with pytest.raises(ValueError, match="does not fit"):
                key.sign_raw_rsa(block)
    finally:
        key.delete()


def test_a_faulty_rsa_result_is_discarded(token: pkcs11.Token, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong RSA result may leak a factor: the check against the public key stops it."""
    key = pkcs11.generate_key(token, "unit-fault", KeyType.RSA_2048)
    try:
        good = _pkcs1_block(key, b"\x01" * 32)
        key.sign_raw_rsa(good)
        monkeypatch.setattr(key, "_with_private", lambda operation: b"\x01" * 256)
        with pytest.raises(RuntimeError, match="does not verify"):
            key.sign_raw_rsa(good)
    finally:
        monkeypatch.undo()
        key.delete()


def test_a_missing_key_is_refused_naming_it(token: pkcs11.Token) -> None:
    with pytest.raises(pkcs11.Pkcs11Error) as caught:
        pkcs11.find_key(token, "no-such-key")
    assert caught.value.what == "key" and "'no-such-key'" in caught.value.message


def test_a_missing_token_is_refused_listing_the_tokens(softhsm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pkcs11.Pkcs11Error) as caught:
        pkcs11.open_token(LIBRARY, "no-such-token", PIN)
    assert caught.value.what == "token" and "'pylon-unit'" in caught.value.message


def test_a_different_pin_is_refused_once_the_token_is_open(token: pkcs11.Token) -> None:
    """The token cannot check it any more (a second C_Login says "already logged in"): pylon does."""
    with pytest.raises(pkcs11.Pkcs11Error) as caught:
        pkcs11.open_token(LIBRARY, "pylon-unit", "wrong-pin")
    assert caught.value.what == "pin"
    assert pkcs11.open_token(LIBRARY, "pylon-unit", PIN) is token


def test_the_token_refuses_a_wrong_pin_in_a_fresh_process(softhsm) -> None:  # type: ignore[no-untyped-def]
    code = ("import sys; from pylon.keys import pkcs11 as p\n"
            "try: p.open_token(sys.argv[1], 'pylon-unit', 'wrong-pin')\n"
            "except p.Pkcs11Error as e: print(e.what, e.message); sys.exit(3)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, LIBRARY], env=softhsm.env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("pin ") and "CKR_PIN_INCORRECT" in done.stdout


def test_a_missing_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pkcs11, "SOFTHSM2_LIBRARY", "/nonexistent/softhsm/libsofthsm2.so")
    with pytest.raises(pkcs11.Pkcs11Error) as caught:
        pkcs11.open_token("/nonexistent/softhsm/libsofthsm2.so", "t", PIN)
    assert caught.value.what == "library" and "apt-get install softhsm2" in caught.value.message
    with pytest.raises(pkcs11.Pkcs11Error, match="no PKCS#11 library at /nope.so"):
        pkcs11.open_token("/nope.so", "t", PIN)


def test_deleting_a_key_removes_both_halves(token: pkcs11.Token) -> None:
    key = pkcs11.generate_key(token, "unit-delete", KeyType.ECDSA_P256)
    assert pkcs11.delete_key(token, key.label) == 2
    with pytest.raises(pkcs11.Pkcs11Error):
        pkcs11.find_key(token, "unit-delete")

"""`provider_name: sgx`: Envoy's SGX config shape over a PKCS#11 token (SoftHSM2 in a temp dir).

TLS 1.2 and 1.3 handshakes sign through the token with RSA and ECDSA keys; each field follows Envoy's rules or
is refused by name; every check (library, token, PIN, key, key type, the key matching the certificate) has a
refusal that names its field.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pylon.config.envoy import PrivateKeyProvider, convert
from pylon.identity.certs import Issued, KeyType, make_ca
from pylon.keys import pkcs11
from pylon.keys.config import SGX_TYPE_URL
from pylon.keys.hook import is_hooked
from pylon.proxy.tls import TlsConfigError
from tests.softhsm import LIBRARY, PIN, SO_PIN

from .conftest import fetch, provider_tls, serve

TOKEN = "pylon-sgx"


@dataclass(frozen=True)
class TokenCert:
    """A server certificate whose key is `label` in the token, and the files provider_tls reads."""

    label: str
    key_type: str
    cert: Path
    ca: Path
    key: Path  # provider_tls wants the attribute; nothing reads it with a provider


def _certify(ca: Issued, public_key: Any, directory: Path, name: str) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=True)
            .sign(ca.key, hashes.SHA256()))  # fmt: skip
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def token(softhsm) -> pkcs11.Token:  # type: ignore[no-untyped-def]
    return pkcs11.open_token(LIBRARY, TOKEN, PIN)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Path]:
    authority = make_ca()
    path = tmp_path_factory.mktemp("sgx-ca") / "ca.pem"
    path.write_bytes(authority.cert_pem)
    return authority, path


@pytest.fixture(scope="module", params=[KeyType.RSA_2048, KeyType.ECDSA_P256], ids=lambda t: t.value)
def served(request: pytest.FixtureRequest, token: pkcs11.Token, ca: tuple[Issued, Path],
           tmp_path_factory: pytest.TempPathFactory) -> TokenCert:  # fmt: skip
    key = pkcs11.generate_key(token, f"sgx-{request.param.value}", request.param)
    directory = tmp_path_factory.mktemp("sgx")
    cert = _certify(ca[0], key.public_key, directory, key.label)
    yield TokenCert(key.label, key.key_type, cert, ca[1], directory / "unused")
    key.delete()


def sgx(served: TokenCert, **fields: str) -> dict[str, Any]:
    config = {"@type": SGX_TYPE_URL, "sgx_library": LIBRARY, "key_label": served.label, "usr_pin": PIN,
              "so_pin": SO_PIN, "token_label": TOKEN, "key_type": served.key_type}  # fmt: skip
    return {"provider_name": "sgx", "typed_config": {**config, **fields}}


def _client(ca: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_handshakes_sign_through_the_token(served: TokenCert, version: ssl.TLSVersion) -> None:
    tls = provider_tls(served, sgx(served))
    assert is_hooked(tls.context)

    async def run() -> tuple[bytes, Any]:
        server, port = await serve(tls)
        try:
            return await fetch(port, _client(served.ca, version))
        finally:
            server.close()

    data, sslobj = asyncio.run(run())
    assert data == b"ok:hi" and sslobj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(version, "TLSv1.3")
    served_cert = x509.load_der_x509_certificate(sslobj.getpeercert(binary_form=True))
    assert served_cert.public_key() == pkcs11.find_key(pkcs11.open_token(LIBRARY, TOKEN, PIN), served.label).public_key


def test_start_up_log_names_the_library_and_claims_no_enclave(served: TokenCert, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pylon.keys import sgx as sgx_module

    monkeypatch.setattr(sgx_module, "_ops", {})  # a first plan, as at start-up
    caplog.set_level(logging.INFO, "pylon.keys.sgx")
    provider_tls(served, sgx(served))
    (line,) = [r.message for r in caplog.records if "sgx provider" in r.message]
    assert LIBRARY in line and TOKEN in line and served.label in line
    assert "an enclave only if the library is Intel's SGX toolkit" in line


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"sgx_library": ""}, "sgx_library", "is required"),
    ({"usr_pin": ""}, "usr_pin", "is required"),
    ({"so_pin": ""}, "so_pin", "is required"),
    ({"token_label": ""}, "token_label", "is required"),
    ({"key_label": ""}, "key_label", "is required"),
    ({"key_type": "dsa"}, "key_type", "must be rsa or ecdsa"),
    ({"usr_pin": "12 34"}, "usr_pin", "may contain only"),
    ({"key_label": "a.b"}, "key_label", "may contain only"),
    ({"token_label": "t" * 33}, "token_label", "longer than"),
    ({"stage": "init"}, "stage", ""),  # Intel's fork's fields are not Envoy's
])  # fmt: skip
def test_fields_follow_envoys_rules(fields: dict[str, str], field: str, message: str) -> None:
    served = TokenCert("k", "rsa", Path("/x"), Path("/x"), Path("/x"))
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(sgx(served, **fields), PrivateKeyProvider)
    assert field in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(("fields", "field", "message"), [
    ({"sgx_library": "/nonexistent/libp11.so"}, "sgx_library", "no PKCS#11 library at /nonexistent/libp11.so"),
    ({"token_label": "no-such-token"}, "token_label", "no token labelled 'no-such-token'"),
    ({"usr_pin": "wrong-pin"}, "usr_pin", "CKR_PIN_INCORRECT"),
    ({"key_label": "no-such-key"}, "key_label", "no private key labelled 'no-such-key'"),
])  # fmt: skip
def test_each_check_refuses_naming_its_field(served: TokenCert, fields: dict[str, str], field: str,
                                             message: str) -> None:  # fmt: skip
    with pytest.raises(TlsConfigError) as caught:
        provider_tls(served, sgx(served, **fields))
    assert caught.value.path == f"common_tls_context.tls_certificates[0].private_key_provider.typed_config.{field}"
    assert message in caught.value.message


def test_a_key_type_other_than_the_keys_is_refused(served: TokenCert) -> None:
    other = "ecdsa" if served.key_type == "rsa" else "rsa"
    with pytest.raises(TlsConfigError) as caught:
        provider_tls(served, sgx(served, key_type=other))
    assert caught.value.path.endswith("typed_config.key_type") and f"not {other}" in caught.value.message


def test_a_token_key_that_is_not_the_certificates_is_refused(served: TokenCert, token: pkcs11.Token) -> None:
    other = pkcs11.generate_key(token, f"sgx-other-{served.key_type}",
                                KeyType.RSA_2048 if served.key_type == "rsa" else KeyType.ECDSA_P256)  # fmt: skip
    try:
        with pytest.raises(TlsConfigError) as caught:
            provider_tls(served, sgx(served, key_label=other.label))
        assert caught.value.path.endswith("typed_config.key_label")
        assert "is not the key of the certificate" in caught.value.message
    finally:
        other.delete()


def test_fallback_does_not_bypass_the_checks(served: TokenCert) -> None:
    """There is no key file to fall back to: `fallback: true` changes nothing."""
    with pytest.raises(TlsConfigError):
        provider_tls(served, {**sgx(served, usr_pin="wrong-pin"), "fallback": True})

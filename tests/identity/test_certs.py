"""The certificate toolkit: what it issues must be accepted (or refused) by real verifiers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pylon.identity.certs import (
    KeyType,
    Usage,
    issue_leaf,
    make_ca,
    make_test_pki,
    write_pem_files,
)


@pytest.fixture(scope="module")
def ca():
    return make_ca(key_type=KeyType.ECDSA_P256)


def openssl_verify(ca_file, cert_file, purpose: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "verify", "-purpose", purpose, "-CAfile", str(ca_file), str(cert_file)],
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.parametrize(
    ("key_type", "bits"),
    [(KeyType.RSA_2048, 2048), (KeyType.RSA_3072, 3072), (KeyType.ECDSA_P256, 256)],
)
def test_leaf_key_types(ca, key_type, bits):
    leaf = issue_leaf(ca, dns_names=["a.example"], key_type=key_type)
    public = leaf.cert.public_key()
    assert public.key_size == bits
    assert isinstance(public, ec.EllipticCurvePublicKey if key_type is KeyType.ECDSA_P256 else rsa.RSAPublicKey)
    assert leaf.cert.issuer == ca.cert.subject


def test_sans_of_every_kind(ca):
    spiffe = "spiffe://cluster.local/ns/default/sa/foo"
    leaf = issue_leaf(
        ca,
        dns_names=["localhost", "*.svc.example"],
        ip_addresses=["127.0.0.1", "::1"],
        uris=[spiffe],
        emails=["ops@example.com"],
        key_type=KeyType.ECDSA_P256,
    )
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost", "*.svc.example"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert san.value.get_values_for_type(x509.RFC822Name) == ["ops@example.com"]
    # No common name: empty subject, so the SAN extension must be critical (RFC 5280).
    assert leaf.cert.subject == x509.Name([])
    assert san.critical


@pytest.mark.parametrize(
    ("usage", "ekus"),
    [
        (Usage.SERVER, [ExtendedKeyUsageOID.SERVER_AUTH]),
        (Usage.CLIENT, [ExtendedKeyUsageOID.CLIENT_AUTH]),
        (Usage.SERVER_AND_CLIENT, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_extended_key_usage(ca, usage, ekus):
    leaf = issue_leaf(ca, common_name="x", usage=usage, key_type=KeyType.ECDSA_P256)
    assert list(leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == ekus


def test_leaf_needs_a_name(ca):
    with pytest.raises(ValueError, match="common_name or at least one SAN"):
        issue_leaf(ca)


def test_openssl_verifies_chain_and_purpose(tmp_path, ca):
    server = write_pem_files(tmp_path, "server", issue_leaf(ca, dns_names=["s"], key_type=KeyType.ECDSA_P256), ca)
    client = write_pem_files(
        tmp_path, "client", issue_leaf(ca, uris=["spiffe://td/ns/a/sa/b"], usage=Usage.CLIENT,
                                       key_type=KeyType.ECDSA_P256), ca
    )
    assert openssl_verify(server.ca, server.cert, "sslserver").returncode == 0
    assert openssl_verify(client.ca, client.cert, "sslclient").returncode == 0
    # EKU is enforced: a client-only certificate is not a server certificate.
    refused = openssl_verify(client.ca, client.cert, "sslserver")
    assert refused.returncode != 0
    assert "unsuitable certificate purpose" in refused.stdout + refused.stderr
    # And a foreign CA does not vouch for it.
    other = write_pem_files(tmp_path, "other", make_ca("other CA", key_type=KeyType.ECDSA_P256), make_ca())
    assert openssl_verify(other.cert, server.cert, "sslserver").returncode != 0


def test_validity_window(tmp_path, ca):
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    expired = issue_leaf(ca, dns_names=["old"], not_before=start, valid_for=dt.timedelta(days=1),
                         key_type=KeyType.ECDSA_P256)
    assert expired.cert.not_valid_before_utc == start
    assert expired.cert.not_valid_after_utc == start + dt.timedelta(days=1)
    files = write_pem_files(tmp_path, "old", expired, ca)
    result = openssl_verify(files.ca, files.cert, "sslserver")
    assert result.returncode != 0
    assert "expired" in result.stdout + result.stderr


def test_written_files(tmp_path, ca):
    leaf = issue_leaf(ca, dns_names=["f"], key_type=KeyType.ECDSA_P256)
    files = write_pem_files(tmp_path / "nested", "f", leaf, ca)
    assert files.cert.read_bytes() == leaf.cert_pem
    assert files.key.read_bytes() == leaf.key_pem
    assert files.ca.read_bytes() == ca.cert_pem
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    # Rewriting over a world-readable file still leaves it private.
    files.key.chmod(0o644)
    write_pem_files(tmp_path / "nested", "f", leaf, ca)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_make_test_pki_loads_in_ssl(tmp_path):
    pki = make_test_pki(tmp_path)
    assert pki.directory == tmp_path
    for files, key_class in ((pki.server_rsa, rsa.RSAPublicKey), (pki.server_ecdsa, ec.EllipticCurvePublicKey)):
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        assert isinstance(cert.public_key(), key_class)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
        # The stdlib accepts the pair (a key/cert mismatch would raise here).
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
        assert files.ca.read_bytes() == pki.ca.cert.read_bytes()
    client = x509.load_pem_x509_certificate(pki.client.cert.read_bytes())
    uris = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [pki.client_spiffe_id]
    assert pki.client_spiffe_id == "spiffe://cluster.local/ns/default/sa/client"
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(pki.client.cert, pki.client.key)
    assert pki.authority.cert_pem == pki.ca.cert.read_bytes()

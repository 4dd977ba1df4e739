"""Certificate toolkit: CAs, leaf certificates with SANs, PEM files on disk.

Tests, `pylon demo` and pylon's CA all need real X.509 material: a CA, server
certificates for `localhost`, client certificates carrying SPIFFE ids. This
module builds them with `cryptography` so nothing shells out to `openssl`.

Typical use::

    ca = make_ca()
    leaf = issue_leaf(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    files = write_pem_files(tmp_path, "server", leaf, ca)
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pylon.identity.spiffe import SpiffeId

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Slack subtracted from "now" for notBefore, so a peer whose clock runs a little
#: behind ours does not reject a certificate issued a moment ago.
CLOCK_SKEW = dt.timedelta(minutes=5)

class KeyType(enum.Enum):
    """Key algorithms pylon issues: the ones Envoy's TLS and the key providers handle."""

    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ECDSA_P256 = "ecdsa-p256"


class Usage(enum.Enum):
    """Extended key usage of a leaf: what the certificate may authenticate."""

    SERVER = "server"
    CLIENT = "client"
    #: Mesh workload certificates (Istio's) are used both ways: as server for inbound
    #: mTLS and as client for outbound.
    SERVER_AND_CLIENT = "server-and-client"


_EKUS = {
    Usage.SERVER: [ExtendedKeyUsageOID.SERVER_AUTH],
    Usage.CLIENT: [ExtendedKeyUsageOID.CLIENT_AUTH],
    Usage.SERVER_AND_CLIENT: [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


@dataclass(frozen=True)
class Issued:
    """A certificate together with its private key (a CA or a leaf)."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM: what Envoy's `private_key` DataSource and OpenSSL read."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class PemFiles:
    """Paths of one identity's PEM files: its certificate, its key, and the CA that issued it."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class TestPki:
    """A ready-made PKI on disk for tests and demos (see `make_test_pki`)."""

    __test__ = False  # a data class, not a pytest test class

    directory: Path
    authority: Issued
    ca: PemFiles
    server_rsa: PemFiles
    server_ecdsa: PemFiles
    client: PemFiles
    client_spiffe_id: str


def generate_key(key_type: KeyType = KeyType.RSA_2048) -> PrivateKey:
    """A fresh private key of the given type (RSA with e=65537, or ECDSA on P-256)."""
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    bits = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}[key_type]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ca(
    common_name: str = "pylon test CA",
    *,
    key_type: KeyType = KeyType.RSA_2048,
    valid_for: dt.timedelta = dt.timedelta(days=365),
    organization: str = "pylon",
    key: PrivateKey | None = None,
) -> Issued:
    """A self-signed root CA able to sign leaves (and, with no path length limit, intermediates).

    `key` signs it instead of a fresh key of `key_type`: a key kept elsewhere (a PKCS#11 token) that only
    offers `sign` and `public_key`, as cryptography's builders need."""
    key = key if key is not None else generate_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = dt.datetime.now(dt.timezone.utc)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert=cert, key=key)


def issue_leaf(
    ca: Issued,
    *,
    common_name: str | None = None,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    uris: Iterable[str] = (),
    emails: Iterable[str] = (),
    usage: Usage = Usage.SERVER,
    key_type: KeyType = KeyType.RSA_2048,
    valid_for: dt.timedelta = dt.timedelta(days=30),
    not_before: dt.datetime | None = None,
) -> Issued:
    """An end-entity certificate signed by `ca`.

    SANs: `dns_names`, `ip_addresses` (IPv4/IPv6 text), `uris` (e.g. SPIFFE ids
    `spiffe://cluster.local/ns/default/sa/foo`) and `emails`. Without a
    `common_name` the subject is empty and the SAN extension is marked critical,
    as RFC 5280 requires and as Istio's workload certificates are issued.
    `not_before` (default: now minus `CLOCK_SKEW`) plus `valid_for` gives
    notAfter; pass a past `not_before` to make an expired certificate.
    """
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    sans += [x509.UniformResourceIdentifier(uri) for uri in uris]
    sans += [x509.RFC822Name(email) for email in emails]
    if not sans and common_name is None:
        raise ValueError("a leaf certificate needs a common_name or at least one SAN")

    key = generate_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    start = not_before if not_before is not None else dt.datetime.now(dt.timezone.utc) - CLOCK_SKEW
    # RSA keys may also do TLS 1.2 RSA key transport; ECDSA keys only sign.
    key_encipherment = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(_EKUS[usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=common_name is None)
    return Issued(cert=builder.sign(ca.key, hashes.SHA256()), key=key)


def write_pem_files(directory: str | os.PathLike[str], name: str, issued: Issued, ca: Issued) -> PemFiles:
    """Write `<name>-cert.pem`, `<name>-key.pem` (mode 0600) and `<name>-ca.pem` into `directory`.

    The CA file holds the certificate of `ca` (the issuer; pass the CA itself to
    write a CA's own files). The directory is created if needed.
    """
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    files = PemFiles(cert=base / f"{name}-cert.pem", key=base / f"{name}-key.pem", ca=base / f"{name}-ca.pem")
    files.cert.write_bytes(issued.cert_pem)
    files.ca.write_bytes(ca.cert_pem)
    _write_private(files.key, issued.key_pem)
    return files


def _write_private(path: Path, data: bytes) -> None:
    """Write key material so that it is never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_TRUNC
        out.write(data)


def make_test_pki(directory: str | os.PathLike[str]) -> TestPki:
    """A CA plus server and client identities, all written under `directory`.

    - `server_rsa`, `server_ecdsa`: RSA-2048 and ECDSA P-256 server certificates for
      `localhost`, 127.0.0.1 and ::1;
    - `client`: a client certificate (ECDSA P-256) whose only SAN is the SPIFFE id
      `client_spiffe_id`, the shape of an Istio workload identity.
    """
    base = Path(directory)
    authority = make_ca()

    def loopback_server(key_type: KeyType) -> Issued:
        return issue_leaf(
            authority,
            common_name="localhost",
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1", "::1"],
            key_type=key_type,
        )

    server_rsa = loopback_server(KeyType.RSA_2048)
    server_ecdsa = loopback_server(KeyType.ECDSA_P256)
    spiffe_id = "spiffe://cluster.local/ns/default/sa/client"
    client = issue_leaf(authority, uris=[spiffe_id], usage=Usage.CLIENT, key_type=KeyType.ECDSA_P256)
    return TestPki(
        directory=base,
        authority=authority,
        ca=write_pem_files(base, "ca", authority, authority),
        server_rsa=write_pem_files(base, "server-rsa", server_rsa, authority),
        server_ecdsa=write_pem_files(base, "server-ecdsa", server_ecdsa, authority),
        client=write_pem_files(base, "client", client, authority),
        client_spiffe_id=spiffe_id,
    )


def build_csr(key: PrivateKey, identity: SpiffeId) -> str:
    """A CSR carrying the SPIFFE id as its SAN, as Istio's agent sends (the CA ignores it anyway)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()

"""The CA's policy without a server: TTL limits, whose SAN is written, which CSRs and CA files are refused."""

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pylon.identity.certs import build_csr
from pylon.identity.authority import (MAX_TTL, CaError, CaMaterial, CaSetupError, resolve_ttl)  # fmt: skip
from pylon.identity.certs import Issued, KeyType, generate_key, make_ca
from pylon.identity.spiffe import SpiffeId

WEB = SpiffeId("cluster.local", "default", "web")


def test_ttl_default_and_limit() -> None:
    assert resolve_ttl(0) == dt.timedelta(hours=24)
    assert resolve_ttl(-1) == dt.timedelta(hours=24)
    assert resolve_ttl(4) == dt.timedelta(seconds=4)
    assert resolve_ttl(int(MAX_TTL.total_seconds())) == MAX_TTL
    with pytest.raises(CaError, match="max allowed TTL"):
        resolve_ttl(int(MAX_TTL.total_seconds()) + 1)


@pytest.fixture
def material(tmp_path: Path) -> CaMaterial:
    return CaMaterial.load_or_create(tmp_path / "ca")


def _sans(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_san_comes_from_the_caller_not_the_csr(material: CaMaterial) -> None:
    key = generate_key(KeyType.ECDSA_P256)
    csr = build_csr(key, SpiffeId("cluster.local", "kube-system", "admin"))
    chain = material.sign_csr(csr, WEB, dt.timedelta(hours=1))
    assert _sans(chain[0]) == [WEB.uri]
    leaf = x509.load_pem_x509_certificate(chain[0].encode())
    assert leaf.public_key() == key.public_key()
    assert leaf.subject == x509.Name([])
    assert chain[-1] == material.root_pem
    leaf.verify_directly_issued_by(material.root)
    lifetime = leaf.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=59) < lifetime <= dt.timedelta(hours=1)


def test_csr_with_a_bad_signature_is_refused(material: CaMaterial) -> None:
    csr = x509.load_pem_x509_csr(build_csr(generate_key(KeyType.ECDSA_P256), WEB).encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CaError, match="signature"):
        material.sign_csr(tampered, WEB, dt.timedelta(hours=1))


def test_weak_and_garbage_csrs_are_refused(material: CaMaterial) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(weak, hashes.SHA256())
    with pytest.raises(CaError, match="2048"):
        material.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), WEB, dt.timedelta(hours=1))
    with pytest.raises(CaError, match="parse"):
        material.sign_csr("not a csr", WEB, dt.timedelta(hours=1))


def test_self_signed_root_is_created_once_and_kept(tmp_path: Path) -> None:
    first = CaMaterial.load_or_create(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem",
                                                          "root-cert.pem"]  # fmt: skip
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0
    assert CaMaterial.load_or_create(tmp_path).root == first.root


def test_plug_in_ca_signs_with_the_intermediate(tmp_path: Path) -> None:
    root = make_ca("plug-in root")
    intermediate = _intermediate(root)
    (tmp_path / "ca-cert.pem").write_bytes(intermediate.cert_pem)
    (tmp_path / "ca-key.pem").write_bytes(intermediate.key_pem)
    (tmp_path / "cert-chain.pem").write_bytes(intermediate.cert_pem + root.cert_pem)
    (tmp_path / "root-cert.pem").write_bytes(root.cert_pem)
    material = CaMaterial.load_or_create(tmp_path)
    chain = material.sign_csr(build_csr(generate_key(KeyType.ECDSA_P256), WEB), WEB, dt.timedelta(hours=1))
    assert len(chain) == 3 and chain[1] == intermediate.cert_pem.decode() and chain[2] == root.cert_pem.decode()
    x509.load_pem_x509_certificate(chain[0].encode()).verify_directly_issued_by(intermediate.cert)


def _intermediate(root: Issued) -> Issued:
    """An intermediate CA signed by `root` (certs.py makes only roots and leaves)."""
    key = generate_key(KeyType.RSA_2048)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "int")]))
            .issuer_name(root.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root.key, hashes.SHA256()))  # fmt: skip
    return Issued(cert=cert, key=key)


def test_incomplete_or_mismatched_plug_in_ca_is_refused(tmp_path: Path) -> None:
    root = make_ca()
    (tmp_path / "ca-cert.pem").write_bytes(root.cert_pem)
    with pytest.raises(CaSetupError, match="missing ca-key.pem, cert-chain.pem, root-cert.pem"):
        CaMaterial.load_or_create(tmp_path)
    (tmp_path / "ca-key.pem").write_bytes(make_ca().key_pem)
    (tmp_path / "cert-chain.pem").write_bytes(b"")
    (tmp_path / "root-cert.pem").write_bytes(root.cert_pem)
    with pytest.raises(CaSetupError, match="not the key"):
        CaMaterial.load_or_create(tmp_path)


def test_serving_certificate_is_istiods_name_chained_to_the_root(material: CaMaterial) -> None:
    chain_pem, _ = material.serving_certificate()
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["istiod.istio-system.svc"]
    leaf.verify_directly_issued_by(material.root)

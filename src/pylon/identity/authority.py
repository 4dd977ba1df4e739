"""The mesh CA's keys and policy: Istio's `cacerts` files, TTL limits, signing workload CSRs.

Sans-IO apart from reading and writing the CA directory once at startup, so every policy
decision (the TTL refused, the CSR refused, the SAN that is written) is tested without a server.

`--ca-dir` holds Istio's plug-in file names: `ca-cert.pem` and `ca-key.pem` (the signing CA),
`cert-chain.pem` (ca-cert up to the root; empty when ca-cert is the root) and `root-cert.pem`.
When none exist a self-signed root is created there; a partial set is an error naming what is
missing, because silently replacing a half-copied plug-in CA would split the mesh's trust.

The signing key may instead live outside the directory (pylon pilot's `--ca-pkcs11-*`: a key in a PKCS#11
token, as Intel's trusted certificate service keeps it in SGX): then `ca-key.pem` must be absent, the
certificates are read (or the self-signed root made with that key) as above, and the key only ever signs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pylon.identity.certs import Issued, KeyType, PrivateKey, _write_private, generate_key, issue_leaf, make_ca
from pylon.identity.spiffe import SpiffeId

PLUGIN_FILES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")
#: pylon's own file beside Istio's: the key that signs service-account tokens.
TOKEN_KEY_FILE = "token-key.pem"

DEFAULT_TTL = dt.timedelta(hours=24)  # Istio's DEFAULT_WORKLOAD_CERT_TTL
MAX_TTL = dt.timedelta(days=90)  # Istio's MAX_WORKLOAD_CERT_TTL: longer requests are refused, not capped
ROOT_LIFETIME = dt.timedelta(days=3650)  # a self-signed root, as istiod's
#: Backdating of notBefore so a peer whose clock is a little behind accepts a fresh certificate.
CLOCK_SKEW = dt.timedelta(minutes=1)
#: Names on pilot's :15012 serving certificate, as istiod's (agents verify it by this name).
SERVING_DNS_NAMES = ("istiod.istio-system.svc",)


class CaError(Exception):
    """A request the CA refuses; the message is sent to the caller."""


class CaSetupError(Exception):
    """The CA directory cannot be used; the message says which file and why."""


def resolve_ttl(requested_seconds: int) -> dt.timedelta:
    """The lifetime to issue for a requested `validity_duration` (seconds; ≤ 0 means the default)."""
    if requested_seconds <= 0:
        return DEFAULT_TTL
    ttl = dt.timedelta(seconds=requested_seconds)
    if ttl > MAX_TTL:
        raise CaError(f"requested TTL {requested_seconds}s is greater than the max allowed TTL "
                      f"{int(MAX_TTL.total_seconds())}s (90 days)")  # fmt: skip
    return ttl


def _load_certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    return x509.load_pem_x509_certificates(data) if data.strip() else []


@dataclass(frozen=True)
class CaMaterial:
    """The signing CA, the chain from it to the root, and the root agents trust."""

    signer: Issued
    chain: tuple[x509.Certificate, ...]  # ca-cert ... root (just the root when ca-cert is the root)
    root: x509.Certificate

    @property
    def root_pem(self) -> str:
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, directory: Path, signing_key: PrivateKey | None = None) -> CaMaterial:
        """Istio's plug-in files when present, else a self-signed root written there. With `signing_key` (kept
        elsewhere, e.g. in a PKCS#11 token) the files are the certificates alone and the root is made with it."""
        directory.mkdir(parents=True, exist_ok=True)
        files = PLUGIN_FILES if signing_key is None else tuple(n for n in PLUGIN_FILES if n != "ca-key.pem")
        if signing_key is not None and (directory / "ca-key.pem").exists():
            raise CaSetupError(f"{directory / 'ca-key.pem'}: the CA key is to come from the PKCS#11 token, but this "
                               "file holds one too; remove one of them")  # fmt: skip
        present = [name for name in files if (directory / name).exists()]
        if not present:
            root = make_ca("pylon mesh root", key_type=KeyType.RSA_2048, valid_for=ROOT_LIFETIME,
                           organization="cluster.local", key=signing_key)  # fmt: skip
            (directory / "ca-cert.pem").write_bytes(root.cert_pem)
            (directory / "root-cert.pem").write_bytes(root.cert_pem)
            (directory / "cert-chain.pem").write_bytes(b"")
            if signing_key is None:
                _write_private(directory / "ca-key.pem", root.key_pem)
        elif len(present) != len(files):
            missing = ", ".join(name for name in files if name not in present)
            raise CaSetupError(f"{directory}: plug-in CA is incomplete, missing {missing}")
        try:
            cert = x509.load_pem_x509_certificate((directory / "ca-cert.pem").read_bytes())
            key = signing_key if signing_key is not None else serialization.load_pem_private_key(
                (directory / "ca-key.pem").read_bytes(), password=None)  # fmt: skip
            chain = _load_certs(directory / "cert-chain.pem")
            roots = _load_certs(directory / "root-cert.pem")
        except ValueError as exc:
            raise CaSetupError(f"{directory}: cannot read the CA files: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise CaSetupError(f"{directory / 'ca-key.pem'}: only RSA and ECDSA CA keys are supported")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            what = "ca-key.pem" if signing_key is None else "the PKCS#11 token's CA key"
            raise CaSetupError(f"{directory}: {what} is not the key of ca-cert.pem")
        if len(roots) != 1:
            raise CaSetupError(f"{directory / 'root-cert.pem'}: expected one root certificate, found {len(roots)}")
        root = roots[0]
        full_chain = list(chain) or [cert]
        if full_chain[-1] != root:
            full_chain.append(root)
        if full_chain[0] != cert:
            raise CaSetupError(f"{directory / 'cert-chain.pem'}: must start with ca-cert.pem")
        return cls(signer=Issued(cert=cert, key=key), chain=tuple(full_chain), root=root)

    def serving_certificate(self) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM) for pilot's TLS port: `istiod.istio-system.svc`, chaining to the root."""
        leaf = issue_leaf(self.signer, dns_names=SERVING_DNS_NAMES, key_type=KeyType.ECDSA_P256,
                          valid_for=dt.timedelta(days=365))  # fmt: skip
        intermediates = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain if c != self.root)
        return leaf.cert_pem + intermediates, leaf.key_pem

    def sign_csr(self, csr_pem: str, identity: SpiffeId, ttl: dt.timedelta,
                 now: dt.datetime | None = None) -> list[str]:  # fmt: skip
        """Istio's `cert_chain` for a CSR: one PEM per entry, the leaf first and the root last.

        The CSR contributes only its public key (after its signature proves the caller holds
        the private key): its subject and SANs are ignored, the only SAN is `identity`.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CaError(f"cannot parse the CSR: {exc}") from None
        if not csr.is_signature_valid:
            raise CaError("the CSR's signature does not match its public key")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise CaError(f"RSA keys must have at least 2048 bits, the CSR's has {public_key.key_size}")
        elif not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name not in (
            "secp256r1", "secp384r1"
        ):  # fmt: skip
            raise CaError("the CSR's key must be RSA (2048 bits or more) or ECDSA P-256/P-384")
        start = (now or dt.datetime.now(dt.timezone.utc)) - CLOCK_SKEW
        not_after = min(start + CLOCK_SKEW + ttl, self.signer.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signer.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, content_commitment=False,
                              key_encipherment=isinstance(public_key, rsa.RSAPublicKey), data_encipherment=False,
                              key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                              decipher_only=False),
                critical=True,
            )  # fmt: skip
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer.key.public_key()), critical=False
            )
            # An empty subject makes the SAN extension critical (RFC 5280), as Istio's certificates have it.
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
            .sign(self.signer.key, hashes.SHA256())
        )
        return [c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, *self.chain)]


def load_or_create_token_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    """The token-signing key in the CA directory, created (mode 0600) on first use."""
    path = directory / TOKEN_KEY_FILE
    if not path.exists():
        key = generate_key(KeyType.ECDSA_P256)
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaSetupError(f"{path}: expected an EC P-256 key")
    return key

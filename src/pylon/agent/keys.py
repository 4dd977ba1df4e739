"""Where a workload key is born: the seam between the agent and the key's home.

Istio's default makes the key in the agent and hands it to the proxy inline over SDS. Later
placements (keyd, a PKCS#11 token) make the key elsewhere, sign the CSR there, and give the proxy
a private-key-provider config instead of key bytes; they implement the same `KeySource`, so the
CSR flow, rotation and SDS code do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import TlsCertificate
from pylon.identity.certs import KeyType, PrivateKey, generate_key
from pylon.identity.spiffe import SpiffeId


class WorkloadKey(Protocol):
    """A key ready for its certificate: the CSR to send, and how the proxy will use the key."""

    @property
    def csr_pem(self) -> str: ...

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        """SDS `default`'s TlsCertificate for the issued chain (inline key, or a provider config)."""
        ...


class KeySource(Protocol):
    def new_key(self, identity: SpiffeId) -> WorkloadKey: ...


def build_csr(key: PrivateKey, identity: SpiffeId) -> str:
    """A CSR carrying the SPIFFE id as its SAN, as Istio's agent sends (the CA ignores it anyway)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class InAgentKey:
    key: PrivateKey
    csr_pem: str

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        key_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())  # fmt: skip
        return TlsCertificate(certificate_chain=DataSource(inline_bytes=chain_pem.encode()),
                              private_key=DataSource(inline_bytes=key_pem))  # fmt: skip


@dataclass(frozen=True)
class AgentKeySource:
    """Istio's default: the key is generated in the agent's memory and sent to the proxy over SDS."""

    key_type: KeyType = KeyType.RSA_2048  # Istio's WORKLOAD_RSA_KEY_SIZE default

    def new_key(self, identity: SpiffeId) -> InAgentKey:
        key = generate_key(self.key_type)
        return InAgentKey(key=key, csr_pem=build_csr(key, identity))

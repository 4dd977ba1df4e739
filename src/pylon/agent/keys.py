"""Where a workload key is born: the seam between the agent and the key's home.

Istio's default makes the key in the agent and hands it to the proxy inline over SDS. `pylon keyd`
makes the key itself, signs the CSR there, and the proxy gets a private-key-provider config instead
of key bytes (a PKCS#11 token is the next placement); each implements the same `KeySource`, so the
CSR flow, rotation and SDS code do not change.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import PrivateKeyProvider as ProviderConfig
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import TlsCertificate
from pylon.identity.certs import KeyType, PrivateKey, build_csr, generate_key
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.istio.proxyconfig import PrivateKeyProvider
from pylon.keys.keyd.client import generate
from pylon.xds.contrib_protos import keyd_config, provider_config


class WorkloadKey(Protocol):
    """A key ready for its certificate: the CSR to send, and how the proxy will use the key."""

    @property
    def csr_pem(self) -> str: ...

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        """SDS `default`'s TlsCertificate for the issued chain (inline key, or a provider config)."""
        ...


class KeySource(Protocol):
    def new_key(self, identity: SpiffeId) -> WorkloadKey: ...


@dataclass(frozen=True)
class InAgentKey:
    key: PrivateKey
    csr_pem: str
    provider: PrivateKeyProvider | None = None

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        """The key inline, or - with a privateKeyProvider, as Istio's agent translates it for `default` - inside
        the CryptoMB or QAT provider's config (`fallback` as the ProxyConfig says)."""
        key_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())  # fmt: skip
        chain = DataSource(inline_bytes=chain_pem.encode())
        provider = self.provider
        if provider is None:
            return TlsCertificate(certificate_chain=chain, private_key=DataSource(inline_bytes=key_pem))
        config = provider_config(provider.name, key_pem, provider.settings.poll_delay)
        return TlsCertificate(certificate_chain=chain, private_key_provider=ProviderConfig(
            provider_name=provider.name, typed_config=config, fallback=provider.settings.fallback))


@dataclass(frozen=True)
class AgentKeySource:
    """Istio's default: the key is generated in the agent's memory and sent to the proxy over SDS (with the
    proxy's privateKeyProvider, if its ProxyConfig names one)."""

    key_type: KeyType = KeyType.RSA_2048  # Istio's WORKLOAD_RSA_KEY_SIZE default
    provider: PrivateKeyProvider | None = None

    def new_key(self, identity: SpiffeId) -> InAgentKey:
        key = generate_key(self.key_type)
        return InAgentKey(key=key, csr_pem=build_csr(key, identity), provider=self.provider)


@dataclass(frozen=True)
class KeydWorkloadKey:
    csr_pem: str
    socket_path: str
    key_id: str
    timeout: float

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        """The chain, and the keyd provider config naming where the key is: no key bytes at all."""
        return TlsCertificate(certificate_chain=DataSource(inline_bytes=chain_pem.encode()),
                              private_key_provider=ProviderConfig(provider_name="keyd", typed_config=keyd_config(
                                  self.socket_path, self.key_id, self.timeout)))  # fmt: skip


@dataclass(frozen=True)
class KeydKeySource:
    """The key is born in `pylon keyd` (which signs the CSR with it) and stays there: the agent and the proxy
    only ever hold its certificate and id; the proxy's handshakes sign through keyd."""

    socket_path: str
    timeout: float = 1.0

    def new_key(self, identity: SpiffeId) -> KeydWorkloadKey:
        key_id = f"{identity.namespace}.{identity.service_account}.{secrets.token_hex(6)}"
        csr = generate(self.socket_path, key_id, identity.uri)
        return KeydWorkloadKey(csr_pem=csr, socket_path=self.socket_path, key_id=key_id, timeout=self.timeout)

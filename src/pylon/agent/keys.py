"""Where a workload key is born: the seam between the agent and the key's home.

Istio's default makes the key in the agent and hands it to the proxy inline over SDS. `pylon keyd`
makes the key itself, signs the CSR there, and the proxy gets a private-key-provider config instead
of key bytes. A PKCS#11 token (SoftHSM2 here; the SGX Crypto API Toolkit or an HSM elsewhere) makes the
key inside itself, non-extractable; the agent signs the CSR through the token and the proxy gets Envoy's
SGX provider config naming the token and the key. Each implements the same `KeySource`, so the CSR flow,
rotation and SDS code do not change.
"""

from __future__ import annotations

import re
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
from pylon.keys.keyd.client import forget, generate
from pylon.keys import pkcs11
from pylon.keys.pkcs11_keys import as_private_key
from pylon.xds.contrib_protos import keyd_config, provider_config, sgx_config


class WorkloadKey(Protocol):
    """A key ready for its certificate: the CSR to send, and how the proxy will use the key."""

    @property
    def csr_pem(self) -> str: ...

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        """SDS `default`'s TlsCertificate for the issued chain (inline key, or a provider config)."""
        ...

    def retire(self) -> None:
        """The key's certificate has been replaced in SDS for a while: remove the key where it lives, if it can be."""
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

    def retire(self) -> None:
        """Nothing to remove: the key was only ever in this object and the SDS messages that carried it."""


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

    def retire(self) -> None:
        """keyd drops the replaced key (KeydError if it cannot: the caller logs it)."""
        forget(self.socket_path, self.key_id, self.timeout)


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


@dataclass(frozen=True)
class Pkcs11Token:
    """Where the agent makes workload keys: a token of a PKCS#11 library, its user PIN, and the key type.

    `so_pin` is only passed on: Envoy's SGX config requires a non-empty one that neither Envoy's provider nor
    pylon's uses (the SO PIN only initialises tokens)."""

    library: str
    label: str
    pin: str
    so_pin: str
    key_type: KeyType = KeyType.RSA_2048

    def __repr__(self) -> str:  # the PINs stay out of logs and tracebacks
        return f"Pkcs11Token(library={self.library!r}, label={self.label!r}, key_type={self.key_type.value})"


@dataclass(frozen=True)
class Pkcs11WorkloadKey:
    csr_pem: str
    token: Pkcs11Token
    key_label: str

    def tls_certificate(self, chain_pem: str) -> TlsCertificate:
        """The chain, and Envoy's SGX provider config naming the library, token and key: no key bytes."""
        config = sgx_config(sgx_library=self.token.library, key_label=self.key_label, usr_pin=self.token.pin,
                            so_pin=self.token.so_pin, token_label=self.token.label,
                            key_type="ecdsa" if self.token.key_type is KeyType.ECDSA_P256 else "rsa")  # fmt: skip
        return TlsCertificate(certificate_chain=DataSource(inline_bytes=chain_pem.encode()),
                              private_key_provider=ProviderConfig(provider_name="sgx", typed_config=config))  # fmt: skip

    def retire(self) -> None:
        """Destroy the key in the token (its certificate is no longer served)."""
        token = pkcs11.open_token(self.token.library, self.token.label, self.token.pin)
        pkcs11.delete_key(token, self.key_label)


@dataclass(frozen=True)
class Pkcs11KeySource:
    """The key is generated inside the PKCS#11 token as non-extractable and the CSR is signed through the token;
    the agent holds a handle and a label, the proxy signs its handshakes through the same token (Envoy's SGX
    provider config). Each rotation makes a new key."""

    token: Pkcs11Token

    def new_key(self, identity: SpiffeId) -> Pkcs11WorkloadKey:
        opened = pkcs11.open_token(self.token.library, self.token.label, self.token.pin)
        # Envoy's SGX provider accepts only [A-Za-z0-9_-/=] in a key label.
        prefix = re.sub(r"[^A-Za-z0-9_-]", "-", f"{identity.namespace}_{identity.service_account}")
        label = f"{prefix}_{secrets.token_hex(6)}"
        key = pkcs11.generate_key(opened, label, self.token.key_type)
        try:
            csr = build_csr(as_private_key(key), identity)
        except BaseException:
            key.delete()
            raise
        return Pkcs11WorkloadKey(csr_pem=csr, token=self.token, key_label=label)

"""Where a gateway's credential keys go: the seam between the secret rewriting and the key's new home.

Pilot serves a Gateway's `credentialName` secret (`kubernetes://NAME`) with its private key inline, as istiod
does. An agent whose keys live in `pylon keyd` or in a PKCS#11 token (`--keyd`, `--pkcs11-token`) moves each such
key there as the secret passes through its xDS proxy, and the proxy gets a provider config naming where the key
now is (keyd's, or Envoy's SGX shape for the token) instead of the key. Each store here does one move: it puts
the key where it lives from then on, checks that what is there now is the key of the certificate, and answers
with the provider config; it raises CredentialKeyError naming what is missing otherwise.

The agent never parses the key: keyd parses it in its own process (it holds the key anyway), and a token import
runs in a short-lived child (keys/pkcs11_import.py), so the agent holds only the PEM text it relays.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from envoy.extensions.transport_sockets.tls.v3.common_pb2 import PrivateKeyProvider as ProviderConfig
from pylon.agent.keys import Pkcs11Token
from pylon.keys import pkcs11
from pylon.keys.keyd.client import KeydError, forget, import_key
from pylon.keys.pkcs11_import import import_in_child
from pylon.xds.contrib_protos import keyd_config, sgx_config

log = logging.getLogger("pylon.agent.credential_keys")


class CredentialKeyError(Exception):
    """A credential's key could not be moved; the message names what is missing. The secret is then not served."""


class CredentialKeyStore(Protocol):
    """Where an agent puts credential keys."""

    #: Says where, for log lines ("keyd at /run/keyd.sock", "PKCS#11 token 'gw'").
    where: str

    def place(self, secret_name: str, chain_pem: bytes, key_pem: bytes) -> ProviderConfig:
        """Move `key_pem` (the key of the first certificate of `chain_pem`) to the store; the provider config that
        signs with it there. Blocking: called off the event loop."""
        ...

    def retire(self, secret_name: str, chain_pem: bytes) -> None:
        """That credential version is no longer served: remove its key where it lives, if the store can."""
        ...


def key_name(secret_name: str, chain_pem: bytes) -> str:
    """A stable name for one version of one credential: the same secret and certificate always land on the same
    key id or label (a re-sent secret, a new xDS stream), a renewed certificate on a new one. Only the characters
    Envoy's SGX provider takes in a key label."""
    digest = hashlib.sha256(secret_name.encode() + b"\0" + chain_pem).hexdigest()[:16]
    bare = secret_name.removeprefix("kubernetes://")
    return f"cred-{re.sub(r'[^A-Za-z0-9_-]', '-', bare)[:40]}-{digest}"


def leaf_public_pem(chain_pem: bytes) -> bytes:
    """The public key of the chain's first certificate, PEM (what the moved key must match)."""
    try:
        leaf = x509.load_pem_x509_certificate(chain_pem)
    except ValueError as exc:
        raise CredentialKeyError(f"the certificate chain is not PEM: {exc}") from None
    return leaf.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class KeydCredentialKeys:
    """Credential keys go to `pylon keyd` (IMPORT); the proxy signs through keyd, as for a keyd workload key."""

    socket_path: str
    timeout: float = 1.0

    @property
    def where(self) -> str:
        return f"keyd at {self.socket_path}"

    def place(self, secret_name: str, chain_pem: bytes, key_pem: bytes) -> ProviderConfig:
        key_id = key_name(secret_name, chain_pem)
        try:
            public_pem = import_key(self.socket_path, key_id, key_pem)
        except KeydError as exc:
            raise CredentialKeyError(f"cannot move the key of {secret_name} into {exc}") from None
        if public_pem != leaf_public_pem(chain_pem):
            raise CredentialKeyError(f"the key of {secret_name} is not the key of its certificate")
        return ProviderConfig(provider_name="keyd", typed_config=keyd_config(self.socket_path, key_id, self.timeout))

    def retire(self, secret_name: str, chain_pem: bytes) -> None:
        """keyd drops a replaced credential's key."""
        try:
            forget(self.socket_path, key_name(secret_name, chain_pem), self.timeout)
        except KeydError as exc:
            raise CredentialKeyError(f"cannot remove the replaced key of {secret_name} from {exc}") from None


@dataclass
class TokenCredentialKeys:
    """Credential keys go into a PKCS#11 token (sensitive, not extractable); the proxy gets Envoy's SGX config."""

    token: Pkcs11Token
    placed: set[str] = field(default_factory=set)  # labels this agent imported and has not removed

    @property
    def where(self) -> str:
        return f"PKCS#11 token {self.token.label!r}"

    def place(self, secret_name: str, chain_pem: bytes, key_pem: bytes) -> ProviderConfig:
        label = key_name(secret_name, chain_pem)
        try:
            opened = pkcs11.open_token(self.token.library, self.token.label, self.token.pin)
            if label not in self.placed:
                pkcs11.delete_key(opened, label)  # a leftover of an agent that died before removing it
                log.info("importing the key of %s into %s (child process)", secret_name, self.where)
                started = time.monotonic()
                import_in_child(self.token.library, self.token.label, self.token.pin, label, key_pem)
                log.info("the key of %s is in %s after %.1fs", secret_name, self.where, time.monotonic() - started)
                self.placed.add(label)
            key = pkcs11.find_key(opened, label)
        except pkcs11.Pkcs11Error as exc:
            raise CredentialKeyError(f"cannot move the key of {secret_name} into {self.where} "
                                     f"({_FLAGS.get(exc.what, exc.what)}): {exc.message}") from None  # fmt: skip
        if key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != leaf_public_pem(chain_pem):  # fmt: skip
            self.retire(secret_name, chain_pem)
            raise CredentialKeyError(f"the key of {secret_name} is not the key of its certificate")
        config = sgx_config(sgx_library=self.token.library, key_label=label, usr_pin=self.token.pin,
                            so_pin=self.token.so_pin, token_label=self.token.label, key_type=key.key_type)  # fmt: skip
        return ProviderConfig(provider_name="sgx", typed_config=config)

    def retire(self, secret_name: str, chain_pem: bytes) -> None:
        label = key_name(secret_name, chain_pem)
        opened = pkcs11.open_token(self.token.library, self.token.label, self.token.pin)
        pkcs11.delete_key(opened, label)
        self.placed.discard(label)


#: Pkcs11Error.what -> the agent flag it is about.
_FLAGS = {"library": "--pkcs11-library", "token": "--pkcs11-token", "pin": "--pkcs11-pin-file", "key": "the key",
          "key_type": "the key type"}  # fmt: skip

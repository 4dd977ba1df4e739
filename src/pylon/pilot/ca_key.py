"""The mesh CA's signing key in a PKCS#11 token (`pylon pilot --ca-pkcs11-token`), as Intel's trusted certificate
service keeps it in SGX: found by label, or made there (non-extractable) on first start; the CA then signs
through the token and `--ca-dir` holds only certificates."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pylon.identity.certs import KeyType, PrivateKey
from pylon.keys.pkcs11 import find_or_generate_key, open_token
from pylon.keys.pkcs11_keys import as_private_key

log = logging.getLogger("pylon.pilot")

#: Pkcs11Error.what -> the `pylon pilot` flag it is about.
CA_TOKEN_FLAGS = {"library": "--ca-pkcs11-library", "token": "--ca-pkcs11-token", "pin": "--ca-pkcs11-pin-file",
                  "key": "--ca-pkcs11-key-label", "key_type": "--ca-pkcs11-key-type"}  # fmt: skip


@dataclass(frozen=True)
class CaToken:
    library: str
    token: str
    key_label: str
    pin: str
    key_type: KeyType = KeyType.RSA_2048  # what a self-signed root is made with, as without a token

    def __repr__(self) -> str:  # the PIN stays out of logs and tracebacks
        return f"CaToken(library={self.library!r}, token={self.token!r}, key_label={self.key_label!r})"


def open_ca_key(spec: CaToken) -> PrivateKey:
    """The CA's key in the token, made there if the token has none under the label. Raises Pkcs11Error."""
    token = open_token(spec.library, spec.token, spec.pin)
    key, created = find_or_generate_key(token, spec.key_label, spec.key_type)
    log.info("CA key %r %s in PKCS#11 token %r through %s", key.label, "made" if created else "found", token.label,
             spec.library)  # fmt: skip
    return as_private_key(key)

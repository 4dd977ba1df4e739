"""`provider_name: sgx`: Envoy's SGX private key provider config, run over any PKCS#11 library.

Envoy's contrib SGX provider finds a key pair by label in a token of Intel's SGX Crypto API Toolkit (a
PKCS#11 library whose keys live in an enclave) and signs the handshakes with it. pylon takes the same
config (`SgxPrivateKeyMethodConfig`) and does the same through python-pkcs11 with whatever library
`sgx_library` names: SoftHSM2 here, where the key lives in SoftHSM2's token files and is used inside
the calling process, not in an enclave. Nothing here claims or checks an enclave; the start-up log
line says which library holds the key.

Each private operation of the key hook (raw RSA on a padded block, ECDSA on a digest) goes to the
token on one thread per process beside the event loop (python-pkcs11 releases the GIL), so the loop
keeps serving while the token works; results come back on the loop. RSA needs CKM_RSA_X_509 (TLS 1.3's
PSS is encoded by OpenSSL before the hook sees it), ECDSA needs CKM_ECDSA; a token without them is a
config error naming `key_type`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pylon.keys.config import SgxPrivateKeyMethodConfig
from pylon.keys.hook import ECDSA_DIGEST, RSA_RAW, HookedKey, complete_slot, fail_slot, slot_input
from pylon.keys.pkcs11 import Pkcs11Error, TokenKey, find_key, open_token

log = logging.getLogger("pylon.keys.sgx")

#: Pkcs11Error.what -> the SgxPrivateKeyMethodConfig field it is about.
FIELDS = {"library": "sgx_library", "token": "token_label", "pin": "usr_pin", "key": "key_label",
          "key_type": "key_type"}  # fmt: skip

#: The mechanism each key type needs from the token, for the operations the key hook asks for.
_MECHANISMS = {"rsa": "RSA_X_509", "ecdsa": "ECDSA"}


class Pkcs11Ops:
    """`KeyOps` for one key in a token."""

    _executor: ThreadPoolExecutor | None = None  # one per process, made on first use

    def __init__(self, key: TokenKey) -> None:
        self.key = key
        self.failures = 0

    def compute(self, kind: int, data: bytes) -> bytes:
        if kind == RSA_RAW:
            return self.key.sign_raw_rsa(data)
        if kind == ECDSA_DIGEST:
            return self.key.sign_ecdsa_digest(data)
        raise ValueError(f"unknown operation kind {kind}")

    def submit(self, slot: object, done: Callable[[], None]) -> None:
        if Pkcs11Ops._executor is None:
            Pkcs11Ops._executor = ThreadPoolExecutor(1, thread_name_prefix="pylon-pkcs11")
        loop = asyncio.get_running_loop()
        future = Pkcs11Ops._executor.submit(self.compute, int(slot.kind), slot_input(slot))  # type: ignore[attr-defined]
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, slot, f, done))

    def _finish(self, slot: object, future: Future[bytes], done: Callable[[], None]) -> None:
        try:
            complete_slot(slot, future.result())
        except Exception as exc:  # noqa: BLE001 - any token failure fails this handshake only
            self.failures += 1
            log.error("PKCS#11 signature with key %r of token %r failed: %s", self.key.label, self.key.token.label,
                      exc)  # fmt: skip
            fail_slot(slot)
        done()

    def sign_blocking(self, kind: int, key: HookedKey, data: bytes) -> bytes:
        """For handshakes outside pylon's TLS transport (client contexts): on the calling thread, which gets a
        session of its own."""
        return self.compute(kind, data)


_ops: dict[tuple[str, str, str], Pkcs11Ops] = {}


class SgxConfigError(Exception):
    """The config cannot be served; `field` is the SgxPrivateKeyMethodConfig field at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def plan_sgx(config: SgxPrivateKeyMethodConfig, public_key: Any) -> Pkcs11Ops:
    """The ops signing with the config's key, after checking library, token, PIN, key, its type and that it is
    the key of the certificate (`public_key`). Raises SgxConfigError naming the field."""
    try:
        token = open_token(config.sgx_library, config.token_label, config.usr_pin)
        cache_key = (config.sgx_library, config.token_label, config.key_label)
        ops = _ops.get(cache_key)
        if ops is None:
            mechanism = _MECHANISMS[config.key_type]
            if mechanism not in {m.name for m in token.mechanisms()}:
                raise Pkcs11Error("key_type", f"token {config.token_label!r} has no CKM_{mechanism}, which pylon "
                                              f"needs to sign with {config.key_type} keys")  # fmt: skip
            key = find_key(token, config.key_label)
            ops = Pkcs11Ops(key)
            log.info("sgx provider: key %r (%s) in PKCS#11 token %r through %s - Envoy's SGX config shape; the key "
                     "is wherever this library keeps it (an enclave only if the library is Intel's SGX toolkit)",
                     key.label, key.key_type, token.label, config.sgx_library)  # fmt: skip
        key = ops.key
        if key.key_type != config.key_type:
            raise Pkcs11Error("key_type", f"key {key.label!r} is an {key.key_type} key, not {config.key_type}")
        if public_key is not None and key.public_key != public_key:
            raise Pkcs11Error("key", f"key {key.label!r} of token {token.label!r} is not the key of the certificate")
    except Pkcs11Error as exc:
        raise SgxConfigError(FIELDS[exc.what], exc.message) from None
    _ops[cache_key] = ops
    return ops

"""Hooked private keys on stdlib `ssl.SSLContext`s: the Python side of `keyhook.c`.

`install_hooked_key` loads a certificate chain into a context and pairs it with
a key that has only the certificate's public half: its private operations go
to a `KeyOps` provider. Two ways an operation reaches the provider:

* asynchronously, for handshakes driven by `pylon.proxy.tls_transport`: the
  context runs in `SSL_MODE_ASYNC`, the handshake pauses with the operation
  parked in the connection's `Slot`, and `KeyOps.submit` completes it later;
* synchronously (`KeyOps.sign_blocking`), for handshakes driven by anything
  else (a blocking socket, uvloop's own SSL transport): the operation runs on
  the calling thread.

Before touching the `SSL_CTX*`, the runtime checks that the hook and `_ssl`
share one OpenSSL instance (same version, same `SSL_CTX_new`), on top of the
struct-layout checks of `pylon.openssl.context.OpenSslContext`.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import ssl
from collections.abc import Callable
from functools import cache
from typing import Protocol

import _ssl
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes as PublicKey
from cryptography.hazmat.primitives import serialization

from pylon.openssl.context import OpenSslContext  # the one SSL_CTX* accessor, with its layout checks

log = logging.getLogger("pylon.keys")

try:
    from pylon.keys._keyhook import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    ffi = lib = None
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

# Slot states and kinds (keyhook.c).
IDLE, PENDING, DONE, FAILED = 0, 1, 2, 3
RSA_RAW, ECDSA_DIGEST = 1, 2

#: errno of the SSLError that CPython 3.11 raises for SSL_ERROR_WANT_ASYNC, which it does not know
#: ("Invalid error code", PY_SSL_ERROR_INVALID_ERROR_CODE); the SSLObject stays usable.
WANT_ASYNC_ERRNO = 10


class HookError(RuntimeError):
    """The private-key hook cannot run in this process (build, OpenSSL instance or layout)."""


class KeyOps(Protocol):
    """What a provider does with a private operation (raw RSA or ECDSA over a digest)."""

    def submit(self, slot: object, done: Callable[[], None]) -> None:
        """Complete `slot` (a `pk_slot*`) later, then call `done` on the event loop thread."""

    def sign_blocking(self, kind: int, key: "HookedKey", data: bytes) -> bytes:
        """The operation's result, computed now on the calling thread (raise on failure)."""


def check_runtime() -> None:
    """Raise HookError unless the native hook is built and shares `_ssl`'s OpenSSL."""
    if lib is None:
        raise HookError(
            f"the private-key hook is not built ({_IMPORT_ERROR}); reinstall pylon with a C compiler, "
            "OpenSSL 3 headers and cffi available (pip install -e .)"
        )
    if not hasattr(lib, "tn_attach"):
        raise HookError(
            "the private-key hook was built from older sources (it lacks tlsconn.c's TLS driving); rebuild it "
            "(scripts/bootstrap.sh, or pip install -e .)"
        )
    _check_same_openssl()


@cache
def _check_same_openssl() -> None:
    ours = lib.pk_openssl_version()
    if ours != ssl.OPENSSL_VERSION_NUMBER:
        raise HookError(
            f"the hook runs OpenSSL {ours:#x} but the ssl module was built for {ssl.OPENSSL_VERSION_NUMBER:#x}"
        )
    theirs = ctypes.cast(ctypes.CDLL(_ssl.__file__).SSL_CTX_new, ctypes.c_void_p).value
    mine = int(ffi.cast("uintptr_t", lib.pk_ssl_ctx_new_address()))
    if theirs != mine:
        raise HookError(
            "the hook and the ssl module use two different OpenSSL instances (is _ssl statically linked?); "
            "a hooked key would be installed into a structure its own library does not own"
        )
    if not lib.pk_init():
        raise HookError("OpenSSL refused to create the RSA/EC key methods for the hook")


class HookedKey:
    """One certificate's hooked key: the native `pk_key` record and the provider serving it.

    `private_pem` is given only to in-process providers (offload, cryptomb),
    which run the operation themselves; `None` means the key lives elsewhere.
    """

    _by_handle: dict[int, "HookedKey"] = {}
    _handles = itertools.count(1)

    def __init__(self, public_key: PublicKey, ops: KeyOps, private_pem: bytes | None = None) -> None:
        check_runtime()
        spki = public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.ops = ops
        self.native = ffi.new("pk_key *")
        self.handle = next(HookedKey._handles)
        if not lib.pk_key_init(self.native, spki, len(spki), self.handle):
            raise HookError("the certificate's public key is neither RSA nor EC")
        self.kind = "RSA" if self.native.type == RSA_RAW else "ECDSA"
        self.bits = int(self.native.bits)
        self.public_key = public_key
        if private_pem is not None and not lib.pk_key_load_private(self.native, private_pem, len(private_pem)):
            raise HookError("OpenSSL could not load the private key for the provider")
        HookedKey._by_handle[self.handle] = self

    @classmethod
    def by_handle(cls, handle: int) -> "HookedKey":
        return cls._by_handle[handle]


def install_hooked_key(context: ssl.SSLContext, chain_pem: bytes, key: HookedKey, *, async_mode: bool = True) -> None:
    """Load `chain_pem` into `context` and pair its leaf with `key` (hooked).

    `async_mode` sets SSL_MODE_ASYNC, for contexts whose handshakes
    `pylon.proxy.tls_transport` drives (so they can wait for the provider).

    The context keeps `key` alive. Raises HookError when OpenSSL refuses.
    """
    try:
        pointer = ffi.cast("void *", OpenSslContext(context).pointer)
    except RuntimeError as exc:
        raise HookError(str(exc)) from None
    fd = os.memfd_create("pylon-chain", os.MFD_CLOEXEC)
    try:
        os.write(fd, chain_pem)
        if not lib.pk_use_chain_file(pointer, f"/proc/self/fd/{fd}".encode()):
            raise HookError("OpenSSL rejected the certificate chain")
    finally:
        os.close(fd)
    if not lib.pk_install(pointer, key.native):
        raise HookError("OpenSSL refused the hooked key for this certificate")
    if async_mode:
        lib.pk_set_async(pointer)
    keys = context.__dict__.setdefault("_pylon_hooked_keys", [])
    keys.append(key)


def is_hooked(context: ssl.SSLContext) -> bool:
    """Whether `install_hooked_key` ran on this context."""
    return bool(context.__dict__.get("_pylon_hooked_keys"))


def new_slot() -> object:
    """A per-connection slot where a paused handshake parks its private operation."""
    return ffi.new("pk_slot *")


def slot_input(slot: object) -> bytes:
    """The bytes to sign: a padded RSA block (raw RSA) or a digest (ECDSA)."""
    return ffi.buffer(getattr(slot, "in"), slot.in_len)[:]


def slot_key(slot: object) -> HookedKey:
    """The key whose operation is parked in `slot`."""
    return HookedKey.by_handle(slot.key.handle)


def complete_slot(slot: object, result: bytes) -> None:
    """Hand the provider's result to the paused handshake (resumed by the next do_handshake)."""
    lib.pk_slot_complete(slot, result, len(result))


def fail_slot(slot: object) -> None:
    """Fail the parked operation: the handshake fails when resumed."""
    lib.pk_slot_fail(slot)


if lib is not None:

    @ffi.def_extern(onerror=lambda *exc: log.error("private key operation failed", exc_info=exc) or 0)
    def pk_sync_op(slot: object) -> int:
        """The synchronous path for keys held elsewhere (keyd): the provider blocks this thread."""
        key = HookedKey.by_handle(slot.key.handle)
        result = key.ops.sign_blocking(int(slot.kind), key, slot_input(slot))
        complete_slot(slot, result)
        return 1

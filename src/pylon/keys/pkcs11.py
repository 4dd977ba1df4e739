"""Private keys inside a PKCS#11 token: find or make them there, sign through the token, never export them.

Any PKCS#11 library works (SoftHSM2 here; Intel's SGX Crypto API Toolkit or an HSM elsewhere). Three
traps of the interface shape this module (shared/reference/pkcs11-facts.md):

* Threads. python-pkcs11 calls C_Initialize without locking flags, and SoftHSM2 then runs without
  its mutexes: two threads signing crash the process. So the library is initialised here first,
  through ctypes, with CKF_OS_LOCKING_OK, and python-pkcs11 is handed the already-initialised library;
  on top of that each thread gets its own session.
* Login is per process, not per session: a second C_Login says "already logged in" even with a
  wrong PIN, and closing a session logs out every session. So each token is logged in once, by a
  session kept for the life of the process, and a later request for the same token must bring the
  same PIN (checked here, since the token can no longer tell).
* Raw RSA (CKM_RSA_X_509) with an input longer than the modulus makes SoftHSM2 exit the process:
  lengths are checked before the token sees them, and every RSA result is checked against the public
  key, so a faulty signature (which would leak a factor) never leaves.

A process that forks after opening a token must not use it in the child (the library's state is
per process); pylon's proxies and agents start their children with exec.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pylon.identity.certs import KeyType

log = logging.getLogger("pylon.keys.pkcs11")

#: Debian's SoftHSM2 module (package softhsm2).
SOFTHSM2_LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"

_CKF_OS_LOCKING_OK = 0x2
_CKR_OK, _CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x0, 0x191
_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")  # DER OID secp256r1, as CKA_EC_PARAMS wants it
_HASHES = {"sha256": 32, "sha384": 48, "sha512": 64}


class Pkcs11Error(Exception):
    """The token cannot do what was asked. `what` names the parameter at fault: "library", "token",
    "pin", "key" or "key_type" (callers turn it into their own field or flag name)."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        self.message = message
        super().__init__(message)


def _pkcs11() -> Any:
    try:
        import pkcs11
        import pkcs11._pkcs11
    except ImportError as exc:
        raise Pkcs11Error("library", f"python-pkcs11 is not installed ({exc}); pip install 'python-pkcs11>=0.10'"
                          ) from None  # fmt: skip
    return pkcs11


def _exc(name: str) -> type[BaseException]:
    return getattr(_pkcs11().exceptions, name)


class _InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p), ("LockMutex", ctypes.c_void_p),
                ("UnlockMutex", ctypes.c_void_p), ("flags", ctypes.c_ulong), ("pReserved", ctypes.c_void_p)]  # fmt: skip


class _FunctionList(ctypes.Structure):
    # CK_FUNCTION_LIST starts with CK_VERSION and then C_Initialize; the rest is not needed here.
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte), ("C_Initialize", ctypes.c_void_p)]


def _initialize_os_locking(path: str) -> ctypes.CDLL:
    """C_Initialize with CKF_OS_LOCKING_OK, before python-pkcs11 calls it without (see the module's doc)."""
    try:
        module = ctypes.CDLL(path)
    except OSError as exc:
        hint = "; install Debian's softhsm2 (apt-get install softhsm2)" if path == SOFTHSM2_LIBRARY else ""
        raise Pkcs11Error("library", f"cannot load the PKCS#11 library {path}: {exc}{hint}") from None
    try:
        get_list = module.C_GetFunctionList
    except AttributeError:
        raise Pkcs11Error("library", f"{path} is not a PKCS#11 library (no C_GetFunctionList)") from None
    get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    get_list.restype = ctypes.c_ulong
    functions = ctypes.POINTER(_FunctionList)()
    if get_list(ctypes.byref(functions)) != _CKR_OK or not functions:
        raise Pkcs11Error("library", f"{path}: C_GetFunctionList failed")
    initialize = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)(functions.contents.C_Initialize)
    args = _InitArgs(flags=_CKF_OS_LOCKING_OK)
    rv = initialize(ctypes.addressof(args))
    if rv not in (_CKR_OK, _CKR_CRYPTOKI_ALREADY_INITIALIZED):
        raise Pkcs11Error("library", f"{path}: C_Initialize failed (CKR {rv:#x})")
    return module


@dataclass
class _Library:
    pid: int
    module: ctypes.CDLL  # keeps the library mapped
    lib: Any


_libraries: dict[str, _Library] = {}
_tokens: dict[tuple[str, str], Token] = {}
_lock = threading.Lock()


def _library(path: str) -> Any:
    """The python-pkcs11 `lib` for `path`, initialised once per process with OS locking."""
    entry = _libraries.get(path)
    if entry is not None:
        if entry.pid != os.getpid():
            raise Pkcs11Error("library", f"{path} was opened before this process forked; open tokens after fork")
        return entry.lib
    pkcs11 = _pkcs11()
    if not os.path.exists(path):
        hint = "install Debian's softhsm2 (apt-get install softhsm2)" if path == SOFTHSM2_LIBRARY else \
            "give the path of an installed PKCS#11 module"  # fmt: skip
        raise Pkcs11Error("library", f"no PKCS#11 library at {path}: {hint}")
    module = _initialize_os_locking(path)

    class PreInitialized(pkcs11._pkcs11.lib):  # type: ignore[misc, name-defined]
        def initialize(self) -> None:  # C_Initialize already ran, with the locking flags
            pass

    try:
        lib = PreInitialized(path)
    except pkcs11.PKCS11Error as exc:
        raise Pkcs11Error("library", f"{path}: {exc!r}") from None
    _libraries[path] = _Library(os.getpid(), module, lib)
    return lib


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(pin.encode()).digest()


class Token:
    """A token of a library, logged in once for this process (see the module's doc), with one session per thread."""

    def __init__(self, library_path: str, label: str, token: Any, login: Any, pin: str) -> None:
        self.library_path = library_path
        self.label = label
        self._token = token
        self._login = login  # never closed: closing it would log every session out
        self._pin = _pin_digest(pin)
        self._local = threading.local()

    def check_pin(self, pin: str) -> None:
        """Raise unless `pin` is the PIN this process logged in with (the token no longer checks it)."""
        if not hmac.compare_digest(_pin_digest(pin), self._pin):
            raise Pkcs11Error("pin", f"the user PIN is not the one token {self.label!r} was opened with in this "
                                     "process (CKR_PIN_INCORRECT)")  # fmt: skip

    def session(self) -> Any:
        """This thread's read-write session (the login covers it)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._token.open(rw=True)
        return session

    def mechanisms(self) -> set[Any]:
        return set(self._token.slot.get_mechanisms())


def open_token(library_path: str, token_label: str, pin: str) -> Token:
    """The token labelled `token_label` in `library_path`, logged in with the user `pin`. Raises Pkcs11Error."""
    with _lock:
        opened = _tokens.get((library_path, token_label))
        if opened is not None:
            opened.check_pin(pin)
            return opened
        lib = _library(library_path)
        pkcs11 = _pkcs11()
        try:
            token = lib.get_token(token_label=token_label)
        except pkcs11.NoSuchToken:
            labels = ", ".join(repr(slot.get_token().label) for slot in lib.get_slots(token_present=True)) or "none"
            raise Pkcs11Error("token", f"no token labelled {token_label!r} in {library_path} (tokens: {labels}); "
                                       "with SoftHSM2 check SOFTHSM2_CONF and softhsm2-util --show-slots"
                              ) from None  # fmt: skip
        except pkcs11.MultipleTokensReturned:
            raise Pkcs11Error("token", f"more than one token is labelled {token_label!r} in {library_path}") from None
        try:
            login = token.open(rw=True, user_pin=pin)
        except pkcs11.PinIncorrect:
            raise Pkcs11Error("pin", f"token {token_label!r} refused the user PIN (CKR_PIN_INCORRECT)") from None
        except pkcs11.PinLocked:
            raise Pkcs11Error("pin", f"the user PIN of token {token_label!r} is locked (CKR_PIN_LOCKED)") from None
        except (pkcs11.PinLenRange, pkcs11.ArgumentsBad):
            raise Pkcs11Error("pin", f"token {token_label!r} refused the user PIN's length") from None
        except pkcs11.UserAlreadyLoggedIn:
            raise Pkcs11Error("pin", f"token {token_label!r} was logged in by other code of this process; pylon "
                                     "cannot check the PIN then") from None  # fmt: skip
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error("token", f"cannot open token {token_label!r}: {exc!r}") from None
        opened = _tokens[(library_path, token_label)] = Token(library_path, token_label, token, login, pin)
        return opened


_T = TypeVar("_T")


class TokenKey:
    """A key pair in a token, found by label (as Envoy's SGX provider finds both halves): what it can sign,
    and nothing that reveals it (the token keeps it; no method here reads a private attribute)."""

    def __init__(self, token: Token, label: str) -> None:
        self.token = token
        self.label = label
        self._local = threading.local()
        pkcs11 = _pkcs11()
        session = token.session()
        private = self._find(session, pkcs11.ObjectClass.PRIVATE_KEY)
        public = self._find(session, pkcs11.ObjectClass.PUBLIC_KEY)
        self.public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = _public_key(public, label)
        if private.key_type != public.key_type:
            raise Pkcs11Error("key", f"the private and public objects labelled {label!r} are of different types")
        self.key_type = "rsa" if isinstance(self.public_key, rsa.RSAPublicKey) else "ecdsa"
        if isinstance(self.public_key, rsa.RSAPublicKey):
            numbers = self.public_key.public_numbers()
            self._n, self._e, self._size = numbers.n, numbers.e, (self.public_key.key_size + 7) // 8
        self._local.private = private

    def _find(self, session: Any, object_class: Any) -> Any:
        pkcs11 = _pkcs11()
        try:
            return session.get_key(object_class=object_class, label=self.label)
        except pkcs11.NoSuchKey:
            kind = "private" if object_class == pkcs11.ObjectClass.PRIVATE_KEY else "public"
            raise Pkcs11Error("key", f"no {kind} key labelled {self.label!r} in token {self.token.label!r}") from None
        except pkcs11.MultipleObjectsReturned:
            raise Pkcs11Error("key", f"several keys are labelled {self.label!r} in token {self.token.label!r}") from None

    def _with_private(self, operation: Callable[[Any], _T]) -> _T:
        """Run `operation` with this thread's handle of the private key (looked up again if it went stale)."""
        pkcs11 = _pkcs11()
        private = getattr(self._local, "private", None)
        if private is None:
            private = self._local.private = self._find(self.token.session(), pkcs11.ObjectClass.PRIVATE_KEY)
        try:
            return operation(private)
        except pkcs11.ObjectHandleInvalid:  # deleted and re-created elsewhere: find it again, once
            private = self._local.private = self._find(self.token.session(), pkcs11.ObjectClass.PRIVATE_KEY)
            return operation(private)

    def sign_raw_rsa(self, block: bytes) -> bytes:
        """m^d mod n of an already padded block (PKCS#1 v1.5 type 1 or a PSS encoding), as the key hook asks;
        the result is checked with the public key before it is returned."""
        if self.key_type != "rsa":
            raise Pkcs11Error("key_type", f"key {self.label!r} is not an RSA key")
        if len(block) != self._size or int.from_bytes(block, "big") >= self._n:
            raise ValueError("the block does not fit the modulus")  # SoftHSM2 exit()s the process on these
        mechanism = _pkcs11().Mechanism.RSA_X_509
        signature = self._with_private(lambda key: key.sign(block, mechanism=mechanism))
        if pow(int.from_bytes(signature, "big"), self._e, self._n) != int.from_bytes(block, "big"):
            raise RuntimeError(f"the token's RSA result for key {self.label!r} does not verify; discarded")
        return signature

    def sign_ecdsa_digest(self, digest: bytes) -> bytes:
        """A DER ECDSA signature of `digest` (the token gives r‖s; TLS and X.509 want DER)."""
        if self.key_type != "ecdsa":
            raise Pkcs11Error("key_type", f"key {self.label!r} is not an ECDSA key")
        mechanism = _pkcs11().Mechanism.ECDSA
        raw = self._with_private(lambda key: key.sign(digest, mechanism=mechanism))
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def sign(self, data: bytes, hash_name: str = "sha256", *, pss: bool = False) -> bytes:
        """A signature of `data` with the token hashing it: RSA PKCS#1 v1.5 or PSS (salt = digest length, as
        TLS 1.3 requires), or ECDSA (DER) over the digest."""
        if hash_name not in _HASHES:
            raise ValueError(f"unsupported hash {hash_name}")
        if self.key_type == "ecdsa":
            return self.sign_ecdsa_digest(hashlib.new(hash_name, data).digest())
        pkcs11 = _pkcs11()
        bits = hash_name[3:]
        if not pss:
            mechanism = getattr(pkcs11.Mechanism, f"SHA{bits}_RSA_PKCS")
            return self._with_private(lambda key: key.sign(data, mechanism=mechanism))
        mechanism = getattr(pkcs11.Mechanism, f"SHA{bits}_RSA_PKCS_PSS")
        param = (getattr(pkcs11.Mechanism, f"SHA{bits}"), getattr(pkcs11.MGF, f"SHA{bits}"), _HASHES[hash_name])
        return self._with_private(lambda key: key.sign(data, mechanism=mechanism, mechanism_param=param))

    def delete(self) -> None:
        """Destroy both halves in the token (rotation retires an old key this way)."""
        delete_key(self.token, self.label)


def _public_key(public: Any, label: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    pkcs11 = _pkcs11()
    attribute = pkcs11.Attribute
    if public.key_type == pkcs11.KeyType.RSA:
        n = int.from_bytes(public[attribute.MODULUS], "big")
        e = int.from_bytes(public[attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if public.key_type == pkcs11.KeyType.EC:
        if public[attribute.EC_PARAMS] != _P256_PARAMS:
            raise Pkcs11Error("key_type", f"key {label!r} is not on P-256, the one curve pylon signs with here")
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _octet_string(public[attribute.EC_POINT]))
    raise Pkcs11Error("key_type", f"key {label!r} is neither RSA nor EC")


def _octet_string(der: bytes) -> bytes:
    """The content of a DER OCTET STRING (CKA_EC_POINT wraps the point in one)."""
    if len(der) < 2 or der[0] != 0x04:
        raise Pkcs11Error("key", "CKA_EC_POINT is not a DER OCTET STRING")
    length, offset = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(der[2:2 + count], "big"), 2 + count
    return der[offset:offset + length]


def find_key(token: Token, label: str) -> TokenKey:
    """The key pair labelled `label` in `token`. Raises Pkcs11Error naming what is missing."""
    return TokenKey(token, label)


def generate_key(token: Token, label: str, key_type: KeyType) -> TokenKey:
    """A new key pair made inside the token: sensitive, never extractable, for signing only."""
    pkcs11 = _pkcs11()
    attribute = pkcs11.Attribute
    key_id = secrets.token_bytes(8)
    private = {attribute.TOKEN: True, attribute.PRIVATE: True, attribute.SENSITIVE: True,
               attribute.EXTRACTABLE: False, attribute.SIGN: True, attribute.DECRYPT: False,
               attribute.UNWRAP: False, attribute.DERIVE: False}  # fmt: skip
    public = {attribute.TOKEN: True, attribute.VERIFY: True, attribute.ENCRYPT: False, attribute.WRAP: False}
    capabilities = pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY
    session = token.session()
    try:
        if key_type is KeyType.ECDSA_P256:
            parameters = session.create_domain_parameters(pkcs11.KeyType.EC, {attribute.EC_PARAMS: _P256_PARAMS},
                                                          local=True)  # fmt: skip
            parameters.generate_keypair(label=label, id=key_id, store=True, capabilities=capabilities,
                                        public_template=public, private_template=private)  # fmt: skip
        else:
            bits = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}[key_type]
            session.generate_keypair(pkcs11.KeyType.RSA, bits, label=label, id=key_id, store=True,
                                     capabilities=capabilities, public_template=public,
                                     private_template=private)  # fmt: skip
    except pkcs11.PKCS11Error as exc:
        raise Pkcs11Error("token", f"token {token.label!r} could not generate a {key_type.value} key: {exc!r}"
                          ) from None  # fmt: skip
    log.info("generated %s key %r in PKCS#11 token %r (non-extractable)", key_type.value, label, token.label)
    return TokenKey(token, label)


def import_key(token: Token, label: str, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> TokenKey:
    """`private_key` stored in the token under `label` (both halves, as Envoy's SGX provider finds them), the
    private half sensitive, not extractable and for signing only, as `generate_key` makes them; the token then
    reports it as neither ALWAYS_SENSITIVE nor NEVER_EXTRACTABLE, which is true: it was once outside.

    The caller's copy of the key is the caller's to drop: pylon imports in a short-lived process (see
    pkcs11_import.py), so the primes it had to read never outlive the import."""
    pkcs11 = _pkcs11()
    attribute = pkcs11.Attribute
    key_id = secrets.token_bytes(8)
    common = {attribute.TOKEN: True, attribute.LABEL: label, attribute.ID: key_id}
    private = {**common, attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY, attribute.PRIVATE: True,
               attribute.SENSITIVE: True, attribute.EXTRACTABLE: False, attribute.SIGN: True,
               attribute.DECRYPT: False, attribute.UNWRAP: False, attribute.DERIVE: False}  # fmt: skip
    public = {**common, attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY, attribute.VERIFY: True,
              attribute.ENCRYPT: False, attribute.WRAP: False}  # fmt: skip
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.private_numbers()
        n, e = numbers.public_numbers.n, numbers.public_numbers.e
        private.update({attribute.KEY_TYPE: pkcs11.KeyType.RSA, attribute.MODULUS: _big(n),
                        attribute.PUBLIC_EXPONENT: _big(e), attribute.PRIVATE_EXPONENT: _big(numbers.d),
                        attribute.PRIME_1: _big(numbers.p), attribute.PRIME_2: _big(numbers.q),
                        attribute.EXPONENT_1: _big(numbers.dmp1), attribute.EXPONENT_2: _big(numbers.dmq1),
                        attribute.COEFFICIENT: _big(numbers.iqmp)})  # fmt: skip
        public.update({attribute.KEY_TYPE: pkcs11.KeyType.RSA, attribute.MODULUS: _big(n),
                       attribute.PUBLIC_EXPONENT: _big(e)})  # fmt: skip
    elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        point = private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)  # fmt: skip
        private.update({attribute.KEY_TYPE: pkcs11.KeyType.EC, attribute.EC_PARAMS: _P256_PARAMS,
                        attribute.VALUE: private_key.private_numbers().private_value.to_bytes(32, "big")})  # fmt: skip
        public.update({attribute.KEY_TYPE: pkcs11.KeyType.EC, attribute.EC_PARAMS: _P256_PARAMS,
                       attribute.EC_POINT: bytes([0x04, len(point)]) + point})  # fmt: skip
    else:
        raise Pkcs11Error("key_type", "pylon imports RSA and P-256 ECDSA keys into tokens only")
    session = token.session()
    try:
        session.create_object(public)
        session.create_object(private)
    except pkcs11.PKCS11Error as exc:
        delete_key(token, label)
        raise Pkcs11Error("token", f"token {token.label!r} could not store key {label!r}: {exc!r}") from None
    log.info("imported key %r into PKCS#11 token %r (sensitive, not extractable)", label, token.label)
    return TokenKey(token, label)


def _big(value: int) -> bytes:
    """A CK_BIGINTEGER: big-endian, no leading zero bytes."""
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def delete_key(token: Token, label: str) -> int:
    """Destroy every key object labelled `label`; how many there were."""
    pkcs11 = _pkcs11()
    session = token.session()
    found = [obj for cls in (pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.ObjectClass.PUBLIC_KEY)
             for obj in session.get_objects({pkcs11.Attribute.CLASS: cls, pkcs11.Attribute.LABEL: label})]  # fmt: skip
    for obj in found:
        obj.destroy()
    return len(found)


def find_or_generate_key(token: Token, label: str, key_type: KeyType) -> tuple[TokenKey, bool]:
    """The key pair labelled `label`, made now (as `key_type`) if the token has no object of that label; whether
    it was made. A label with only one half, or several keys, is an error, never replaced."""
    pkcs11 = _pkcs11()
    if not any(True for _ in token.session().get_objects({pkcs11.Attribute.LABEL: label})):
        return generate_key(token, label, key_type), True
    return find_key(token, label), False


def read_pin(path: Path | None, env_var: str) -> str | None:
    """A PIN from the first line of `path`, else from the environment variable `env_var` (None if neither):
    never from a command line, which every user of the machine can read in /proc."""
    if path is not None:
        lines = path.read_text().splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"{path}: the first line is empty")
        return lines[0]
    return os.environ.get(env_var) or None


def hash_name(algorithm: hashes.HashAlgorithm) -> str:
    """cryptography's hash as this module names it; ValueError for the ones it does not sign with."""
    if algorithm.name not in _HASHES:
        raise ValueError(f"a token key signs with SHA-256, SHA-384 or SHA-512, not {algorithm.name}")
    return algorithm.name

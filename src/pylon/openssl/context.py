"""The `SSL_CTX*` inside a stdlib `ssl.SSLContext`, for the OpenSSL knobs Python lacks.

`ssl.SSLContext` hides its `SSL_CTX`; pylon needs it twice: the proxy's TLS
contexts set session-cache modes, timeouts and key-exchange groups through it
(`proxy/tls.py`), and the private-key hook installs its key on it
(`keys/hook.py`). Both reach it through `OpenSslContext`, with its layout
checks, and so it lives here, below both: keys must not import the proxy
(docs/architecture.md, "Layering"). Nothing here imports the rest of pylon.
"""

from __future__ import annotations

import ctypes
import ssl
from collections.abc import Sequence
from functools import cache

import _ssl

# OpenSSL constants (ssl.h / tls1.h of OpenSSL 3).
SSL_SESS_CACHE_OFF = 0x0000
SSL_SESS_CACHE_SERVER = 0x0002
SSL_MODE_NO_AUTO_CHAIN = 0x0008
_SSL_CTRL_MODE = 33
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_GET_MIN_PROTO_VERSION = 130


@cache
def _libssl() -> ctypes.CDLL:
    """The OpenSSL functions `_ssl` itself is linked against, with their prototypes.

    Symbols are looked up through the `_ssl` extension's own handle, which
    searches its dependencies: this is the very libssl/libcrypto instance that
    owns the `SSL_CTX`, never a second copy found on the library path.
    """
    lib = ctypes.CDLL(_ssl.__file__)
    try:
        prototypes: dict[str, tuple[type | None, list[type]]] = {
            "OpenSSL_version_num": (ctypes.c_ulong, []),
            "SSL_CTX_get_options": (ctypes.c_uint64, [ctypes.c_void_p]),
            "SSL_CTX_ctrl": (ctypes.c_long, [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]),
            "SSL_CTX_set_timeout": (ctypes.c_long, [ctypes.c_void_p, ctypes.c_long]),
            "SSL_CTX_get_timeout": (ctypes.c_long, [ctypes.c_void_p]),
            "ERR_clear_error": (None, []),
        }
        for name, (restype, argtypes) in prototypes.items():
            func = getattr(lib, name)
            func.restype = restype
            func.argtypes = argtypes
    except AttributeError as exc:
        raise RuntimeError(
            f"the ssl module's OpenSSL does not export {exc.name or exc}: pylon needs a CPython whose "
            "_ssl is dynamically linked to OpenSSL 3 (distro or pyenv builds are)"
        ) from exc
    return lib


class OpenSslContext:
    """Direct access to the `SSL_CTX*` inside an `ssl.SSLContext`, for knobs Python lacks.

    CPython 3.11 lays out `PySSLContext` as `PyObject_HEAD` followed by
    `SSL_CTX *ctx`, so the pointer sits at `object.__basicsize__` bytes into the
    object. That layout is private to CPython, hence the cross-checks before the
    pointer is trusted: the object really is an `_ssl._SSLContext`, the runtime
    OpenSSL is the one `_ssl` was compiled against, and the options and minimum
    version read through the pointer agree with what Python reports (the options
    are checked again after flipping `OP_NO_TICKET` from Python). Any mismatch
    raises `RuntimeError` instead of touching memory that is not an `SSL_CTX`.

    The checks briefly flip `OP_NO_TICKET` on the context, so wrap a context
    before it serves connections (as `server_context`/`client_context` do). The
    object keeps the `SSLContext` alive, so the pointer stays valid while it exists.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        if not isinstance(context, _ssl._SSLContext):
            raise TypeError(f"expected an ssl.SSLContext, got {type(context).__qualname__}")
        self.context = context
        self._lib = _libssl()
        runtime = self._lib.OpenSSL_version_num()
        if runtime != ssl.OPENSSL_VERSION_NUMBER:
            raise RuntimeError(
                f"OpenSSL at run time ({runtime:#x}) differs from the one _ssl was built with "
                f"({ssl.OPENSSL_VERSION_NUMBER:#x}); refusing to use the SSL_CTX pointer"
            )
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer:
            raise RuntimeError("the SSLContext holds no SSL_CTX")
        self.pointer: int = pointer
        self._check_layout()

    def _check_layout(self) -> None:
        context = self.context
        if self.options != context.options:
            raise RuntimeError(self._layout_error("options"))
        before = context.options
        try:
            context.options = before ^ ssl.OP_NO_TICKET
            flipped_ok = self.options == context.options
        finally:
            context.options = before
        if not flipped_ok or self.options != before:
            raise RuntimeError(self._layout_error("options after flipping OP_NO_TICKET"))
        minimum = self._lib.SSL_CTX_ctrl(self.pointer, _SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None)
        # Python reports OpenSSL's "no minimum" (0) as MINIMUM_SUPPORTED.
        expected = context.minimum_version
        if minimum != (0 if expected is ssl.TLSVersion.MINIMUM_SUPPORTED else int(expected)):
            raise RuntimeError(self._layout_error("minimum protocol version"))

    @staticmethod
    def _layout_error(what: str) -> str:
        return (
            f"SSL_CTX pointer check failed ({what} differ between Python and OpenSSL): this CPython's "
            "_ssl layout is not the one pylon was written for (CPython 3.11, non-debug build)"
        )

    @property
    def options(self) -> int:
        """`SSL_CTX_get_options`, read from OpenSSL (not Python's cached view)."""
        return int(self._lib.SSL_CTX_get_options(self.pointer))

    @property
    def session_cache_mode(self) -> int:
        """`SSL_CTX_get_session_cache_mode`: `SSL_SESS_CACHE_OFF` (0) or a mix of `SSL_SESS_CACHE_*` bits."""
        return int(self._lib.SSL_CTX_ctrl(self.pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None))

    @session_cache_mode.setter
    def session_cache_mode(self, mode: int) -> None:
        self._lib.SSL_CTX_ctrl(self.pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)

    @property
    def mode(self) -> int:
        """`SSL_CTX_get_mode`: the `SSL_MODE_*` bits."""
        return int(self._lib.SSL_CTX_ctrl(self.pointer, _SSL_CTRL_MODE, 0, None))

    def add_mode(self, bits: int) -> None:
        """`SSL_CTX_set_mode`: set `bits` (OpenSSL only ever adds mode bits this way)."""
        self._lib.SSL_CTX_ctrl(self.pointer, _SSL_CTRL_MODE, bits, None)

    @property
    def timeout(self) -> int:
        """Session lifetime in seconds (`SSL_CTX_get_timeout`; OpenSSL's default is 7200)."""
        return int(self._lib.SSL_CTX_get_timeout(self.pointer))

    @timeout.setter
    def timeout(self, seconds: int) -> None:
        self._lib.SSL_CTX_set_timeout(self.pointer, seconds)

    def set_groups(self, groups: Sequence[str]) -> None:
        """Key-exchange groups in preference order (`SSL_CTX_set1_groups_list`).

        Raises `ValueError` naming the first group OpenSSL does not know.
        """
        for group in groups:
            if not group or ":" in group or not self._set_groups_list(group):
                raise ValueError(f"unknown or unsupported ECDH curve {group!r}")
        if not self._set_groups_list(":".join(groups)):
            raise ValueError(f"OpenSSL rejected the ECDH curve list {list(groups)}")

    def _set_groups_list(self, text: str) -> bool:
        ok = self._lib.SSL_CTX_ctrl(self.pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(text.encode()))
        if ok != 1:
            # Leave no stale entry on the thread's error queue for ssl to misreport later.
            self._lib.ERR_clear_error()
        return ok == 1

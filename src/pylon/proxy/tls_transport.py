"""Server-side TLS over `ssl.SSLObject` whose handshake can wait for a private key operation.

uvloop's SSL layer treats `SSL_ERROR_WANT_ASYNC` as a fatal error, so
listeners whose certificate uses a private key provider terminate TLS here
instead: the raw socket's protocol (`TlsServerProtocol`) feeds a memory-BIO
`SSLObject`; when the handshake pauses on a key operation (SSLError with
errno 10, see `pylon.keys.hook`), the operation parked in the connection's
slot is handed to the key's provider and the loop moves on to other work.
The provider's completion callback resumes the handshake. The application
protocol (HTTP connection manager, tcp_proxy) sees an ordinary transport
(`TlsAppTransport`), created only once the handshake is done, as with uvloop.

A connection closed while its key operation is outstanding fails the slot and
drives the handshake once more, so OpenSSL's paused ASYNC job unwinds instead
of leaking its fiber stack; a late provider result is then ignored.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from pylon.keys.hook import PENDING, WANT_ASYNC_ERRNO, ffi, lib, new_slot, slot_key
from pylon.keys.signers import PENDING_SIGNERS

log = logging.getLogger("pylon.tls")

_HANDSHAKE, _WAITING_KEY, _OPEN, _CLOSED = range(4)
_READ_SIZE = 65536
_NULL = ffi.NULL if ffi is not None else None


class TlsAppTransport(asyncio.Transport):
    """The decrypted side handed to the application protocol."""

    __slots__ = ("_tls",)

    def __init__(self, tls: "TlsServerProtocol") -> None:
        super().__init__()
        self._tls = tls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write_app(data)

    def writelines(self, chunks: Any) -> None:
        self._tls.write_app(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close; as in asyncio's and uvloop's SSL transports

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports cannot write EOF")

    def close(self) -> None:
        self._tls.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tls.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._tls.app

    def abort(self) -> None:
        self._tls.abort()

    def is_closing(self) -> bool:
        return self._tls.state == _CLOSED or self._tls.raw is None or self._tls.raw.is_closing()

    def pause_reading(self) -> None:
        if self._tls.raw is not None:
            self._tls.raw.pause_reading()

    def resume_reading(self) -> None:
        if self._tls.raw is not None:
            self._tls.raw.resume_reading()

    def is_reading(self) -> bool:
        return self._tls.raw is not None and self._tls.raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._tls.raw.get_write_buffer_size() if self._tls.raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tls.raw is not None:
            self._tls.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.sslobj
        if name == "sslcontext":
            return self._tls.context
        if name == "peercert":
            return self._tls.sslobj.getpeercert()
        if name == "cipher":
            return self._tls.sslobj.cipher()
        return self._tls.raw.get_extra_info(name, default) if self._tls.raw is not None else default


class TlsServerProtocol(asyncio.Protocol):
    """The raw socket's protocol: TLS records in and out, the application protocol on top."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.BaseProtocol) -> None:
        self.context = context
        self.app = app
        self.raw: asyncio.Transport | None = None
        self.state = _HANDSHAKE
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.slot = new_slot()
        self.app_transport: TlsAppTransport | None = None
        self.will_sign = False  # counted in PENDING_SIGNERS until its key operation is submitted

    # ---- raw side ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.will_sign = True
        PENDING_SIGNERS.started()
        # No do_handshake yet: a server has nothing to do before the ClientHello, and asking would only raise
        # SSLWantReadError, whose construction costs several microseconds (CPython formats its message).

    def _signer_done(self) -> None:
        if self.will_sign:
            self.will_sign = False
            PENDING_SIGNERS.finished()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if self.state == _OPEN:
            self._read()
        elif self.state == _HANDSHAKE:
            self._handshake()
        # _WAITING_KEY: the bytes wait in the BIO until the key operation is back.

    def eof_received(self) -> bool | None:
        if self.state == _OPEN:
            self._read()
            if self.state == _OPEN:
                keep = self.app.eof_received()  # type: ignore[attr-defined]
                if not keep:
                    self.close()
                return None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = _CLOSED
        self._signer_done()
        if was == _WAITING_KEY:
            self._unwind_job()
        if was == _OPEN or (was == _CLOSED and self.app_transport is not None):
            self.app.connection_lost(exc)
        self.raw = None

    def pause_writing(self) -> None:
        if self.app_transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app_transport is not None:
            self.app.resume_writing()

    # ---- handshake ----

    def _handshake(self) -> None:
        lib.pk_enter(self.slot)
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            lib.pk_enter(_NULL)
            self._flush()
            return
        except ssl.SSLError as exc:
            lib.pk_enter(_NULL)
            if exc.errno == WANT_ASYNC_ERRNO and self.slot.state == PENDING:
                self.state = _WAITING_KEY
                self._flush()
                if self.will_sign:
                    self.will_sign = False
                    PENDING_SIGNERS.count -= 1  # no flush callback: this very operation is being queued
                slot_key(self.slot).ops.submit(self.slot, self._key_done)
                return
            self._handshake_failed(exc)
            return
        except OSError as exc:
            lib.pk_enter(_NULL)
            self._handshake_failed(exc)
            return
        lib.pk_enter(_NULL)
        self._flush()
        self._signer_done()  # e.g. a resumed session: done without a signature
        self.state = _OPEN
        self.app_transport = TlsAppTransport(self)
        self.app.connection_made(self.app_transport)
        if self.state == _OPEN and self.incoming.pending:
            self._read()

    def _key_done(self) -> None:
        """The provider finished (or failed) the parked operation: resume the handshake."""
        if self.state != _WAITING_KEY:
            return  # the connection went away meanwhile; _unwind_job already ended the job
        self.state = _HANDSHAKE
        self._handshake()

    def _handshake_failed(self, exc: Exception) -> None:
        log.debug("TLS handshake failed: %s", exc)
        self._signer_done()
        self.state = _CLOSED
        self._flush()  # the alert, if OpenSSL produced one
        if self.raw is not None:
            self.raw.close()

    def _unwind_job(self) -> None:
        """Fail the outstanding operation and let OpenSSL's paused ASYNC job run to its end."""
        lib.pk_slot_fail(self.slot)
        lib.pk_enter(self.slot)
        try:
            self.sslobj.do_handshake()
        except (ssl.SSLError, OSError):
            pass
        finally:
            lib.pk_enter(_NULL)

    # ---- application data ----

    def _read(self) -> None:
        sslobj = self.sslobj
        while self.state == _OPEN:
            try:
                data = sslobj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._flush()
                keep = self.app.eof_received()  # type: ignore[attr-defined]
                if not keep:
                    self.close()
                return
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS read failed: %s", exc)
                self.abort()
                return
            if not data:
                break
            self.app.data_received(data)  # type: ignore[attr-defined]
            if not self.incoming.pending and not sslobj.pending():
                break  # nothing left to decrypt: another read would only raise SSLWantReadError (costly)
        self._flush()

    def write_app(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != _OPEN or not data:
            return
        try:
            self.sslobj.write(data)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self.outgoing.pending and self.raw is not None:
            self.raw.write(self.outgoing.read())

    def close(self) -> None:
        """Send close_notify, then close once the written data is out (asyncio semantics)."""
        if self.state == _CLOSED or self.raw is None:
            return
        if self.state == _OPEN:
            try:
                self.sslobj.unwrap()
            except (ssl.SSLError, OSError):
                pass  # the peer's close_notify is not awaited, as in Envoy
            self._flush()
        elif self.state == _WAITING_KEY:
            self._unwind_job()
        self.state = _CLOSED
        self.raw.close()

    def abort(self) -> None:
        if self.raw is None:
            return
        if self.state == _WAITING_KEY:
            self._unwind_job()
        self.state = _CLOSED
        self.raw.abort()


def tls_protocol_factory(context: ssl.SSLContext, app_factory: Callable[[], Any]) -> Callable[[], TlsServerProtocol]:
    """A protocol factory for `loop.create_server(..., ssl=None)` that terminates TLS with `context`."""

    def factory() -> TlsServerProtocol:
        return TlsServerProtocol(context, app_factory())

    return factory

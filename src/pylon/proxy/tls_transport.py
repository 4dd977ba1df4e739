"""Server-side TLS driven by the native module: one C call per read and per write of a connection.

Every TLS listener terminates here (uvloop's SSL layer is not used: it costs
more per record, and it treats `SSL_ERROR_WANT_ASYNC` as fatal, which private
key providers need). The raw socket's protocol (`TlsServerProtocol`) hands the
bytes it receives to `keys/tlsconn.c`, which drives the handshake or decrypts
every record they complete in one call; a write is encrypted in one call too.
The SSL object is the one CPython made for an `ssl.SSLObject` of the listener's
context, so every setting `proxy/tls.py` makes applies, and the negotiated
parameters (peer certificate, ALPN, SNI, cipher) are read through that
`SSLObject` as before (`get_extra_info("ssl_object")`); only its record I/O
moved to C, on memory BIOs of its own.

When the handshake pauses on a key operation (a hooked key, `pylon.keys.hook`),
the operation parked in the connection's slot is handed to the key's provider
and the loop moves on to other work; the provider's completion callback
resumes the handshake. The application protocol (HTTP connection manager,
tcp_proxy) sees an ordinary transport (`TlsAppTransport`), created only once
the handshake is done, as with uvloop.

Application writes are encrypted at once but sent once per loop iteration
(`loop.call_soon`), as Envoy flushes a connection's write buffer: what an
iteration writes leaves in one `write(2)`, so a response and the close_notify
of the close that follows it (HTTP/1 `Connection: close`) go together. The
handshake's own flights are sent at once. The TLS 1.3 session tickets OpenSSL
issues when the handshake completes (after the client's Finished: unlike BoringSSL,
it cannot send them with its own Finished) are held until the connection
first writes, the peer sends more, or the connection closes: they go in the
response's write instead of a write of their own (a socket write costs about
as much as 2% of a resumed handshake here). A client that gets no response and
sends nothing more gets them with the close.

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

from pylon.keys.hook import HookError, check_runtime, ffi, is_hooked, lib, new_slot, slot_key
from pylon.keys.signers import PENDING_SIGNERS

log = logging.getLogger("pylon.tls")

_HANDSHAKE, _WAITING_KEY, _OPEN, _CLOSED = range(4)

#: Seconds a client has to complete its handshake (what uvloop was given for listeners before).
HANDSHAKE_TIMEOUT = 10.0

#: One plaintext and one ciphertext buffer for every connection of the (single-threaded) loop: each
#: call's output is copied out into a bytes object before anything else can run.
_BUFFER_SIZE = 256 * 1024
_PLAIN = ffi.new("char[]", _BUFFER_SIZE) if ffi is not None else None
_WIRE = ffi.new("char[]", _BUFFER_SIZE) if ffi is not None else None
_NULL = ffi.NULL if ffi is not None else None
#: `wrap_bio` wants memory BIOs; the C side swaps in its own at once, so all connections share these.
_UNUSED_IN, _UNUSED_OUT = ssl.MemoryBIO(), ssl.MemoryBIO()


def native_tls_available() -> bool:
    """Whether the native module is built and shares `_ssl`'s OpenSSL (else uvloop's SSL serves key files)."""
    try:
        check_runtime()
    except HookError:
        return False
    return True


def handshake_error(err: int) -> ssl.SSLError:
    """An `ssl.SSLError` for a failed handshake, with OpenSSL's reason as CPython names it (for `ssl.*` stats)."""
    reason = ffi.string(lib.tn_reason(err)).decode("ascii", "replace").upper().replace(" ", "_")
    exc = ssl.SSLError(1, f"[SSL: {reason}] TLS handshake failed")
    exc.reason = reason
    return exc


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
        tls = self._tls
        held = sum(map(len, tls.pending)) if tls.pending else 0
        return held + (tls.raw.get_write_buffer_size() if tls.raw is not None else 0)

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
    """The raw socket's protocol: TLS records in and out through `tlsconn.c`, the application protocol on top."""

    def __init__(self, context: ssl.SSLContext, app: asyncio.BaseProtocol, stats: Any = None,
                 hooked: bool = False) -> None:
        self.context = context
        self.app = app
        self.stats = stats  # the listener's TlsStats: failed handshakes are counted here
        self.raw: asyncio.Transport | None = None
        self.state = _HANDSHAKE
        self.sslobj = context.wrap_bio(_UNUSED_IN, _UNUSED_OUT, server_side=True)
        self.slot = new_slot() if hooked else _NULL
        self.conn = ffi.new("tn_conn *")
        if not lib.tn_attach(self.conn, ffi.cast("void *", id(self.sslobj._sslobj)), self.slot):
            raise HookError("the SSL object of an ssl.SSLObject is not where CPython 3.11 keeps it")
        self.app_transport: TlsAppTransport | None = None
        self.will_sign = False  # counted in PENDING_SIGNERS until its key operation is submitted
        self.timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[bytes] | None = None  # records this iteration wrote, sent together at its end
        self.held: list[bytes] = []  # session tickets waiting for the connection's first write

    # ---- raw side ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.loop = loop = asyncio.get_running_loop()
        self.timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        if self.slot is not _NULL:
            self.will_sign = True
            PENDING_SIGNERS.started()
        # No handshake step yet: a server has nothing to do before the ClientHello.

    def _signer_done(self) -> None:
        if self.will_sign:
            self.will_sign = False
            PENDING_SIGNERS.finished()

    def data_received(self, data: bytes) -> None:
        if self.state == _OPEN:
            if self.held:
                self._queue(0)  # the peer goes on: the tickets wait no longer than this iteration
            self._read(data)
        elif self.state == _HANDSHAKE:
            self._handshake(data)
        elif self.state == _WAITING_KEY:
            lib.tn_feed(self.conn, data, len(data))  # read once the key operation is back

    def eof_received(self) -> bool | None:
        if self.state == _OPEN:
            keep = self.app.eof_received()  # type: ignore[attr-defined]
            if not keep:
                self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = _CLOSED
        self._stop_timer()
        self._signer_done()
        if was == _WAITING_KEY:
            lib.tn_unwind(self.conn)
        if was == _OPEN or (was == _CLOSED and self.app_transport is not None):
            self.app.connection_lost(exc)
        elif self.app_transport is None and hasattr(self.app, "closed_unopened"):
            self.app.closed_unopened(self.raw)  # a tap (proxy/tap_socket.py): Envoy traces such a connection too
        self.raw = None

    def pause_writing(self) -> None:
        if self.app_transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app_transport is not None:
            self.app.resume_writing()

    # ---- handshake ----

    def _handshake(self, data: bytes = b"") -> None:
        conn = self.conn
        result = lib.tn_handshake(conn, data, len(data))
        if conn.wire:
            if result == lib.TN_OK and self.sslobj.version() == "TLSv1.3":
                self.held = self._take_all()  # session tickets: held for the first write (see the module's doc)
            else:
                self._flush()  # a handshake flight (TLS 1.2's last one too) or an alert: the peer waits for it
        if result == lib.TN_WANT_READ:
            return
        if result == lib.TN_WANT_ASYNC:
            self.state = _WAITING_KEY
            if self.will_sign:
                self.will_sign = False
                PENDING_SIGNERS.count -= 1  # no flush callback: this very operation is being queued
            slot_key(self.slot).ops.submit(self.slot, self._key_done)
            return
        if result != lib.TN_OK:
            self._handshake_failed(handshake_error(conn.err))
            return
        self._stop_timer()
        self._signer_done()  # e.g. a resumed session: done without a signature
        self.state = _OPEN
        self.app_transport = TlsAppTransport(self)
        self.app.connection_made(self.app_transport)
        if self.state == _OPEN:
            # Records that came with the client's Finished (often the first request) may be buffered already
            # inside OpenSSL, where neither the BIO nor SSL_has_pending shows them: read to find out.
            self._read(b"")

    def _key_done(self) -> None:
        """The provider finished (or failed) the parked operation: resume the handshake."""
        if self.state != _WAITING_KEY:
            return  # the connection went away meanwhile; tn_unwind already ended the job
        self.state = _HANDSHAKE
        self._handshake()

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        log.debug("TLS handshake failed: %s", exc)
        self._stop_timer()
        self._signer_done()
        self.state = _CLOSED
        if self.stats is not None:
            self.stats.handshake_failed(exc)  # Envoy's ssl.fail_verify_no_cert / fail_verify_error / connection_error
        if self.raw is not None:
            self.raw.close()

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.state in (_HANDSHAKE, _WAITING_KEY):
            log.debug("TLS handshake timed out")
            self.abort()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # ---- application data ----

    def _read(self, data: bytes) -> None:
        conn = self.conn
        size = lib.tn_read(conn, data, len(data), _PLAIN, _BUFFER_SIZE)
        while True:
            if conn.wire:
                self._flush()
            status = conn.status
            more = conn.more
            if size:
                self.app.data_received(ffi.unpack(_PLAIN, size))  # type: ignore[attr-defined]
            if status == lib.TN_CLOSED:
                if self.state == _OPEN:
                    keep = self.app.eof_received()  # type: ignore[attr-defined]
                    if not keep:
                        self.close()
                return
            if status != lib.TN_OK:
                log.debug("TLS read failed: %s", handshake_error(conn.err))
                self.abort()
                return
            if not more or self.state != _OPEN:
                return
            size = lib.tn_read(conn, _NULL, 0, _PLAIN, _BUFFER_SIZE)

    def write_app(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != _OPEN or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        size = lib.tn_write(self.conn, data, len(data), _WIRE, _BUFFER_SIZE)
        if size < 0:
            log.debug("TLS write failed: %s", handshake_error(self.conn.err))
            self.abort()
            return
        self._queue(size)

    def _queue(self, size: int) -> None:
        """Hold the records in `_WIRE` (and any left in the write BIO) for this iteration's one socket write."""
        pending = self.pending
        if pending is None:
            self.pending = pending = self.held
            self.held = []
            self.loop.call_soon(self._send_pending)  # type: ignore[union-attr]
        if size:
            pending.append(ffi.unpack(_WIRE, size))
        if self.conn.wire:
            pending += self._take_all()

    def _take_all(self) -> list[bytes]:
        conn = self.conn
        chunks = []
        while conn.wire:
            chunks.append(ffi.unpack(_WIRE, lib.tn_take(conn, _WIRE, _BUFFER_SIZE)))
        return chunks

    def _send_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending and self.state != _CLOSED and self.raw is not None:
            self.raw.writelines(pending)  # one writev

    def _flush(self) -> None:
        """Send what the write BIO holds now, or behind the records this iteration holds (in order)."""
        if self.pending is not None or self.held:
            self._queue(0)
            return
        conn = self.conn
        while conn.wire:
            chunk = ffi.unpack(_WIRE, lib.tn_take(conn, _WIRE, _BUFFER_SIZE))
            if self.raw is not None:
                self.raw.write(chunk)

    def close(self) -> None:
        """Send close_notify, then close once the written data is out (asyncio semantics)."""
        if self.state == _CLOSED or self.raw is None:
            return
        if self.state == _OPEN:
            self._queue(lib.tn_shutdown(self.conn, _WIRE, _BUFFER_SIZE))  # the peer's close_notify is not awaited
            self._send_pending()  # with what this iteration wrote before it
        elif self.state == _WAITING_KEY:
            lib.tn_unwind(self.conn)
        self._stop_timer()
        self.state = _CLOSED
        self.raw.close()

    def abort(self) -> None:
        if self.raw is None:
            return
        if self.state == _WAITING_KEY:
            lib.tn_unwind(self.conn)
        self._stop_timer()
        self.state = _CLOSED
        self.raw.abort()


def tls_protocol_factory(context: ssl.SSLContext, app_factory: Callable[[], Any],
                         stats: Any = None) -> Callable[[], TlsServerProtocol]:
    """A protocol factory for `loop.create_server(..., ssl=None)` that terminates TLS with `context`.

    One connection object is made here first, so a CPython whose `SSLObject` is not laid out as
    expected fails when the listener is built, not per connection.
    """
    hooked = is_hooked(context)
    TlsServerProtocol(context, asyncio.Protocol(), hooked=False)

    def factory() -> TlsServerProtocol:
        return TlsServerProtocol(context, app_factory(), stats, hooked)

    return factory

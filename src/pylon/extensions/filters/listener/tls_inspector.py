"""envoy.filters.listener.tls_inspector: is this connection TLS, and which SNI and ALPN does its client ask for?

Reads the client's first TLS records (peeked, so the handshake that follows
sees them too) far enough to parse the ClientHello: TLS found sets the
transport protocol `tls`, the SNI host name and the ALPN list, which filter
chains match on (`server_names`, `transport_protocol`, `application_protocols`).
Anything else - a plaintext request, a malformed hello - is "TLS not found"
and the connection goes on as `raw_buffer`, as in Envoy (which asks BoringSSL
and treats every parse error alike); with
`close_connection_on_client_hello_parsing_errors` it is closed instead. A
ClientHello longer than `max_client_hello_size` closes the connection
(`client_hello_too_large`).

Stats, rooted at `tls_inspector.` and shared by every listener as Envoy's:
tls_found, tls_not_found, sni_found, sni_not_found, alpn_found,
alpn_not_found, client_hello_too_large, and the histogram bytes_processed.
JA3/JA4 fingerprinting is refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, NotSupportedYet
from pylon.config.errors import FieldError
from pylon.proxy.filters.listener import CLOSE, DONE, MORE, Detected, register_listener_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"

#: Envoy's ceiling for max_client_hello_size (and its default).
MAX_CLIENT_HELLO = 16 * 1024

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_RECORD_HEADER = 5


class TlsInspector(EnvoyStruct, kw_only=True):
    """extensions.filters.listener.tls_inspector.v3.TlsInspector."""

    enable_ja3_fingerprinting: NotSupportedYet | None = None
    enable_ja4_fingerprinting: NotSupportedYet | None = None
    # A read-size hint (pylon peeks up to max_client_hello_size at once); Envoy's range, exclusive: (255, 65537).
    initial_read_buffer_size: Annotated[int, msgspec.Meta(ge=256, le=65536)] | None = None
    close_connection_on_client_hello_parsing_errors: bool = False
    max_client_hello_size: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        if self.max_client_hello_size is not None and self.max_client_hello_size > MAX_CLIENT_HELLO:
            raise FieldError("max_client_hello_size", f"{self.max_client_hello_size} is greater than the maximum "
                                                      f"of {MAX_CLIENT_HELLO}")


class MalformedHello(ValueError):
    """The bytes are not a TLS ClientHello (plaintext, or a broken hello)."""


class HelloTooLarge(ValueError):
    """The ClientHello is longer than the configured maximum."""


class ClientHello:
    """The parts of a ClientHello that select a filter chain."""

    __slots__ = ("server_name", "alpn")

    def __init__(self, server_name: str, alpn: tuple[str, ...] | None) -> None:
        self.server_name = server_name
        self.alpn = alpn  # None: no ALPN extension


def handshake_bytes(data: bytes, limit: int) -> tuple[bytes, int] | None:
    """The ClientHello message (header included) reassembled from its records, and the bytes of the records
    it took; None while incomplete.

    Raises MalformedHello for bytes that cannot start a TLS handshake and
    HelloTooLarge for a hello whose declared length exceeds `limit`.
    """
    message = b""
    pos = 0
    wanted: int | None = None
    while True:
        header = data[pos:pos + _RECORD_HEADER]
        if len(header) < _RECORD_HEADER:
            return None  # Envoy decides nothing before a whole record header (5 bytes) is there
        if header[0] != _HANDSHAKE:
            raise MalformedHello("not a handshake record")
        if header[1] != 3:
            raise MalformedHello("not a TLS record version")
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > 16384:  # a plaintext record's maximum
            raise MalformedHello("bad record length")
        message += data[pos + _RECORD_HEADER:pos + _RECORD_HEADER + length]
        if wanted is None and len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                raise MalformedHello("first handshake message is not a ClientHello")
            wanted = 4 + int.from_bytes(message[1:4], "big")
            if wanted > limit:
                raise HelloTooLarge(wanted)
        if wanted is not None and len(message) >= wanted:
            return message[:wanted], min(len(data), pos + _RECORD_HEADER + length)
        if len(data) < pos + _RECORD_HEADER + length:
            return None  # this record is still arriving
        pos += _RECORD_HEADER + length


class _Reader:
    """Bounds-checked reads over a ClientHello body; any overrun is a MalformedHello."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise MalformedHello("truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> "_Reader":
        """The length-prefixed block at the current position, as its own reader."""
        length = self.number(length_size)
        start = self.pos
        self.take(length)
        return _Reader(self.data, start, start + length)

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse_client_hello(message: bytes) -> ClientHello:
    """SNI and ALPN of a complete ClientHello message (as `handshake_bytes` returns it)."""
    body = _Reader(message, 4)
    body.take(2 + 32)  # legacy_version, random
    body.vector(1)  # legacy_session_id
    ciphers = body.vector(2)
    if ciphers.left == 0 or ciphers.left % 2:
        raise MalformedHello("bad cipher suite list")
    body.vector(1)  # legacy_compression_methods
    server_name, alpn = "", None
    if body.left:
        extensions = body.vector(2)
        while extensions.left:
            kind = extensions.number(2)
            payload = extensions.vector(2)
            if kind == _EXT_SERVER_NAME:
                server_name = _server_name(payload)
            elif kind == _EXT_ALPN:
                alpn = _alpn(payload)
    if body.left:
        raise MalformedHello("trailing bytes after the extensions")
    return ClientHello(server_name, alpn)


def _server_name(payload: _Reader) -> str:
    names = payload.vector(2)
    while names.left:
        kind = names.number(1)
        name = names.vector(2)
        if kind == 0:
            raw = name.take(name.left)
            if not raw or b"\x00" in raw:
                raise MalformedHello("bad host name")
            return raw.decode("ascii", "replace")
    return ""


def _alpn(payload: _Reader) -> tuple[str, ...] | None:
    """The offered protocols, or None for a list Envoy would not take (it leaves those to the TLS stack)."""
    protocols = payload.vector(2)
    if payload.left or protocols.left < 2:
        return None
    names = []
    while protocols.left:
        name = protocols.vector(1)
        if name.left == 0:
            return None
        names.append(name.take(name.left).decode("latin-1"))
    return tuple(names)


class TlsInspectorFilter:
    """One listener's tls_inspector in one worker (stats are process-wide, as Envoy's)."""

    def __init__(self, config: TlsInspector, stats: Any) -> None:
        self.max_bytes = config.max_client_hello_size or MAX_CLIENT_HELLO
        self.close_on_parse_error = config.close_connection_on_client_hello_parsing_errors
        self.tls_found = stats.counter("tls_inspector.tls_found")
        self.tls_not_found = stats.counter("tls_inspector.tls_not_found")
        self.sni_found = stats.counter("tls_inspector.sni_found")
        self.sni_not_found = stats.counter("tls_inspector.sni_not_found")
        self.alpn_found = stats.counter("tls_inspector.alpn_found")
        self.alpn_not_found = stats.counter("tls_inspector.alpn_not_found")
        self.too_large = stats.counter("tls_inspector.client_hello_too_large")
        self.bytes_processed = stats.histogram("tls_inspector.bytes_processed")

    def inspect(self, data: bytes, detected: Detected) -> int:
        try:
            found = handshake_bytes(data, self.max_bytes)
            if found is None:
                if len(data) >= self.max_bytes:
                    raise HelloTooLarge(len(data))
                return MORE
            message, consumed = found
            hello = parse_client_hello(message)
        except HelloTooLarge:
            self.too_large.inc()
            return CLOSE
        except MalformedHello:
            if self.close_on_parse_error:
                return CLOSE
            self.tls_not_found.inc()
            self.bytes_processed.record(len(data))
            return DONE
        self.tls_found.inc()
        self.bytes_processed.record(consumed)
        detected.transport_protocol = "tls"
        if hello.server_name:
            self.sni_found.inc()
            detected.server_name = hello.server_name
        else:
            self.sni_not_found.inc()
        if hello.alpn:
            self.alpn_found.inc()
            detected.application_protocols = hello.alpn
        else:
            self.alpn_not_found.inc()
        return DONE


registry.register_typed(registry.LISTENER_FILTER, TYPE_URL, TlsInspector)
register_listener_filter(TlsInspector, TlsInspectorFilter)

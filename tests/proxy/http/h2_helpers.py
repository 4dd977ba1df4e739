"""Test aids for the HTTP/2 codec: an owner that records, a pump between two sessions, frames built by hand."""

from __future__ import annotations

import struct
from typing import Any

from pylon.proxy.http.h2_session import H2Connection, H2Settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4

#: HPACK for `GET / http`, :authority "x": static-table indexes and one literal (RFC 7541 appendix A).
GET_BLOCK = b"\x82\x86\x84\x41\x01x"
POST_BLOCK = b"\x83\x86\x84\x41\x01x"


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBI", (len(payload) << 8) | ftype, flags, stream_id) + payload


def client_start() -> bytes:
    """What a client sends first: the magic and an empty SETTINGS."""
    return PREFACE + frame(SETTINGS, 0, 0)


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal field without indexing, new name (short lengths only)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each whole frame in `data` (a server's output: no preface)."""
    out = []
    while len(data) >= 9:
        word, flags, sid = struct.unpack(">IBI", data[:9])
        length = word >> 8
        out.append((word & 0xFF, flags, sid & 0x7FFFFFFF, data[9:9 + length]))
        data = data[9 + length:]
    return out


def goaway_of(data: bytes) -> tuple[int, int] | None:
    """(last stream id, error code) of the GOAWAY in `data`, if any."""
    for ftype, _flags, _sid, payload in frames(data):
        if ftype == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            return last & 0x7FFFFFFF, code
    return None


class Recorder:
    """An H2Owner that records every call; consumes received bytes at once unless told not to."""

    def __init__(self, *, auto_consume: bool = True) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.auto_consume = auto_consume
        self.body: dict[int, bytearray] = {}
        self.conn: H2Connection | None = None

    def on_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        self.events.append(("headers", stream_id, headers, end_stream))

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.body.setdefault(stream_id, bytearray()).extend(data)
        if self.auto_consume:
            assert self.conn is not None
            self.conn.consume(stream_id, len(data))

    def on_trailers(self, stream_id: int, trailers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", stream_id, trailers))

    def on_end_stream(self, stream_id: int) -> None:
        self.events.append(("end", stream_id))

    def on_stream_closed(self, stream_id: int, error_code: int) -> None:
        self.events.append(("closed", stream_id, error_code))

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.events.append(("goaway", last_stream_id, error_code))

    def kinds(self) -> list[str]:
        return [e[0] for e in self.events]


def session(owner: Recorder, *, server: bool, settings: H2Settings | None = None) -> H2Connection:
    conn = H2Connection(owner, server=server, settings=settings)
    owner.conn = conn
    return conn


def pump(a: H2Connection, b: H2Connection, rounds: int = 1000) -> None:
    """Carry bytes both ways until neither side has anything to send."""
    for _ in range(rounds):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            b.receive(x)
        if y:
            a.receive(y)
    raise AssertionError("the sessions kept talking")

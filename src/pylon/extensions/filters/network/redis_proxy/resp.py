"""RESP2, sans-IO: the requests clients send (arrays of bulk strings) and every reply type redis answers.

Why a decoder of our own and no client library: the proxy never interprets replies beyond their boundaries and
kinds (an error reply counts as a failed fragment of MGET, an integer adds up for DEL), and it must pass each one
on byte for byte, so a `Reply` keeps its encoded bytes (`raw`) next to the decoded value. Envoy's codec takes the
same shapes; bytes that are no RESP value (an inline command) are a protocol error for it, and for us:
`ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

SIMPLE = ord("+")
ERROR = ord("-")
INTEGER = ord(":")
BULK = ord("$")
ARRAY = ord("*")

#: a reply's decoded value: str (simple/error), int, bytes or None (bulk, nil), list of Reply (array) or None
Value = Union[str, int, bytes, None, list["Reply"]]

MAX_BULK = 512 * 1024 * 1024  # redis' own proto-max-bulk-len default


class ProtocolError(ValueError):
    """Bytes that are not RESP2 (Envoy closes such a downstream connection: downstream_cx_protocol_error)."""


@dataclass(slots=True)
class Reply:
    kind: int  # one of SIMPLE, ERROR, INTEGER, BULK, ARRAY
    value: Value
    raw: bytes

    @property
    def is_error(self) -> bool:
        return self.kind == ERROR


def error(text: str) -> Reply:
    return Reply(ERROR, text, b"-" + text.encode() + b"\r\n")


def simple(text: str) -> Reply:
    return Reply(SIMPLE, text, b"+" + text.encode() + b"\r\n")


def integer(number: int) -> Reply:
    return Reply(INTEGER, number, b":%d\r\n" % number)


def bulk(data: bytes | None) -> Reply:
    raw = b"$-1\r\n" if data is None else b"$%d\r\n%s\r\n" % (len(data), data)
    return Reply(BULK, data, raw)


def array(items: list[Reply]) -> Reply:
    return Reply(ARRAY, items, b"*%d\r\n" % len(items) + b"".join(item.raw for item in items))


def encode_command(args: list[bytes]) -> bytes:
    """A request as clients send it: an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


class _Buffer:
    """The bytes received and not yet decoded; `parse` either takes a whole value or leaves `pos` untouched."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos:
            del self.data[:self.pos]
            self.pos = 0
        self.data += data

    def line(self, at: int) -> tuple[bytes, int] | None:
        end = self.data.find(b"\r\n", at)
        if end < 0:
            return None
        return bytes(self.data[at:end]), end + 2

    def number(self, at: int) -> tuple[int, int] | None:
        found = self.line(at)
        if found is None:
            return None
        text, after = found
        try:
            return int(text), after
        except ValueError:
            raise ProtocolError(f"not a number: {text[:32]!r}") from None

    def bulk(self, at: int) -> tuple[bytes | None, int] | None:
        header = self.number(at)
        if header is None:
            return None
        length, at = header
        if length == -1:
            return None, at  # nil
        if length < 0 or length > MAX_BULK:
            raise ProtocolError(f"invalid bulk length {length}")
        if len(self.data) < at + length + 2:
            return None  # not all of it yet
        if self.data[at + length:at + length + 2] != b"\r\n":
            raise ProtocolError("bulk string not followed by CRLF")
        return bytes(self.data[at:at + length]), at + length + 2


class Decoder:
    """Bytes -> RESP2 values, each with its own bytes: an upstream's replies, and what clients send (any value:
    the session refuses what is no array of bulk strings with Envoy's "invalid request", as Envoy does, and
    closes the connection only on bytes that are not RESP at all)."""

    def __init__(self) -> None:
        self._buf = _Buffer()

    def feed(self, data: bytes) -> list[Reply]:
        buf = self._buf
        buf.feed(data)
        out: list[Reply] = []
        while buf.pos < len(buf.data):
            found = self._reply(buf.pos)
            if found is None:
                break
            reply, buf.pos = found
            out.append(reply)
        return out

    def _reply(self, start: int) -> tuple[Reply, int] | None:
        buf = self._buf
        kind = buf.data[start]
        value: Value
        if kind in (SIMPLE, ERROR):
            found = buf.line(start + 1)
            if found is None:
                return None
            text, at = found
            value = text.decode("utf-8", "replace")
        elif kind == INTEGER:
            number = buf.number(start + 1)
            if number is None:
                return None
            value, at = number
        elif kind == BULK:
            data = buf.bulk(start + 1)
            if data is None:
                return None
            value, at = data
        elif kind == ARRAY:
            header = buf.number(start + 1)
            if header is None:
                return None
            count, at = header
            items: list[Reply] | None = None
            if count >= 0:
                items = []
                for _ in range(count):
                    if at >= len(buf.data):
                        return None
                    found_item = self._reply(at)
                    if found_item is None:
                        return None
                    item, at = found_item
                    items.append(item)
            value = items
        else:
            raise ProtocolError(f"unknown reply type {chr(kind)!r}")
        return Reply(kind, value, bytes(buf.data[start:at])), at

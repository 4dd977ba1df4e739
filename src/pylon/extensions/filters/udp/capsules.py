"""HTTP Datagram capsules (RFC 9297, as RFC 9298's CONNECT-UDP carries UDP payloads): encoding and a streaming
decoder (sans-IO).

Envoy's `envoy.filters.udp.session.http_capsule` session filter frames each datagram a UDP proxy tunnels as one
DATAGRAM capsule: type 0x00, its length, then the payload, which starts with the context ID 0 (RFC 9298: a UDP
payload); all three numbers are QUIC variable-length integers (RFC 9000 section 16). Coming back, the stream's
bytes are cut into capsules wherever DATA frames split them; a capsule of another type, or a datagram with another
context ID, is skipped, as RFC 9297 asks of a capsule one does not know.
"""

from __future__ import annotations

DATAGRAM_CAPSULE = 0x00
UDP_PAYLOAD_CONTEXT = 0x00
#: the longest capsule kept while it arrives: a UDP payload fits in 64 KiB, with room for the varints
MAX_CAPSULE = 65536 + 16


class CapsuleError(ValueError):
    """The peer sent what cannot be capsules (a capsule longer than any datagram)."""


def encode_varint(value: int) -> bytes:
    """A QUIC variable-length integer: the shortest of 1, 2, 4 or 8 bytes, its length in the top two bits."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def _decode_varint(buffer: bytes | bytearray, offset: int) -> tuple[int, int] | None:
    """(value, offset after it), or None if the buffer ends inside it."""
    if offset >= len(buffer):
        return None
    first = buffer[offset]
    length = 1 << (first >> 6)
    if offset + length > len(buffer):
        return None
    value = first & 0x3F
    for byte in buffer[offset + 1:offset + length]:
        value = (value << 8) | byte
    return value, offset + length


def encode_datagram(payload: bytes) -> bytes:
    """One UDP payload as a DATAGRAM capsule (context ID 0)."""
    body_length = len(payload) + 1  # the context ID's one byte
    return bytes((DATAGRAM_CAPSULE,)) + encode_varint(body_length) + bytes((UDP_PAYLOAD_CONTEXT,)) + payload


class CapsuleDecoder:
    """The UDP payloads of DATAGRAM capsules in a byte stream cut anywhere."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by `data`; CapsuleError if a capsule says it is longer than MAX_CAPSULE."""
        buffer = self.buffer
        buffer += data
        payloads = []
        offset = 0
        while True:
            kind = _decode_varint(buffer, offset)
            length = _decode_varint(buffer, kind[1]) if kind is not None else None
            if kind is None or length is None:
                break
            if length[0] > MAX_CAPSULE:
                raise CapsuleError(f"a capsule of {length[0]} bytes")
            end = length[1] + length[0]
            if end > len(buffer):
                break
            if kind[0] == DATAGRAM_CAPSULE:
                context = _decode_varint(buffer, length[1])
                if context is not None and context[1] <= end and context[0] == UDP_PAYLOAD_CONTEXT:
                    payloads.append(bytes(buffer[context[1]:end]))
            offset = end
        del buffer[:offset]
        return payloads

"""keyd's wire format (sans-IO): length-prefixed requests and responses on a Unix stream socket.

Request:  u32 length | u32 id | u8 kind | u8 key_id_len | key_id | data
Response: u32 length | u32 id | u8 status | data   (data = result, or a UTF-8 reason)

`length` counts the bytes after itself. `kind` is 1 (raw RSA on a padded
block) or 2 (ECDSA over a digest): the only primitives a TLS handshake needs;
or 3 (GENERATE): keyd makes a new key under `key_id` and answers with a CSR
for the SPIFFE id in `data` (what an agent asks, so the key is born in keyd);
or 4 (IMPORT): `data` is a PEM private key that keyd keeps under `key_id` from
then on (what a gateway's agent sends with a credential's key, so that the
proxy never holds it); the answer is the key's public half (PEM);
or 5 (FORGET): keyd drops the key under `key_id` that an agent made or handed it
(replaced by a rotation, or a credential's new version); start-up keys stay.
Responses carry the request id, so a proxy can pipeline requests and keyd
can answer them in batch order. Only IMPORT carries key material, and only
towards keyd.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OK = 0
ERROR = 1
GENERATE = 3
IMPORT = 4
FORGET = 5
MAX_FRAME = 8192  # an RSA-4096 PEM (about 3.3 KB) with room to spare

_HEAD = struct.Struct("!I")
_REQUEST = struct.Struct("!IBB")
_RESPONSE = struct.Struct("!IB")


class ProtocolError(ValueError):
    """The peer sent bytes that are not a keyd frame."""


@dataclass(frozen=True)
class Request:
    id: int
    kind: int
    key_id: str
    data: bytes


@dataclass(frozen=True)
class Response:
    id: int
    status: int
    data: bytes


def encode_request(request: Request) -> bytes:
    key_id = request.key_id.encode()
    body = _REQUEST.pack(request.id, request.kind, len(key_id)) + key_id + request.data
    return _HEAD.pack(len(body)) + body


def encode_response(response: Response) -> bytes:
    body = _RESPONSE.pack(response.id, response.status) + response.data
    return _HEAD.pack(len(body)) + body


class FrameReader:
    """Accumulates stream bytes and yields complete frames' bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= 4:
            (length,) = _HEAD.unpack_from(self._buffer)
            if length > MAX_FRAME or length < _RESPONSE.size:
                raise ProtocolError(f"bad frame length {length}")
            if len(self._buffer) < 4 + length:
                break
            frames.append(bytes(self._buffer[4 : 4 + length]))
            del self._buffer[: 4 + length]
        return frames


def decode_request(body: bytes) -> Request:
    if len(body) < _REQUEST.size:
        raise ProtocolError("short request")
    request_id, kind, key_len = _REQUEST.unpack_from(body)
    start = _REQUEST.size
    if len(body) < start + key_len:
        raise ProtocolError("truncated key id")
    key_id = body[start : start + key_len].decode("utf-8", "replace")
    return Request(request_id, kind, key_id, body[start + key_len :])


def decode_response(body: bytes) -> Response:
    request_id, status = _RESPONSE.unpack_from(body)
    return Response(request_id, status, body[_RESPONSE.size :])
